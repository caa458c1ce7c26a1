"""What runs on the engine at the client's request: the engine's user
namespace and the small functions behind ``execute``, ``push``, ``pull``,
``scatter``/``gather``, ``map`` and ``sync_imports``.

The client pickles these functions by reference, so they live in a module
both sides import (not in the user's ``__main__``); on the engine they act on
:func:`user_namespace`, where ``push`` puts names, ``execute`` runs code and
functions from the client's ``__main__`` find their globals.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .serialize import rebind_main

_USER_NAMESPACE: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}


def user_namespace() -> dict[str, Any]:
    """The engine's persistent namespace."""
    return _USER_NAMESPACE


def execute(code: str, filename: str = "<execute>") -> None:
    exec(compile(code, filename, "exec"), user_namespace())


def push(namespace: dict[str, Any]) -> None:
    user_namespace().update(namespace)


def pull(names: str | list[str]) -> Any:
    namespace = user_namespace()
    try:
        return namespace[names] if isinstance(names, str) else [namespace[n] for n in names]
    except KeyError as exc:
        raise NameError(f"name {exc.args[0]!r} is not defined") from None


def map_chunk(f: Callable, *chunks: Any) -> list:
    return list(map(rebind_main(f, user_namespace()), *chunks))


def import_names(name: str, fromlist: tuple) -> None:
    namespace = user_namespace()
    module = importlib.import_module(name)
    if not fromlist:
        top = name.partition(".")[0]
        namespace[top] = importlib.import_module(top)
        return
    for attr in fromlist:
        if attr == "*":
            public = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
            namespace.update({n: getattr(module, n) for n in public})
        elif hasattr(module, attr):
            namespace[attr] = getattr(module, attr)
        else:
            namespace[attr] = importlib.import_module(f"{name}.{attr}")
