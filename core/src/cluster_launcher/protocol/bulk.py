"""Large buffers between processes of one host, outside the zmq path.

A buffer of at least ``Session.bulk_threshold`` bytes bound for a process on
the same host is written to a file in ``/dev/shm`` (memory, not disk) that
only this user can open; the message carries its path, size and BLAKE3
digest instead of the bytes.  The receiver maps the file copy-on-write and
removes it: no copy at all on receipt, one kernel write at the sender, far
less than pushing the bytes through zmq twice (client to controller to
engine).

The message header names the file and is signed, so the digest in it covers
the file's content: a receiver accepts a file only if its content hashes to
that digest.  Before it even maps the file, :func:`take` opens it without
following symbolic links and checks that it is a regular file owned by this
user with no other link to it, of the signed size.  ``/dev/shm`` is shared
by every local user (sticky, world-writable), so another user can see the
names go by and, once a receiver has removed a file, create one of the same
name; such a file is refused (it is not ours, or its content is not the
signed one) and never unpickled, nor removed (it is not ours to remove).

This module is a leaf: it imports only the standard library, ``blake3``,
``psutil`` and :mod:`cluster_launcher.error`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import hmac
import mmap
import os
import re
import stat
import uuid
from typing import Any, TypeGuard

import blake3
import psutil

from ..error import BulkError

SHM_DIR = "/dev/shm"
PREFIX = "cluster-launcher-"
# cluster-launcher-<pid of the process that removes the file>-<uuid4 hex>;
# [0-9], not \d (which takes any Unicode digit).
_NAME = re.compile(r"cluster-launcher-([0-9]{1,10})-[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# BLAKE3 on as many threads as it finds worth it: on 2 cores, 100 MB hashes
# in 12 ms instead of 22 ms single-threaded (SHA-256: 58 ms).  Not in a
# process forked (without exec) from another: its thread pool (Rust's rayon)
# may have been started there, and its threads do not survive a fork: a
# multi-threaded hash would wait for them for ever.
_THREADS = blake3.blake3.AUTO
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


@functools.cache
def domain() -> str | None:
    """Who can read this process's shared-memory files: two processes get the
    same value iff they see the same ``/dev/shm`` (same boot, same mount), as
    the same user, in the same pid namespace (so a pid in a file name means
    the same process to both).  ``None`` if there is no writable ``/dev/shm``.

    Cached: a process that changes its user after the first call (a forked
    child dropping privileges) must call ``domain.cache_clear()``."""
    if not available():
        return None

    def part(get: Any) -> str:
        try:
            return str(get())
        except OSError:
            return ""

    def boot_id() -> str:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()

    parts = [
        part(boot_id),
        part(lambda: os.stat(SHM_DIR).st_dev),
        part(lambda: os.stat(SHM_DIR).st_ino),
        # The effective uid: it owns the files this process creates, and
        # take() checks a file's owner against it.
        str(os.geteuid()),
        part(lambda: os.stat("/proc/self/ns/pid").st_ino),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# Below this, one thread: waking a pool costs more than it saves, and its
# idle threads spin on cores the controller and engines need.
_THREADED_FROM = 8 << 20


def _digest(data: Any) -> str:
    threads = _THREADS if len(data) >= _THREADED_FROM and not _forked else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


def _checked_path(path: Any) -> TypeGuard[str]:
    return (isinstance(path, str) and os.path.dirname(path) == SHM_DIR
            and _NAME.fullmatch(os.path.basename(path)) is not None)


def put(buffer: Any, owner_pid: int) -> dict[str, Any]:
    """Write ``buffer`` to a new shared-memory file; its reference for the
    (signed) header: ``{"path", "size", "digest"}``.  ``owner_pid`` is the pid
    of the process that will remove the file (see :func:`sweep`).  Any
    OSError (``/dev/shm`` full, out of file descriptors...) is raised as is,
    with no file left behind."""
    if isinstance(owner_pid, bool) or not isinstance(owner_pid, int) or not 0 <= owner_pid < 10**10:
        raise ValueError(f"owner_pid must be a pid, not {owner_pid!r}")
    view = memoryview(buffer).cast("B")
    path = os.path.join(SHM_DIR, f"{PREFIX}{owner_pid}-{uuid.uuid4().hex}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        written = 0
        while written < view.nbytes:
            written += os.write(fd, view[written:])
        digest = _digest(view)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    return {"path": path, "size": view.nbytes, "digest": digest}


def take(ref: Any, remove: bool = True, verify: bool = True) -> mmap.mmap | bytes:
    """The content of a shared-memory file as a writable buffer, mapped
    copy-on-write (writes stay private to this process), the file removed
    unless told not to (the mapping outlives it).

    Raises :class:`BulkError` unless ``ref`` names a file of the expected
    shape in ``SHM_DIR`` that is a regular file (not a symbolic link) owned by
    this user, with one link, ``ref["size"]`` bytes long and whose content
    hashes to ``ref["digest"]``.  A file that fails a check is left alone.

    ``verify=False`` skips only the digest (reading every page), for the
    controller: it maps a file on receipt, before forwarding the message, so
    before any receiver has removed it, when its name can only be the
    sender's file (another user cannot remove or replace a file of ours in
    the sticky ``/dev/shm``); the processes that unpickle always verify."""
    if not isinstance(ref, dict):
        raise BulkError(f"bulk buffer reference is not an object: {type(ref).__name__}")
    path, size, digest = ref.get("path"), ref.get("size"), ref.get("digest")
    if not isinstance(path, str):
        raise BulkError(f"bulk buffer reference has no path: {path!r}")
    if not _checked_path(path):
        raise BulkError(f"refusing bulk buffer {path!r}: not a {SHM_DIR}/{PREFIX}<pid>-<hex> file")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BulkError(f"bulk buffer {path}: bad size {size!r}")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BulkError(f"bulk buffer {path}: bad digest {digest!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BulkError(f"bulk buffer {path} is gone (already read, or removed)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BulkError(f"bulk buffer {path} is a symbolic link") from None
        raise BulkError(f"bulk buffer {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BulkError(f"bulk buffer {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise BulkError(f"bulk buffer {path} is owned by uid {st.st_uid}, not {os.geteuid()}")
        if st.st_nlink != 1:
            raise BulkError(f"bulk buffer {path} has {st.st_nlink} links, not 1")
        if st.st_size != size:
            raise BulkError(f"bulk buffer {path} holds {st.st_size} bytes, not the signed {size}")
        mapped: mmap.mmap | bytes = (
            mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) if size else b"")
    except OSError as exc:
        raise BulkError(f"bulk buffer {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if verify and not hmac.compare_digest(_digest(mapped), digest):
        if isinstance(mapped, mmap.mmap):
            mapped.close()
        raise BulkError(f"bulk buffer {path}: content does not match the signed digest")
    if remove:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return mapped


def discard(ref: Any) -> None:
    """Remove the file ``ref`` names, if it is still there.  Never raises:
    a malformed reference, or one naming anything but a file of ours in
    ``SHM_DIR``, is ignored."""
    path = ref.get("path") if isinstance(ref, dict) else None
    if not _checked_path(path):
        return
    try:
        os.unlink(path)
    except (FileNotFoundError, PermissionError):  # gone, or another user's (sticky /dev/shm)
        pass


def _running(pid: int) -> bool:
    try:
        return psutil.pid_exists(pid)
    except (OverflowError, ValueError):  # a name no pid can have (anyone may create files here)
        return False


def sweep() -> int:
    """Remove the shared-memory files left by processes that died before
    removing them: every ``cluster-launcher-<pid>-<hex>`` file in ``SHM_DIR``
    whose pid is not a running process and which is a regular file owned by
    this user (symbolic links are never followed).  Returns how many were
    removed; a file another process removes or changes meanwhile is skipped."""
    removed = 0
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return 0
    euid = os.geteuid()
    for name in entries:
        match = _NAME.fullmatch(name)
        if match is None or _running(int(match.group(1))):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != euid:
                continue
            os.unlink(path)
        except OSError:
            continue
        removed += 1
    return removed
