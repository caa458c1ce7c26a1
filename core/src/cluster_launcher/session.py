"""Signed messages over zmq.

Every message is ``[*routing_ids, DELIM, signature, header, *buffers]``:
``header`` is a JSON object whose ``type`` says what the message is and
whose ``id`` names it; ``buffers`` carry pickled payloads.  ``signature`` is
the HMAC-SHA256 of header and buffers, keyed by the connection file's key.
A message whose signature is missing or wrong is dropped and logged: it
never reaches code that would unpickle it.  The protocol is described in
docs/internals/protocol.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket as _socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from hashlib import sha256
from typing import Any

import zmq
from traitlets import Integer, Unicode
from traitlets.config import Configurable

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
    buffer_threshold = Integer(1024, help="Objects larger than this many bytes travel as separate "
                               "zero-copy frames.").tag(config=True)
    copy_threshold = Integer(64 * 1024, help="Frames smaller than this are copied on receive "
                             "(cheaper than zero-copy bookkeeping).").tag(config=True)
    bulk_threshold = Integer(256 * 1024, help="Buffers of at least this many bytes bound for a "
                             "process on the same host travel through shared memory instead of "
                             "zmq (0 disables).").tag(config=True)

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
        self.pid = os.getpid()
        self.dropped = 0  # messages rejected for a bad signature

    def sign(self, frames: Sequence) -> bytes:
        mac = self._hmac.copy()
        for frame in frames:
            mac.update(frame)
        return mac.digest()

    def pack(self, header: dict[str, Any], buffers: Sequence = (), bulk: bool = False) -> list:
        """The frames of a message, from the delimiter on.  ``bulk``: the
        receiver runs on this host, so buffers of at least ``bulk_threshold``
        bytes go through shared memory (:mod:`cluster_launcher.bulk`) and the
        header names their files."""
        if bulk and self.bulk_threshold and bulk_module.available():
            large = [i for i, b in enumerate(buffers) if memoryview(b).nbytes >= self.bulk_threshold]
            if large:
                buffers = list(buffers)
                header["bulk"] = {}
                for i in large:
                    header["bulk"][str(i)] = bulk_module.put(buffers[i])
                    buffers[i] = b""
        head = json.dumps(header, separators=(",", ":")).encode()
        return [DELIM, self.sign((head, *buffers)), head, *buffers]

    def send(self, sock: zmq.Socket, msg_type: str, fields: dict[str, Any] | None = None,
             buffers: Sequence = (), idents: Sequence[bytes] = (), bulk: bool = False) -> dict[str, Any]:
        """Sign and send a new message (see :meth:`pack`); returns its header
        (with its ``id``)."""
        header = {"type": msg_type, "id": new_id(), **(fields or {})}
        sock.send_multipart([*idents, *self.pack(header, buffers, bulk)], copy=False)
        return header

    def unpack(self, frames: list) -> Message | None:
        """Verify and parse received frames; ``None`` (logged) if they are not a
        well-signed message."""
        try:
            split = frames.index(DELIM) if isinstance(frames[0], bytes) else _index_of_delim(frames)
        except ValueError:
            return self._drop(frames, "no message delimiter")
        if len(frames) < split + 3:
            return self._drop(frames, "truncated message")
        signature, body = _bytes(frames[split + 1]), frames[split + 2:]
        if not hmac.compare_digest(signature, self.sign([_view(f) for f in body])):
            return self._drop(frames[:split], "bad signature")
        try:
            header = json.loads(_bytes(body[0]))
            header["type"]
        except (ValueError, KeyError, TypeError):
            return self._drop(frames[:split], "malformed header")
        idents = [_bytes(f) for f in frames[:split]]
        return Message(idents, header, [_view(f) for f in body[1:]], frames[split:])

    @staticmethod
    def resolve_bulk(msg: Message, remove: bool = True) -> list:
        """``msg.buffers`` with shared-memory buffers read in (and their files
        removed, unless ``remove`` is false: the controller reads a copy for
        the task database before forwarding the message)."""
        refs = msg.header.get("bulk")
        if not refs:
            return msg.buffers
        buffers = list(msg.buffers)
        for index, ref in refs.items():
            buffers[int(index)] = bulk_module.take(ref, remove=remove)
        if remove:
            msg.buffers = buffers
            del msg.header["bulk"]
        return buffers

    def recv(self, sock: zmq.Socket, flags: int = 0) -> Message | None:
        frames = sock.recv_multipart(flags, copy=False)
        return self.unpack([f.bytes if len(f) < self.copy_threshold else f for f in frames])

    def _drop(self, idents: list, why: str) -> None:
        self.dropped += 1
        sender = b"/".join(_bytes(i) for i in idents if isinstance(i, (bytes, zmq.Frame)))[:64]
        log.warning("dropped a message from %r: %s", sender, why)
        return None


def _index_of_delim(frames: list) -> int:
    for i, frame in enumerate(frames):
        if _bytes(frame) == DELIM:
            return i
    raise ValueError


def _bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _view(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def encode_record(value: Any, buffers: list) -> Any:
    """A task record (or query) made JSON-able for a ``db_query``/``db_reply``
    message: datetimes become ``{"$date": iso}``, lists of buffers
    ``{"$buffers": [indices]}`` into ``buffers`` (appended to)."""
    if isinstance(value, datetime):
        return {"$date": value.isoformat()}
    if isinstance(value, dict):
        return {k: encode_record(v, buffers) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (bytes, bytearray, memoryview, zmq.Frame)) for v in value):
            first = len(buffers)
            buffers.extend(value)
            return {"$buffers": list(range(first, len(buffers)))}
        return [encode_record(v, buffers) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(value)
        return {"$buffers": [len(buffers) - 1], "$single": True}
    return value


def decode_record(value: Any, buffers: list) -> Any:
    """The inverse of :func:`encode_record`."""
    if isinstance(value, dict):
        if "$date" in value and len(value) == 1:
            return datetime.fromisoformat(value["$date"])
        if "$buffers" in value:
            found = [bytes(buffers[i]) for i in value["$buffers"]]
            return found[0] if value.get("$single") else found
        return {k: decode_record(v, buffers) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_record(v, buffers) for v in value]
    return value
