"""The base class of task-database plugins (see :mod:`.query` for the
records they keep and the queries they answer)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from .query import Query


class BaseDB(LoggingConfigurable):
    """Interface of a task database.  Subclasses are registered by class
    name (``DictDB``) and selected with ``c.Controller.db_class``.

    ``stores_records`` is false for a backend that keeps nothing (NoDB): the
    controller then drops a task's buffers as soon as it no longer needs them.
    ``persistent`` says whether records survive a controller restart (used
    by ``--reuse``).  Every method is called from the controller's single
    thread; a backend may block briefly but should batch or defer slow I/O
    (:class:`~cluster_launcher.db.writer.BatchWriter` does that).

    The durability promise: the controller sends a task's result to its
    clients only from a :meth:`when_durable` callback made after it recorded
    the result, so a result a client has received is in the database.  An
    in-memory backend runs the callback at once; a write-behind one runs it
    once the write is stored, from :meth:`run_durable_callbacks`, which the
    controller calls whenever :meth:`durable_fd` is readable.

    Shared rules (checked by :mod:`cluster_launcher.testing.db_conformance`):
    records hold only :data:`RECORD_FIELDS` (a missing field reads as None);
    a bad query, key or field is a ``ValueError`` naming it; an unknown
    ``msg_id`` is a ``KeyError``; returned records are the caller's to mutate.
    """

    stores_records: ClassVar[bool] = True
    persistent: ClassVar[bool] = False

    # Set by the controller, not configured: IPython's backends took them too.
    session = Unicode("", help="The controller's session id (SQLiteDB names its default table after it).")
    profile_dir = Unicode("", help="The controller's profile directory (where a file-based backend "
                          "keeps its file by default).")

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Store a new record (``record['msg_id'] == msg_id``); a msg_id
        already stored is a KeyError."""
        raise NotImplementedError

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the record; unknown ``msg_id`` is a KeyError."""
        raise NotImplementedError

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """The whole record; unknown ``msg_id`` is a KeyError."""
        raise NotImplementedError

    def drop_record(self, msg_id: str) -> None:
        """Forget one record; unknown ``msg_id`` is a KeyError."""
        raise NotImplementedError

    def drop_matching_records(self, query: Query) -> None:
        """Forget every record matching ``query`` (``{}`` matches all)."""
        raise NotImplementedError

    def find_records(self, query: Query, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Records matching ``query``, each with only ``keys`` (plus ``msg_id``)
        when given, in submission order."""
        raise NotImplementedError

    def get_history(self) -> list[str]:
        """Every stored msg_id, in submission order."""
        raise NotImplementedError

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the controller's thread once every write made
        so far is stored: here, at once; see the class docstring."""
        callback()

    def durable_fd(self) -> int | None:
        """A file descriptor that becomes readable when callbacks are due
        (None: callbacks always run at once)."""
        return None

    def run_durable_callbacks(self) -> None:
        """Run the :meth:`when_durable` callbacks that are due."""

    def close(self) -> None:
        """Flush, run the durable callbacks that became due, and release
        resources (the controller is stopping)."""
