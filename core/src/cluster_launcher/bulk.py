"""Large buffers between processes of one host, outside the zmq path.

A buffer of at least ``Session.bulk_threshold`` bytes bound for a process on
the same host is written to a file in ``/dev/shm`` (memory, not disk) that
only this user can open; the message carries its path and size instead of
the bytes.  The receiver maps the file copy-on-write and removes it: no copy
at all on receipt, one kernel write at the sender, far less than pushing the
bytes through zmq twice (client to controller to engine).  The header (which names the file) is still signed;
the file itself is protected by its 0600 mode, like the key file.
"""

from __future__ import annotations

import mmap
import os
import uuid
from typing import Any

SHM_DIR = "/dev/shm"


def available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def put(buffer: Any) -> dict[str, Any]:
    """Write ``buffer`` to a new shared-memory file; its reference for the header."""
    view = memoryview(buffer).cast("B")
    path = os.path.join(SHM_DIR, f"cluster-launcher-{os.getpid()}-{uuid.uuid4().hex}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        written = 0
        while written < view.nbytes:
            written += os.write(fd, view[written:])
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return {"path": path, "size": view.nbytes}


def take(ref: dict[str, Any], remove: bool = True) -> mmap.mmap | bytes:
    """The content of a shared-memory file as a writable buffer, mapped
    copy-on-write (writes stay private to this process), the file removed
    unless told not to (the mapping outlives it)."""
    path, size = ref["path"], int(ref["size"])
    if not os.path.basename(path).startswith("cluster-launcher-") or os.path.dirname(path) != SHM_DIR:
        raise ValueError(f"refusing a bulk buffer outside {SHM_DIR}: {path!r}")
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != size:
            raise ValueError(f"bulk buffer {path} holds {os.fstat(fd).st_size} bytes, expected {size}")
        mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) if size else b""
    finally:
        os.close(fd)
    if remove:
        discard(ref)
    return mapped


def discard(ref: dict[str, Any]) -> None:
    try:
        os.unlink(ref["path"])
    except FileNotFoundError:
        pass
