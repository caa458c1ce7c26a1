"""Python objects to buffers and back.

Objects are pickled with cloudpickle (so functions and lambdas defined in
``__main__`` travel by value) at protocol 5: large contiguous buffers
(NumPy arrays, ``bytearray``, memoryviews) leave the pickle stream as
separate frames and are sent without a copy.
"""

from __future__ import annotations

import pickle
import types
from typing import Any

import cloudpickle

# Buffers under this size stay inside the pickle stream: a separate frame
# costs more than copying a few hundred bytes.
INBAND_LIMIT = 1024


def serialize(obj: Any, inband_limit: int = INBAND_LIMIT) -> list:
    """``[pickle_stream, *out_of_band_buffers]``."""
    buffers: list = []

    def keep_small_inband(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < inband_limit:
            return True
        buffers.append(raw)
        return False

    stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_small_inband)
    return [stream, *buffers]


def deserialize(frames: list) -> Any:
    """The object that :func:`serialize` made ``frames`` from.  Out-of-band
    buffers come back writable (received frames are read-only, and NumPy users
    expect to modify what they pulled)."""
    return pickle.loads(frames[0], buffers=[_writable(f) for f in frames[1:]])


def _writable(buf: Any) -> Any:
    view = memoryview(buf)
    return view if not view.readonly else bytearray(view)


def pack_apply(f: Any, args: tuple, kwargs: dict) -> list:
    return serialize((f, args, kwargs))


def unpack_apply(frames: list, namespace: dict[str, Any]) -> tuple[Any, tuple, dict]:
    """The call in ``frames``; a function defined in the client's ``__main__``
    gets ``namespace`` (the engine's) as its globals, so it sees pushed names."""
    f, args, kwargs = deserialize(frames)
    return rebind_main(f, namespace), args, kwargs


def rebind_main(f: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(f, types.FunctionType) and f.__module__ == "__main__":
        # Names the function used on the client (modules it imported, helper
        # functions) are added where the engine has none, so it runs first time;
        # names the engine already has (pushed values) win.
        for name, value in f.__globals__.items():
            if not name.startswith("__"):
                namespace.setdefault(name, value)
        rebound = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
        rebound.__kwdefaults__, rebound.__dict__ = f.__kwdefaults__, f.__dict__
        rebound.__qualname__ = f.__qualname__
        return rebound
    return f
