"""SQLiteDB: task history in a SQLite file, kept across controller restarts.

Every task record is one row of one table (``c.SQLiteDB.table``; by default
named after the controller's session, as IPython did, and kept by
``--reuse``).  The file is ``c.SQLiteDB.location``/``filename``, by default
``tasks.db`` in the profile's folder.

How it stays off the controller's hot path: the controller's writes are
encoded in its thread (cheap) and applied by one writer thread
(:class:`~cluster_launcher.db.writer.BatchWriter`), in batches of one
transaction each, in WAL mode, so a slow disk delays nothing but the
results waiting for their record.  That wait is the durability promise: a
result goes to its client only after the transaction holding its record has
committed.  With ``synchronous = 'NORMAL'`` (the default) a committed
transaction survives the controller being killed; ``'FULL'`` makes it
survive a power cut too, at the price of an fsync per batch.  The
controller's thread asks the file nothing while routing: an update is for a
record it added (kept in memory until the record has its result), and a
duplicate msg_id is refused from the table's latest ids, kept in memory.

Storage: times are integer microseconds since the epoch (exact, ordered,
indexable); dict fields are JSON text; buffer lists are one framed BLOB;
the other fields hold text, and anything else a peer put there (a number, a
list) is a tagged JSON BLOB, which never equals or orders with text.  Queries are translated to SQL where
SQL means exactly what :func:`cluster_launcher.db.matches` means, and the
rest of a query (conditions on dict fields, arguments of unusual types) is
checked in Python on the rows SQL found.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from traitlets import CaselessStrEnum, Float, Integer, Unicode

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

# Bumped when the table's layout changes; a table of another format is refused.
FORMAT = 1
META_TABLE = "cluster_launcher_tables"
JSON_FIELDS = ("header", "content", "result_header", "result_content")
COLUMNS = tuple(RECORD_FIELDS)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RECENT_LIMIT = 10_000  # msg_ids checked for duplicates in memory (about 1 MB)
_OPEN_TIMEOUT = 2.0  # seconds to wait for a lock held by another process when opening


# --- values in and out ------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    # Headers are JSON already; these keep the odd datetime or bytes a plugin adds.
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "__datetime__" in obj:
            return datetime.fromisoformat(obj["__datetime__"])
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
    return obj


def _encode_time(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"task record field {field!r} must be a timezone-aware datetime or None, not {value!r}")
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _decode_time(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


def _encode_buffers(buffers: Any) -> list[Any] | None:
    """The buffers, shared (not copied: this runs in the controller's thread)."""
    return None if buffers is None else list(buffers)


def _frame_buffers(buffers: list[Any] | None) -> bytes | None:
    """One BLOB for a list of buffers: count, lengths, then the bytes (in the writer's thread)."""
    if buffers is None:
        return None
    views = [memoryview(b).cast("B") if not isinstance(b, str) else memoryview(b.encode()) for b in buffers]
    return b"".join([struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views)), *views])


def _unframe_buffers(blob: bytes | None) -> list[bytes] | None:
    if blob is None:
        return None
    (count,) = struct.unpack_from("<I", blob)
    lengths = struct.unpack_from(f"<{count}Q", blob, 4)
    offset, buffers = 4 + 8 * count, []
    for length in lengths:
        buffers.append(blob[offset:offset + length])
        offset += length
    return buffers


_OTHER_VALUE = b"\x00cluster-launcher-json:"  # the tag of a non-text value in a text field


def _encode_value(field: str, value: Any) -> Any:
    if field in DATETIME_FIELDS:
        return _encode_time(value, field)
    if field in BUFFER_FIELDS:
        return _encode_buffers(value)
    if field in JSON_FIELDS:
        if value is None:
            return None
        try:
            return json.dumps(value, separators=(",", ":"), default=_json_default)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task record field {field!r} cannot be stored: {exc}") from None
    if isinstance(value, str):
        # A lone surrogate (a non-UTF-8 file name a task printed) cannot be stored as text: kept escaped.
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None:
        return None
    # Anything else in a text field (a number, a list a peer sent) is a tagged
    # BLOB: never equal to a text, and read back as it was.
    try:
        return _OTHER_VALUE + json.dumps(value, separators=(",", ":"), default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task record field {field!r} cannot be stored: {exc}") from None


def _decode_value(field: str, value: Any) -> Any:
    if field in DATETIME_FIELDS:
        return _decode_time(value)
    if field in BUFFER_FIELDS:
        return _unframe_buffers(value)
    if field in JSON_FIELDS and value is not None:
        return json.loads(value, object_hook=_json_object) if "__" in value else json.loads(value)
    if isinstance(value, bytes) and value.startswith(_OTHER_VALUE):
        return json.loads(value[len(_OTHER_VALUE):], object_hook=_json_object)
    return value


def _encode_record(record: dict[str, Any]) -> dict[str, Any]:
    return {field: _encode_value(field, value) for field, value in record.items()}


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# --- queries as SQL ---------------------------------------------------------------------

_SQL_ORDERING = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}


def _sql_argument(field: str, arg: Any) -> tuple[bool, Any]:
    """(whether SQL compares ``arg`` with the column as Python would, the SQL value)."""
    if field in DATETIME_FIELDS:
        return isinstance(arg, datetime), _encode_time(arg, field) if isinstance(arg, datetime) else None
    if field in JSON_FIELDS or field in BUFFER_FIELDS:
        return False, None
    return isinstance(arg, str), arg


def _sql_condition(field: str, op: str, arg: Any) -> tuple[str, list[Any]] | None:
    """``field op arg`` as SQL with the meaning of :func:`matches`, or None
    where SQL would mean something else (then Python decides)."""
    column = _quote(field)
    if op == "$exists":
        return f"{column} IS {'NOT ' if arg else ''}NULL", []
    if op in ("$eq", "$ne") and arg is None:
        return f"{column} IS {'NOT ' if op == '$ne' else ''}NULL", []
    if op in ("$in", "$nin"):
        values = [item for item in arg if item is not None]
        converted = [_sql_argument(field, item) for item in values]
        if not all(exact for exact, _ in converted):
            return None
        params = [value for _, value in converted]
        with_none = len(values) < len(arg)
        within = f"{column} IN ({', '.join('?' * len(params))})" if params else "0"
        if op == "$in":
            return (f"({within} OR {column} IS NULL)" if with_none else within), params
        # Python: None is "not in" a list without None.
        return (f"({column} IS NOT NULL AND NOT {within})" if with_none
                else f"({column} IS NULL OR NOT {within})"), params
    exact, value = _sql_argument(field, arg)
    if not exact:
        return None
    if op == "$eq":
        return f"{column} = ?", [value]
    if op == "$ne":
        return f"{column} IS NOT ?", [value]  # NULL is "not equal" too, as in Python
    # SQLite orders every number before every text; Python does not compare them at all.
    kind = "integer" if field in DATETIME_FIELDS else "text"
    return f"(typeof({column}) = '{kind}' AND {column} {_SQL_ORDERING[op]} ?)", [value]


def _translate(query: Query) -> tuple[str, list[Any], Query]:
    """The SQL WHERE clause and parameters for what SQL can decide of
    ``query`` (checked), and the rest of it, for Python."""
    clauses: list[str] = []
    params: list[Any] = []
    rest: Query = {}
    for field, condition in query.items():
        conditions = condition if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition) \
            else {"$eq": condition}
        for op, arg in conditions.items():
            sql = _sql_condition(field, op, arg)
            if sql is None:
                rest.setdefault(field, {})[op] = arg
            else:
                clauses.append(sql[0])
                params.extend(sql[1])
    return " AND ".join(clauses) or "1", params, rest


# --- the backend ------------------------------------------------------------------------


class SQLiteDB(WriteBehindDB):
    """Task records in a SQLite file: every record, kept across restarts."""

    persistent = True

    location = Unicode("", help="The folder of the SQLite file (default: the profile's folder).").tag(config=True)
    filename = Unicode("tasks.db", help="The SQLite file's name, in `location`.").tag(config=True)
    table = Unicode("", help="The table holding this controller's records.  Default: one named after the "
                    "controller's session (a new table per controller, kept by --reuse); name one, e.g. "
                    "'tasks', to see the history of earlier controllers too.").tag(config=True)
    synchronous = CaselessStrEnum(["OFF", "NORMAL", "FULL", "EXTRA"], default_value="NORMAL",
                                  help="SQLite's synchronous setting: NORMAL keeps committed records when the "
                                  "controller is killed; FULL also through a power cut or OS crash (an fsync "
                                  "per batch of writes).").tag(config=True)
    record_limit = Integer(0, min=0, help="Most finished records to keep; past it the finished ones submitted "
                           "longest ago are deleted (pending ones never are).  0: no limit.").tag(config=True)
    max_age = Float(0.0, min=0.0, help="Seconds a finished record is kept after it completed; older ones "
                    "are deleted.  0: forever.").tag(config=True)
    busy_timeout = Float(10.0, min=0.0, help="Seconds a write waits for another process's lock on the file "
                         "before it is retried.").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.table:
            self.table = "_" + (self.session or "cluster_launcher").replace("-", "_")
        self.path = os.path.abspath(os.path.join(self.location or self.profile_dir or ".", self.filename))
        self._table_sql = _quote(self.table)
        self._reader = self._open()
        self._check_or_create_table()
        self._writer_connection = self._connect(check_same_thread=False)
        self._writer_connection.execute(f"PRAGMA synchronous={self.synchronous}")
        self._closed = False
        self._unfinished: set[str] = set()  # added by us, no result yet: updates need no lookup
        # The table's latest msg_ids: a duplicate among them is refused at once,
        # with no query on the hot path.  An older one is refused by the unique
        # index when written (logged, and the new task's record is not kept).
        self._recent: dict[str, None] = dict.fromkeys(reversed([row[0] for row in self._reader.execute(
            f"SELECT msg_id FROM {self._table_sql} ORDER BY seq DESC LIMIT ?", (RECENT_LIMIT,))]))
        self._refused: set[str] = set()  # the writer's: msg_ids whose insert the unique index refused
        self._finished_since_retention = 0
        self._last_retention = time.monotonic()
        self.writer = BatchWriter(self._apply, target=self.path, log=self.log, hold_on_failure=True,
                                  merge=_merge, name=f"sqlite-writer-{self.filename}")

    # --- opening ------------------------------------------------------------------

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=_OPEN_TIMEOUT, isolation_level=None,
                                     check_same_thread=check_same_thread)
        connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return connection

    def _fail(self, what: str, exc: BaseException | None = None, advice: str = "") -> TaskDBError:
        cause = f" ({' '.join(str(exc).split())})" if exc is not None else ""
        return TaskDBError(f"SQLiteDB: {self.path}: {what}{cause}{'; ' + advice if advice else ''}")

    def _open(self) -> sqlite3.Connection:
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise self._fail("its folder does not exist", advice="create it, or set c.SQLiteDB.location to an "
                             "existing folder")
        existed = os.path.exists(self.path)
        try:
            connection = sqlite3.connect(self.path, timeout=_OPEN_TIMEOUT, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._fail("cannot be opened", exc, "check the path and its permissions, or set "
                             "c.SQLiteDB.location / c.SQLiteDB.filename") from None
        try:
            # A read first: a file that is not SQLite is refused before anything is written to it.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                self.log.warning("SQLiteDB: %s: WAL mode is not available here (journal mode %s): writes lock "
                                 "readers out while they commit", self.path, mode)
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            connection.execute("PRAGMA journal_size_limit=67108864")  # the WAL file shrinks back after bursts
        except sqlite3.DatabaseError as exc:
            connection.close()
            if not existed and os.path.exists(self.path) and os.path.getsize(self.path) == 0:
                os.remove(self.path)  # nothing half-written: no empty file left by a failed open
            text = str(exc).lower()
            if "not a database" in text or "malformed" in text:
                raise self._fail("is not a SQLite database", exc, "set c.SQLiteDB.filename to another file, "
                                 "or move this one away") from None
            if "locked" in text or "busy" in text:
                raise self._fail("is locked by another process", exc, "stop the process holding it (another "
                                 "controller?) or set c.SQLiteDB.filename to another file") from None
            if "readonly" in text or "unable to open" in text or "disk i/o" in text:
                raise self._fail("cannot be written", exc, "make it and its folder writable, or set "
                                 "c.SQLiteDB.location to a writable folder") from None
            raise self._fail("cannot be used", exc) from None
        return connection

    def _check_or_create_table(self) -> None:
        connection = self._reader
        try:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({self._table_sql})")]
            has_meta = bool(connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                               (META_TABLE,)).fetchone())
            recorded = connection.execute(f"SELECT format FROM {META_TABLE} WHERE name=?",
                                          (self.table,)).fetchone() if has_meta else None
        except sqlite3.DatabaseError as exc:
            raise self._fail(f"cannot read table {self.table!r}", exc) from None
        wanted = ["seq", *COLUMNS]
        if columns:
            if columns != wanted or recorded is None or recorded[0] != FORMAT:
                found = f"format {recorded[0]}" if recorded else f"columns {', '.join(columns[:4])}, ..."
                raise self._fail(f"table {self.table!r} was written by another program or version ({found}; "
                                 f"this one writes format {FORMAT})", advice="set c.SQLiteDB.table to another "
                                 "name, or c.SQLiteDB.filename to another file")
            return
        # Untyped columns: SQLite then converts nothing, so '5' and 5 stay different, as in Python.
        body = ", ".join(["seq INTEGER PRIMARY KEY", "msg_id NOT NULL UNIQUE",
                          *(_quote(c) for c in COLUMNS if c != "msg_id")])
        name = self.table.replace('"', "")
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (name TEXT PRIMARY KEY, format INTEGER, "
                               "created TEXT)")
            # IF NOT EXISTS: another controller may have created it since we looked.
            connection.execute(f"CREATE TABLE IF NOT EXISTS {self._table_sql} ({body})")
            for column in ("completed", "engine_uuid", "client_uuid"):
                connection.execute(f"CREATE INDEX IF NOT EXISTS {_quote(f'{name}_{column}')} "
                                   f"ON {self._table_sql} ({column})")
            connection.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?, ?)",
                               (self.table, FORMAT, datetime.now(timezone.utc).isoformat()))
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")  # all or nothing: no table without its indexes
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise self._fail("is locked by another process", exc, "stop the process holding it (another "
                                 "controller?) or set c.SQLiteDB.filename to another file") from None
            raise self._fail(f"cannot create table {self.table!r}", exc, "make the file and its folder "
                             "writable, or set c.SQLiteDB.location to a writable folder") from None

    # --- writing (the controller's thread: check, encode, queue) --------------------

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Queue a new record; a msg_id already stored is a KeyError."""
        check_record(record)
        if record.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"task record for {msg_id!r} has msg_id {record['msg_id']!r}")
        if msg_id in self._unfinished or msg_id in self._recent:
            raise KeyError(f"task record {msg_id!r} already exists")
        row = _encode_record({**record, "msg_id": msg_id})
        self.writer.put(("add", msg_id, row), key=msg_id)
        self._recent[msg_id] = None
        if len(self._recent) > RECENT_LIMIT:
            del self._recent[next(iter(self._recent))]
        if record.get("completed") is None and record.get("result_header") is None:
            self._unfinished.add(msg_id)

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Queue changes to a record; unknown ``msg_id`` is a KeyError."""
        check_record(changes, "task record update")
        if changes.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"cannot change the msg_id of task record {msg_id!r}")
        if msg_id not in self._unfinished and msg_id not in self._recent:
            self.writer.flush()
            if not self._stored(msg_id):
                raise KeyError(f"no task record {msg_id!r}")
        self.writer.put(("update", msg_id, _encode_record(changes)), key=msg_id)
        if changes.get("completed") is not None or changes.get("result_header") is not None:
            self._unfinished.discard(msg_id)

    def drop_record(self, msg_id: str) -> None:
        """Delete one record; unknown ``msg_id`` is a KeyError."""
        self.writer.flush()
        if not self._stored(msg_id):
            raise KeyError(f"no task record {msg_id!r}")
        self._delete([msg_id])

    def drop_matching_records(self, query: Query) -> None:
        """Delete every record matching ``query``."""
        check_query(query)
        msg_ids = [record["msg_id"] for record in self.find_records(query, keys=[])]
        if msg_ids:
            self._delete(msg_ids)

    def _delete(self, msg_ids: list[str]) -> None:
        self.writer.put(("delete", None, msg_ids))
        self.writer.flush(what="delete task records")
        for msg_id in msg_ids:
            self._unfinished.discard(msg_id)
            self._recent.pop(msg_id, None)

    # --- reading (the controller's thread, after the writer caught up) -------------

    def _stored(self, msg_id: str) -> bool:
        sql = f"SELECT 1 FROM {self._table_sql} WHERE msg_id = ?"
        return self._reader.execute(sql, (msg_id,)).fetchone() is not None

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """The whole record; unknown ``msg_id`` is a KeyError."""
        self.writer.flush()
        records = self._select("msg_id = ?", [msg_id], list(COLUMNS))
        if not records:
            raise KeyError(f"no task record {msg_id!r}")
        return records[0]

    def find_records(self, query: Query, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Records matching ``query``, in submission order, with only ``keys`` (and msg_id) if given."""
        check_query(query)
        projection = check_keys(keys)
        where, params, rest = _translate(query)
        self.writer.flush()
        wanted = list(COLUMNS) if projection is None else projection
        columns = wanted if not rest else list(dict.fromkeys([*wanted, *rest]))
        records = self._select(where, params, columns)
        if rest:
            records = [record for record in records if matches(record, rest)]
            if projection is not None:
                records = [{key: record[key] for key in projection} for record in records]
        return records

    def get_history(self) -> list[str]:
        """Every stored msg_id, in submission order."""
        self.writer.flush()
        return [row[0] for row in self._reader.execute(f"SELECT msg_id FROM {self._table_sql} ORDER BY seq")]

    def _select(self, where: str, params: list[Any], columns: list[str]) -> list[dict[str, Any]]:
        # '+seq' keeps SQLite from walking the whole table in seq order to avoid
        # a sort: with a condition, the index on its field finds the few rows first.
        order = "seq" if where == "1" else "+seq"
        sql = (f"SELECT {', '.join(_quote(c) for c in columns)} FROM {self._table_sql} "
               f"WHERE {where} ORDER BY {order}")
        try:
            rows = self._reader.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._fail("cannot be read", exc) from None
        return [{column: _decode_value(column, value) for column, value in zip(columns, row, strict=True)}
                for row in rows]

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, run the callbacks that became due, close the file."""
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        if self.writer.stopped:  # else the thread may still use its connection
            self._writer_connection.close()
        self._reader.close()

    # --- the writer's thread ----------------------------------------------------------

    def _apply(self, ops: list[tuple[Any, ...]]) -> None:
        """Apply ``ops`` in one transaction (called by the BatchWriter).  It
        raises only for what may pass (the file busy, locked, full: SQLite's
        OperationalError), and then has changed nothing; an operation that can
        never succeed (a value SQLite refuses) is logged and left out."""
        connection = self._writer_connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            finished = 0
            for op in ops:
                try:
                    finished += self._apply_one(connection, op)
                except sqlite3.OperationalError:
                    raise
                except (sqlite3.Error, ValueError, OverflowError) as exc:  # this record only, never the batch
                    self.log.error("SQLiteDB: %s: task record %r cannot be stored (%s: %s); it is left out",
                                   self.path, op[1], type(exc).__name__, exc)
            finished_since = self._apply_retention(connection, self._finished_since_retention + finished)
            connection.execute("COMMIT")
            self._finished_since_retention = finished_since  # counted once, whatever retries there were
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _apply_one(self, connection: sqlite3.Connection, op: tuple[Any, ...]) -> int:
        """Apply one operation; the number of records it finished (for retention)."""
        kind, msg_id = op[0], op[1]
        if kind == "add":
            row = op[2]
            insert = (f"INSERT INTO {self._table_sql} ({', '.join(_quote(c) for c in COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(COLUMNS))})")
            try:
                connection.execute(insert, [_stored_value(c, row.get(c)) for c in COLUMNS])
            except sqlite3.IntegrityError:
                self.log.error("SQLiteDB: %s: task record %r is already stored; the new task's record is "
                               "not kept", self.path, msg_id)
                self._refused.add(msg_id)
                return 0
            return int(row.get("completed") is not None)
        if kind == "update":
            if msg_id in self._refused:  # the new task's, not the stored record's
                return 0
            changes = op[2]
            assignments = ", ".join(f"{_quote(c)} = ?" for c in changes)
            connection.execute(f"UPDATE {self._table_sql} SET {assignments} WHERE msg_id = ?",
                               [*(_stored_value(c, v) for c, v in changes.items()), msg_id])
            return int(changes.get("completed") is not None)
        for start in range(0, len(op[2]), 500):  # delete
            chunk = op[2][start:start + 500]
            connection.execute(f"DELETE FROM {self._table_sql} WHERE msg_id IN ({', '.join('?' * len(chunk))})",
                               chunk)
        return 0

    def _apply_retention(self, connection: sqlite3.Connection, finished_since: int) -> int:
        """Delete what ``record_limit``/``max_age`` say to, within the writer's
        transaction, now and then: every tenth of the limit, or every few
        seconds for the age.  Returns the finished records counted towards the
        next count check."""
        if self.record_limit and finished_since >= max(1, self.record_limit // 10):
            finished_since = 0
            cutoff = connection.execute(
                f"SELECT seq FROM {self._table_sql} WHERE completed IS NOT NULL ORDER BY seq DESC "
                "LIMIT 1 OFFSET ?", (self.record_limit,)).fetchone()
            if cutoff is not None:
                deleted = connection.execute(f"DELETE FROM {self._table_sql} WHERE completed IS NOT NULL "
                                             "AND seq <= ?", cutoff).rowcount
                self.log.info("SQLiteDB: deleted %d finished task records past record_limit=%d", deleted,
                              self.record_limit)
        if self.max_age and time.monotonic() - self._last_retention >= min(5.0, self.max_age):
            self._last_retention = time.monotonic()
            oldest = _encode_time(datetime.now(timezone.utc) - timedelta(seconds=self.max_age), "completed")
            deleted = connection.execute(f"DELETE FROM {self._table_sql} WHERE completed < ?", (oldest,)).rowcount
            if deleted:
                self.log.info("SQLiteDB: deleted %d task records that completed over max_age=%gs ago",
                              deleted, self.max_age)
        return finished_since


def _stored_value(column: str, value: Any) -> Any:
    """A queued value as SQLite stores it (buffers are framed here, in the writer's thread)."""
    return _frame_buffers(value) if column in BUFFER_FIELDS else value


def _merge(queued: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """An update folded into the queued insert or update of the same record."""
    if new[0] != "update" or queued[0] not in ("add", "update"):
        return None
    return (queued[0], queued[1], {**queued[2], **new[2]})


@hookimpl
def cluster_launcher_register_dbs() -> list[type[BaseDB]]:
    return [SQLiteDB]
