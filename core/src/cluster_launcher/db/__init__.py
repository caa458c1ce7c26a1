"""Task databases: the base class of DB plugins and the query language they
share.  The backends themselves (DictDB, NoDB, SQLiteDB, MongoDB) are plugins."""

from .base import BaseDB
from .query import (
    BUFFER_FIELDS,
    DATETIME_FIELDS,
    OPERATORS,
    RECORD_FIELDS,
    Query,
    check_field,
    check_keys,
    check_query,
    check_record,
    matches,
    now,
)

__all__ = ["BUFFER_FIELDS", "DATETIME_FIELDS", "OPERATORS", "RECORD_FIELDS", "BaseDB", "Query", "check_field",
           "check_keys", "check_query", "check_record", "matches", "now"]
