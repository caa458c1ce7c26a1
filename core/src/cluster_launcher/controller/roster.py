"""The controller's record of its engines (id and uuid), kept next to its pid
file so that a controller restarted with ``--reuse`` gives every engine that
comes back the id it had, and no new engine takes one of those ids first.

The file is the controller's own: written 0600, atomically, in the profile's
``pid/`` folder, at most once per heartbeat period (a storm of a thousand
registrations is one write).  Read back, it is trusted only if it is a
regular file of this user that nobody else may write, and every entry is
well formed; otherwise it is ignored with a warning naming the file (the
engines then get new ids, as before).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Container

from ..protocol import connection

log = logging.getLogger("cluster_launcher")

_UUID = re.compile(r"[0-9a-f]{1,64}")
_LARGEST_RECORD = 64 * 1024 * 1024  # bytes: about a million engines


class EngineRoster:
    """Engine id -> uuid of the registered engines, and the next id to give.

    ``reserved`` are the engines of the previous controller (with ``--reuse``)
    that have not come back yet: their ids are theirs only."""

    def __init__(self, path: str):
        self.path = path
        self.engines: dict[int, str] = {}
        self.reserved: dict[int, str] = {}
        self.next_id = 0
        self.dirty = False
        self.loaded = False  # a trusted record was read: ``reserved`` is every engine it expects back
        # Ids below it were given by the previous controller (its record's next id): retired unless reserved.
        self.previous_next_id = 0
        self.given: set[int] = set()  # by this controller: an engine it declared dead comes back as a new one

    # --- ids ---------------------------------------------------------------

    def choose_id(self, asked: object, uuid: str, in_use: Container[int]) -> int:
        """The id for an engine registering as ``uuid`` that asks for
        ``asked`` (the id it had, or None): that id if it is reserved for
        that uuid, or if no controller of the record gave it yet (an engine
        that registered after the record was last written); else the next
        new id, as for an engine this controller declared dead."""
        if type(asked) is not int or asked < 0 or asked in in_use:
            return self.next_id
        if asked in self.reserved:
            return asked if self.reserved[asked] == uuid else self.next_id
        if asked >= self.previous_next_id and asked not in self.given:
            return asked
        return self.next_id

    def add(self, engine_id: int, uuid: str) -> None:
        self.given.add(engine_id)
        if _UUID.fullmatch(uuid):  # an engine of another make may call itself anything: not kept, not reserved
            self.engines[engine_id] = uuid
        if self.reserved.get(engine_id) == uuid:
            del self.reserved[engine_id]
        self.next_id = max(self.next_id, engine_id + 1)
        self.dirty = True

    def remove(self, engine_id: int) -> None:
        if self.engines.pop(engine_id, None) is not None:
            self.dirty = True

    # --- the file ------------------------------------------------------------

    def load(self) -> None:
        """Reserve the ids of the previous controller's engines, if its record
        is there and can be trusted."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("ignored the engine record %s: cannot open it (%s); engines get new ids", self.path,
                        exc.strerror)
            return
        try:
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                problem = _untrusted(info)
                data = None if problem else f.read(_LARGEST_RECORD + 1)
        except OSError as exc:
            problem = f"cannot read it ({exc.strerror})"
        if not problem and data is not None:
            try:
                engines, next_id = _parse(data)
            except ValueError as exc:
                problem = str(exc)
        if problem:
            log.warning("ignored the engine record %s: %s; engines get new ids", self.path, problem)
            return
        self.reserved = engines
        self.next_id = self.previous_next_id = max([next_id, *(i + 1 for i in engines)])
        self.loaded = True
        if engines:
            log.info("expecting %d engine(s) of the previous controller back with their ids (%s)", len(engines),
                     self.path)

    def save(self) -> None:
        """Write the record if it changed since the last write."""
        if not self.dirty:
            return
        self.dirty = False
        data = {"engines": {str(i): uuid for i, uuid in sorted({**self.reserved, **self.engines}.items())},
                "next_engine_id": self.next_id}
        try:
            connection.write_private_json(self.path, data)
        except OSError as exc:
            log.warning("cannot write the engine record %s: %s (a restarted controller would give engines new "
                        "ids)", self.path, exc.strerror)

    def discard(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _untrusted(info: os.stat_result) -> str:
    """Why a record with this ``stat`` cannot be trusted ('' if it can)."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not this user"
    if info.st_mode & 0o022:
        return f"others may write it (mode {stat.S_IMODE(info.st_mode):o})"
    if info.st_size > _LARGEST_RECORD:
        return f"larger than {_LARGEST_RECORD} bytes"
    return ""


def _parse(data: bytes) -> tuple[dict[int, str], int]:
    """``({engine id: uuid}, next engine id)`` from a record; ValueError naming what is wrong."""
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("engines"), dict):
        raise ValueError("no 'engines' object")
    next_id = record.get("next_engine_id")
    if type(next_id) is not int or next_id < 0:
        raise ValueError("field 'next_engine_id' is not a non-negative integer")
    engines: dict[int, str] = {}
    for key, uuid in record["engines"].items():
        if not key.isdigit() or not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
            raise ValueError(f"bad entry {key!r}: {str(uuid)[:80]!r} (engine id: uuid hex)")
        engines[int(key)] = uuid
    return engines, next_id
