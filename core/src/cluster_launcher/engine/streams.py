"""A running task's stdout and stderr: captured for its reply, and sent
while it runs as ``stream`` messages so output shows up as it is printed."""

from __future__ import annotations

import io
import threading
from typing import Any

import zmq

from ..protocol import connection
from ..protocol.session import Session


class StreamSender:
    """Sends the running task's output as ``stream`` messages every
    ``INTERVAL`` seconds from a thread of its own, so output shows up while the
    task computes, flushed or not.  Its own socket and session: the main
    thread's are busy with the task and zmq sockets are not shared between
    threads.  All stream messages go through here, in order, under one lock.
    ``url`` is where the engine reaches the controller's engine port (its SSH
    tunnel, if it has one)."""

    INTERVAL = 0.1

    def __init__(self, context: zmq.Context, ident: bytes, info: dict[str, Any], url: str):
        self.session = Session(key=info["key"])
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, ident + b"-io")
        self.socket.setsockopt(zmq.LINGER, 0)  # the reply carries the full output anyway
        connection.secure(self.socket, info)
        self.socket.connect(url)
        self.lock = threading.Lock()
        self.watched: tuple[TaskStream, ...] = ()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="streams", daemon=True)
        self.thread.start()

    def watch(self, *streams: TaskStream) -> None:
        """Send these streams' new output from now on (none: stop)."""
        self.watched = streams

    def send(self, stream: TaskStream) -> None:
        with self.lock:
            value = stream.getvalue()
            if len(value) > stream.sent and not self.stopped.is_set():
                self.session.send(self.socket, "stream",
                                  {"parent": stream.parent, "name": stream.name, "text": value[stream.sent:]})
                stream.sent = len(value)

    def _loop(self) -> None:
        while not self.stopped.wait(self.INTERVAL):
            for stream in self.watched:
                self.send(stream)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=2)
        with self.lock:
            self.socket.close(0)


class TaskStream(io.StringIO):
    """Captures a task's output for its reply; :class:`StreamSender` sends
    what is new while the task runs, ``flush()`` sends it at once."""

    def __init__(self, sender: StreamSender, parent: str, name: str):
        super().__init__()
        self.sender, self.parent, self.name = sender, parent, name
        self.sent = 0

    def flush(self) -> None:
        self.sender.send(self)
