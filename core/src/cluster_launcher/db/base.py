"""The base class of task-database plugins (see :mod:`.query` for the
records they keep and the queries they answer)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable

from .query import Query


class BaseDB(LoggingConfigurable):
    """Interface of a task database.  Subclasses are registered by class
    name (``DictDB``) and selected with ``c.Controller.db_class``.

    ``stores_records`` is false for a backend that keeps nothing (NoDB): the
    controller then drops a task's buffers as soon as it no longer needs them.
    ``persistent`` says whether records survive a controller restart (used
    by ``--reuse``).  Every method is called from the controller's single
    thread; a backend may block briefly but should batch or defer slow I/O.

    Shared rules (checked by :mod:`cluster_launcher.testing.db_conformance`):
    records hold only :data:`RECORD_FIELDS` (a missing field reads as None);
    a bad query, key or field is a ``ValueError`` naming it; an unknown
    ``msg_id`` is a ``KeyError``; returned records are the caller's to mutate.
    """

    stores_records: ClassVar[bool] = True
    persistent: ClassVar[bool] = False

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

    def close(self) -> None:
        """Flush and release resources (the controller is stopping)."""
