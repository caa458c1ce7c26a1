"""Task records and the query language every DB backend shares.

The controller writes one record per task (a dict keyed by ``msg_id``) and
updates it as the task is queued, started and completed.  Clients read the
records back with ``client.db_query(query, keys)``, where ``query`` uses the
MongoDB-style operators ``$in $nin $lt $lte $gt $gte $eq $ne $exists``
on record fields: ``{'completed': {'$gt': since}, 'engine_uuid': {'$in': [...]}}``.
A plain value means equality.  :func:`matches` is the reference semantics.

Every backend stores all of :data:`RECORD_FIELDS`; values are JSON-able,
datetimes, or lists of bytes-like buffers.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

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

# Fields holding datetimes: a query compares them only with (aware) datetimes,
# so a backend that stores them as text or numbers cannot be fooled by a str.
DATETIME_FIELDS = ("submitted", "started", "completed", "received")

# Fields holding lists of bytes-like buffers: stored by reference, never
# compared, and counted by size-limited backends.
BUFFER_FIELDS = ("buffers", "result_buffers")



_OPERATORS = {
    "$lt": lambda value, arg: value is not None and value < arg,
    "$lte": lambda value, arg: value is not None and value <= arg,
    "$gt": lambda value, arg: value is not None and value > arg,
    "$gte": lambda value, arg: value is not None and value >= arg,
    "$eq": lambda value, arg: value == arg,
    "$ne": lambda value, arg: value != arg,
    "$in": lambda value, arg: value in arg,
    "$nin": lambda value, arg: value not in arg,
    "$exists": lambda value, arg: (value is not None) == arg,
}
OPERATORS = tuple(_OPERATORS)
_ORDERING = ("$lt", "$lte", "$gt", "$gte")
_MEMBERSHIP = ("$in", "$nin")


def _is_operator_dict(condition: Any) -> bool:
    # As in MongoDB, a dict whose keys are not operators is a value to compare
    # for equality (e.g. a whole ``header``).
    return isinstance(condition, dict) and any(str(key).startswith("$") for key in condition)


def check_field(name: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`RECORD_FIELDS`."""
    if name not in RECORD_FIELDS:
        raise ValueError(f"unknown task record field {name!r} in {where} "
                         f"(known: {', '.join(RECORD_FIELDS)})")


def _check_argument(name: str, op: str, arg: Any) -> None:
    if isinstance(arg, datetime) and arg.tzinfo is None:
        raise ValueError(f"naive datetime for {op!r} on field {name!r} in DB query: record times "
                         "are timezone-aware UTC, use e.g. datetime.now(timezone.utc)")
    if op in _ORDERING and arg is None:
        raise ValueError(f"{op!r} on field {name!r} in DB query compares with None: "
                         "use {'$exists': False} or {'$eq': None}")
    if name in DATETIME_FIELDS and op not in _MEMBERSHIP and op != "$exists" \
            and not isinstance(arg, (datetime, type(None))):
        raise ValueError(f"{op!r} on field {name!r} in DB query needs a datetime, "
                         f"not {type(arg).__name__}")
    if op in _MEMBERSHIP:
        if not isinstance(arg, (list, tuple, set, frozenset)):
            raise ValueError(f"{op!r} on field {name!r} in DB query takes a list, "
                             f"not {type(arg).__name__}")
        for item in arg:
            _check_argument(name, "$eq", item)
    if op == "$exists" and not isinstance(arg, bool):
        raise ValueError(f"'$exists' on field {name!r} in DB query takes True or False, not {arg!r}")


def check_query(query: Query) -> None:
    """Raise ``ValueError`` naming the bad field, operator or argument of ``query``."""
    if not isinstance(query, dict):
        raise ValueError(f"a DB query is a dict of field: condition, not {type(query).__name__}")
    for name, condition in query.items():
        check_field(name, "DB query")
        if not _is_operator_dict(condition):
            _check_argument(name, "$eq", condition)
            continue
        for op, arg in condition.items():
            if op not in _OPERATORS:
                raise ValueError(f"unknown operator {op!r} for field {name!r} in DB query "
                                 f"(known: {' '.join(OPERATORS)})")
            _check_argument(name, op, arg)


def check_keys(keys: Iterable[str] | None) -> list[str] | None:
    """The projection ``keys`` validated, with ``msg_id`` first; None means
    every field.  An unknown field is a ``ValueError`` naming it."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)):
        raise ValueError(f"DB query keys are a list of field names, not the string {keys!r}")
    projection = ["msg_id"]
    for key in keys:
        check_field(key, "DB query keys")
        if key not in projection:
            projection.append(key)
    return projection


def check_record(record: dict[str, Any], where: str = "task record") -> None:
    """Raise ``ValueError`` naming any field of ``record`` that is not in
    :data:`RECORD_FIELDS` (every backend must be able to store it)."""
    for name in record:
        check_field(name, where)


def matches(record: dict[str, Any], query: Query) -> bool:
    """Whether ``record`` satisfies ``query`` (the reference semantics every
    backend must reproduce).  ``query`` must have passed :func:`check_query`."""
    for name, condition in query.items():
        value = record.get(name)
        if not _is_operator_dict(condition):
            condition = {"$eq": condition}
        for op, arg in condition.items():
            try:
                if not _OPERATORS[op](value, arg):
                    return False
            except TypeError:  # e.g. datetime < str: no match, as in MongoDB
                return False
    return True


def now() -> datetime:
    """Timestamps in records: timezone-aware UTC."""
    return datetime.now(timezone.utc)
