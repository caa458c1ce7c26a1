"""Session: replayed messages, malformed headers, garbage frames (over real
zmq sockets too), rate-limited drop logging, and resolve_bulk when a
shared-memory file is missing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest
import zmq

from cluster_launcher.error import BulkError
from cluster_launcher.protocol import bulk
from cluster_launcher.protocol.session import DELIM, Session

pytestmark = pytest.mark.timeout(60)

KEY = b"test-key"
BIG = bytes(range(256)) * 1024  # 256 KiB: at the bulk threshold


def signed(session: Session, head: bytes, *buffers: bytes) -> list:
    """Frames carrying ``head`` as is, correctly signed."""
    return [DELIM, session.sign((head, *buffers)), head, *buffers]


def message(session: Session, n: int) -> list:
    return session.pack({"type": "t", "id": f"m{n}"}, [f"payload {n}".encode()])


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)  # a lost message fails the test, never hangs it
    a.bind("inproc://session-test")
    b.connect("inproc://session-test")
    try:
        yield a, b
    finally:
        a.close(0)
        b.close(0)
        context.term()


# --- replays -----------------------------------------------------------------


def test_replayed_message_is_dropped(pair, caplog):
    sender, receiver = pair
    tx, rx = Session(key=KEY), Session(key=KEY)
    frames = tx.pack({"type": "shutdown", "id": "once", "hub": True})
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        sender.send_multipart(frames)
        sender.send_multipart(frames)  # captured off the wire and sent again
        sender.send_multipart(message(tx, 2))
        first, second, third = rx.recv(receiver), rx.recv(receiver), rx.recv(receiver)
    assert first is not None and first.header["id"] == "once"
    assert second is None
    assert third is not None and third.header["id"] == "m2"
    assert rx.dropped == 1
    assert warnings(caplog) == ["dropped a message from b'': replayed message"]


def test_replay_history_is_one_per_session_across_sockets(pair):
    """The same Session receiving on two sockets: a message accepted on one is a replay on the other."""
    tx, rx = Session(key=KEY), Session(key=KEY)
    frames = message(tx, 1)
    assert rx.unpack(list(frames)) is not None
    sender, receiver = pair
    sender.send_multipart(frames)
    assert rx.recv(receiver) is None and rx.dropped == 1


def test_replay_window_evicts_the_oldest():
    tx, rx = Session(key=KEY), Session(key=KEY, replay_window=2)
    a, b, c = (message(tx, n) for n in range(3))
    assert all(rx.unpack(f) is not None for f in (a, b, c))  # remembered: b, c
    assert rx.unpack(c) is None  # still within the window
    assert rx.unpack(b) is None
    assert rx.unpack(a) is not None  # evicted: accepted again (now remembered: c, a)
    assert rx.unpack(b) is not None  # evicted by a
    assert rx.dropped == 2
    assert len(rx._seen) == len(rx._seen_order) == 2


def test_replay_window_zero_disables():
    tx, rx = Session(key=KEY), Session(key=KEY, replay_window=0)
    frames = message(tx, 1)
    assert rx.unpack(frames) is not None and rx.unpack(frames) is not None
    assert rx.dropped == 0 and not rx._seen


def test_a_dropped_message_is_not_remembered():
    """Only accepted messages enter the history: a forged copy does not block the real one."""
    tx, rx = Session(key=KEY), Session(key=KEY)
    frames = message(tx, 1)
    assert rx.unpack([DELIM, b"\0" * 32, *frames[2:]]) is None
    assert rx.unpack(frames) is not None


# --- malformed input -------------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"[" * 100_000,  # RecursionError in json
    b"{" * 100_000,
    b'{"a":' * 50_000,
    b"[1]",
    b'"shutdown"',
    b"null",
    b"3",
    b'{"id": "no type"}',
    b'{"type": 3}',
    b'{"type": "t"',
    b"\xff\xfe{}",
    b"",
], ids=lambda h: repr(h[:12]) + f"..{len(h)}")
def test_malformed_signed_header_is_dropped(head, caplog):
    session = Session(key=KEY)
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        assert session.unpack(signed(session, head)) is None
    assert session.dropped == 1
    assert warnings(caplog) == ["dropped a message from b'': malformed header"]


@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [DELIM],
    [DELIM, b"sig"],
    [b"ident", DELIM, b"sig", b"{}"],
    [DELIM, b"", b'{"type": "shutdown"}'],
    [1, 2, 3],
    [None],
    [object(), DELIM],
    [bytearray(b"x"), memoryview(DELIM), b"", b"{}"],
], ids=repr)
def test_garbage_frames_never_raise(frames):
    session = Session(key=KEY)
    assert session.unpack(frames) is None
    assert session.dropped == 1


def test_recv_of_garbage_returns_none(pair):
    sender, receiver = pair
    session = Session(key=KEY)
    garbage = [[b"no delimiter"], [DELIM], [DELIM, b"x" * 32, b"[" * 100_000],
               [DELIM, session.sign([b"[" * 100_000]), b"[" * 100_000],
               [DELIM, b"", b"x" * (200 * 1024)]]  # a zero-copy frame (over copy_threshold)
    for frames in garbage:
        sender.send_multipart(frames)
    assert [session.recv(receiver) for _ in garbage] == [None] * len(garbage)
    assert session.dropped == len(garbage)
    sender.send_multipart(message(session, 1))  # and a good one still goes through
    assert session.recv(receiver).header["id"] == "m1"


def test_recv_noblock_on_an_empty_socket_raises_again(pair):
    _, receiver = pair
    with pytest.raises(zmq.Again):
        Session(key=KEY).recv(receiver, zmq.NOBLOCK)


# --- rate-limited drop logging ---------------------------------------------------------


def test_drop_logging_is_rate_limited(caplog):
    session = Session(key=KEY)
    now = [1000.0]
    session._clock = lambda: now[0]
    bad = [DELIM, b"forged", b'{"type": "t"}']
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        for _ in range(12):
            session.unpack(bad)
        lines = warnings(caplog)
        assert lines == ["dropped a message from b'': bad signature"] * 10  # the 11th and 12th: quiet

        now[0] += 9.9
        session.unpack(bad)  # still within 10 s of the last line
        assert len(warnings(caplog)) == 10

        now[0] += 0.1
        session.unpack([DELIM])  # 10 s since the last line: a summary of the 4 since
        lines = warnings(caplog)
        assert len(lines) == 11
        assert lines[-1].startswith("dropped 4 more messages since the last such line")
        assert "truncated message" in lines[-1]

        session.unpack(bad)
        now[0] += 10
        session.unpack(bad)
        lines = warnings(caplog)
        assert len(lines) == 12 and lines[-1].startswith("dropped 2 more messages")
    assert session.dropped == 16  # every drop is counted, logged or not


def test_inline_fallback_warning_is_rate_limited(monkeypatch, caplog):
    def full(buffer, owner_pid):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bulk, "put", full)
    session = Session(key=KEY)
    session._clock = lambda: 0.0
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        for n in range(15):
            frames = session.pack({"type": "t", "id": str(n)}, [BIG], shm_owner=os.getpid())
            assert bytes(session.unpack(frames).buffers[0]) == BIG
    lines = warnings(caplog)
    assert len(lines) == 10 and all("unavailable or full" in line for line in lines)


# --- resolve_bulk ----------------------------------------------------------------


@pytest.fixture
def shm_clean() -> Iterator[None]:
    assert bulk.available(), f"this test needs a writable {bulk.SHM_DIR}"
    prefix = f"{bulk.PREFIX}{os.getpid()}-"
    before = {n for n in os.listdir(bulk.SHM_DIR) if n.startswith(prefix)}
    yield
    left = {n for n in os.listdir(bulk.SHM_DIR) if n.startswith(prefix)} - before
    for name in left:
        os.unlink(os.path.join(bulk.SHM_DIR, name))
    assert not left, f"files left in {bulk.SHM_DIR}: {sorted(left)}"


def bulk_message(session: Session, n: int = 3):
    buffers = [bytes([i]) * len(BIG) for i in range(n)]
    msg = session.unpack(session.pack({"type": "t", "id": "big"}, buffers, shm_owner=os.getpid()))
    assert msg is not None and sorted(msg.header["bulk"]) == [str(i) for i in range(n)]
    return msg, buffers


def test_resolve_bulk_reads_and_removes(shm_clean):
    session = Session(key=KEY)
    msg, buffers = bulk_message(session)
    paths = [ref["path"] for ref in msg.header["bulk"].values()]
    assert [bytes(b) for b in Session.resolve_bulk(msg, remove=False)] == buffers
    assert all(os.path.exists(p) for p in paths) and "bulk" in msg.header
    assert [bytes(b) for b in Session.resolve_bulk(msg)] == buffers
    assert not any(os.path.exists(p) for p in paths) and "bulk" not in msg.header
    assert [bytes(b) for b in msg.buffers] == buffers


def test_resolve_bulk_failure_removes_the_other_files(shm_clean):
    session = Session(key=KEY)
    msg, _ = bulk_message(session)
    refs = msg.header["bulk"]
    os.unlink(refs["1"]["path"])  # the middle one is gone
    with pytest.raises(BulkError, match="is gone"):
        Session.resolve_bulk(msg)
    assert not any(os.path.exists(ref["path"]) for ref in refs.values())


def test_resolve_bulk_failure_without_remove_keeps_the_files(shm_clean):
    session = Session(key=KEY)
    msg, _ = bulk_message(session)
    refs = msg.header["bulk"]
    with open(refs["2"]["path"], "r+b") as f:
        f.write(b"tampered")
    with pytest.raises(BulkError, match="does not match the signed digest"):
        Session.resolve_bulk(msg, remove=False)
    assert all(os.path.exists(ref["path"]) for ref in refs.values())
    for ref in refs.values():
        bulk.discard(ref)


@pytest.mark.parametrize("refs", [
    ["not", "a", "dict"],
    {"9": {"path": "/dev/shm/x", "size": 0, "digest": "0" * 64}},
    {"x": {}},
    {"-1": {}},
])
def test_resolve_bulk_refuses_malformed_references(refs):
    session = Session(key=KEY)
    head = json.dumps({"type": "t", "id": "m", "bulk": refs}).encode()
    msg = session.unpack(signed(session, head, b""))
    assert msg is not None
    with pytest.raises(BulkError, match="malformed bulk buffer references"):
        Session.resolve_bulk(msg)
