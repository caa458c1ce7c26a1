"""Loading configuration: profile config files plus command-line overrides,
with IPython.parallel 0.11–0.13's section and option names mapped onto ours.

A config file is Python run by traitlets' :class:`PyFileConfigLoader`; both
``c = get_config()`` followed by ``c.Controller.ip = '*'`` and the bare
``c.Controller.ip = '*'`` work.  :func:`build_config` is the one entry point
the CLI, the runtime mains and :class:`cluster_launcher.Cluster` share.

Legacy names are translated, each translation announced once per process on
the ``cluster_launcher`` logger:

* sections: ``HubFactory``/``IPControllerApp``/``RegistrationFactory`` ->
  ``Controller``; ``IPClusterApp``/``IPClusterEngines``/``IPClusterStart`` ->
  ``Cluster``; ``IPEngineApp``/``EngineFactory``/``MPI`` -> ``Engine``;
  ``MPIExec…Launcher`` -> ``MPI…Launcher``; a batch system's base section
  (``PBSLauncher``, ``SSHLauncher``…) -> both of its launchers;
* options: see :data:`LEGACY_OPTIONS` (``engine_launcher`` ->
  ``engine_launcher_class`` with a :class:`DeprecationWarning`,
  ``reuse_files`` -> ``reuse``, ``url_file`` -> ``file``, …).

Values naming classes (``'IPython.parallel.controller.dictdb.DictDB'``) are
kept as given; :func:`cluster_launcher.plugins.resolve` turns them into
classes, and :func:`check_names` does so early to report a bad name.
"""

from __future__ import annotations

import ast
import difflib
import logging
import math
import os
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from traitlets import Container, Dict, TraitError, TraitType
from traitlets.config import Config, Configurable, PyFileConfigLoader
from traitlets.config.loader import ConfigFileNotFound, DeferredConfigString, LazyConfigValue

from .. import plugins
from ..cluster import Cluster
from ..controller import Controller
from ..engine import Engine
from ..error import ConfigError, UnknownNameError
from ..legacy import (
    BUILTIN_DB_CLASSES,
    BUILTIN_LAUNCHER_PREFIXES,
    LAUNCHER_SUFFIXES,
    LEGACY_CONFIG_FILES,
    LEGACY_LAUNCHER_OPTIONS,
    LEGACY_LAUNCHER_SECTIONS,
    LEGACY_OPTIONS,
    LEGACY_SECTIONS,
    LEGACY_UNITS,
    OBSOLETE_OPTIONS,
)
from ..protocol.session import Session
from ..scheduler import TaskScheduler

log = logging.getLogger("cluster_launcher")

ROLES = ("cluster", "controller", "engine")
# Per role, the files loaded from the profile directory, later ones winning:
# IPython's file name first, so a profile copied from IPython keeps working.
ROLE_FILES = {role: (LEGACY_CONFIG_FILES[role], f"{role}_config.py") for role in ROLES}
COMMAND_LINE = "command line"

_announced: set[str] = set()


def _announce(message: str, deprecated: bool = False) -> None:
    """Log ``message`` once per process (and warn, for names IPython itself deprecated)."""
    if message in _announced:
        return
    _announced.add(message)
    log.warning("%s", message)
    if deprecated:
        warnings.warn(message, DeprecationWarning, stacklevel=3)


# --- where each option came from ---------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an option was set: a file and line, or a command-line argument."""

    source: str  # a file path, or COMMAND_LINE
    section: str  # as the user wrote it (maybe a legacy name)
    option: str
    line: int | None = None
    argument: str = ""

    def __str__(self) -> str:
        if self.source == COMMAND_LINE:
            return f"{COMMAND_LINE} {self.argument}"
        return f"{self.source}:{self.line}" if self.line else self.source


Origins = dict[tuple[str, str], Origin]


def _assignment_lines(path: str) -> dict[tuple[str, str], int]:
    """First line of each ``<name>.<Section>.<option>`` in a config file."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return {}
    lines: dict[tuple[str, str], int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name):
            key = (node.value.attr, node.attr)
            lines[key] = min(lines.get(key, node.lineno), node.lineno)
    return lines


# --- reading ------------------------------------------------------------------


def _python_error(path: str, exc: BaseException) -> ConfigError:
    """A one-line error naming the config file and the failing line."""
    if isinstance(exc, SyntaxError) and exc.filename == path:
        return ConfigError(f"{path}:{exc.lineno}: SyntaxError: {exc.msg}")
    line = next((frame.lineno for frame in reversed(traceback.extract_tb(exc.__traceback__))
                 if frame.filename == path), None)
    where = f"{path}:{line}" if line else path
    message = " ".join(str(exc).split())
    hint = ""
    if isinstance(exc, NameError) and getattr(exc, "name", "")[:1].isupper():
        hint = f" (options are set on c, e.g. c.{exc.name}.option = value)"
    return ConfigError(f"{where}: {type(exc).__name__}: {message}{hint}")


def load_config_file(path: str) -> tuple[Config, Origins]:
    """Run one config file; return its options, as written, and where each was set."""
    path = os.path.abspath(path)
    loader = PyFileConfigLoader(os.path.basename(path), path=os.path.dirname(path), log=log)
    try:
        config = loader.load_config()
    except ConfigFileNotFound:
        raise ConfigError(f"{path}: config file not found") from None
    except Exception as exc:  # the file is the user's Python: any error is theirs to fix
        raise _python_error(path, exc) from exc
    lines = _assignment_lines(path)
    origins = {(section, option): Origin(path, section, option, lines.get((section, option)))
               for section, option in _options(config)}
    return config, origins


def parse_overrides(overrides: Iterable[str]) -> tuple[Config, Origins]:
    """``['--Controller.ip=*', ...]`` as a Config (values still strings, typed
    later against the trait they set) and where each came from."""
    config, origins = Config(), {}
    for argument in overrides:
        body = argument[2:] if argument.startswith("--") else argument
        name, equals, value = body.partition("=")
        section, dot, option = name.rpartition(".")
        if not (equals and dot and section[:1].isupper() and option.isidentifier()
                and all(part.isidentifier() for part in section.split("."))):
            raise ConfigError(f"{COMMAND_LINE}: {argument!r} is not an option; expected --Class.option=value")
        if "." in section:
            raise ConfigError(f"{COMMAND_LINE}: {argument!r}: nested sections are not supported; "
                              "use --Class.option=value")
        config[section][option] = DeferredConfigString(value)
        origins[(section, option)] = Origin(COMMAND_LINE, section, option, argument=argument)
    return config, origins


def _options(config: Config) -> list[tuple[str, str]]:
    return [(section, option) for section, values in config.items() if isinstance(values, Config)
            for option in values if not option[:1].isupper()]


# --- translating legacy names -----------------------------------------------


def known_classes() -> dict[str, type[Configurable]]:
    """Every configurable class whose options we can check, by section name:
    the core classes, every installed launcher and DB class, and their
    cluster-launcher base classes (``Launcher``, ``EngineSetLauncher`` …)."""
    registry = plugins.get_registry()
    roots: list[type] = [Cluster, Controller, Engine, TaskScheduler, Session]
    for kind in ("launcher", "db", "transport"):
        roots += [entry.cls for entry in registry.by_kind[kind].values()]
    classes: dict[str, type[Configurable]] = {}
    for root in roots:
        for cls in root.__mro__:
            if isinstance(cls, type) and issubclass(cls, Configurable) and (
                    cls is root or cls.__module__.startswith("cluster_launcher")):
                classes.setdefault(cls.__name__, cls)
    return classes


def _canonical_sections(known: dict[str, type]) -> dict[str, str]:
    """Lower-cased section name -> how we spell it (installed or builtin)."""
    names = list(known) + list(BUILTIN_DB_CLASSES)
    names += [prefix + suffix for prefix in BUILTIN_LAUNCHER_PREFIXES for suffix in LAUNCHER_SUFFIXES]
    return {name.lower(): name for name in reversed(names)}


def _base_launcher_targets(section: str, known: dict[str, type]) -> list[str]:
    """The launchers an IPython base section (``PBSLauncher``) configures, when no
    installed class inherits from a class of that name (else traitlets applies
    it by itself)."""
    if section in known or not section.endswith("Launcher") or section.endswith(LAUNCHER_SUFFIXES):
        return []
    prefix = section.removesuffix("Launcher")
    builtin = next((p for p in BUILTIN_LAUNCHER_PREFIXES if p.lower() == prefix.lower()), None)
    installed = [name for name in known if name.lower().startswith(prefix.lower())
                 and name[len(prefix):] in LAUNCHER_SUFFIXES]
    if not builtin and not installed:
        return []
    prefix = builtin or installed[0][:len(prefix)]
    return [prefix + suffix for suffix in LAUNCHER_SUFFIXES]


def translate(config: Config, origins: Origins) -> tuple[Config, Origins]:
    """Map legacy sections and options onto ours.  Our own names win over
    legacy ones set in the same source; legacy sections merge in
    :data:`LEGACY_SECTIONS` order."""
    known = known_classes()
    canonical = _canonical_sections(known)
    legacy_order = list(LEGACY_SECTIONS)
    sections = sorted((s for s in config if isinstance(config[s], Config)),
                      key=lambda s: (s not in LEGACY_SECTIONS, legacy_order.index(s) if s in LEGACY_SECTIONS else 0))
    result, new_origins = Config(), {}
    ours = Config()
    for section in sections:
        values = config[section]
        if section in LEGACY_SECTIONS:
            targets, target_config = [LEGACY_SECTIONS[section]], result
        else:
            targets, target_config = [section], ours
            if section in LEGACY_LAUNCHER_SECTIONS:
                targets = [LEGACY_LAUNCHER_SECTIONS[section]]
            elif base_targets := _base_launcher_targets(section, known):
                targets, target_config = base_targets, result  # the specific sections win
            elif section not in known and section.lower() in canonical:
                targets = [canonical[section.lower()]]
        if targets != [section]:
            _announce(f"config: section {section} is read as {' and '.join(targets)}")
        for target in targets:
            for option, value in values.items():
                new_option = _translate_option(section, target, option)
                if new_option is None:
                    continue
                factor = LEGACY_UNITS.get((section, option))
                target_config[target][new_option] = value if factor is None else \
                    _in_our_unit(value, factor, section, option, origins.get((section, option)))
                origin = origins.get((section, option))
                if origin is not None:
                    new_origins[(target, new_option)] = origin
    result.merge(ours)  # our own names win over legacy ones set in the same source
    return result, new_origins


def _in_our_unit(value: object, factor: float, section: str, option: str, origin: object) -> float:
    """A legacy option's number in our unit (IPython's milliseconds to seconds)."""
    try:
        number = float(value)  # type: ignore[arg-type]  # a number, or the command line's string
    except (TypeError, ValueError):
        where = f"{origin}: " if origin else ""
        raise ConfigError(f"{where}bad value for {section}.{option}: {value!r} is not a number") from None
    return number * factor


def _translate_option(section: str, target: str, option: str) -> str | None:
    """Our name for ``section.option`` once ``section`` is read as ``target``
    (``None``: an obsolete option, dropped)."""
    if option[:1].isupper():
        return option  # a nested subclass section: traitlets handles it
    if section in LEGACY_SECTIONS and option in OBSOLETE_OPTIONS:
        _announce(f"config: {section}.{option} has no counterpart in cluster-launcher and is ignored")
        return None
    renamed = LEGACY_OPTIONS.get((target, option)) if section in LEGACY_SECTIONS else None
    if renamed is None and option in LEGACY_LAUNCHER_OPTIONS:
        role_suffix = next((s for s in LAUNCHER_SUFFIXES if target.endswith(s)), None)
        if role_suffix:
            renamed = (LEGACY_LAUNCHER_OPTIONS[option][role_suffix], False)
    if renamed is None:
        return option
    new_option, deprecated = renamed
    _announce(f"config: {section}.{option} is read as {target}.{new_option}"
              + (" (deprecated name)" if deprecated else ""), deprecated)
    return new_option


# --- checking ---------------------------------------------------------------


def check(config: Config, origins: Origins) -> Config:
    """Reject options that no installed class has; convert command-line strings
    to the type of the option they set.  Sections of classes that are not
    installed pass untouched (their plugin may be installed later)."""
    known = known_classes()
    for section, option in _options(config):
        cls = known.get(section)
        if cls is None:
            continue
        origin = origins.get((section, option))
        where = f"{origin}: " if origin else ""
        traits = cls.class_traits(config=True)
        if option not in traits:
            close = difflib.get_close_matches(option, list(traits), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" ({section} has: {', '.join(sorted(traits))})"
            written = f" (written {origin.section}.{origin.option})" \
                if origin and (origin.section, origin.option) != (section, option) else ""
            raise ConfigError(f"{where}unknown option {section}.{option}{written}{hint}")
        value = config[section][option]
        try:
            if isinstance(value, DeferredConfigString):
                value = _from_command_line(traits[option], value)
                config[section][option] = value
            if not isinstance(value, LazyConfigValue):
                traits[option]._validate(cls.__new__(cls), value)  # honours allow_none
        except (TraitError, ValueError, SyntaxError) as exc:
            allowed = _allowed_range(traits[option])
            if allowed and isinstance(value, (int, float)):
                raise ConfigError(f"{where}{section}.{option} = {value!r} is out of range: {allowed}") from None
            raise ConfigError(f"{where}bad value for {section}.{option}: {' '.join(str(exc).split())}") from None
    return config


def _allowed_range(trait: TraitType) -> str:
    """'must be at least 1', 'must be from 0 to 65535', ... for a numeric trait with bounds; '' otherwise."""
    # traitlets' Float has the infinities as its default bounds: no bound, for a reader.
    low, high = (None if bound is None or math.isinf(bound) else bound
                 for bound in (getattr(trait, "min", None), getattr(trait, "max", None)))
    if low is not None and high is not None:
        return f"must be from {low} to {high}"
    if low is not None:
        return f"must be at least {low}"
    if high is not None:
        return f"must be at most {high}"
    return ""


def _from_command_line(trait: TraitType, text: str) -> object:
    """A command-line string as a value of ``trait``: a Python literal for a
    container (``['-v', '-x']``), else the trait's own parsing."""
    text = str.__str__(text)  # a plain str: traitlets would hand the Deferred wrapper back for Unicode
    if isinstance(trait, (Container, Dict)):
        if text.strip()[:1] in "[({":
            return ast.literal_eval(text)
        return trait.from_string_list([text]) if isinstance(trait, Container) else trait.from_string(text)
    return trait.from_string(text)


def check_names(config: Config, role: str) -> None:
    """Resolve the class names a role will need (launchers for ``cluster``, the
    DB for ``controller``), so a wrong name fails now, naming the option."""
    # role -> (section, option, kind, launcher role) of each name it resolves
    names_by_role: dict[str, list[tuple[str, str, str, str | None]]] = {
        "cluster": [("Cluster", "engine_launcher_class", "launcher", "engines"),
                    ("Cluster", "controller_launcher_class", "launcher", "controller"),
                    ("Controller", "db_class", "db", None)],  # start --db=NAME
        "controller": [("Controller", "db_class", "db", None), ("TaskScheduler", "scheme_name", "scheduler", None)],
    }
    defaults: dict[str, type[Configurable]] = {"Cluster": Cluster, "Controller": Controller,
                                               "TaskScheduler": TaskScheduler}
    for section, option, kind, launcher_role in names_by_role.get(role, []):
        value = config[section][option] if option in config.get(section, {}) \
            else defaults[section].class_traits()[option].default_value
        try:
            plugins.resolve(kind, value, launcher_role)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{section}.{option}: {exc}") from None


# --- the whole thing --------------------------------------------------------


def config_files(role: str, profile_dir: str) -> list[str]:
    """The config files ``role`` reads from ``profile_dir`` that exist, in load order."""
    if role not in ROLE_FILES:
        raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return [path for name in ROLE_FILES[role] if os.path.isfile(path := os.path.join(profile_dir, name))]


def build_config(role: str, profile_dir: str, overrides: list[str] | None = None) -> Config:
    """The configuration of ``role`` (``'cluster'``, ``'controller'`` or
    ``'engine'``): the profile's config file(s) for it, then ``overrides``
    (``['--Controller.ip=*', ...]``), legacy names mapped and every option of
    an installed class checked.  Raises :class:`ConfigError` naming the file
    and line (or the argument) of a bad option."""
    merged, merged_origins = Config(), {}
    sources = [load_config_file(path) for path in config_files(role, profile_dir)]
    sources.append(parse_overrides(overrides or []))
    for config, origins in sources:
        translated, translated_origins = translate(config, origins)
        merged.merge(translated)
        merged_origins.update(translated_origins)
    return check(merged, merged_origins)
