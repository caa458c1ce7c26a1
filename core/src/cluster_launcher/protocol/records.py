"""Task records (and DB queries) as JSON-able headers plus buffer frames:
the codec of ``db_query``/``db_reply`` messages and of results read back
from the task database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import zmq


def encode_record(value: Any, buffers: list) -> Any:
    """A task record (or query) made JSON-able for a ``db_query``/``db_reply``
    message: datetimes become ``{"$date": iso}``, lists of buffers
    ``{"$buffers": [indices]}`` into ``buffers`` (appended to)."""
    if isinstance(value, datetime):
        return {"$date": value.isoformat()}
    if isinstance(value, dict):
        return {k: encode_record(v, buffers) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (bytes, bytearray, memoryview, zmq.Frame)) for v in value):
            first = len(buffers)
            buffers.extend(value)
            return {"$buffers": list(range(first, len(buffers)))}
        return [encode_record(v, buffers) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(value)
        return {"$buffers": [len(buffers) - 1], "$single": True}
    return value


def decode_record(value: Any, buffers: list) -> Any:
    """The inverse of :func:`encode_record`."""
    if isinstance(value, dict):
        if "$date" in value and len(value) == 1:
            return datetime.fromisoformat(value["$date"])
        if "$buffers" in value:
            found = [bytes(buffers[i]) for i in value["$buffers"]]
            return found[0] if value.get("$single") else found
        return {k: decode_record(v, buffers) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_record(v, buffers) for v in value]
    return value
