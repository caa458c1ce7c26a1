"""In-memory task databases: DictDB and NoDB.  (Being written.)"""

from cluster_launcher import hookimpl
from cluster_launcher.db import BaseDB


class DictDB(BaseDB):
    pass


class NoDB(BaseDB):
    pass


@hookimpl
def cluster_launcher_register_dbs():
    return [DictDB, NoDB]
