"""Shared-memory buffers (cluster_launcher.protocol.bulk) against a real /dev/shm and a
real second local user (``nobody``): a file planted at a reference's path,
a symbolic or hard link, changed content, bad references, the sweep of a
dead process's files, the fall-back to inline frames when /dev/shm is full,
and the domain id."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import pwd
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator

import pytest

from cluster_launcher.error import BulkError
from cluster_launcher.protocol import bulk
from cluster_launcher.protocol.session import Session

pytestmark = pytest.mark.timeout(60)

SHM = bulk.SHM_DIR
DATA = bytes(range(256)) * 1024  # 256 KiB, every byte value


@pytest.fixture
def root() -> None:
    # Fail, not skip: CI runs as root, and a skipped test proves nothing.
    assert os.geteuid() == 0, "this test acts as another user (nobody): run it as root, as CI does"


as_root = pytest.mark.usefixtures("root")


def shm_files(pids: set[int]) -> set[str]:
    """Our kind of file in /dev/shm whose name carries one of ``pids``."""
    return {name for name in os.listdir(SHM)
            if name.startswith(bulk.PREFIX) and name[len(bulk.PREFIX):].split("-")[0] in {str(p) for p in pids}}


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[set[int]]:
    """Every test leaves no file in /dev/shm named for this process or for a
    pid it adds to the yielded set; files of other processes are not ours to judge."""
    assert bulk.available(), f"these tests need a writable {SHM}"
    pids = {os.getpid()}
    before = shm_files(pids)
    yield pids
    left = shm_files(pids) - before
    for name in left:
        os.unlink(os.path.join(SHM, name))
    assert not left, f"files left in {SHM}: {sorted(left)}"


def name_for(pid: int) -> str:
    return os.path.join(SHM, f"{bulk.PREFIX}{pid}-{uuid.uuid4().hex}")


def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def forked(action: Callable[[], str], become: pwd.struct_passwd | None = None,
           pids: set[int] | None = None) -> str:
    """Run ``action`` in a forked child (as user ``become``, if given); what
    it returns.  The child's pid goes into ``pids``; a child that hangs is
    killed after 20 s."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status, out = 1, ""
        try:
            os.close(read_end)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's: it cannot run in a hang
            signal.alarm(20)
            if become is not None:
                os.setgroups([])
                os.setgid(become.pw_gid)
                os.setuid(become.pw_uid)
            out = action()
            status = 0
        except BaseException:
            out = traceback.format_exc()
        finally:
            try:
                os.write(write_end, out.encode())
            finally:
                os._exit(status)
    if pids is not None:
        pids.add(pid)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def as_nobody(action: Callable[[], str]) -> str:
    return forked(action, become=nobody())


def plant(path: str, content: bytes) -> str:
    """Create ``path`` as nobody (mode 0644), the way another local user would."""
    def create() -> str:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        return "ok"
    assert as_nobody(create) == "ok"
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(30) == 0
    return proc.pid


# --- round trip ----------------------------------------------------------


@pytest.mark.parametrize("data", [DATA, b"x", bytearray(b"\0" * 3_000_000)], ids=["256KiB", "1B", "3MB"])
def test_round_trip(data):
    ref = bulk.put(data, os.getpid())
    assert set(ref) == {"path", "size", "digest"} and ref["size"] == len(data)
    assert os.path.basename(ref["path"]).startswith(f"{bulk.PREFIX}{os.getpid()}-")
    st = os.lstat(ref["path"])
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    mapped = bulk.take(ref)
    assert isinstance(mapped, mmap.mmap) and mapped[:] == bytes(data)
    assert not os.path.exists(ref["path"])  # removed; the mapping outlives it
    mapped[0] = (mapped[0] + 1) % 256  # writable, privately
    assert mapped[0] != data[0]
    mapped.close()


def test_empty_buffer():
    ref = bulk.put(b"", os.getpid())
    assert ref["size"] == 0
    assert bulk.take(ref) == b""
    assert not os.path.exists(ref["path"])


def test_take_without_remove_then_take_again():
    ref = bulk.put(DATA, os.getpid())
    assert bulk.take(ref, remove=False)[:] == DATA
    assert os.path.exists(ref["path"])
    assert bulk.take(ref)[:] == DATA
    with pytest.raises(BulkError, match="is gone"):
        bulk.take(ref)


def test_put_of_a_numpy_array_and_a_memoryview():
    import numpy
    array = numpy.arange(100_000, dtype="float64")
    for buffer in (array, memoryview(array)):
        ref = bulk.put(buffer, os.getpid())
        back = numpy.frombuffer(bulk.take(ref), dtype="float64")
        assert (back == array).all()


def test_put_refuses_a_bad_owner_pid():
    for owner in (-1, True, "1", None, 10**10):
        with pytest.raises(ValueError, match="owner_pid"):
            bulk.put(DATA, owner)


def test_put_leaves_no_file_when_writing_fails(monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        bulk.put(DATA, os.getpid())
    assert info.value.errno == errno.ENOSPC  # as is, for the caller to fall back on
    # no_leftovers checks that the partial file is gone


# --- files that are not what the signed header says -----------------------


@as_root
def test_file_planted_by_another_user_is_refused_and_left_alone():
    ref = bulk.put(DATA, os.getpid())
    bulk.take(ref)  # read and removed: the name is free again
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."  # a malicious pickle
    plant(ref["path"], evil.ljust(len(DATA), b" "))
    try:
        with pytest.raises(BulkError, match=f"owned by uid {nobody().pw_uid}, not {os.geteuid()}") as info:
            bulk.take(ref)
        assert ref["path"] in str(info.value)
        assert os.path.exists(ref["path"])  # not ours: never removed by take
    finally:
        os.unlink(ref["path"])


@as_root
def test_file_planted_with_the_signed_size_and_digest_is_still_refused():
    """Even a copy of the genuine content, when another user owns the file."""
    ref = bulk.put(DATA, os.getpid())
    bulk.take(ref)
    plant(ref["path"], DATA)
    try:
        with pytest.raises(BulkError, match="owned by uid"):
            bulk.take(ref)
    finally:
        os.unlink(ref["path"])


def test_symbolic_link_is_refused():
    ref = bulk.put(DATA, os.getpid())
    target = bulk.put(DATA, os.getpid())  # the same content, even
    bulk.take(ref)
    os.symlink(target["path"], ref["path"])
    try:
        with pytest.raises(BulkError, match="is a symbolic link"):
            bulk.take(ref)
        assert os.path.lexists(ref["path"]) and os.path.exists(target["path"])
    finally:
        os.unlink(ref["path"])
        bulk.discard(target)


def test_hard_link_is_refused():
    ref = bulk.put(DATA, os.getpid())
    other = name_for(os.getpid())
    os.link(ref["path"], other)
    try:
        with pytest.raises(BulkError, match="has 2 links, not 1"):
            bulk.take(ref)
        assert os.path.exists(ref["path"])  # a check failed: left as it is
    finally:
        os.unlink(other)
        bulk.discard(ref)


def test_content_changed_after_put_is_refused():
    ref = bulk.put(DATA, os.getpid())
    with open(ref["path"], "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe")
    try:
        with pytest.raises(BulkError, match="content does not match the signed digest"):
            bulk.take(ref)
    finally:
        bulk.discard(ref)


def test_directory_at_the_path_is_refused():
    path = name_for(os.getpid())
    os.mkdir(path)
    try:
        with pytest.raises(BulkError, match="not a regular file"):
            bulk.take({"path": path, "size": 0, "digest": "0" * 64})
    finally:
        os.rmdir(path)


@pytest.mark.parametrize("delta", [1, -1])
def test_size_mismatch_is_refused(delta):
    ref = bulk.put(DATA, os.getpid())
    try:
        with pytest.raises(BulkError, match=f"holds {len(DATA)} bytes, not the signed {len(DATA) + delta}"):
            bulk.take({**ref, "size": len(DATA) + delta})
        assert os.path.exists(ref["path"])
    finally:
        bulk.discard(ref)


HEX = "0123456789abcdef" * 2


@pytest.mark.parametrize("path", [
    "/dev/shm/../etc/passwd",
    f"/dev/shm/../dev/shm/cluster-launcher-1-{HEX}",
    f"/tmp/cluster-launcher-1-{HEX}",
    f"/dev/shm/sub/cluster-launcher-1-{HEX}",
    f"cluster-launcher-1-{HEX}",
    f"/dev/shm/cluster-launcher-1-{'g' * 32}",
    f"/dev/shm/cluster-launcher-1-{HEX.upper()}",
    f"/dev/shm/cluster-launcher-1-{HEX[:-1]}",
    f"/dev/shm/cluster-launcher-x-{HEX}",
    f"/dev/shm/cluster-launcher-\u0661-{HEX}",  # an Arabic-Indic digit
    f"/dev/shm/cluster-launcher-1-{HEX}\n",
    f"/dev/shm/other-1-{HEX}",
    "/dev/shm",
])
def test_bad_paths_are_refused(path):
    with pytest.raises(BulkError, match="refusing bulk buffer"):
        bulk.take({"path": path, "size": 0, "digest": "0" * 64})


@pytest.mark.parametrize("ref, reason", [
    (None, "not an object"),
    ([f"/dev/shm/cluster-launcher-1-{HEX}", 0], "not an object"),
    ({}, "no path"),
    ({"path": 7, "size": 0, "digest": "0" * 64}, "no path"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": "0", "digest": "0" * 64}, "bad size"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": -1, "digest": "0" * 64}, "bad size"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": True, "digest": "0" * 64}, "bad size"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": 0}, "bad digest"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": 0, "digest": "é" * 64}, "bad digest"),
    ({"path": f"/dev/shm/cluster-launcher-1-{HEX}", "size": 0, "digest": "0" * 63}, "bad digest"),
])
def test_malformed_refs_are_refused(ref, reason):
    with pytest.raises(BulkError, match=reason):
        bulk.take(ref)


def test_discard_ignores_malformed_refs_and_foreign_paths(tmp_path):
    outside = tmp_path / f"cluster-launcher-1-{HEX}"
    outside.write_bytes(b"keep me")
    for ref in (None, [], {}, {"path": None}, {"path": 3}, {"path": str(outside)},
                {"path": f"/dev/shm/../{outside}"}, {"path": "/dev/shm"}, "/dev/shm/x"):
        bulk.discard(ref)
    assert outside.read_bytes() == b"keep me"
    bulk.discard({"path": name_for(os.getpid())})  # well-formed but gone: fine
    ref = bulk.put(DATA, os.getpid())
    bulk.discard({"path": ref["path"]})  # only the path is needed
    assert not os.path.exists(ref["path"])


# --- the sweep ---------------------------------------------------------------


def test_sweep_removes_files_of_dead_processes_only(no_leftovers):
    dead = dead_pid()
    no_leftovers.add(dead)
    stale = [bulk.put(DATA, dead), bulk.put(b"", dead)]
    live = bulk.put(DATA, os.getpid())
    link = name_for(dead)
    os.symlink(live["path"], link)  # a dead pid's name, but a symbolic link: never followed nor removed
    try:
        bulk.sweep()  # its count is checked below, where no other process's files can count
        assert not any(os.path.exists(ref["path"]) for ref in stale)
        assert os.path.exists(live["path"]) and os.path.lexists(link)
    finally:
        os.unlink(link)
        bulk.discard(live)


def test_sweep_counts_what_it_removed(monkeypatch, tmp_path):
    monkeypatch.setattr(bulk, "SHM_DIR", str(tmp_path))
    dead = dead_pid()
    stale = [bulk.put(DATA, dead) for _ in range(3)]
    live = bulk.put(DATA, os.getpid())
    (tmp_path / f"cluster-launcher-{dead}-not-hex").write_bytes(b"")  # not our name: kept
    (tmp_path / f"cluster-launcher-{dead}-{HEX}").mkdir()  # not a regular file: kept
    assert bulk.sweep() == 3
    assert not any(os.path.exists(ref["path"]) for ref in stale) and os.path.exists(live["path"])
    assert bulk.sweep() == 0
    monkeypatch.setattr(bulk, "SHM_DIR", str(tmp_path / "missing"))
    assert bulk.sweep() == 0


def test_sweep_survives_a_name_no_pid_can_have(monkeypatch, tmp_path):
    """Anyone can create files in /dev/shm: a 10-digit "pid" must not stop the
    sweep (the controller runs it in its loop)."""
    monkeypatch.setattr(bulk, "SHM_DIR", str(tmp_path))
    (tmp_path / f"cluster-launcher-9999999999-{HEX}").write_bytes(b"")
    assert bulk.sweep() == 1


@as_root
def test_sweep_leaves_another_users_files(no_leftovers):
    dead = dead_pid()
    no_leftovers.add(dead)
    theirs = plant(name_for(dead), b"not ours")
    try:
        bulk.sweep()
        assert os.path.exists(theirs)
    finally:
        os.unlink(theirs)


# --- Session.pack falls back to inline frames -------------------------------


def test_pack_falls_back_to_inline_when_shared_memory_is_full(monkeypatch, caplog):
    real_put = bulk.put
    written: list[dict] = []

    def put_then_full(buffer, owner_pid):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(real_put(buffer, owner_pid))
        return written[-1]

    monkeypatch.setattr(bulk, "put", put_then_full)
    session = Session(key=b"key")
    buffers = [DATA, b"small", DATA[::-1], bytearray(300_000)]
    header = {"type": "apply_request", "id": "m1"}
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        frames = session.pack(header, buffers, shm_owner=os.getpid())
    assert len(written) == 1 and not os.path.exists(written[0]["path"])  # the one written was removed
    assert "bulk" not in header
    msg = session.unpack(frames)
    assert msg is not None and "bulk" not in msg.header
    assert [bytes(b) for b in Session.resolve_bulk(msg)] == [bytes(b) for b in buffers]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable or full" in warnings[0] and "inline" in warnings[0]


def test_pack_uses_shared_memory_when_it_can():
    session = Session(key=b"key")
    buffers = [DATA, b"small"]
    frames = session.pack({"type": "t", "id": "m2"}, buffers, shm_owner=os.getpid())
    msg = session.unpack(frames)
    refs = msg.header["bulk"]
    assert list(refs) == ["0"] and refs["0"]["size"] == len(DATA) and bytes(msg.buffers[0]) == b""
    assert [bytes(b) for b in Session.resolve_bulk(msg)] == [DATA, b"small"]
    assert not os.path.exists(refs["0"]["path"]) and "bulk" not in msg.header


def test_pack_without_an_owner_sends_inline():
    session = Session(key=b"key")
    msg = session.unpack(session.pack({"type": "t", "id": "m3"}, [DATA]))
    assert "bulk" not in msg.header and bytes(msg.buffers[0]) == DATA


# --- the domain id -------------------------------------------------------


def test_domain_is_stable_and_shared_with_a_child_of_the_same_user():
    mine = bulk.domain()
    assert isinstance(mine, str) and len(mine) == 64
    assert Session(key=b"k").domain == mine
    out = subprocess.run([sys.executable, "-c", "from cluster_launcher.protocol import bulk; print(bulk.domain())"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert out == mine


@as_root
def test_domain_differs_for_another_user():
    def theirs() -> str:
        bulk.domain.cache_clear()  # the fork inherited root's cached value
        return str(bulk.domain())
    out = as_nobody(theirs)
    assert out != "None" and len(out) == 64 and out != bulk.domain()


def test_domain_is_none_without_shared_memory(monkeypatch, tmp_path):
    bulk.domain.cache_clear()
    monkeypatch.setattr(bulk, "SHM_DIR", str(tmp_path / "missing"))
    try:
        assert bulk.domain() is None
    finally:
        bulk.domain.cache_clear()


def test_put_and_take_in_a_forked_child_after_the_parent_hashed(no_leftovers):
    """BLAKE3's thread pool, started by a large hash here, does not survive a
    fork: a forked child must still hash (single-threaded) rather than hang."""
    big = bytes(8_000_000)
    bulk.take(bulk.put(big, os.getpid())).close()  # starts the pool, if the hash uses threads

    def round_trip() -> str:
        with bulk.take(bulk.put(big, os.getpid())) as mapped:
            return "ok" if mapped[:] == big else "wrong content"
    assert forked(round_trip, pids=no_leftovers) == "ok"
