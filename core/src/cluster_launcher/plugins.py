"""The plugin manager: entry points in, classes out by short name.

Builtins and third-party plugins load the same way, through the
``cluster_launcher`` entry-point group.  Two environment variables steer it:

``CLUSTER_LAUNCHER_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry points at all (register plugins by hand, as tests do);
``CLUSTER_LAUNCHER_LOAD_PLUGINS=local,dict,leastload``
    load only the entry points with these names (empty: none).
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .db import BaseDB
from .error import PluginError, UnknownNameError
from .launcher import Launcher
from .legacy import LEGACY_CLASS_NAMES, LEGACY_PREFIXES
from .scheduler import Scheduler
from .transport import Transport

# kind -> (its register hook, the base class every class it registers subclasses)
KINDS: dict[str, tuple[str, type]] = {
    "launcher": ("cluster_launcher_register_launchers", Launcher),
    "db": ("cluster_launcher_register_dbs", BaseDB),
    "scheduler": ("cluster_launcher_register_schedulers", Scheduler),
    "transport": ("cluster_launcher_register_transports", Transport),
}
# Kinds whose classes are registered under their ``name`` attribute (launchers and DBs: their class name).
NAMED_KINDS = ("scheduler", "transport")
ROLES = {"engines": "EngineSetLauncher", "controller": "ControllerLauncher"}
# Builtins that live in their own distribution, so an unknown name can say what to install.
KNOWN_DISTRIBUTIONS = {name: f"cluster-launcher-{dist}" for name, dist in (
    ("local", "local"), ("mpi", "mpi"), ("ssh", "ssh"), ("pbs", "pbs"), ("sge", "sge"), ("lsf", "lsf"),
    ("slurm", "slurm"), ("windowshpc", "winhpc"), ("dictdb", "dict"), ("nodb", "dict"),
    ("sqlitedb", "sqlite"), ("mongodb", "mongodb"))}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _label(plugin: str) -> str:
    """How errors name a plugin: ``'local' (cluster-launcher-local 0.1.0)``."""
    return f"{plugin!r} ({' '.join(_DISTRIBUTIONS[plugin])})" if plugin in _DISTRIBUTIONS else repr(plugin)


@dataclass
class Entry:
    name: str
    cls: type
    plugin: str  # the entry point (or registration) name it came from


@dataclass
class Registry:
    """Classes by kind and name, built from every plugin's register hooks."""

    by_kind: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, cls: type, plugin: str) -> None:
        hook, base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {_label(plugin)}: {hook} returned {cls!r}, not a {base.__name__} subclass")
        name = cls.name if kind in NAMED_KINDS and issubclass(cls, (Scheduler, Transport)) else cls.__name__
        if not name:
            raise PluginError(f"plugin {_label(plugin)}: {kind} class {cls.__qualname__} has no name")
        other = next((e for n, e in self.by_kind[kind].items() if n.lower() == name.lower()), None)
        if other:
            raise PluginError(f"{kind} name {name!r} is registered twice: by plugin {_label(other.plugin)} "
                              f"and by plugin {_label(plugin)}; uninstall one")
        self.by_kind[kind][name] = Entry(name, cls, plugin)

    def resolve(self, kind: str, name: str | type, role: str | None = None) -> type:
        """The class for ``name``: exact name, then ``<name>EngineSetLauncher``
        or ``<name>ControllerLauncher`` for ``role`` (without a role: the one
        installed) or ``<name>DB``, case-insensitively, then a legacy
        ``IPython.parallel.…`` path, then any importable dotted path."""
        if not isinstance(name, str):
            return name  # already a class
        by_lower = {n.lower(): e.cls for n, e in self.by_kind[kind].items()}
        suffixes = ([ROLES[role]] if role else list(ROLES.values())) if kind == "launcher" else \
            ["DB"] if kind == "db" else []  # --db=sqlite: SQLiteDB
        found = [by_lower[c] for c in [name.lower()] + [(name + s).lower() for s in suffixes] if c in by_lower]
        if len(found) == 1 or (found and by_lower.get(name.lower()) is found[0]):
            return found[0]
        if found:
            raise UnknownNameError(f"launcher {name!r} needs a role (engines or controller): it could be "
                                   + " or ".join(c.__name__ for c in found))
        if name.startswith(LEGACY_PREFIXES):
            return self.resolve(kind, name.rsplit(".", 1)[1], role)
        if name in LEGACY_CLASS_NAMES:
            return self.resolve(kind, LEGACY_CLASS_NAMES[name], role)
        if "." in name:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise UnknownNameError(f"cannot import {kind} {name!r}: {_one_line(exc)}") from None
        shorts = sorted({self.short_name(e.cls, kind) for e in self.by_kind[kind].values()})
        message = f"unknown {kind} {name!r}; installed: {', '.join(shorts) or 'none'}"
        close = difflib.get_close_matches(name.lower(), [s.lower() for s in shorts], n=1)
        if close:
            message += f"; did you mean {next(s for s in shorts if s.lower() == close[0])!r}?"
        base = name.lower().removesuffix("enginesetlauncher").removesuffix("controllerlauncher")
        if base in KNOWN_DISTRIBUTIONS:
            message += f" (pip install {KNOWN_DISTRIBUTIONS[base]})"
        raise UnknownNameError(message)

    @staticmethod
    def short_name(cls: type, kind: str) -> str:
        """What users type: ``'SSH'`` for ``SSHEngineSetLauncher``, a scheduler's ``name``."""
        if kind in NAMED_KINDS and issubclass(cls, (Scheduler, Transport)):
            return cls.name
        suffix = next((s for s in ROLES.values() if cls.__name__.endswith(s) and cls.__name__ != s), "")
        return cls.__name__.removesuffix(suffix) if suffix else cls.__name__

    def names(self, kind: str, role: str | None = None) -> list[str]:
        entries = self.by_kind[kind].values()
        return sorted(e.name for e in entries if role is None or getattr(e.cls, "role", None) == role)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    if os.environ.get("CLUSTER_LAUNCHER_DISABLE_PLUGIN_AUTOLOAD"):
        return
    only = os.environ.get("CLUSTER_LAUNCHER_LOAD_PLUGINS")
    allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
    for ep in entry_points(group=hookspecs.PROJECT):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = (ep.dist.name, ep.dist.version) if ep.dist else ("unknown distribution",)
        if pm.get_plugin(ep.name):
            raise PluginError(f"plugin name {ep.name!r} is used by two distributions: "
                              f"{' '.join(_DISTRIBUTIONS[ep.name])} and {' '.join(dist)}; uninstall one")
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({' '.join(dist)}, {ep.value}) failed to load: "
                              f"{_one_line(exc)}") from exc
        _DISTRIBUTIONS[ep.name] = dist


_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {}
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, entry points loaded on first call."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _load_entry_points(pm)
        _pm = pm
    return _pm


def get_registry() -> Registry:
    """Every registered class, indexed by kind and name (built once)."""
    global _registry
    if _registry is None:
        pm, registry = get_plugin_manager(), Registry()
        for kind, (hook, _) in KINDS.items():
            for impl in getattr(pm.hook, hook).get_hookimpls():
                try:
                    classes = impl.function() or []
                except Exception as exc:
                    raise PluginError(f"plugin {_label(impl.plugin_name)}: {hook} raised {_one_line(exc)}") from exc
                for cls in classes:
                    registry.add(kind, cls, impl.plugin_name)
        _registry = registry
    return _registry


def resolve(kind: str, name: str | type, role: str | None = None) -> type:
    """The installed class ``name`` selects (see :meth:`Registry.resolve`)."""
    return get_registry().resolve(kind, name, role)


def reset() -> None:
    """Forget the loaded plugins (tests, or after installing one)."""
    global _pm, _registry
    _pm = _registry = None
    _DISTRIBUTIONS.clear()


def describe() -> list[dict[str, Any]]:
    """What ``cluster-launcher plugins`` prints: one dict per plugin."""
    pm, registry = get_plugin_manager(), get_registry()
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        entries = [(k, e) for k in KINDS for e in registry.by_kind[k].values() if e.plugin == name]
        dist, version = (*_DISTRIBUTIONS.get(name, ()), "", "")[:2]
        out.append({"name": name, "distribution": dist, "version": version,
                    "kinds": sorted({k for k, _ in entries}), "classes": sorted(e.name for _, e in entries),
                    "short_names": sorted({Registry.short_name(e.cls, k) for k, e in entries}),
                    "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or [])})
    return out
