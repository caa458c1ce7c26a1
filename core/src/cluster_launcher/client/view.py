"""Views: how work is submitted (as ipyparallel's DirectView and
LoadBalancedView).

A :class:`DirectView` sends each call to every one of its engines (queue
"mux"); a :class:`LoadBalancedView` sends each call once and the controller
picks the engine (queue "task").  ``execute``/``push``/``pull``/``scatter``/
``gather`` are ``apply`` calls of the small functions in
:mod:`cluster_launcher.protocol.remote`, which run on the engine in its
user namespace.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import remote
from ..protocol.serialize import pack_apply
from .asyncresult import AsyncMapResult, AsyncResult, TaskState, any_done, join_parts

if TYPE_CHECKING:
    from .client import Client


def msg_ids_of(jobs: Any) -> list[str]:
    """Message ids from a msg id, an AsyncResult, or a list of either (None: [])."""
    if jobs is None:
        return []
    if isinstance(jobs, str):
        return [jobs]
    if isinstance(jobs, AsyncResult):
        return jobs.msg_ids
    ids: list[str] = []
    for job in jobs:
        if isinstance(job, str):
            ids.append(job)
        elif isinstance(job, AsyncResult):
            ids.extend(job.msg_ids)
        else:
            raise TypeError(f"expected a msg id or an AsyncResult, not {type(job).__name__} ({job!r})")
    return ids


def with_references(f: Callable, args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    """The call to send for ``f(*args, **kwargs)``: when an argument is a
    :class:`~cluster_launcher.protocol.remote.Reference`, a wrapper that
    resolves it on the engine first."""
    if remote.has_references(args, kwargs):
        return remote.call_with_references, (f, args, kwargs), {}
    return f, args, kwargs


def partition(length: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering ``range(length)``,
    sizes differing by at most one (earlier ranges are the longer ones)."""
    base, extra = divmod(length, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def checked_seconds(value: Any, flag: str) -> float | None:
    """A flag that is a number of seconds: ``value`` if it is None or a finite
    number >= 0; else a one-line ValueError naming ``flag``."""
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value) or value < 0):
        raise ValueError(f"{flag}: a finite number of seconds >= 0, or None; not {value!r}")
    return value


def _as_sequences(seqs: Sequence[Any]) -> tuple[list[Any], int]:
    if not seqs:
        raise TypeError("map() needs at least one sequence")
    seqs = [s if hasattr(s, "__getitem__") and hasattr(s, "__len__") else list(s) for s in seqs]
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"map(): the sequences differ in length ({sorted(lengths)})")
    return seqs, lengths.pop()


class View:
    """What both views share: flags, blocking, map."""

    _flag_names: tuple[str, ...] = ("block", "time_limit")

    def __init__(self, client: Client, targets: Any):
        self.client = client
        self.targets = targets
        self.block = False
        # Seconds each task may run before its engine interrupts it (TaskTimeout); None: no limit.
        self.time_limit: float | None = None

    # --- flags -----------------------------------------------------------------

    def set_flags(self, **flags: Any) -> None:
        """Set flags (``block``, ``time_limit``, and for load-balanced views
        ``retries``, ``after``, ``follow``, ``timeout``, ``expected_runtime``,
        ``targets``)."""
        for name, value in flags.items():
            if name not in self._flag_names:
                raise KeyError(f"{type(self).__name__}.set_flags: unknown flag {name!r} "
                               f"(flags: {', '.join(self._flag_names)})")
            if name == "time_limit":
                checked_seconds(value, f"{type(self).__name__}.time_limit")
        for name, value in flags.items():
            setattr(self, name, value)

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[View]:
        """Set flags for the duration of a ``with`` block."""
        saved = {name: getattr(self, name) for name in flags if name in self._flag_names}
        self.set_flags(**flags)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    # --- apply -----------------------------------------------------------------

    def apply(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` remotely; an AsyncResult, or the result
        itself if ``self.block``."""
        return self._apply(f, args, kwargs, self.block)

    def apply_async(self, f: Callable, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply`` that always returns an AsyncResult."""
        return self._apply(f, args, kwargs, False)

    def apply_sync(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        """``apply`` that waits and returns the result."""
        return self._apply(f, args, kwargs, True)

    def _apply(self, f: Callable, args: tuple, kwargs: dict, block: bool) -> Any:
        raise NotImplementedError

    def map(self, f: Callable, *sequences: Any, block: bool | None = None, **flags: Any) -> Any:
        """``f`` over the items of ``sequences`` in parallel (as builtin ``map``);
        an AsyncMapResult, or the list of results if blocking.  The view's flags
        (``time_limit=...``) may be given for this call."""
        return self._map_with_flags(f, sequences, self.block if block is None else block, flags)

    def map_async(self, f: Callable, *sequences: Any, **flags: Any) -> AsyncMapResult:
        return self._map_with_flags(f, sequences, False, flags)

    def map_sync(self, f: Callable, *sequences: Any, **flags: Any) -> list:
        return self._map_with_flags(f, sequences, True, flags)

    def _map_with_flags(self, f: Callable, sequences: tuple, block: bool, options: dict[str, Any]) -> Any:
        """``_map`` with the view's flags among ``options`` set for this call only."""
        flags = {name: options.pop(name) for name in list(options) if name in self._flag_names and name != "block"}
        with self.temp_flags(**flags):
            return self._map(f, sequences, block, **options)

    def _map(self, f: Callable, sequences: tuple, block: bool, **flags: Any) -> Any:
        raise NotImplementedError

    def imap(self, f: Callable, *sequences: Any, **flags: Any) -> Iterator[Any]:
        """The results of ``map`` one by one, as they are needed."""
        return iter(self.map_async(f, *sequences, **flags))

    def abort(self, jobs: Any = None) -> list[str]:
        """Abort tasks, queued or running (see :meth:`Client.abort`)."""
        return self.client.abort(jobs, targets=self.targets if isinstance(self, DirectView) else None)

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for ``jobs`` (default: everything this client has outstanding);
        return whether they finished within ``timeout`` seconds (negative: no limit)."""
        return self.client.wait(jobs, timeout)

    def spin(self) -> None:
        """Nothing to do: the client's IO thread reads replies as they arrive
        (kept so ipyparallel code that calls it runs)."""

    def _own_targets(self, targets: Any) -> Any:
        return self.targets if targets is None else targets

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None) -> Any:
        """:meth:`Client.get_result`, blocking as this view does by default."""
        return self.client.get_result(indices_or_msg_ids, block=self.block if block is None else block)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict[Any, Any]:
        """:meth:`Client.queue_status` of this view's engines (or ``targets``)."""
        return self.client.queue_status(self._own_targets(targets), verbose)

    def purge_results(self, jobs: Any = (), targets: Any = None) -> None:
        """:meth:`Client.purge_results`: ``jobs``, and/or the tasks that ran on ``targets``."""
        self.client.purge_results(jobs, targets)

    def shutdown(self, targets: Any = None, hub: bool = False, block: bool | None = None) -> None:
        """Stop this view's engines (or ``targets``) and, with ``hub``, the controller."""
        own = self._own_targets(targets)
        self.client.shutdown("all" if own is None else own, hub=hub,
                             block=True if block is None else block)

    # --- decorators --------------------------------------------------------------

    def remote(self, block: bool | None = None, **flags: Any) -> Callable[[Callable], RemoteFunction]:
        """Decorator: calling the function runs it through this view (``apply``),
        with ``block`` and the view's other ``flags`` set for each call."""
        def decorate(f: Callable) -> RemoteFunction:
            return RemoteFunction(self, f, block, flags)
        return decorate

    def parallel(self, dist: str = "b", block: bool | None = None, **flags: Any) -> Callable[[Callable],
                                                                                          ParallelFunction]:
        """Decorator: calling the function with sequences calls it once per
        engine on a contiguous part of each (``dist='b'``) and joins the
        returned parts; ``.map(*sequences)`` calls it on each item."""
        if dist != "b":
            raise ValueError(f"parallel: dist={dist!r} is not supported; only 'b' (contiguous blocks)")

        def decorate(f: Callable) -> ParallelFunction:
            return ParallelFunction(self, f, block, flags)
        return decorate


class DirectView(View):
    """Runs every call on each of its engines (``client[:]``, ``client[0]``).

    A single int target gives single results; a list gives lists ordered as
    the targets.  ``view['a'] = 1`` pushes, ``view['a']`` pulls.
    """

    def __repr__(self) -> str:
        return f"<DirectView {self.targets!r}>"

    def _engine_ids(self, targets: Any = None) -> list[int]:
        return self.client._resolve_targets(self.targets if targets is None else targets)

    def _single(self, targets: Any = None) -> bool:
        return isinstance(self.targets if targets is None else targets, int)

    def _submit(self, buffers: list, engine_ids: list[int]) -> list[TaskState]:
        """One task per engine of ``engine_ids``, with this view's ``time_limit``."""
        time_limit = checked_seconds(self.time_limit, "DirectView.time_limit")
        return self.client._submit(buffers, "mux", engine_ids, time_limit=time_limit)

    def _apply(self, f: Callable, args: tuple, kwargs: dict, block: bool, targets: Any = None) -> Any:
        tasks = self._submit(pack_apply(*with_references(f, args, kwargs)), self._engine_ids(targets))
        ar = AsyncResult(self.client, tasks, fname=getattr(f, "__name__", ""), single=self._single(targets))
        return ar.get() if block else ar

    def _map(self, f: Callable, sequences: tuple, block: bool, **flags: Any) -> Any:
        if flags:
            raise TypeError(f"DirectView.map: unexpected arguments {', '.join(flags)}")
        seqs, length = _as_sequences(sequences)
        engine_ids = self._engine_ids()
        tasks = []
        for engine_id, (start, stop) in zip(engine_ids, partition(length, len(engine_ids)), strict=False):
            chunks = [s[start:stop] for s in seqs]
            tasks += self._submit(pack_apply(remote.map_chunk, (f, *chunks), {}), [engine_id])
        ar = AsyncMapResult(self.client, tasks, fname=getattr(f, "__name__", ""), item_count=length)
        return ar.get() if block else ar

    def _call(self, helper: Callable, args: tuple, block: bool | None, targets: Any) -> Any:
        return self._apply(helper, args, {}, self.block if block is None else block, targets)

    def execute(self, code: str, block: bool | None = None, targets: Any = None) -> Any:
        """Run ``code`` (a string of Python) in each engine's namespace."""
        return self._call(remote.execute, (code,), block, targets)

    def activate(self, suffix: str = "") -> None:
        """Make this view the one the ``%px<suffix>`` magics use in the running IPython."""
        # Imported on use: the magics need IPython, which a client otherwise does not.
        importlib.import_module(".magics", __package__).activate(self, suffix)

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty each engine's namespace: every name pushed, defined or imported there is gone."""
        return self._call(remote.clear, (), block, targets)

    def run(self, filename: str, block: bool | None = None, targets: Any = None) -> Any:
        """Run the Python file ``filename`` (read here) in each engine's namespace."""
        with open(filename, encoding="utf-8") as f:
            code = f.read()
        return self._call(remote.execute, (code, filename), block, targets)

    def push(self, namespace: dict[str, Any], block: bool | None = None, targets: Any = None) -> Any:
        """Copy the names and values of ``namespace`` into each engine's namespace."""
        if not isinstance(namespace, dict):
            raise TypeError(f"push() takes a dict of names to values, not {type(namespace).__name__}")
        return self._call(remote.push, (namespace,), block, targets)

    def pull(self, names: str | Sequence[str], block: bool | None = None, targets: Any = None) -> Any:
        """The value of ``names`` (one name, or a list of names) on each engine."""
        return self._call(remote.pull, (names if isinstance(names, str) else list(names),), block, targets)

    def scatter(self, name: str, seq: Sequence[Any], block: bool | None = None, targets: Any = None,
                flatten: bool = False) -> Any:
        """Split ``seq`` in contiguous parts, one per engine, stored as ``name``;
        with ``flatten``, one-item parts are stored as the item itself."""
        block = self.block if block is None else block
        (seq,), length = _as_sequences([seq])
        engine_ids = self._engine_ids(targets)
        tasks = []
        for engine_id, (start, stop) in zip(engine_ids, partition(length, len(engine_ids)), strict=False):
            part = seq[start:stop]
            if flatten and stop - start == 1:
                part = part[0]
            tasks += self._submit(pack_apply(remote.push, ({name: part},), {}), [engine_id])
        ar = AsyncResult(self.client, tasks, fname="scatter")
        if block:
            ar.get()
        return None if block else ar

    def gather(self, name: str, block: bool | None = None, targets: Any = None) -> Any:
        """``name`` from each engine, joined into one sequence (the inverse of scatter)."""
        block = self.block if block is None else block
        engine_ids = self._engine_ids(targets)
        tasks = self._submit(pack_apply(remote.pull, (name,), {}), engine_ids)
        ar = AsyncMapResult(self.client, tasks, fname="gather", joiner=_join_gathered)
        return ar.get() if block else ar

    def __setitem__(self, name: str, value: Any) -> None:
        self.push({name: value}, block=True)

    def __getitem__(self, name: str) -> Any:
        return self.pull(name, block=True)

    def update(self, namespace: dict[str, Any]) -> Any:
        return self.push(namespace)

    def get(self, name: str) -> Any:
        return self[name]

    @contextlib.contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Import modules here and on the engines at once::

            with view.sync_imports():
                import numpy

        ``import a.b`` binds ``a``, ``from a import b`` binds ``b`` on the
        engines; ``import a as x`` binds ``a`` there (the alias is not seen).
        """
        original_import = builtins.__import__
        owner = threading.get_ident()
        depth = [0]

        def synced_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                          level: int = 0) -> Any:
            outermost = depth[0] == 0 and threading.get_ident() == owner and level == 0
            depth[0] += 1
            try:
                module = original_import(name, globals, locals, fromlist, level) if local else None
            finally:
                depth[0] -= 1
            if outermost:
                if not quiet:
                    what = f"{', '.join(fromlist)} from {name}" if fromlist else name
                    print(f"importing {what} on engine(s)")
                depth[0] += 1  # imports made while sending are not the user's
                try:
                    self.apply_sync(remote.import_names, name, tuple(fromlist or ()))
                finally:
                    depth[0] -= 1
            return module

        builtins.__import__ = synced_import
        try:
            yield
        finally:
            builtins.__import__ = original_import


class LoadBalancedView(View):
    """Sends each call once; the controller's scheduler picks the engine.

    Flags: ``retries`` (times a task whose engine died is rerun elsewhere),
    ``after`` / ``follow`` (msg ids or AsyncResults that must finish first /
    whose engine must run this task), ``timeout`` (seconds the task may wait
    for its dependencies), ``expected_runtime`` (seconds the task expects to
    run: it goes only to an engine whose batch job's walltime leaves it that
    long; None: any engine), ``targets`` (the engines allowed; None: any),
    ``time_limit`` (seconds the task may run before its engine interrupts it
    and it fails with TaskTimeout; None: no limit).
    """

    _flag_names = ("block", "retries", "after", "follow", "timeout", "expected_runtime", "targets", "time_limit")

    def __init__(self, client: Client, targets: Any = None):
        super().__init__(client, targets)
        self.retries = 0
        self.after: Any = None
        self.follow: Any = None
        self.timeout: float | None = None
        self.expected_runtime: float | None = None

    def __repr__(self) -> str:
        return f"<LoadBalancedView targets={self.targets!r}>"

    def _task_options(self) -> dict[str, Any]:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"LoadBalancedView.retries: a count >= 0, not {self.retries!r}")
        for name in ("timeout", "expected_runtime", "time_limit"):
            checked_seconds(getattr(self, name), f"LoadBalancedView.{name}")
        targets = None if self.targets is None else self.client._resolve_targets(self.targets)
        return {"targets": targets, "after": msg_ids_of(self.after), "follow": msg_ids_of(self.follow),
                "timeout": self.timeout, "retries": self.retries, "expected_runtime": self.expected_runtime,
                "time_limit": self.time_limit}

    def _send_task(self, buffers: list) -> list:
        options = self._task_options()
        targets = options.pop("targets")
        return self.client._submit(buffers, "task", targets, **options)

    def _apply(self, f: Callable, args: tuple, kwargs: dict, block: bool) -> Any:
        tasks = self._send_task(pack_apply(*with_references(f, args, kwargs)))
        ar = AsyncResult(self.client, tasks, fname=getattr(f, "__name__", ""), single=True)
        return ar.get() if block else ar

    def _map(self, f: Callable, sequences: tuple, block: bool, chunksize: int = 1, ordered: bool = True,
             **flags: Any) -> Any:
        if flags:
            raise TypeError(f"LoadBalancedView.map: unexpected arguments {', '.join(flags)}")
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"map: chunksize must be an int >= 1, not {chunksize!r}")
        seqs, length = _as_sequences(sequences)
        tasks = []
        for start in range(0, length, chunksize):
            chunks = [s[start:start + chunksize] for s in seqs]
            tasks += self._send_task(pack_apply(remote.map_chunk, (f, *chunks), {}))
        ar = AsyncMapResult(self.client, tasks, fname=getattr(f, "__name__", ""), ordered=ordered,
                            item_count=length)
        return ar.get() if block else ar

    def map(self, f: Callable, *sequences: Any, block: bool | None = None, chunksize: int = 1,
            ordered: bool = True, **flags: Any) -> Any:
        """``f`` over the items of ``sequences``, ``chunksize`` items per task;
        with ``ordered=False`` the result iterates in completion order.  Any
        keyword argument that is one of the view's flags (``time_limit=...``) is
        set for this call; any other is a TypeError."""
        return self._map_with_flags(f, sequences, self.block if block is None else block,
                                    {"chunksize": chunksize, "ordered": ordered, **flags})

    def imap(self, f: Callable, *sequences: Any, ordered: bool = True,
             max_outstanding: int | str = "auto") -> Iterator[Any]:
        """``f`` over the items of ``sequences``, lazily: items are read and sent
        as results are taken, at most ``max_outstanding`` tasks in flight
        ('auto': one per allowed engine), so an endless generator works.
        Results come in input order, or with ``ordered=False`` as they finish."""
        if not sequences:
            raise TypeError("imap() needs at least one sequence")
        if max_outstanding == "auto":
            allowed = self.client._resolve_targets(self.targets) if self.targets is not None else self.client.ids
            max_outstanding = max(1, len(allowed))
        if not isinstance(max_outstanding, int) or isinstance(max_outstanding, bool) or max_outstanding < 1:
            raise ValueError(f"imap: max_outstanding is an int >= 1 or 'auto', not {max_outstanding!r}")
        return self._lazy_results(f, zip(*sequences, strict=False), ordered, max_outstanding)

    def _lazy_results(self, f: Callable, calls: Iterator[tuple], ordered: bool, max_outstanding: int
                      ) -> Iterator[Any]:
        in_flight: list[TaskState] = []
        exhausted = False
        waiter = self.client._waiter
        while in_flight or not exhausted:  # ends when the input is used up and every result was taken
            while not exhausted and len(in_flight) < max_outstanding:
                args = next(calls, None)
                if args is None:
                    exhausted = True
                else:
                    in_flight += self._send_task(pack_apply(f, args, {}))
            if not in_flight:
                return
            if ordered:
                task = in_flight.pop(0)
                waiter.wait_until(task.is_done, None)
            else:
                waiter.wait_until(functools.partial(any_done, in_flight), None)
                task = next(t for t in in_flight if t.done)
                in_flight.remove(task)
            yield task.value()


class RemoteFunction:
    """A function that runs through a view when called (``@view.remote()``)."""

    def __init__(self, view: View, func: Callable, block: bool | None, flags: dict[str, Any]):
        self.view, self.func, self.block, self.flags = view, func, block, flags
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            return self.view._apply(self.func, args, kwargs, block)

    def __repr__(self) -> str:
        return f"<RemoteFunction {getattr(self.func, '__name__', self.func)!r} on {self.view!r}>"


class ParallelFunction(RemoteFunction):
    """A function called once per engine on contiguous parts of its sequence
    arguments (``@view.parallel()``); ``.map`` calls it on each item."""

    def __call__(self, *sequences: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            seqs, length = _as_sequences(sequences)
            view, tasks = self.view, []
            if isinstance(view, DirectView):
                engine_ids: list[int | None] = list(view._engine_ids())
            else:  # load-balanced: one part per allowed engine, each sent wherever the scheduler likes
                targets = view.targets
                engine_ids = [None] * len(view.client._resolve_targets(targets if targets is not None else "all"))
            for engine_id, (start, stop) in zip(engine_ids, partition(length, len(engine_ids)), strict=False):
                if start == stop:
                    continue  # fewer items than engines: no empty calls
                buffers = pack_apply(self.func, tuple(s[start:stop] for s in seqs), {})
                if engine_id is None and isinstance(view, LoadBalancedView):
                    tasks += view._send_task(buffers)
                elif engine_id is not None and isinstance(view, DirectView):
                    tasks += view._submit(buffers, [engine_id])
            ar = AsyncMapResult(view.client, tasks, fname=getattr(self.func, "__name__", ""),
                                joiner=_join_gathered)
            return ar.get() if block else ar

    def map(self, *sequences: Iterable[Any]) -> Any:
        """``func`` on each item of ``sequences`` (as the view's ``map``)."""
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(**self.flags):
            return self.view.map(self.func, *sequences, block=block)

    def __repr__(self) -> str:
        return f"<ParallelFunction {getattr(self.func, '__name__', self.func)!r} on {self.view!r}>"


def _join_gathered(parts: list) -> Any:
    # A part may be a single item (scatter with flatten=True).
    return join_parts([p if isinstance(p, (list, tuple, str)) or type(p).__name__ == "ndarray" else [p]
                       for p in parts])
