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


def clear() -> None:
    """Empty the engine's namespace (``view.clear()``): every name pushed,
    defined or imported there is gone; ``__name__`` and builtins stay."""
    namespace = user_namespace()
    namespace.clear()
    namespace.update({"__name__": "__main__", "__builtins__": __builtins__})


class Reference:
    """An argument that stands for a name in the engine's namespace: ``view.apply(f,
    Reference('a'))`` calls ``f`` with the engine's ``a``.  ``name`` may be
    dotted (``'a.shape'``: attribute lookups), never an arbitrary expression."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"Reference: a name or dotted name (e.g. 'a' or 'a.b'), not {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"

    def resolve(self, namespace: dict[str, Any]) -> Any:
        first, *attributes = self.name.split(".")
        if first not in namespace:
            raise NameError(f"Reference({self.name!r}): name {first!r} is not defined on the engine")
        value = namespace[first]
        for attribute in attributes:
            value = getattr(value, attribute)
        return value


def has_references(args: tuple, kwargs: dict[str, Any]) -> bool:
    return any(isinstance(a, Reference) for a in (*args, *kwargs.values()))


def call_with_references(f: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Call ``f`` with each :class:`Reference` argument replaced by its value
    in the engine's namespace (the outer call of an ``apply`` that has some)."""
    namespace = user_namespace()
    resolved_args = tuple(a.resolve(namespace) if isinstance(a, Reference) else a for a in args)
    resolved_kwargs = {k: v.resolve(namespace) if isinstance(v, Reference) else v for k, v in kwargs.items()}
    return rebind_main(f, namespace)(*resolved_args, **resolved_kwargs)


class UnmetDependency(Exception):
    """Raised on an engine by a function whose ``@depend`` condition is false
    there.  The task fails with it: it is not moved to another engine."""


class Dependent:
    """``f`` guarded by a condition checked on the engine before each call:
    ``dependent(f, condition, *args, **kwargs)`` runs ``f`` only where
    ``condition(*args, **kwargs)`` is true, else raises :class:`UnmetDependency`."""

    def __init__(self, f: Callable, condition: Callable, *condition_args: Any, **condition_kwargs: Any):
        self.f, self.condition = f, condition
        self.condition_args, self.condition_kwargs = condition_args, condition_kwargs
        self.__name__ = getattr(f, "__name__", "dependent")
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        namespace = user_namespace()
        if not rebind_main(self.condition, namespace)(*self.condition_args, **self.condition_kwargs):
            name = getattr(self.condition, "__name__", repr(self.condition))
            raise UnmetDependency(f"{name}() is false on this engine, so {self.__name__}() did not run")
        return rebind_main(self.f, namespace)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Dependent {self.__name__} on {getattr(self.condition, '__name__', self.condition)!r}>"


def dependent(f: Callable, condition: Callable, *condition_args: Any, **condition_kwargs: Any) -> Dependent:
    """``f`` run only where ``condition(*condition_args, **condition_kwargs)`` is true (see :class:`Dependent`)."""
    return Dependent(f, condition, *condition_args, **condition_kwargs)


def depend(condition: Callable, *condition_args: Any, **condition_kwargs: Any) -> Callable[[Callable], Dependent]:
    """Decorator: ``@depend(condition, *args)`` makes the function :func:`dependent` on ``condition``."""
    def decorate(f: Callable) -> Dependent:
        return Dependent(f, condition, *condition_args, **condition_kwargs)
    return decorate


def _import_required(*modules: str, **mapping: Any) -> bool:
    """The condition of :func:`require`: import ``modules`` into the engine's
    namespace and push ``mapping`` there (an ImportError fails the task)."""
    for module in modules:
        import_names(module, ())  # as ``import a.b``: binds ``a``
    user_namespace().update(mapping)
    return True


def require(*modules: Any, **mapping: Any) -> Callable[[Callable], Dependent]:
    """Decorator: before the function runs on an engine, import ``modules``
    (names, or module objects) into the engine's namespace and push ``mapping``
    there; the function (defined in ``__main__`` or :func:`interactive`) sees them."""
    names = []
    for module in modules:
        if isinstance(module, str):
            names.append(module)
        elif isinstance(getattr(module, "__name__", None), str):
            names.append(module.__name__)
        else:
            raise TypeError(f"require: modules are names or module objects, not {type(module).__name__}")
    return depend(_import_required, *names, **mapping)


def interactive(f: Callable) -> Callable:
    """Decorator: ``f`` runs in the engine's namespace (its globals are the
    names pushed or defined there), as a function typed in ``__main__`` does;
    it travels by value, so the engine need not import its module."""
    f.__module__ = "__main__"
    return f
