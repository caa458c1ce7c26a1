"""The client: connects to a controller and submits work (``Client``).

Its sockets and IO thread are in :mod:`.io`; see docs/client.md for the tour
and docs/internals/protocol.md for the messages.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..error import ClusterLauncherError, ConnectionFileError, NoEnginesRegistered, NoTaskHistory, RemoteError
from ..paths import profile_dir_for
from ..protocol import connection
from ..protocol.records import decode_record, encode_record
from ..protocol.session import Session, new_id
from .asyncresult import AsyncMapResult, AsyncResult, Metadata, TaskState
from .io import Answer, ClientSockets, ControlRequest, Dispatcher
from .view import DirectView, LoadBalancedView, msg_ids_of

# Frames larger than this are sent without a copy (zero-copy costs more below).
_ZERO_COPY_BYTES = 64 * 1024


class Client:
    """A connection to a controller (as ipyparallel's ``Client``).

    ``Client()`` finds ``security/controller-client.json`` in the profile
    (``profile`` in ``$CLUSTER_LAUNCHER_DIR``, or ``profile_dir``); ``url_file``
    names a connection file directly.  ``sshserver`` (``[user@]host[:port]``
    or a ``~/.ssh/config`` Host alias; default: the file's ``ssh`` field)
    tunnels through SSH, with ``sshkey`` as the private key if given (else
    IdentityFile, ssh-agent, ~/.ssh/id_*).  Waits at most ``timeout`` seconds
    for the controller to answer.
    """

    def __init__(self, url_file: str | None = None, profile: str = "default", profile_dir: str | None = None,
                 cluster_id: str = "", sshserver: str | None = None, timeout: float = 10,
                 sshkey: str | None = None, echo_streams: bool = False):
        if url_file is None:
            url_file = connection.connection_file(profile_dir_for(profile, profile_dir), "client", cluster_id)
        self.url_file = os.path.abspath(os.path.expanduser(url_file))
        info = connection.read_connection_file(self.url_file, "client")
        try:
            self.session = Session(key=info["key"], signature_scheme=info["signature_scheme"])
        except ValueError as exc:
            raise ConnectionFileError(f"{self.url_file}: field 'signature_scheme': {exc}") from None
        self.cluster_id = info["cluster_id"]
        self.max_message_size = info.get("max_message_size", -1)
        self.timeout = timeout
        self.url = connection.url(info, "client_port")
        self._dispatcher = Dispatcher(echo_streams)
        self._waiter = self._dispatcher.waiter
        self._conn = ClientSockets(self._dispatcher, self.session)
        self.history: list[str] = []
        try:
            sshserver = sshserver if sshserver is not None else info["ssh"]
            connect_url = self.url
            if sshserver:
                from ..protocol.tunnel import open_tunnel  # paramiko: ~0.4 s to import, for tunnels only

                self._conn.tunnel = open_tunnel(sshserver, info["location"], info["client_port"], timeout, sshkey)
                connect_url = self._conn.tunnel.url
            self._conn.connect(connect_url, timeout, info)
            # Sent again each second: the controller may not have attached the
            # reply socket yet when the first one arrives, and would drop its reply.
            self._connect_reply = self._request("connect", {}, timeout, resend_every=1.0)
        except BaseException:
            self._conn.close()
            raise
        # Whether the controller keeps a task database (false with --nodb); a
        # controller that does not say is an older one, which always kept one.
        self.task_history: bool = bool(self._connect_reply.reply.header.get("task_history", True))
        atexit.register(self._conn.close)
        self._connection_closer = weakref.finalize(self, self._conn.close)

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Stop the IO thread and close the sockets (and the SSH tunnel)."""
        self._conn.say_goodbye()
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url} engines={self.ids}>"

    # --- engines and views -----------------------------------------------------

    @property
    def ids(self) -> list[int]:
        """The registered engine ids, sorted (kept current by the controller)."""
        return sorted(self._dispatcher.engines)

    @property
    def engines(self) -> dict[int, dict[str, Any]]:
        """Engine id -> {uuid, hostname, pid, domain, mpi}; ``mpi`` is
        ``{'rank': r, 'size': n}`` for an engine running as an MPI rank."""
        return dict(self._dispatcher.engines)

    @property
    def mpi_ranks(self) -> dict[int, int]:
        """Engine id -> MPI rank, for the engines running under MPI."""
        return {eid: info["mpi"]["rank"] for eid, info in sorted(self._dispatcher.engines.items())
                if info.get("mpi")}

    @property
    def mpi_engines(self) -> dict[int, list[int]]:
        """MPI rank -> the ids of the engines with that rank (one per MPI job),
        so ``client[client.mpi_engines[0]]`` addresses rank 0."""
        by_rank: dict[int, list[int]] = {}
        for eid, rank in self.mpi_ranks.items():
            by_rank.setdefault(rank, []).append(eid)
        return dict(sorted(by_rank.items()))

    def wait_for_engines(self, n: int, timeout: float = 30) -> list[int]:
        """Wait until at least ``n`` engines are registered; TimeoutError if not
        within ``timeout`` seconds.  Returns the ids."""
        if not self._waiter.wait_until(lambda: len(self._dispatcher.engines) >= n, timeout):
            raise TimeoutError(f"{len(self._dispatcher.engines)} of {n} engines registered with the controller "
                               f"at {self.url} after {timeout:g} s")
        return self.ids

    def _resolve_targets(self, targets: Any) -> list[int]:
        """Engine ids from an id, a list of ids, a slice of ``ids``, or None/'all'."""
        ids = self.ids
        if targets is None or targets == "all":
            if not ids:
                raise NoEnginesRegistered(f"no engine is registered with the controller at {self.url}")
            return ids
        if isinstance(targets, slice):
            return ids[targets]
        if isinstance(targets, int):
            targets = [targets]
        resolved = []
        for target in targets:
            if not isinstance(target, int):
                raise TypeError(f"targets: engine ids are ints, not {type(target).__name__} ({target!r})")
            eid = ids[target] if target < 0 and -len(ids) <= target else target
            if eid not in self._dispatcher.engines:
                raise IndexError(f"no engine {target} registered (registered: {ids})")
            resolved.append(eid)
        return resolved

    def __getitem__(self, key: int | slice | Sequence[int]) -> DirectView:
        if isinstance(key, int):
            return DirectView(self, self._resolve_targets(key)[0])
        if isinstance(key, (slice, list, tuple, range)):
            return DirectView(self, self._resolve_targets(key) if isinstance(key, slice) else list(key))
        raise TypeError(f"client[...] takes an engine id, a slice or a list of ids, not {type(key).__name__}")

    def direct_view(self, targets: Any = "all") -> DirectView:
        """A DirectView on ``targets`` ('all': every engine registered at each call)."""
        return DirectView(self, targets)

    def load_balanced_view(self, targets: Any = None) -> LoadBalancedView:
        """A LoadBalancedView: tasks go to whichever allowed engine is free."""
        return LoadBalancedView(self, targets)

    # --- sending -----------------------------------------------------------------

    def _submit(self, buffers: list, queue: str, targets: Sequence[int] | None, *, after: list | None = None,
                follow: list | None = None, timeout: float | None = None, retries: int = 0,
                expected_runtime: float | None = None, time_limit: float | None = None) -> list[TaskState]:
        """Send one ``apply`` per entry of ``targets`` (mux) or one task; the
        tasks are registered before the messages leave, so no reply is missed."""
        copy = all(len(b) < _ZERO_COPY_BYTES for b in buffers)
        submitted = datetime.now(timezone.utc)
        session, dispatcher = self.session, self._dispatcher
        # ``domain`` and ``pid`` tell the engine whether, and for whom, it may
        # reply through shared memory.
        base: dict[str, Any] = {"type": "apply", "session": session.session_id, "queue": queue, "after": after or [],
                "follow": follow or [], "timeout": timeout, "retries": retries, "expected_runtime": expected_runtime,
                "time_limit": time_limit, "hostname": session.hostname,
                "domain": session.domain, "pid": os.getpid(), "submitted": submitted.isoformat()}
        per_message = [[t] for t in targets or ()] if queue == "mux" else [
            list(targets) if targets is not None else None]
        tasks = []
        for target_list in per_message:
            msg_id = new_id()
            header = {**base, "id": msg_id, "targets": target_list}
            # Each receiver removes its shared-memory files, so each message gets
            # its own; this client removes any left when the reply comes.
            shm_owner = os.getpid() if not copy and self._shares_memory_with(target_list) else None
            frames = session.pack(header, buffers, shm_owner=shm_owner)
            task = dispatcher.new_task(msg_id, submitted)
            task.bulk_refs = list(header.get("bulk", {}).values())
            try:
                self._check_size(frames)
                self._conn.send(frames, copy)
            except BaseException:
                dispatcher.pending.pop(msg_id, None)
                task.discard_files()
                raise
            tasks.append(task)
            self.history.append(msg_id)
        return tasks

    def _shares_memory_with(self, targets: list[int] | None) -> bool:
        """Whether every engine the task may go to can read this process's
        shared-memory files (same /dev/shm, same user: :func:`bulk.domain`)."""
        engines = self._dispatcher.engines
        ids = targets if targets is not None else list(engines)
        domain = self.session.domain
        return domain is not None and bool(ids) and all(engines.get(e, {}).get("domain") == domain for e in ids)

    def _check_size(self, frames: list) -> None:
        """ValueError for a message the controller would refuse (it drops the
        connection of a peer that sends one, and the task would never return)."""
        size = sum(memoryview(f).nbytes for f in frames)
        if 0 <= self.max_message_size < size:
            raise ValueError(f"the task's arguments make a message of {size} bytes, more than the controller "
                             f"accepts (Controller.max_message_size = {self.max_message_size}); send less, "
                             "or raise that limit")

    def _request(self, msg_type: str, fields: dict[str, Any], timeout: float | None = None,
                 buffers: Sequence = (), resend_every: float | None = None) -> Answer:
        """Send a control request and wait for its reply; RemoteError if the
        controller answers with an error."""
        timeout = self.timeout if timeout is None else timeout
        control = ControlRequest()
        sent: list[str] = []
        deadline = time.monotonic() + timeout
        answered = lambda: control.reply is not None or self._dispatcher.closed
        try:
            while True:
                header = {"type": msg_type, "id": new_id(), "session": self.session.session_id, **fields}
                self._dispatcher.controls[header["id"]] = control
                sent.append(header["id"])
                self._conn.send(self.session.pack(header, buffers))
                remaining = deadline - time.monotonic()
                if self._waiter.wait_until(answered, min(remaining, resend_every or remaining)):
                    break
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{msg_type}: no reply from the controller at {self.url} "
                                       f"within {timeout:g} s")
        finally:
            for msg_id in sent:
                self._dispatcher.controls.pop(msg_id, None)
        reply = control.reply
        if reply is None:
            raise ClusterLauncherError(f"{msg_type}: the client was closed")
        if reply.header.get("status") == "error":
            err = reply.header.get("error") or {}
            if err.get("ename") == "NoTaskHistory":
                raise NoTaskHistory(str(err.get("evalue", "")))
            raise RemoteError(err.get("ename", "Error"), err.get("evalue", f"{msg_type} failed"),
                              err.get("traceback", ""))
        return Answer(reply, control.tasks)

    # --- results -----------------------------------------------------------------

    @property
    def outstanding(self) -> set[str]:
        """Message ids of tasks submitted (or asked for) that have no reply yet."""
        return set(self._dispatcher.pending)

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for ``jobs`` (AsyncResults, msg ids; default: everything
        outstanding); return whether they finished within ``timeout`` seconds."""
        if jobs is None:
            tasks = list(self._dispatcher.pending.values())
        else:
            tasks = [t for t in (self._dispatcher.task(m) for m in msg_ids_of(jobs)) if t is not None]
        return self._waiter.wait_until(lambda: all(t.done for t in tasks), timeout)

    def get_result(self, indices_or_msg_ids: Any = None, block: bool = False, timeout: float | None = None) -> Any:
        """An AsyncResult for earlier tasks, by msg id (or index into ``history``,
        default -1).  Tasks this client still knows are answered locally; others
        come from the controller's database (finished or when they finish)."""
        single = indices_or_msg_ids is None or isinstance(indices_or_msg_ids, (int, str, AsyncResult))
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, (int, str, AsyncResult)):
            indices_or_msg_ids = [indices_or_msg_ids]
        msg_ids = [self.history[i] if isinstance(i, int) else i for i in indices_or_msg_ids]
        msg_ids = msg_ids_of(msg_ids)
        tasks, unknown = [], []
        for msg_id in msg_ids:
            task = self._dispatcher.task(msg_id)
            if task is None:
                task = self._dispatcher.new_task(msg_id, None)
                unknown.append(msg_id)
            tasks.append(task)
        if unknown:
            header = {"type": "get_result", "id": new_id(), "session": self.session.session_id, "msg_ids": unknown}
            self._conn.send(self.session.pack(header))
        ar = AsyncResult(self, tasks, fname="get_result", single=single and len(tasks) == 1)
        return ar.get(timeout) if block else ar

    def resubmit(self, jobs: Any, block: bool = False) -> AsyncResult | Any:
        """Run earlier tasks again (as new tasks); an AsyncResult for the new ones."""
        self._require_task_history("resubmit")
        old = msg_ids_of(jobs)
        control = self._request("resubmit", {"msg_ids": old})
        mapping = control.reply.header.get("resubmitted") or {}
        tasks = []
        for old_id in old:
            if old_id not in mapping:
                raise KeyError(f"resubmit: the controller did not resubmit task {old_id}")
            new_id_ = mapping[old_id]
            tasks.append(control.tasks[new_id_])
            self.history.append(new_id_)
        ar = AsyncResult(self, tasks, fname="resubmit", single=isinstance(jobs, (str, AsyncResult)) and len(tasks) == 1)
        return ar.get() if block else ar

    def db_query(self, query: dict[str, Any], keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Task records matching a MongoDB-style ``query`` (e.g.
        ``{"completed": {"$ne": None}}``), with only ``keys`` if given."""
        self._require_task_history("db_query")
        buffers: list = []
        encoded = encode_record(query, buffers)
        reply = self._request("db_query", {"query": encoded, "keys": list(keys) if keys else None},
                              buffers=buffers).reply
        return [Metadata(decode_record(r, reply.buffers)) for r in reply.header.get("records", [])]

    def _require_task_history(self, request: str) -> None:
        """NoTaskHistory, without asking, if the controller said at connect that it keeps none."""
        if not self.task_history:
            raise NoTaskHistory.for_request(request)

    def hub_history(self) -> list[str]:
        """The msg ids of every task the controller's database holds, oldest first."""
        self._require_task_history("hub_history")
        return list(self._request("hub_history", {}).reply.header.get("history") or [])

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict[str, Any]:
        """``{'pending': [msg ids], 'completed': [msg ids]}`` for ``msg_ids``
        (ids, indices into ``history``, AsyncResults).  Tasks this client does
        not know are looked up in the controller's database (KeyError if it has
        no such task).  With ``status_only=False`` each completed task's result
        (its value, or the exception it raised) is also there, keyed by msg id."""
        if isinstance(msg_ids, (int, str, AsyncResult)):
            msg_ids = [msg_ids]
        ids = msg_ids_of([self.history[i] if isinstance(i, int) else i for i in msg_ids])
        done: dict[str, bool] = {}
        unknown = []
        for msg_id in ids:
            task = self._dispatcher.task(msg_id)
            if task is None:
                unknown.append(msg_id)
            else:
                done[msg_id] = task.done
        if unknown:
            self._require_task_history("result_status")
            records = {r["msg_id"]: r for r in self.db_query({"msg_id": {"$in": unknown}}, ["msg_id", "completed"])}
            missing = [m for m in unknown if m not in records]
            if missing:
                raise KeyError(f"result_status: no task {missing[0]} in this client or the controller's database")
            done.update((m, records[m]["completed"] is not None) for m in unknown)
        status: dict[str, Any] = {"pending": [m for m in ids if not done[m]], "completed": [m for m in ids if done[m]]}
        if not status_only and status["completed"]:
            ar = self.get_result(status["completed"])
            ar.wait()
            for task in ar._tasks:
                status[task.msg_id] = task.exception() or task.value()
        return status

    def spin(self) -> None:
        """Nothing to do: the client's IO thread reads every reply as it
        arrives (kept so ipyparallel code that calls it runs)."""

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty the namespace of the engines ``targets`` (default: all)."""
        return self.direct_view("all" if targets is None else targets).clear(block=block)

    def activate(self, targets: Any = "all", suffix: str = "") -> DirectView:
        """A DirectView on ``targets``, made the one the ``%px<suffix>`` magics use."""
        view = self.direct_view(targets)
        view.activate(suffix)
        return view

    def wait_interactive(self, jobs: Any = None, interval: float = 0.1, timeout: float = -1) -> bool:
        """:meth:`wait` while drawing a progress bar; whether ``jobs`` finished within ``timeout``."""
        tasks = (list(self._dispatcher.pending.values()) if jobs is None else
                 [t for t in (self._dispatcher.task(m) for m in msg_ids_of(jobs)) if t is not None])
        return AsyncResult(self, tasks, fname="wait").wait_interactive(interval, timeout)

    def purge_everything(self) -> None:
        """Forget every finished task, here and in the controller's database."""
        self.purge_local_results("all")
        self.purge_results("all")

    def purge_results(self, jobs: Any = (), targets: Any = None) -> None:
        """Forget finished tasks in the controller's database: ``jobs`` (msg ids
        or AsyncResults) or 'all', and/or every task that ran on ``targets``."""
        fields: dict[str, Any] = {"targets": self._resolve_targets(targets) if targets is not None else None}
        if jobs == "all":
            fields["all"] = True
        else:
            fields["msg_ids"] = msg_ids_of(jobs)
            if not fields["msg_ids"] and targets is None:
                raise ValueError("purge_results: name jobs (msg ids, AsyncResults or 'all') or targets")
        self._request("purge", fields)

    purge_hub_results = purge_results  # ipyparallel's name for purging the controller's database only

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict[Any, Any]:
        """Per engine: tasks queued, completed, running, and ``failed`` (that
        raised); plus 'unassigned'.  With ``verbose``, also ``'lost'``: the
        latest engines that left, each ``{engine_id, uuid, pid, reason, at,
        failed}`` (``reason`` 'heartbeat': it died; 'shutdown'; 'drained';
        're-registered').  One engine's dict if ``targets`` is a single id."""
        resolved = None if targets is None or targets == "all" else self._resolve_targets(targets)
        reply = self._request("queue_status", {"targets": resolved, "verbose": verbose}).reply
        per_engine = reply.header.get("engines")
        if per_engine is None:  # the first protocol draft's field name
            draft = reply.header.get("status")
            per_engine = draft if isinstance(draft, dict) else {}
        status: dict[Any, Any] = {int(eid): value for eid, value in per_engine.items()}
        if isinstance(targets, int) and resolved:
            return status[resolved[0]]
        status["unassigned"] = reply.header.get("unassigned", 0)
        if verbose:
            status["lost"] = reply.header.get("lost", [])
        return status

    def abort(self, jobs: Any = None, targets: Any = None, block: bool = True) -> list[str]:
        """Abort tasks (``jobs``: msg ids or AsyncResults; None: every pending
        task of this client on ``targets``): queued ones are dropped, running
        ones interrupted (docs/stopping-tasks.md).  Their results raise
        TaskAborted.  Returns the ids the controller aborted or forwarded to
        their engine."""
        resolved = None if targets is None else self._resolve_targets(targets)
        fields = {"msg_ids": msg_ids_of(jobs) if jobs is not None else None, "targets": resolved}
        if not block:
            header = {"type": "abort", "id": new_id(), "session": self.session.session_id, **fields}
            self._conn.send(self.session.pack(header))
            return []
        reply = self._request("abort", fields).reply.header
        return list(reply.get("aborted") or []) + list(reply.get("forwarded") or [])

    def shutdown(self, targets: Any = "all", hub: bool = False, block: bool = True) -> None:
        """Stop engines (``targets``; 'all' by default) and, with ``hub``, the controller."""
        resolved = None if targets in (None, "all") else self._resolve_targets(targets)
        fields = {"targets": resolved, "hub": hub}
        if block:
            self._request("shutdown", fields)
        else:
            header = {"type": "shutdown", "id": new_id(), "session": self.session.session_id, **fields}
            self._conn.send(self.session.pack(header))

    def purge_local_results(self, jobs: Any = "all") -> None:
        """Forget results this client keeps for earlier tasks (AsyncResults you
        hold keep theirs)."""
        if jobs == "all":
            self._dispatcher.finished.clear()
            self.history.clear()
            return
        for msg_id in msg_ids_of(jobs):
            self._dispatcher.finished.pop(msg_id, None)


__all__ = ["AsyncMapResult", "AsyncResult", "Client", "DirectView", "LoadBalancedView"]
