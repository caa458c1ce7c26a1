"""MongoDB task database (``c.Controller.db_class = 'MongoDB'``).

Task records live in one collection (``c.MongoDB.collection``, default
``task_records`` as in IPython) of a database named after the controller's
session unless ``c.MongoDB.database`` says otherwise, so they outlive the
controller (``--reuse``).  Writes go through a
:class:`~cluster_launcher.db.writer.BatchWriter`: the controller never waits
for the server, and a lost server delays only the records, not the results
(``hold_on_failure=False``).

How records are stored, and why:

* **Times** (:data:`~cluster_launcher.db.DATETIME_FIELDS`) are stored as
  integer microseconds since the epoch (UTC).  BSON dates keep milliseconds
  only and come back naive, so they could not round-trip; an integer keeps
  every microsecond, orders like the instant it stands for whatever the time
  zone it was given in, and a query's datetimes translate the same way.
  Records come back with aware UTC datetimes (equal to the originals).
* **Dict fields** (header, content, result header and content) are stored as
  sub-documents, readable in the mongo shell, with their keys escaped: ``%``,
  ``$``, ``.`` and NUL become ``%25 %24 %2E %00``, so no key BSON or the server
  refuses can fail a write.  Values BSON cannot hold exactly are tagged
  sub-documents whose one key cannot be an escaped key (a ``%`` followed by
  something that is not two hex digits): ``{'%t': µs}`` an aware datetime,
  ``{'%n': µs}`` a naive one, ``{'%i': [[key, value], ...]}`` a dict with
  non-str keys, ``{'%b': 'digits'}`` an int beyond 64 bits.  Tuples come back
  as lists (as from any BSON or JSON store).
* **Buffers** are lists of BSON binaries (copied from memoryviews and frames
  when the write is queued, so the caller may reuse them) and come back as
  ``bytes``.
* **Plain fields** (msg_id, uuids, queue, stdout, ...) hold str natively; any
  other value, and any non-datetime in a time field, is wrapped as
  ``{'%v': value}``.  The wrapper is what makes queries exact: MongoDB never
  orders or equates a document with a string or a number, just as Python
  raises TypeError (no match) comparing a list with a str or a datetime.
* A ``seq`` field numbers records in submission order; reads sort on it.

Queries: each field's conditions are translated to MongoDB when that is
exact: str/None arguments on plain fields, datetimes on time fields (as
integers), and ``$exists`` / equality with None on any field (``$exists`` is
translated to ``$ne: null`` / ``null``, since MongoDB's own ``$exists`` counts
a stored null as present).  Anything else (equality with a dict, numbers or
bools, which Python and MongoDB compare differently, conditions on buffers)
is left out of the server's query, which then returns a superset, and
checked in Python with :func:`cluster_launcher.db.matches`, the reference.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import bson
import bson.errors
import pymongo
import pymongo.errors
from traitlets import Any as AnyTrait
from traitlets import Dict, Float, List, Unicode

from cluster_launcher import hookimpl
from cluster_launcher.db import (
    BUFFER_FIELDS,
    DATETIME_FIELDS,
    RECORD_FIELDS,
    BaseDB,
    Query,
    check_keys,
    check_query,
    check_record,
    matches,
)
from cluster_launcher.db.writer import BatchWriter, WriteBehindDB
from cluster_launcher.error import TaskDBError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_MICROSECOND = timedelta(microseconds=1)
DEFAULT_URL = "mongodb://localhost:27017"
DICT_FIELDS = ("header", "content", "result_header", "result_content")
# Everything else holds a str (or None) in a well-formed record.
PLAIN_FIELDS = tuple(f for f in RECORD_FIELDS if f not in DICT_FIELDS + BUFFER_FIELDS + DATETIME_FIELDS)
ORDERING = ("$lt", "$lte", "$gt", "$gte")
INT64 = range(-(2**63), 2**63)
# Failures that may pass: the writer retries them.  Anything else a write
# raises can never succeed: the writes are then made one at a time and the
# ones that fail are logged and skipped.
TRANSIENT = (pymongo.errors.ConnectionFailure, pymongo.errors.ExecutionTimeout, pymongo.errors.WriteConcernError)
DUPLICATE_KEY = 11000
KNOWN_LIMIT = 100_000  # recent msg_ids answered from memory (about 10 MB)
DELETE_CHUNK = 10_000  # msg_ids per delete_many, far below BSON's 16 MB document limit

# ---------------------------------------------------------------------------
# values <-> BSON


def _micros(value: datetime) -> int:
    return (value - EPOCH) // ONE_MICROSECOND


def _aware(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _escape(key: str) -> str:
    # '%' first, so that the escapes added after it are not escaped again.
    return key.replace("%", "%25").replace("$", "%24").replace(".", "%2E").replace("\0", "%00")


_ESCAPE = re.compile(r"%(25|24|2E|00)")


def _unescape(key: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key)


def _text(value: str) -> str:
    """``value`` as BSON can hold it: a lone surrogate (a non-UTF-8 file name a
    task printed) is not UTF-8, so it is kept escaped."""
    return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _encode(value: Any, where: str) -> Any:
    """``value`` as BSON can hold it exactly (see the module docstring)."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if value in INT64 else {"%b": str(value)}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return {"%n": _micros(value.replace(tzinfo=timezone.utc))}
        return {"%t": _micros(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bson.Binary(bytes(value))
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {_escape(_text(key)): _encode(item, where) for key, item in value.items()}
        return {"%i": [[_encode(key, where), _encode(item, where)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(item, where) for item in value]
    try:  # a zmq frame, an mmap: anything with the buffer protocol is a buffer
        return bson.Binary(bytes(memoryview(value)))
    except TypeError:
        raise ValueError(f"cannot store {type(value).__name__} in {where} of a MongoDB task record "
                         "(values are JSON-able, datetimes or bytes)") from None


_TAGS: dict[str, Callable[[Any], Any]] = {
    "%t": _aware,
    "%n": lambda micros: _aware(micros).replace(tzinfo=None),
    "%b": int,
    "%i": lambda items: {_decode(key): _decode(item) for key, item in items},
}


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, dict):
        if len(value) == 1:
            tag, inner = next(iter(value.items()))
            if tag in _TAGS:
                return _TAGS[tag](inner)
        return {_unescape(key): _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, bytes):  # bson.Binary (mongomock, or a subtype) included
        return bytes(value)
    return value


def _is_buffer(value: Any) -> bool:
    try:
        memoryview(value)
    except TypeError:
        return False
    return not isinstance(value, str)


def _encode_field(name: str, value: Any) -> Any:
    """One record field as stored: each field has a native BSON type (µs for
    times, str, a sub-document, a list of binaries); any other value is
    wrapped, so that it never equals or orders with a native one."""
    if value is None:
        return None
    if name in DATETIME_FIELDS and isinstance(value, datetime) and value.tzinfo is not None:
        return _micros(value)
    if name in PLAIN_FIELDS and isinstance(value, str):
        return _text(value)
    if name in DICT_FIELDS and isinstance(value, dict):
        return _encode(value, name)
    if name in BUFFER_FIELDS and isinstance(value, (list, tuple)) and all(_is_buffer(b) for b in value):
        return [bson.Binary(bytes(memoryview(b))) for b in value]
    return {"%v": _encode(value, name)}


def _decode_field(name: str, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"%v"}:  # no escaped key is '%v'
        return _decode(value["%v"])
    if name in DATETIME_FIELDS and isinstance(value, int):
        return _aware(value)
    return _decode(value)


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: _encode_field(name, value) for name, value in fields.items()}


def _decode_record(document: dict[str, Any], projection: list[str] | None) -> dict[str, Any]:
    names = projection if projection is not None else RECORD_FIELDS
    return {name: _decode_field(name, document.get(name)) for name in names}


# ---------------------------------------------------------------------------
# queries


def _translatable(name: str, op: str, arg: Any) -> bool:
    """Whether MongoDB evaluates ``{name: {op: arg}}`` exactly as :func:`matches` does."""
    if op == "$exists" or (op in ("$eq", "$ne") and arg is None):
        return True
    if name in DICT_FIELDS or name in BUFFER_FIELDS:
        return False
    kind = datetime if name in DATETIME_FIELDS else str
    if op in ("$in", "$nin"):
        return all(item is None or isinstance(item, kind) for item in arg)
    return isinstance(arg, kind)


def _translate_arg(name: str, arg: Any) -> Any:
    if isinstance(arg, datetime):
        return _micros(arg)
    if isinstance(arg, (list, tuple, set, frozenset)):
        return [_translate_arg(name, item) for item in arg]
    return arg


def _translate(query: Query) -> tuple[dict[str, Any], list[str]]:
    """The MongoDB filter for ``query`` (a superset of its matches) and the
    fields whose conditions it leaves to Python (exact when none)."""
    clauses: list[dict[str, Any]] = []
    in_python: list[str] = []
    for name, condition in query.items():
        if not (isinstance(condition, dict) and any(str(key).startswith("$") for key in condition)):
            condition = {"$eq": condition}
        if not all(_translatable(name, op, arg) for op, arg in condition.items()):
            in_python.append(name)
            continue
        for op, arg in condition.items():
            if op == "$exists":  # MongoDB's $exists counts a stored null as present; matches() does not
                clauses.append({name: {"$ne" if arg else "$eq": None}})
            else:
                clauses.append({name: {op: _translate_arg(name, arg)}})
    # One sub-document per field reads best in the server's logs; $and when
    # two conditions need the same operator ($exists and $ne, say).
    merged: dict[str, dict[str, Any]] = {}
    for clause in clauses:
        ((name, ops),) = clause.items()
        if set(ops) & set(merged.get(name, {})):
            return {"$and": clauses}, in_python
        merged.setdefault(name, {}).update(ops)
    return dict(merged), in_python


# ---------------------------------------------------------------------------
# URLs in messages

_PASSWORD = re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    return _PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def _passwords(url: str) -> list[str]:
    return [m["password"] for m in _PASSWORD.finditer(url) if m["password"]]


def _describe_target(args: list[Any], kwargs: dict[str, Any]) -> str:
    """The server(s) the client is given, as the user wrote them, password redacted."""
    host = args[0] if args else kwargs.get("host")
    if isinstance(host, (list, tuple)):
        host = ",".join(str(h) for h in host)
    if not host:
        host = DEFAULT_URL
    port = args[1] if len(args) > 1 else kwargs.get("port")
    text = str(host)
    if port and "://" not in text and ":" not in text:
        text = f"{text}:{port}"
    return redact(text)


def _reason(exc: BaseException, secrets: Iterable[str]) -> str:
    """One short line for ``exc``: pymongo appends a whole topology description
    to server-selection errors; the first part is what went wrong."""
    text = " ".join(str(exc).split())
    text = text.split(", Timeout:")[0].split(", Topology Description:")[0]
    for secret in secrets:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------
# writes, as queued


@dataclass
class _Insert:
    document: dict[str, Any]


@dataclass
class _Update:
    msg_id: str
    changes: dict[str, Any] = field(default_factory=dict)


def _merge(queued: Any, new: Any) -> Any:
    """Fold an update into the queued insert or update of the same record:
    one write per task instead of three when the server keeps up."""
    if isinstance(new, _Update):
        target = queued.document if isinstance(queued, _Insert) else queued.changes
        target.update(new.changes)
        return queued
    return None


class MongoDB(WriteBehindDB):
    """Task records in a MongoDB server: kept across controller restarts,
    shared by every client's ``db_query``."""

    persistent: ClassVar[bool] = True

    database = Unicode("", help="The MongoDB database to use (default: the controller's session id, "
                       "as IPython did; 'cluster-launcher' without one).").tag(config=True)
    collection = Unicode("task_records", help="The collection holding the task records.").tag(config=True)
    connection_args = List(AnyTrait(), help="Positional arguments to pymongo.MongoClient, e.g. "
                           "['mongodb://user:pass@dbhost:27017'].").tag(config=True)
    connection_kwargs = Dict(help="Keyword arguments to pymongo.MongoClient, e.g. "
                             "{'tls': True, 'authSource': 'admin'}.").tag(config=True)
    server_selection_timeout = Float(5.0, min=0.0, help="Seconds to wait for a server before an operation "
                                     "fails (serverSelectionTimeoutMS, unless set in connection_kwargs); "
                                     "also how long stopping waits for writes to a lost server."
                                     ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        args, client_kwargs = list(self.connection_args), dict(self.connection_kwargs)
        if not any(key.lower() == "serverselectiontimeoutms" for key in client_kwargs):
            client_kwargs["serverSelectionTimeoutMS"] = max(1, int(self.server_selection_timeout * 1000))
        self.url = _describe_target(args, client_kwargs)
        self._secrets = _passwords(str(args[0] if args else client_kwargs.get("host") or ""))
        password = client_kwargs.get("password")
        if isinstance(password, str) and password:
            self._secrets.append(password)
        self.database_name = self.database or self.session or "cluster-launcher"
        try:
            self._client: Any = pymongo.MongoClient(*args, **client_kwargs)
        except (pymongo.errors.PyMongoError, TypeError, ValueError) as exc:
            raise TaskDBError(f"cannot use the MongoDB server at {self.url} ({_reason(exc, self._secrets)}); "
                              "fix c.MongoDB.connection_args/connection_kwargs") from None
        try:
            self._client.admin.command("ping")
            self._records = self._client[self.database_name][self.collection]
            for index in ("completed", "engine_uuid", "client_uuid", "seq"):
                self._records.create_index(index)
            self._records.create_index("msg_id", unique=True)
            latest = list(self._records.find({}, {"_id": 0, "msg_id": 1, "seq": 1},
                                             sort=[("seq", pymongo.DESCENDING)], limit=KNOWN_LIMIT))
        except pymongo.errors.PyMongoError as exc:
            self._client.close()
            raise TaskDBError(f"cannot reach the MongoDB task database at {self.url} "
                              f"({_reason(exc, self._secrets)}); start the server, or point "
                              "c.MongoDB.connection_args at a running one") from None
        last = latest[0] if latest else None
        self._seq = int(last["seq"]) + 1 if last is not None and isinstance(last.get("seq"), int) else 0
        # The collection's latest msg_ids (an earlier run's, with --reuse, then
        # this object's), not dropped since: updates, the hot path, and
        # duplicate adds are answered without the server, which may be slow or
        # gone.  Bounded (about 100 bytes each): an older record is looked up
        # on the server when it is updated, and a duplicate of one is refused
        # by the unique index (logged).
        self._known: dict[str, None] = dict.fromkeys(
            reversed([str(document["msg_id"]) for document in latest if "msg_id" in document]))
        # Records added here and not finished: their updates (the result, maybe
        # long after) never ask the server, however many tasks came since.
        self._unfinished: set[str] = set()
        self._retrying = threading.Event()  # set by the writer between a failure and the next success
        self._closed = False
        self.writer = BatchWriter(self._apply, target=f"MongoDB {self.url}", log=self.log,
                                   hold_on_failure=False, merge=_merge, name="mongodb-task-writer")

    # -- writing ---------------------------------------------------------

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Queue a new record; a msg_id already stored is a KeyError."""
        check_record(record)
        if record.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"task record for {msg_id!r} has msg_id {record['msg_id']!r}")
        if msg_id in self._known:
            raise KeyError(f"task record {msg_id!r} already exists")
        document = {name: value for name, value in _encode_fields(record).items() if value is not None}
        document["msg_id"] = msg_id
        document["seq"] = self._seq
        self._seq += 1
        self._remember(msg_id)
        if record.get("completed") is None and record.get("result_header") is None:
            self._unfinished.add(msg_id)
        self.writer.put(_Insert(document), key=msg_id)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Queue ``changes`` to the record; unknown ``msg_id`` is a KeyError."""
        check_record(changes, "task record update")
        if changes.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"cannot change the msg_id of task record {msg_id!r}")
        if msg_id not in self._known and msg_id not in self._unfinished:
            if not self._on_server(msg_id):
                raise KeyError(f"no task record {msg_id!r}")
            self._remember(msg_id)
        if changes.get("completed") is not None or changes.get("result_header") is not None:
            self._unfinished.discard(msg_id)
        encoded = _encode_fields({name: value for name, value in changes.items() if name != "msg_id"})
        if encoded:
            self.writer.put(_Update(msg_id, encoded), key=msg_id)

    def drop_record(self, msg_id: str) -> None:
        """Forget one record; unknown ``msg_id`` is a KeyError."""
        self._flush("drop a task record")
        result = self._call(self._records.delete_one, {"msg_id": msg_id})
        self._known.pop(msg_id, None)
        self._unfinished.discard(msg_id)
        if result.deleted_count == 0:
            raise KeyError(f"no task record {msg_id!r}")

    def drop_matching_records(self, query: Query) -> None:
        """Forget every record matching ``query``."""
        check_query(query)
        mongo, in_python = _translate(query)
        self._flush("drop task records")
        ids = [record["msg_id"] for record in self._find(query, mongo, in_python, projection=["msg_id"])]
        if not in_python:
            self._call(self._records.delete_many, mongo)
        else:
            for start in range(0, len(ids), DELETE_CHUNK):
                chunk = ids[start:start + DELETE_CHUNK]
                self._call(self._records.delete_many, {"msg_id": {"$in": chunk}})
        for msg_id in ids:
            self._known.pop(msg_id, None)
            self._unfinished.discard(msg_id)

    # -- reading ---------------------------------------------------------

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """The whole record; unknown ``msg_id`` is a KeyError."""
        self._flush("read a task record")
        document = self._call(self._records.find_one, {"msg_id": msg_id}, {"_id": 0})
        if document is None:
            raise KeyError(f"no task record {msg_id!r}")
        return _decode_record(document, None)

    def find_records(self, query: Query, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Records matching ``query`` in submission order, each with only
        ``keys`` (plus ``msg_id``) when given."""
        check_query(query)
        projection = check_keys(keys)
        mongo, in_python = _translate(query)
        self._flush("query the task database")
        return self._find(query, mongo, in_python, projection)

    def get_history(self) -> list[str]:
        """Every stored msg_id, in submission order."""
        self._flush("read the task history")
        return [record["msg_id"] for record in self._find({}, {}, [], ["msg_id"])]

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        """Write what is queued (giving a lost server ``server_selection_timeout``
        seconds, so a stopping controller does not hang), then disconnect."""
        if self._closed:
            return
        self._closed = True
        self.writer.close(timeout=self.server_selection_timeout)
        self._client.close()

    # -- internals -------------------------------------------------------

    def _flush(self, what: str) -> None:
        # While writes fail this raises at once (fail_fast): a read must not
        # hang on a lost server.  The timeout is for a slow, working one.
        self.writer.flush(what=what)

    def _call(self, operation: Callable[..., Any], *args: Any) -> Any:
        """``operation(*args)`` (a read or drop), a pymongo failure becoming a one-line TaskDBError."""
        try:
            return operation(*args)
        except pymongo.errors.PyMongoError as exc:
            raise TaskDBError(f"cannot use the MongoDB task database at {self.url} "
                              f"({_reason(exc, self._secrets)}); is the server running?") from None

    def _remember(self, msg_id: str) -> None:
        self._known[msg_id] = None
        if len(self._known) > KNOWN_LIMIT:
            del self._known[next(iter(self._known))]

    def _on_server(self, msg_id: str) -> bool:
        """Whether the server has a record for ``msg_id`` (one of an earlier run)."""
        self._flush("look up a task record")
        return self._call(self._records.find_one, {"msg_id": msg_id}, {"_id": 1}) is not None

    def _find(self, query: Query, mongo: dict[str, Any], in_python: list[str],
              projection: list[str] | None) -> list[dict[str, Any]]:
        fetch = {"_id": 0} if projection is None else {"_id": 0, **dict.fromkeys(projection + in_python, 1)}

        def run() -> list[dict[str, Any]]:
            return list(self._records.find(mongo, fetch).sort("seq", pymongo.ASCENDING))

        rest = {name: query[name] for name in in_python}
        found = []
        for document in self._call(run):
            record = _decode_record(document, projection)
            if rest:
                decoded = record if projection is None else {**_decode_record(document, in_python), **record}
                if not matches(decoded, rest):
                    continue
            found.append(record)
        return found

    def _apply(self, ops: list[Any]) -> None:
        """The writer's apply: one ordered bulk write; a write that can never
        succeed is logged and skipped, a lost server raises (the writer retries)."""
        requests = [self._request(op) for op in ops]
        try:
            self._bulk(ops, requests)
        except TRANSIENT:
            self._retrying.set()
            raise
        self._retrying.clear()

    @staticmethod
    def _request(op: Any) -> Any:
        if isinstance(op, _Insert):
            return pymongo.InsertOne(op.document)
        return pymongo.UpdateOne({"msg_id": op.msg_id}, {"$set": op.changes})

    def _bulk(self, ops: list[Any], requests: list[Any]) -> None:
        start = 0
        while start < len(requests):
            try:
                self._records.bulk_write(requests[start:], ordered=True)
                return
            except pymongo.errors.BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                if not errors:  # only the write concern failed: the writes may not have stuck, retry
                    raise pymongo.errors.AutoReconnect(_reason(exc, self._secrets)) from exc
                failed = start + int(errors[0]["index"])  # ordered: the ones before it are written
                self._skip(ops[failed], errors[0])
                start = failed + 1
            except TRANSIENT:
                raise
            except Exception:
                # Anything else (a document BSON cannot encode, an operation the
                # server refuses) can never succeed: find the bad ones by writing
                # the rest one at a time, so they do not hold up the others forever.
                for op, request in zip(ops[start:], requests[start:], strict=True):
                    try:
                        self._records.bulk_write([request], ordered=True)
                    except TRANSIENT:
                        raise
                    except pymongo.errors.BulkWriteError as exc:
                        self._skip(op, (exc.details.get("writeErrors") or [{}])[0])
                    except Exception as exc:
                        self._skip(op, {"errmsg": _reason(exc, self._secrets)})
                return

    def _skip(self, op: Any, error: dict[str, Any]) -> None:
        msg_id = op.document["msg_id"] if isinstance(op, _Insert) else op.msg_id
        if error.get("code") == DUPLICATE_KEY and isinstance(op, _Insert):
            # After a lost connection the batch is replayed: inserts that
            # reached the server before it went are expected duplicates.
            level = logging.DEBUG if self._retrying.is_set() else logging.WARNING
            self.log.log(level, "task record %r is already in MongoDB %s; its insert is skipped",
                         msg_id, self.url)
            return
        self.log.error("cannot write task record %r to MongoDB %s (%s); skipped", msg_id, self.url,
                       " ".join(str(error.get("errmsg", error)).split()))


@hookimpl
def cluster_launcher_register_dbs() -> list[type[BaseDB]]:
    return [MongoDB]
