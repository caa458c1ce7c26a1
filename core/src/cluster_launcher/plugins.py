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
from .error import PluginError, UnknownNameError

KINDS = ("launcher", "db", "scheduler", "transport")
ROLES = {"engines": "EngineSetLauncher", "controller": "ControllerLauncher"}
# Dotted prefixes of the seed's (and ipyparallel's) class paths: their last
# component names our plugin class.
LEGACY_PREFIXES = ("IPython.parallel.", "ipyparallel.", "IPython.kernel.")
# Short names of the builtins that live in their own distribution, so an
# unknown name can say what to install.
KNOWN_DISTRIBUTIONS = {
    "local": "cluster-launcher-local", "mpi": "cluster-launcher-mpi",
    "ssh": "cluster-launcher-ssh", "pbs": "cluster-launcher-pbs",
    "sge": "cluster-launcher-sge", "lsf": "cluster-launcher-lsf",
    "slurm": "cluster-launcher-slurm", "windowshpc": "cluster-launcher-winhpc",
    "dictdb": "cluster-launcher-dict", "nodb": "cluster-launcher-dict",
    "sqlitedb": "cluster-launcher-sqlite", "mongodb": "cluster-launcher-mongodb",
}


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
        name = getattr(cls, "name", None) if kind in ("scheduler", "transport") else cls.__name__
        if not name:
            raise PluginError(f"plugin {plugin!r}: {kind} class {cls.__qualname__} has no name")
        known = self.by_kind[kind]
        if name.lower() in (n.lower() for n in known):
            other = next(e for n, e in known.items() if n.lower() == name.lower())
            raise PluginError(
                f"{kind} name {name!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.cls.__module__}) and by plugin {plugin!r} ({cls.__module__}); uninstall one"
            )
        known[name] = Entry(name, cls, plugin)

    def resolve(self, kind: str, name: str, role: str | None = None) -> type:
        """The class for ``name``: exact name, then ``<name>EngineSetLauncher``
        or ``<name>ControllerLauncher`` for ``role``, case-insensitively, then
        a legacy ``IPython.parallel.…`` path, then any importable dotted path."""
        if not isinstance(name, str):
            return name  # already a class
        known = self.by_kind[kind]
        wanted = [name] + ([name + ROLES[role]] if kind == "launcher" and role else [])
        for candidate in wanted:
            for entry in known.values():
                if entry.name.lower() == candidate.lower():
                    return entry.cls
        if name.startswith(LEGACY_PREFIXES):
            return self.resolve(kind, name.rsplit(".", 1)[1], role)
        if "." in name:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise UnknownNameError(f"cannot import {kind} {name!r}: {exc}") from None
        raise UnknownNameError(self._unknown_message(kind, name, role))

    def _unknown_message(self, kind: str, name: str, role: str | None) -> str:
        known = self.by_kind[kind]
        shorts = {self.short_name(e.cls, kind): e.name for e in known.values()}
        installed = ", ".join(sorted(shorts)) or "none"
        message = f"unknown {kind} {name!r}; installed: {installed}"
        close = difflib.get_close_matches(name.lower(), [s.lower() for s in shorts], n=1)
        if close:
            message += f"; did you mean {next(s for s in shorts if s.lower() == close[0])!r}?"
        base = name.lower().removesuffix(ROLES.get(role or "", "@").lower())
        for suffix in ("enginesetlauncher", "controllerlauncher"):
            base = base.removesuffix(suffix)
        if base in KNOWN_DISTRIBUTIONS:
            message += f" (pip install {KNOWN_DISTRIBUTIONS[base]})"
        return message

    @staticmethod
    def short_name(cls: type, kind: str) -> str:
        if kind in ("scheduler", "transport"):
            return cls.name
        for suffix in ROLES.values():
            if cls.__name__.endswith(suffix) and cls.__name__ != suffix:
                return cls.__name__.removesuffix(suffix)
        return cls.__name__

    def names(self, kind: str, role: str | None = None) -> list[str]:
        entries = self.by_kind[kind].values()
        return sorted(e.name for e in entries if role is None or getattr(e.cls, "role", None) == role)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    if os.environ.get("CLUSTER_LAUNCHER_DISABLE_PLUGIN_AUTOLOAD"):
        return
    only = os.environ.get("CLUSTER_LAUNCHER_LOAD_PLUGINS")
    allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
    for ep in entry_points(group=hookspecs.PROJECT):
        if (allowed is not None and ep.name not in allowed) or pm.get_plugin(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({dist}, {ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        _DISTRIBUTIONS[ep.name] = (ep.dist.name, ep.dist.version) if ep.dist else ("", "")


_DISTRIBUTIONS: dict[str, tuple[str, str]] = {}
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
        hooks = {"launcher": pm.hook.cluster_launcher_register_launchers,
                 "db": pm.hook.cluster_launcher_register_dbs,
                 "scheduler": pm.hook.cluster_launcher_register_schedulers,
                 "transport": pm.hook.cluster_launcher_register_transports}
        for kind, hook in hooks.items():
            for impl in hook.get_hookimpls():
                for cls in impl.function() or []:
                    registry.add(kind, cls, impl.plugin_name)
        _registry = registry
    return _registry


def resolve(kind: str, name: str | type, role: str | None = None) -> type:
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
        dist, version = _DISTRIBUTIONS.get(name, ("", ""))
        out.append({
            "name": name, "distribution": dist, "version": version,
            "kinds": sorted({k for k, _ in entries}),
            "classes": sorted(e.name for _, e in entries),
            "short_names": sorted({Registry.short_name(e.cls, k) for k, e in entries}),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        })
    return out
