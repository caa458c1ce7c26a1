"""Exceptions users see.  Every message is one line that names what is wrong
(the file, field, flag or engine) and, where there is one, what to do."""

from __future__ import annotations


class ClusterLauncherError(Exception):
    """Base of every error cluster-launcher raises on purpose."""


class PluginError(ClusterLauncherError):
    """A plugin failed to load, or two plugins claim the same name."""


class UnknownNameError(ClusterLauncherError, ValueError):
    """A short name (launcher, DB, scheduler, transport) matches no installed plugin."""


class ConfigError(ClusterLauncherError):
    """A config file or command-line option is wrong."""


class ConnectionFileError(ClusterLauncherError):
    """A connection file is missing, unreadable or incomplete."""


class ClusterError(ClusterLauncherError):
    """A cluster failed to start, or there is no cluster to stop.  ``log_lines``
    are the last lines of the log of the process that failed, if any."""

    def __init__(self, message: str, log_lines: list[str] | None = None):
        super().__init__(message)
        self.log_lines = log_lines or []


class SSHError(ClusterLauncherError):
    """An SSH login, a command run over SSH, or a tunnel through SSH failed:
    a server's host key is unknown or changed, it refused every key offered,
    it cannot be reached, or the remote command failed (the message names
    the host and the cause)."""


# The name this error had when SSH was only used for tunnels.
SSHTunnelError = SSHError


class BulkError(ClusterLauncherError):
    """A shared-memory buffer could not be written or read safely: its file is
    gone, is not ours, is not a plain file, or its content is not the signed one."""


class NoEnginesRegistered(ClusterLauncherError):
    """Work was submitted while no engine is registered."""


class RemoteError(ClusterLauncherError):
    """A task raised on an engine.  ``ename``/``evalue``/``traceback`` are the
    remote exception's type name, message and formatted traceback."""

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_info: dict | None = None):
        super().__init__(ename, evalue, traceback, engine_info)
        self.ename, self.evalue, self.traceback = ename, evalue, traceback
        self.engine_info = engine_info or {}

    def __str__(self) -> str:
        where = self.engine_info.get("engine_id")
        prefix = f"[engine {where}] " if where is not None else ""
        return f"{prefix}{self.ename}({self.evalue})"

    def render_traceback(self) -> str:
        return self.traceback or str(self)

    def _render_traceback_(self) -> list[str]:
        # IPython shows these lines in place of the client's stack (which would
        # only hide where the task failed): the engine's own traceback.
        lines = [f"[engine {self.engine_info.get('engine_id')}] {self.ename}: {self.evalue}"]
        return lines + (self.traceback.rstrip("\n").splitlines() if self.traceback else [])


class CompositeError(RemoteError):
    """Several tasks failed; ``elist`` holds each one's RemoteError."""

    def __init__(self, message: str, elist: list[RemoteError]):
        first = elist[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_info)
        self.args = (message, elist)
        self.message, self.elist = message, elist

    def __str__(self) -> str:
        return f"{self.message}: " + "; ".join(str(e) for e in self.elist)

    def raise_exception(self, index: int = 0) -> None:
        raise self.elist[index]

    def _render_traceback_(self) -> list[str]:
        lines = [f"{type(self).__name__}: {self.message}"]
        for failure in self.elist:
            lines += failure._render_traceback_()
        return lines


class EngineError(RemoteError):
    """The engine running a task died or left before the task finished."""


class TaskLost(EngineError):
    """The controller was restarted (``--reuse``, after a crash) without this
    task: it was neither on an engine that came back nor kept by a task
    database that outlives the controller (SQLiteDB keeps queued tasks)."""


class TaskAborted(RemoteError):
    """The task was aborted before it ran."""


class TaskTimeout(RemoteError, TimeoutError):
    """The task ran out of time: it waited longer than its ``timeout`` for its
    dependencies or an engine, or it ran longer than its ``time_limit``.  A
    ``TimeoutError``, as ``AsyncResult.get(timeout)`` raises when the wait
    runs out (there the task goes on; here it is over)."""


class DependencyError(RemoteError):
    """A task's ``after``/``follow`` dependency failed or cannot be met."""


class NoTaskHistory(ClusterLauncherError):
    """A history request (``db_query``, ``hub_history``, ``get_result`` of a
    task this client did not submit, ``resubmit``) reached a controller that
    keeps no task database (``--nodb``)."""

    @classmethod
    def for_request(cls, request: str) -> NoTaskHistory:
        return cls(f"{request}: the controller runs without a task database (--nodb, "
                   "c.Controller.db_class = 'NoDB'), so it keeps no task history; to keep one, start it without "
                   "--nodb, with c.Controller.db_class = 'DictDB'")


class TaskDBError(ClusterLauncherError):
    """The task database cannot be opened, read or written: the message names
    the file or server and what to do."""
