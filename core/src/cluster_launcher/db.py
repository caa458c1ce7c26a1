"""Base class of task-database plugins, and the query language they share.

The controller writes one record per task (a dict keyed by ``msg_id``) and
updates it as the task is queued, started and completed.  Clients read the
records back with ``client.db_query(query, keys)``, where ``query`` uses the
MongoDB-style operators ``$in $nin $lt $lte $gt $gte $eq $ne $exists``
on record fields: ``{'completed': {'$gt': since}, 'engine_uuid': {'$in': [...]}}``.
A plain value means equality.

Every backend stores all of :data:`RECORD_FIELDS`; values are JSON-able,
datetimes, or lists of bytes-like buffers.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable

# The fields of a task record, in the order a tabular backend lays them out.
RECORD_FIELDS: dict[str, str] = {
    "msg_id": "the task's id (str, unique)",
    "header": "the request header (dict)",
    "content": "the request content (dict)",
    "buffers": "the request's serialized function and arguments (list of bytes)",
    "submitted": "when the controller received the task (datetime)",
    "client_uuid": "the submitting client's id (str)",
    "engine_uuid": "the engine that ran it (str or None)",
    "started": "when the engine started it (datetime or None)",
    "completed": "when the engine finished it (datetime or None)",
    "received": "when the controller got the result (datetime or None)",
    "resubmitted": "msg_id of the resubmission of this task, if any",
    "queue": "'mux' (direct) or 'task' (load-balanced)",
    "result_header": "the reply header (dict or None)",
    "result_content": "the reply content: status, error (dict or None)",
    "result_buffers": "the serialized result (list of bytes)",
    "stdout": "what the task printed to stdout (str)",
    "stderr": "what the task printed to stderr (str)",
}

Query = dict[str, Any]


class BaseDB(LoggingConfigurable):
    """Interface of a task database.  Subclasses are registered by class
    name (``DictDB``) and selected with ``c.Controller.db_class``.

    ``persistent`` says whether records survive a controller restart (used
    by ``--reuse``).  Every method is called from the controller's single
    thread; a backend may block briefly but should batch or defer slow I/O.
    """

    persistent: ClassVar[bool] = False

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Store a new record (``record['msg_id'] == msg_id``)."""
        raise NotImplementedError

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the record; unknown ``msg_id`` is a KeyError."""
        raise NotImplementedError

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """The whole record; unknown ``msg_id`` is a KeyError."""
        raise NotImplementedError

    def drop_record(self, msg_id: str) -> None:
        raise NotImplementedError

    def drop_matching_records(self, query: Query) -> None:
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


_OPERATORS = {
    "$lt": lambda value, arg: value is not None and value < arg,
    "$lte": lambda value, arg: value is not None and value <= arg,
    "$gt": lambda value, arg: value is not None and value > arg,
    "$gte": lambda value, arg: value is not None and value >= arg,
    "$eq": lambda value, arg: value == arg,
    "$ne": lambda value, arg: value != arg,
    "$in": lambda value, arg: value in arg,
    "$nin": lambda value, arg: value not in arg,
}


def check_query(query: Query) -> None:
    """Raise ``ValueError`` naming the bad field or operator of ``query``."""
    if not isinstance(query, dict):
        raise ValueError(f"a DB query is a dict of field: condition, not {type(query).__name__}")
    for name, condition in query.items():
        if name not in RECORD_FIELDS:
            raise ValueError(f"unknown task record field {name!r} in DB query")
        if isinstance(condition, dict):
            for op in condition:
                if op not in _OPERATORS and op != "$exists":
                    raise ValueError(f"unknown operator {op!r} for field {name!r} in DB query")


def matches(record: dict[str, Any], query: Query) -> bool:
    """Whether ``record`` satisfies ``query`` (the reference semantics every
    backend must reproduce)."""
    for name, condition in query.items():
        value = record.get(name)
        if isinstance(condition, dict):
            for op, arg in condition.items():
                if op == "$exists":
                    if (value is not None) != bool(arg):
                        return False
                else:
                    try:
                        if not _OPERATORS[op](value, arg):
                            return False
                    except TypeError:  # e.g. datetime < str: no match, as in MongoDB
                        return False
        elif value != condition:
            return False
    return True


def now() -> datetime:
    """Timestamps in records: timezone-aware UTC."""
    return datetime.now(timezone.utc)
