"""Results of submitted tasks: :class:`AsyncResult` and :class:`AsyncMapResult`.

A :class:`TaskState` is the client's record of one task (one ``apply``
message).  The client's IO thread fills it in from the task's ``stream`` and
``apply_reply`` messages; an AsyncResult is a view over one or more of them.
Waiting uses one condition variable per client (the IO thread notifies once
per batch of messages), so a task costs no thread or event of its own.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from .. import error as errors
from ..protocol import bulk
from ..protocol.serialize import deserialize
from ..protocol.session import parse_time

_UNSET = object()

# The ``kind`` of an ``apply_reply`` error names the exception the client raises.
ERROR_KINDS: dict[str, type[errors.RemoteError]] = {
    "remote": errors.RemoteError,
    "engine": errors.EngineError,
    "lost": errors.TaskLost,
    "aborted": errors.TaskAborted,
    "timeout": errors.TaskTimeout,
    "dependency": errors.DependencyError,
}


class Metadata(dict):
    """One task's metadata: a dict whose keys are also attributes
    (``md.engine_id`` is ``md['engine_id']``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class MetadataList(list):
    """The metadata of several tasks; an attribute gives that field of every
    task (``ar.metadata.engine_id`` -> ``[0, 1, …]``)."""

    def __getattr__(self, key: str) -> list:
        if key.startswith("__"):
            raise AttributeError(key)
        return [md[key] for md in self]


def new_metadata(msg_id: str, submitted: datetime | None) -> Metadata:
    return Metadata(msg_id=msg_id, engine_id=None, engine_uuid=None, submitted=submitted,
                    started=None, completed=None, received=None, status=None, error=None,
                    stdout="", stderr="")


class TaskState:
    """What the client knows about one task.  Written by the IO thread only;
    ``done`` is set last, so a reader that sees it sees everything else."""

    __slots__ = ("__weakref__", "_value", "buffers", "bulk_refs", "done", "error", "metadata", "msg_id", "status")

    def __init__(self, msg_id: str, submitted: datetime | None):
        self.msg_id = msg_id
        self.done = False
        self.status: str | None = None
        self.buffers: list = []  # a successful reply's, until deserialized
        self._value: Any = _UNSET
        self.error: BaseException | dict | None = None
        self.metadata = new_metadata(msg_id, submitted)
        self.bulk_refs: list[dict] = []  # shared-memory files of the request, removed at the reply

    def add_stream(self, name: str, text: str) -> None:
        if name in ("stdout", "stderr"):
            self.metadata[name] += text

    def finish(self, header: dict[str, Any], buffers: list) -> None:
        """Record the task's ``apply_reply``."""
        md = self.metadata
        md["status"] = self.status = header.get("status", "error")
        md["engine_id"] = header.get("engine_id")
        md["engine_uuid"] = header.get("engine_uuid")
        if md["submitted"] is None:  # a result this client did not submit (get_result)
            md["submitted"] = parse_time(header.get("submitted"))
        md["started"] = parse_time(header.get("started"))
        md["completed"] = parse_time(header.get("completed"))
        md["received"] = datetime.now(timezone.utc)
        # The reply carries the full output; streams seen so far were a preview.
        if header.get("stdout") is not None:
            md["stdout"] = header["stdout"]
        if header.get("stderr") is not None:
            md["stderr"] = header["stderr"]
        if self.status == "ok":
            self.buffers = buffers
        else:
            md["error"] = self.error = header.get("error") or {
                "ename": "ProtocolError", "evalue": f"reply with status {self.status!r} and no error",
                "traceback": "", "kind": "remote"}
        self.done = True

    def discard_files(self) -> None:
        """Remove the request's shared-memory files an engine did not read."""
        for ref in self.bulk_refs:
            bulk.discard(ref)
        self.bulk_refs = []

    def fail_locally(self, exc: BaseException) -> None:
        """End a task the client gave up on (e.g. the client was closed)."""
        self.status = self.metadata["status"] = "error"
        self.error = self.metadata["error"] = exc
        self.done = True

    def is_done(self) -> bool:
        """Whether the task has finished (a predicate for :meth:`Waiter.wait_until`)."""
        return self.done

    def value(self) -> Any:
        """The finished task's return value (raises its error)."""
        if self.status != "ok":
            raise self.failure()
        if self._value is _UNSET:
            self._value = deserialize(self.buffers)
            self.buffers = []
        return self._value

    def exception(self) -> BaseException | None:
        if self.status == "ok" or not self.done:
            return None
        return self.failure()

    def failure(self) -> BaseException:
        """The error of a task that finished without success."""
        if isinstance(self.error, BaseException):
            return self.error
        if self.error is None:
            raise ValueError(f"task {self.msg_id} has not finished yet")
        return remote_error(self.error, self.metadata)


def remote_error(info: dict[str, Any], metadata: dict[str, Any] | None = None) -> errors.RemoteError:
    """The exception an ``apply_reply`` error describes."""
    cls = ERROR_KINDS.get(info.get("kind") or "remote", errors.RemoteError)
    engine_info = {"engine_id": info.get("engine_id", (metadata or {}).get("engine_id")),
                   "engine_uuid": (metadata or {}).get("engine_uuid"),
                   "msg_id": (metadata or {}).get("msg_id")}
    return cls(str(info.get("ename", "Error")), str(info.get("evalue", "")), str(info.get("traceback") or ""),
               engine_info)


class Waiter:
    """The condition every AsyncResult of one client waits on; the IO thread
    calls :meth:`notify` after each batch of messages."""

    def __init__(self) -> None:
        self.condition = threading.Condition()

    def notify(self) -> None:
        with self.condition:
            self.condition.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` holds (True) or ``timeout`` seconds pass
        (False).  ``None`` or a negative timeout waits for ever."""
        if predicate():
            return True
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self.condition:
            while not predicate():
                if deadline is None:
                    self.condition.wait(1.0)  # wake now and then so Ctrl-C works
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.condition.wait(remaining)
        return True


class AsyncResult:
    """The pending result of one or more tasks (as ipyparallel's AsyncResult).

    ``get()`` returns one value for a single task (``client[0].apply``, a
    load-balanced ``apply``), else a list in submission order.
    """

    def __init__(self, client: Any, tasks: list[TaskState], fname: str = "", single: bool = False,
                 waiter: Waiter | None = None):
        self._client = client
        self._tasks = tasks
        self._waiter = waiter or client._waiter
        self._single = single and len(tasks) == 1
        self._first_pending = 0  # tasks before this index are known to be done
        self.fname = fname

    # --- state ---------------------------------------------------------------

    @property
    def msg_ids(self) -> list[str]:
        return [t.msg_id for t in self._tasks]

    @property
    def msg_id(self) -> str:
        """The message id of a single-task result (the first one otherwise)."""
        return self._tasks[0].msg_id

    def _all_done(self) -> bool:
        tasks, i = self._tasks, self._first_pending
        while i < len(tasks) and tasks[i].done:
            i += 1
        self._first_pending = i
        return i == len(tasks)

    def ready(self) -> bool:
        """Whether every task has finished (successfully or not)."""
        return self._all_done()

    done = ready  # concurrent.futures spelling

    def wait(self, timeout: float | None = -1) -> bool:
        """Wait at most ``timeout`` seconds (``None`` or negative: for ever);
        return whether every task has finished."""
        return self._waiter.wait_until(self._all_done, timeout)

    def successful(self) -> bool:
        """Whether every task finished without error; ValueError if not all finished."""
        if not self._all_done():
            raise ValueError(f"{self!r} is not finished yet; call wait() or ready() first")
        return all(t.status == "ok" for t in self._tasks)

    @property
    def progress(self) -> int:
        """How many tasks have finished."""
        return sum(1 for t in self._tasks if t.done)

    @property
    def sent(self) -> bool:
        return True  # messages leave in the submitting call

    def __len__(self) -> int:
        return len(self._tasks)

    # --- results -------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        """The result(s); waits at most ``timeout`` seconds (``None``: for ever)
        and raises the builtin TimeoutError if they are not ready by then.  A
        failed task raises its RemoteError (a CompositeError when the result
        spans several tasks)."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self._describe()}: {self.progress}/{len(self._tasks)} tasks finished "
                               f"after {timeout} s")
        return self._collect()

    result = get  # concurrent.futures spelling

    @property
    def r(self) -> Any:
        """``get()``: the result, waiting for ever."""
        return self.get()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error the result would raise (None if every task succeeded),
        waiting at most ``timeout`` seconds (concurrent.futures' ``exception``)."""
        try:
            self.get(timeout)
        except TimeoutError:
            if not self._all_done():
                raise
            return None if self.successful() else self._failure()
        except BaseException as exc:
            return exc
        return None

    def _failure(self) -> BaseException:
        return next(t.failure() for t in self._tasks if t.status != "ok")

    def _collect(self) -> Any:
        if self._single:
            return self._tasks[0].value()
        self._raise_failures()
        return [t.value() for t in self._tasks]

    def _raise_failures(self) -> None:
        failures = [t.failure() for t in self._tasks if t.status != "ok"]
        if not failures:
            return
        local = [e for e in failures if not isinstance(e, errors.RemoteError)]
        if local:
            raise local[0]
        remote = [e for e in failures if isinstance(e, errors.RemoteError)]  # all of them
        raise errors.CompositeError(f"{len(failures)} of {len(self._tasks)} tasks of {self._describe()} failed",
                                    remote)

    def get_dict(self, timeout: float | None = None) -> dict[int, Any]:
        """Results keyed by engine id (one task per engine, as a DirectView apply)."""
        results = self.get(timeout)
        if self._single:
            results = [results]
        engine_ids = [t.metadata["engine_id"] for t in self._tasks]
        if len(set(engine_ids)) != len(engine_ids):
            raise ValueError(f"{self._describe()}: several tasks ran on one engine; get_dict needs one per engine")
        return dict(zip(engine_ids, results, strict=True))

    def __iter__(self) -> Iterator[Any]:
        if self._single:
            yield from self.get()
            return
        for task in self._tasks:
            self._waiter.wait_until(task.is_done, None)
            yield task.value()

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):  # a metadata field, as in ipyparallel
            return getattr(self.metadata, key)
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self._tasks)))]
        task = self._tasks[key]
        self._waiter.wait_until(lambda: task.done, None)
        return task.value()

    # --- metadata ------------------------------------------------------------

    @property
    def metadata(self) -> Metadata | MetadataList:
        """Per task: ``engine_id``, ``submitted``, ``started``, ``completed``,
        ``received`` (datetimes, UTC), ``stdout``, ``stderr``, ``status``,
        ``error``, ``msg_id``.  One dict for a single task, else a list."""
        if self._single:
            return self._tasks[0].metadata
        return MetadataList(t.metadata for t in self._tasks)

    @property
    def engine_id(self) -> int | list[int | None] | None:
        return self.metadata.engine_id

    @property
    def stdout(self) -> str | list[str]:
        return self.metadata.stdout

    @property
    def stderr(self) -> str | list[str]:
        return self.metadata.stderr

    @property
    def elapsed(self) -> float:
        """Seconds from the first submission to the last reply (or to now)."""
        submitted = [t.metadata["submitted"] for t in self._tasks if t.metadata["submitted"]]
        if not submitted:
            return 0.0
        end = (max(t.metadata["received"] for t in self._tasks) if self._all_done()
               else datetime.now(timezone.utc))
        return (end - min(submitted)).total_seconds()

    @property
    def wall_time(self) -> float:
        """Seconds from the first submission to the last completion (finished results)."""
        self._require_ready("wall_time")
        mds = [t.metadata for t in self._tasks]
        last = max(md["completed"] or md["received"] for md in mds)
        return (last - min(md["submitted"] for md in mds)).total_seconds()

    @property
    def serial_time(self) -> float:
        """Seconds the tasks computed, summed over tasks (finished results)."""
        self._require_ready("serial_time")
        return sum((md["completed"] - md["started"]).total_seconds()
                   for md in (t.metadata for t in self._tasks) if md["started"] and md["completed"])

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Print what the tasks printed, each block headed ``[stdout:<engine id>]``
        (stderr to sys.stderr).  ``groupby``: 'type' (all stdout, then all
        stderr), 'engine' (by engine id, both streams together) or 'order'
        (as submitted).  ``result_only``: print nothing (tasks here have no
        separate displayed results, only their output)."""
        if groupby not in ("type", "engine", "order"):
            raise ValueError(f"display_outputs: groupby is 'type', 'engine' or 'order', not {groupby!r}")
        if result_only:
            return
        mds = [t.metadata for t in self._tasks]
        if groupby == "engine":
            mds.sort(key=lambda md: (md["engine_id"] is None, md["engine_id"] or 0))
        blocks = ([(name, md) for name in ("stdout", "stderr") for md in mds] if groupby == "type"
                  else [(name, md) for md in mds for name in ("stdout", "stderr")])
        for name, md in blocks:
            text = md[name]
            if text:
                where = "" if md["engine_id"] is None else md["engine_id"]
                stream = sys.stdout if name == "stdout" else sys.stderr
                stream.write(f"[{name}:{where}] {text}" + ("" if text.endswith("\n") else "\n"))
                stream.flush()

    def _require_ready(self, what: str) -> None:
        if not self._all_done():
            raise ValueError(f"{self._describe()}.{what}: not finished yet")

    # --- control -------------------------------------------------------------

    def abort(self) -> None:
        """Abort the tasks not finished yet: queued ones are dropped, running
        ones interrupted (KeyboardInterrupt on the engine); they raise TaskAborted."""
        pending = [t.msg_id for t in self._tasks if not t.done]
        if pending:
            self._client.abort(pending)

    def wait_interactive(self, interval: float = 0.1, timeout: float = -1) -> bool:
        """Wait, drawing a progress bar on stdout every ``interval`` seconds;
        return whether every task finished within ``timeout`` (negative: no limit)."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        total, start, shown = len(self._tasks), time.monotonic(), -1
        while True:
            step = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            finished = self.wait(step)
            done = self.progress
            if done != shown or finished:
                sys.stdout.write("\r" + progress_bar(done, total, time.monotonic() - start))
                sys.stdout.flush()
                shown = done
            if finished or (deadline is not None and time.monotonic() >= deadline):
                sys.stdout.write("\n")
                sys.stdout.flush()
                return finished

    def _describe(self) -> str:
        name = f" {self.fname}" if self.fname else ""
        return f"AsyncResult{name}"

    def __repr__(self) -> str:
        state = "finished" if self._all_done() else f"{self.progress}/{len(self._tasks)} done"
        return f"<{type(self).__name__}({self.fname or '?'}): {state}>"


class AsyncMapResult(AsyncResult):
    """The result of a ``map``: each task returned a chunk (a list) of the
    output; ``get()`` joins them and iteration yields single items, in order
    or, with ``ordered=False``, as their chunks finish."""

    def __init__(self, client: Any, tasks: list[TaskState], fname: str = "", ordered: bool = True,
                 item_count: int | None = None, joiner: Callable[[list], Any] | None = None,
                 waiter: Waiter | None = None):
        super().__init__(client, tasks, fname, single=False, waiter=waiter)
        self.ordered = ordered
        self._item_count = item_count
        self._join = joiner or join_parts

    def _collect(self) -> Any:
        self._raise_failures()
        return self._join([t.value() for t in self._tasks])

    def __len__(self) -> int:
        return self._item_count if self._item_count is not None else len(self._tasks)

    def __iter__(self) -> Iterator[Any]:
        if self.ordered:
            for task in self._tasks:
                self._waiter.wait_until(task.is_done, None)
                yield from task.value()
            return
        pending = list(self._tasks)
        while pending:
            self._waiter.wait_until(functools.partial(any_done, pending), None)
            still = []
            for task in pending:
                if task.done:
                    yield from task.value()
                else:
                    still.append(task)
            pending = still

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return getattr(self.metadata, key)
        return self.get()[key]


def any_done(tasks: list[TaskState]) -> bool:
    return any(t.done for t in tasks)


def join_parts(parts: list) -> Any:
    """One sequence from the parts a map or gather returned: NumPy arrays are
    concatenated, strings joined, anything else flattened into a list."""
    if parts and all(type(p).__name__ == "ndarray" and type(p).__module__ == "numpy" for p in parts):
        import numpy
        return numpy.concatenate(parts)
    if parts and all(isinstance(p, str) for p in parts):
        return "".join(parts)
    joined: list = []
    for part in parts:
        joined.extend(part)
    return joined


def progress_bar(done: int, total: int, seconds: float, width: int = 30) -> str:
    """``[#########-----] 3/5 tasks, 1.2 s``."""
    filled = width if total == 0 else width * done // total
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} tasks, {seconds:.1f} s"
