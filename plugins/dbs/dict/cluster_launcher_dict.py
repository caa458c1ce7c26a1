"""In-memory task databases: DictDB (the default) and NoDB (no history).

DictDB keeps every record in a dict in submission order and bounds its
memory: past ``record_limit`` records or ``size_limit`` bytes of buffers it
drops the records that finished longest ago, never a pending one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from traitlets import Float, Integer

from cluster_launcher import hookimpl
from cluster_launcher.db import (
    BUFFER_FIELDS,
    RECORD_FIELDS,
    BaseDB,
    Query,
    check_keys,
    check_query,
    check_record,
    matches,
)


def _copy_value(value: Any) -> Any:
    """A copy the caller may mutate: containers are rebuilt, leaves (str,
    numbers, datetimes, bytes, memoryviews) are shared, so buffers are never
    copied."""
    if isinstance(value, dict):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_value(item) for item in value)
    return value


def _buffers_nbytes(buffers: Any) -> int:
    """Bytes held by a list of bytes-like buffers (None: none)."""
    total = 0
    for buffer in buffers or ():
        try:
            total += memoryview(buffer).nbytes
        except TypeError:  # a str, say: count it rather than fail the task
            total += len(buffer)
    return total


def _record_nbytes(record: dict[str, Any]) -> int:
    return sum(_buffers_nbytes(record.get(field)) for field in BUFFER_FIELDS)


def _is_finished(record: dict[str, Any]) -> bool:
    # A task with a result (or a completion time) is done: culling it loses
    # history only, never work the controller still tracks.
    return record.get("completed") is not None or record.get("result_header") is not None


class DictDB(BaseDB):
    """Task records in memory: fast, lost when the controller stops."""

    record_limit = Integer(1024, min=1, help="Most records to keep; past it the records that "
                           "finished longest ago are dropped (pending ones never are).").tag(config=True)
    size_limit = Integer(1024**3, min=0, help="Most bytes of task buffers (buffers and "
                         "result_buffers) to keep; past it finished records are dropped, "
                         "oldest first.").tag(config=True)
    cull_fraction = Float(0.1, min=0.0, max=1.0, help="When over a limit, drop this fraction of "
                          "the limit at once (so culling is rare), not just enough to fit; "
                          "0 drops only what is needed.").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._records: dict[str, dict[str, Any]] = {}  # insertion order = submission order
        self._nbytes: dict[str, int] = {}  # buffer bytes per record, for O(1) accounting
        self._total_nbytes = 0
        # Finished records in the order they finished: the cull order, so
        # culling pops from the front without scanning pending records.
        self._finished: dict[str, None] = {}
        # Recently culled msg_ids, so a lookup can say why the record is gone.
        self._culled: dict[str, None] = {}
        self._warned_uncullable = False

    # -- writing ---------------------------------------------------------

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Store a new record; a msg_id already stored is a KeyError."""
        check_record(record)
        if record.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"task record for {msg_id!r} has msg_id {record['msg_id']!r}")
        if msg_id in self._records:
            raise KeyError(f"task record {msg_id!r} already exists")
        stored = dict.fromkeys(RECORD_FIELDS)
        stored.update(_copy_value(record))
        stored["msg_id"] = msg_id
        self._records[msg_id] = stored
        self._culled.pop(msg_id, None)
        self._set_nbytes(msg_id, _record_nbytes(stored))
        if _is_finished(stored):
            self._finished[msg_id] = None
        self._cull_if_over_limits()

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the record; unknown ``msg_id`` is a KeyError."""
        check_record(changes, "task record update")
        if changes.get("msg_id", msg_id) != msg_id:
            raise ValueError(f"cannot change the msg_id of task record {msg_id!r}")
        stored = self._stored(msg_id)
        stored.update(_copy_value(changes))
        if any(field in changes for field in BUFFER_FIELDS):
            self._set_nbytes(msg_id, _record_nbytes(stored))
        if _is_finished(stored):
            self._finished.setdefault(msg_id, None)
        else:
            self._finished.pop(msg_id, None)
        self._cull_if_over_limits()

    def drop_record(self, msg_id: str) -> None:
        """Forget one record; unknown ``msg_id`` is a KeyError."""
        self._stored(msg_id)
        self._forget(msg_id)

    def drop_matching_records(self, query: Query) -> None:
        """Forget every record matching ``query``."""
        check_query(query)
        for msg_id in [m for m, record in self._records.items() if matches(record, query)]:
            self._forget(msg_id)

    # -- reading ---------------------------------------------------------

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """A copy of the whole record; unknown ``msg_id`` is a KeyError."""
        return _copy_value(self._stored(msg_id))

    def find_records(self, query: Query, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Copies of the records matching ``query`` in submission order, each
        with only ``keys`` (plus ``msg_id``) when given."""
        check_query(query)
        projection = check_keys(keys)
        found = []
        for record in self._records.values():
            if matches(record, query):
                if projection is not None:
                    record = {key: record[key] for key in projection}
                found.append(_copy_value(record))
        return found

    def get_history(self) -> list[str]:
        """Every stored msg_id, in submission order."""
        return list(self._records)

    # -- internals -------------------------------------------------------

    def _stored(self, msg_id: str) -> dict[str, Any]:
        try:
            return self._records[msg_id]
        except KeyError:
            if msg_id in self._culled:
                raise KeyError(f"task record {msg_id!r} was dropped to stay within "
                               "DictDB.record_limit/size_limit (use SQLiteDB to keep "
                               "all history)") from None
            raise KeyError(f"no task record {msg_id!r}") from None

    def _set_nbytes(self, msg_id: str, nbytes: int) -> None:
        self._total_nbytes += nbytes - self._nbytes.get(msg_id, 0)
        self._nbytes[msg_id] = nbytes

    def _forget(self, msg_id: str) -> None:
        del self._records[msg_id]
        self._total_nbytes -= self._nbytes.pop(msg_id)
        self._finished.pop(msg_id, None)

    def _cull_if_over_limits(self) -> None:
        over_count = len(self._records) > self.record_limit
        over_size = self._total_nbytes > self.size_limit
        if not (over_count or over_size):
            self._warned_uncullable = False
            return
        # Culling goes below the limit by a margin, so that it happens once
        # per cull_fraction of the limit rather than on every new task.
        count_target = self.record_limit - int(self.record_limit * self.cull_fraction)
        size_target = self.size_limit - int(self.size_limit * self.cull_fraction)
        before_count, before_nbytes = len(self._records), self._total_nbytes
        culled = 0

        def still_culling() -> bool:
            return ((over_count and len(self._records) > count_target)
                    or (over_size and self._total_nbytes > size_target))

        while self._finished and still_culling():
            oldest = next(iter(self._finished))
            self._forget(oldest)
            self._remember_culled(oldest)
            culled += 1
        if culled:
            self.log.info("DictDB culled %d finished task records (%d records, %d buffer bytes -> "
                          "%d records, %d bytes; record_limit=%d, size_limit=%d)", culled,
                          before_count, before_nbytes, len(self._records), self._total_nbytes,
                          self.record_limit, self.size_limit)
        still_over = len(self._records) > self.record_limit or self._total_nbytes > self.size_limit
        if still_over and not self._warned_uncullable:
            self._warned_uncullable = True
            self.log.warning("DictDB is over its limits (%d records, %d buffer bytes; "
                             "record_limit=%d, size_limit=%d) but the rest are pending tasks, "
                             "which are never dropped", len(self._records), self._total_nbytes,
                             self.record_limit, self.size_limit)

    def _remember_culled(self, msg_id: str) -> None:
        self._culled[msg_id] = None
        if len(self._culled) > self.record_limit:  # bounded, like the records themselves
            del self._culled[next(iter(self._culled))]


class NoDB(BaseDB):
    """No task history (``--nodb``): nothing is stored, lookups fail clearly."""

    stores_records = False

    def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
        """Store nothing."""

    def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
        """Store nothing."""

    def get_record(self, msg_id: str) -> dict[str, Any]:
        """Always a KeyError: there is no history to read."""
        raise KeyError(f"no task record {msg_id!r}: task history is disabled (--nodb, "
                       "c.Controller.db_class='NoDB')")

    def drop_record(self, msg_id: str) -> None:
        """Nothing to drop."""

    def drop_matching_records(self, query: Query) -> None:
        """Nothing to drop (the query is still checked)."""
        check_query(query)

    def find_records(self, query: Query, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Always empty (the query and keys are still checked)."""
        check_query(query)
        check_keys(keys)
        return []

    def get_history(self) -> list[str]:
        """Always empty."""
        return []


@hookimpl
def cluster_launcher_register_dbs() -> list[type[BaseDB]]:
    return [DictDB, NoDB]
