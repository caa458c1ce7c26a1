"""Signed messages over zmq.

Every message is ``[*routing_ids, DELIM, signature, header, *buffers]``:
``header`` is a JSON object whose ``type`` says what the message is and
whose ``id`` names it; ``buffers`` carry pickled payloads.  ``signature`` is
the HMAC-SHA256 of header and buffers, keyed by the connection file's key.
A message whose signature is missing or wrong, whose header is not a JSON
object, or which this Session has already accepted once (a replay: the same
signature within the last ``replay_window`` messages) is dropped and logged:
it never reaches code that would unpickle it.  Drops are logged one line
each for the first ten, then at most one summary line per ten seconds, so a
flood of garbage cannot flood the log.

Large buffers bound for a process on the same host may travel through
shared-memory files instead (:mod:`cluster_launcher.bulk`): the signed header
then names each file with its size and BLAKE3 digest, so the signature covers
the files' contents too, and the receiver refuses a file that is not a
regular file of its own user with one link and the signed content.  If
shared memory is missing or full, the buffers go inline.  The protocol is
described in docs/internals/protocol.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket as _socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timezone
from hashlib import sha256
from typing import Any

import zmq
from traitlets import Integer, Unicode
from traitlets.config import Configurable

from ..error import BulkError
from . import bulk as bulk_module

DELIM = b"<CL1>"
log = logging.getLogger("cluster_launcher")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> str:
    """Timestamps on the wire: ISO 8601, UTC."""
    return datetime.now(timezone.utc).isoformat()


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class Message:
    """A verified message: its routing ids, header and buffers.  ``frames``
    keeps the signed frames as received so they can be forwarded unchanged."""

    __slots__ = ("idents", "header", "buffers", "frames")

    def __init__(self, idents: list, header: dict[str, Any], buffers: list, frames: list):
        self.idents, self.header, self.buffers, self.frames = idents, header, buffers, frames

    @property
    def type(self) -> str:
        return self.header["type"]

    def __repr__(self) -> str:
        return f"Message({self.header!r}, {len(self.buffers)} buffers)"


class Session(Configurable):
    """Signs, sends, receives and verifies messages with one key."""

    signature_scheme = Unicode("hmac-sha256", help="How messages are signed (only hmac-sha256).").tag(config=True)
    key = Unicode("", help="The signing key (normally read from the connection file).").tag(config=True)
    buffer_threshold = Integer(1024, min=0, help="Objects larger than this many bytes travel as separate "
                               "zero-copy frames.").tag(config=True)
    copy_threshold = Integer(64 * 1024, min=0, help="Frames smaller than this are copied on receive "
                             "(cheaper than zero-copy bookkeeping).").tag(config=True)
    bulk_threshold = Integer(256 * 1024, min=0, help="Buffers of at least this many bytes bound for a "
                             "process on the same host travel through shared memory instead of "
                             "zmq (0 disables).").tag(config=True)
    replay_window = Integer(65536, min=0, help="How many of the last accepted messages' signatures are "
                            "remembered to drop a message sent again (a replay); 0 disables.").tag(config=True)

    def __init__(self, key: bytes | str = b"", **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(key, str):
            key = key.encode()
        self.key_bytes = key or self.key.encode()
        if not self.key_bytes:
            raise ValueError("a Session needs a signing key")
        if self.signature_scheme != "hmac-sha256":
            raise ValueError(f"unsupported signature_scheme {self.signature_scheme!r} (only hmac-sha256)")
        self._hmac = hmac.new(self.key_bytes, digestmod=sha256)
        self.session_id = new_id()
        self.hostname = _socket.gethostname()
        # Who can read this process's shared-memory files (None: no /dev/shm).
        self.domain = bulk_module.domain()
        self.pid = os.getpid()
        self.dropped = 0  # messages rejected (bad signature, malformed, replayed...)
        self._seen: set[bytes] = set()  # signatures of the last replay_window accepted messages
        self._seen_order: deque[bytes] = deque()
        self._seen_lock = threading.Lock()  # a Session may receive on several threads' sockets
        self._clock = time.monotonic  # for log rate limiting; tests replace it
        self._drop_log = LogThrottle()
        self._inline_log = LogThrottle()

    def sign(self, frames: Sequence) -> bytes:
        mac = self._hmac.copy()
        for frame in frames:
            mac.update(frame)
        return mac.digest()

    def pack(self, header: dict[str, Any], buffers: Sequence = (), shm_owner: int | None = None) -> list:
        """The frames of a message, from the delimiter on.  ``shm_owner``: the
        receiver runs on this host (same :attr:`domain`), so buffers of at
        least ``bulk_threshold`` bytes go through shared memory
        (:mod:`cluster_launcher.bulk`) in files to be removed by the process
        of that pid, and ``header["bulk"]`` names them.  If shared memory is
        missing or full, every buffer goes inline (a warning is logged)."""
        if shm_owner is not None and self.bulk_threshold and bulk_module.available():
            large = [i for i, b in enumerate(buffers) if memoryview(b).nbytes >= self.bulk_threshold]
            if large:
                refs: dict[str, Any] = {}
                try:
                    for i in large:
                        refs[str(i)] = bulk_module.put(buffers[i], shm_owner)
                except OSError as exc:
                    for ref in refs.values():
                        bulk_module.discard(ref)
                    header.pop("bulk", None)
                    self._log_inline(exc, len(large))
                else:
                    buffers = list(buffers)
                    for i in large:
                        buffers[i] = b""
                    header["bulk"] = refs
        head = json.dumps(header, separators=(",", ":")).encode()
        return [DELIM, self.sign((head, *buffers)), head, *buffers]

    def send(self, sock: zmq.Socket, msg_type: str, fields: dict[str, Any] | None = None,
             buffers: Sequence = (), idents: Sequence[bytes] = (), shm_owner: int | None = None) -> dict[str, Any]:
        """Sign and send a new message (see :meth:`pack`); returns its header
        (with its ``id``)."""
        header = {"type": msg_type, "id": new_id(), **(fields or {})}
        sock.send_multipart([*idents, *self.pack(header, buffers, shm_owner)], copy=False)
        return header

    def unpack(self, frames: list) -> Message | None:
        """Verify and parse received frames; ``None`` (logged) if they are not a
        well-signed message never accepted before.  Never raises."""
        try:
            return self._unpack(frames)
        except Exception as exc:
            self._drop([], f"unreadable message ({type(exc).__name__})")
            return None

    def _unpack(self, frames: list) -> Message | None:
        if not frames:
            self._drop([], "no frames")
            return None
        try:
            split = frames.index(DELIM) if isinstance(frames[0], bytes) else _index_of_delim(frames)
        except ValueError:
            self._drop(frames[:1], "no message delimiter")  # a ROUTER's first frame: the sender
            return None
        if len(frames) < split + 3:
            self._drop(frames[:split], "truncated message")
            return None
        signature, body = _bytes(frames[split + 1]), frames[split + 2:]
        if not hmac.compare_digest(signature, self.sign([_view(f) for f in body])):
            self._drop(frames[:split], "bad signature")
            return None
        try:
            header = json.loads(_bytes(body[0]))
        except Exception:
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            self._drop(frames[:split], "malformed header")
            return None
        if self.replay_window > 0 and not self._first_time(signature):
            self._drop(frames[:split], "replayed message")
            return None
        idents = [_bytes(f) for f in frames[:split]]
        return Message(idents, header, [_view(f) for f in body[1:]], frames[split:])

    def _first_time(self, signature: bytes) -> bool:
        """Whether ``signature`` is not among the last ``replay_window``
        accepted; remembers it."""
        window = self.replay_window
        with self._seen_lock:
            if signature in self._seen:
                return False
            self._seen.add(signature)
            self._seen_order.append(signature)
            while len(self._seen_order) > window:
                self._seen.discard(self._seen_order.popleft())
        return True

    @staticmethod
    def resolve_bulk(msg: Message, remove: bool = True, verify: bool = True) -> list:
        """``msg.buffers`` with shared-memory buffers read in (and their files
        removed, unless ``remove`` is false: the controller reads a copy for
        the task database before forwarding the message).

        Raises :class:`~cluster_launcher.error.BulkError` if a file is gone or
        fails a check of :func:`cluster_launcher.bulk.take`; with ``remove``,
        the message's other files are removed all the same (a file that
        failed is left alone: it may not be ours)."""
        refs = msg.header.get("bulk")
        if not refs:
            return msg.buffers
        buffers = list(msg.buffers)
        if not isinstance(refs, dict) or not all(
                isinstance(k, str) and k.isdigit() and k.isascii() and int(k) < len(buffers) for k in refs):
            if remove and isinstance(refs, dict):
                for ref in refs.values():
                    bulk_module.discard(ref)
            raise BulkError(f"malformed bulk buffer references in message {msg.header.get('id')!r}")
        pending = dict(refs)
        try:
            for index, ref in refs.items():
                del pending[index]
                buffers[int(index)] = bulk_module.take(ref, remove=remove, verify=verify)
        except BaseException:
            if remove:
                for ref in pending.values():
                    bulk_module.discard(ref)
            raise
        if remove:
            msg.buffers = buffers
            del msg.header["bulk"]
        return buffers

    def recv(self, sock: zmq.Socket, flags: int = 0) -> Message | None:
        """Receive and :meth:`unpack` one message; ``None`` if it was dropped.
        Raises only what zmq raises (``zmq.Again`` with ``zmq.NOBLOCK``)."""
        frames = sock.recv_multipart(flags, copy=False)
        return self.unpack([f.bytes if len(f) < self.copy_threshold else f for f in frames])

    def _drop(self, idents: list, why: str) -> None:
        self.dropped += 1
        try:
            sender = b"/".join(_bytes(i) for i in idents if isinstance(i, (bytes, zmq.Frame)))[:64]
        except Exception:
            sender = b"?"
        count = self._drop_log.tick(self._clock())
        if count == 0:
            log.warning("dropped a message from %r: %s", sender, why)
        elif count is not None:
            log.warning("dropped %d more messages since the last such line (the last from %r: %s)",
                        count, sender, why)

    def _log_inline(self, exc: OSError, n: int) -> None:
        count = self._inline_log.tick(self._clock())
        if count == 0:
            log.warning("shared memory (%s) is unavailable or full (%s): sending %d large buffers inline",
                        bulk_module.SHM_DIR, exc, n)
        elif count is not None:
            log.warning("shared memory (%s) was unavailable or full for %d more messages since the last "
                        "such line (last: %s): their large buffers went inline", bulk_module.SHM_DIR, count, exc)


class LogThrottle:
    """Rate limiting for one kind of warning: the first ``burst`` events are
    logged one line each, then at most one line every ``interval`` seconds,
    counting the events since the previous line."""

    def __init__(self, burst: int = 10, interval: float = 10.0):
        self.burst, self.interval = burst, interval
        self.events = 0
        self.unlogged = 0
        self.last_line = 0.0

    def tick(self, now: float) -> int | None:
        """Record one event at ``now``: 0 to log it on its own line, n > 0 to
        log a summary of the n events since the last line (this one
        included), None to stay quiet."""
        self.events += 1
        if self.events <= self.burst:
            self.last_line = now
            return 0
        self.unlogged += 1
        if now - self.last_line >= self.interval:
            count, self.unlogged, self.last_line = self.unlogged, 0, now
            return count
        return None


def discard_bulk(header: dict[str, Any]) -> None:
    """Remove the shared-memory files a message's header names: the message
    will not be read (undeliverable, refused, or its task already ended)."""
    refs = header.get("bulk")
    for ref in refs.values() if isinstance(refs, dict) else ():
        bulk_module.discard(ref)


def _index_of_delim(frames: list) -> int:
    for i, frame in enumerate(frames):
        if _bytes(frame) == DELIM:
            return i
    raise ValueError


def _bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _view(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame
