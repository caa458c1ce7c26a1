"""Profiles: named directories holding a cluster's config files, connection
files, logs and PID files.

The home is ``$CLUSTER_LAUNCHER_DIR`` (default ``~/.cluster-launcher``); profile
``NAME`` lives in ``<home>/profile_NAME/``::

    cluster_config.py      cluster-launcher start/stop/engines/list
    controller_config.py   cluster-launcher controller
    engine_config.py       cluster-launcher engine
    security/              connection files (mode 0700)
    log/  pid/

``--profile-dir=DIR`` names a profile directory anywhere instead.  The config
files are generated from the traits of the core classes and of every
installed launcher and DB plugin, each option commented out with its help
text and default, so they never drift from the code.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap

from traitlets.config import Configurable

from . import __version__, plugins
from .error import ConfigError

HOME_ENV = "CLUSTER_LAUNCHER_DIR"
DEFAULT_HOME = os.path.join("~", ".cluster-launcher")
DEFAULT_PROFILE = "default"
PROFILE_PREFIX = "profile_"
SUBDIRS = ("security", "log", "pid")
CONFIG_FILES = {"cluster": "cluster_config.py", "controller": "controller_config.py", "engine": "engine_config.py"}
COMMANDS = {"cluster": "cluster-launcher start / stop / engines / list", "controller": "cluster-launcher controller",
            "engine": "cluster-launcher engine"}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def home_dir() -> str:
    """Where profiles live: ``$CLUSTER_LAUNCHER_DIR`` or ``~/.cluster-launcher``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(HOME_ENV) or DEFAULT_HOME))


def profile_path(name: str = DEFAULT_PROFILE) -> str:
    """The directory of profile ``name`` (whether or not it exists)."""
    if not _NAME_PATTERN.match(name or ""):
        raise ConfigError(f"--profile: bad profile name {name!r}; use letters, digits and _ . + -")
    return os.path.join(home_dir(), PROFILE_PREFIX + name)


def profile_dir_for(profile: str | None = None, profile_dir: str | None = None) -> str:
    """The profile directory a command uses: ``profile_dir`` if given, else that of ``profile``."""
    if profile_dir:
        return os.path.abspath(os.path.expanduser(profile_dir))
    return profile_path(profile or DEFAULT_PROFILE)


def locate_profile(profile: str | None = None, profile_dir: str | None = None) -> str:
    """The directory of an existing profile; :class:`ConfigError` if there is none."""
    path = profile_dir_for(profile, profile_dir)
    if not os.path.isdir(path):
        flag = f"--profile-dir={profile_dir}" if profile_dir else f"--profile={profile or DEFAULT_PROFILE}"
        raise ConfigError(f"{flag}: no profile at {path} (create it with: cluster-launcher profile create"
                          f"{' ' + profile if profile and not profile_dir else ''})")
    return path


def ensure_profile_dir(path: str) -> str:
    """Create ``path`` and its ``security/`` (0700), ``log/`` and ``pid/`` folders
    as needed (safe when several processes do it at once); return ``path``."""
    try:
        os.makedirs(path, exist_ok=True)
        for sub in SUBDIRS:
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        os.chmod(os.path.join(path, "security"), 0o700)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the profile directory: {exc.strerror}") from None
    return path


def list_profiles() -> list[str]:
    """Names of the profiles in the home directory."""
    home = home_dir()
    if not os.path.isdir(home):
        return []
    return sorted(entry.name.removeprefix(PROFILE_PREFIX) for entry in os.scandir(home)
                  if entry.is_dir() and entry.name.startswith(PROFILE_PREFIX))


def create_profile(profile: str | None = None, profile_dir: str | None = None,
                   overwrite: bool = False) -> tuple[str, list[str]]:
    """Create a profile: its folders and the three config files.  Existing
    config files are kept unless ``overwrite``.  Returns the profile
    directory and the files written."""
    path = ensure_profile_dir(profile_dir_for(profile, profile_dir))
    written = []
    for role, filename in CONFIG_FILES.items():
        target = os.path.join(path, filename)
        if os.path.exists(target) and not overwrite:
            continue
        with open(target, "w", encoding="utf-8") as f:
            f.write(config_file_text(role))
        written.append(target)
    return path, written


# --- generated config files ---------------------------------------------------


def classes_for(role: str) -> list[type[Configurable]]:
    """The configurable classes whose options go in ``role``'s config file."""
    from .cluster import Cluster
    from .controller import Controller
    from .engine import Engine
    from .scheduler import TaskScheduler
    from .session import Session

    registry = plugins.get_registry()

    def registered(kind: str) -> list[type]:
        entries = sorted(registry.by_kind[kind].values(), key=lambda e: (getattr(e.cls, "role", ""), e.name))
        return [e.cls for e in entries]

    if role == "cluster":
        return [Cluster, *registered("launcher")]
    if role == "controller":
        return [Controller, TaskScheduler, Session, *registered("db")]
    if role == "engine":
        return [Engine, Session]
    raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(CONFIG_FILES)}")


def _comment(text: str, indent: str = "# ") -> list[str]:
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n") if p.strip()]
    lines: list[str] = []
    for paragraph in paragraphs:
        if lines:
            lines.append(indent.rstrip())
        lines += textwrap.wrap(paragraph, 78, initial_indent=indent, subsequent_indent=indent)
    return lines


def class_section(cls: type[Configurable]) -> list[str]:
    """The commented-out block of one class: a header, then each option's help
    text and ``# c.Class.option = default`` line."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    where = f"{cls.__module__}.{cls.__name__}"
    lines = ["", "# " + "-" * 76, f"# {cls.__name__} ({where})"]
    lines += _comment(doc) if doc else []
    lines += ["# " + "-" * 76]
    for name, trait in sorted(cls.class_traits(config=True).items()):
        lines.append("")
        lines += _comment(trait.help or "(no description)")
        lines.append(f"# c.{cls.__name__}.{name} = {trait.default_value_repr()}")
    return lines


def config_file_text(role: str) -> str:
    """The text of ``role``'s config file, every option commented out."""
    classes = classes_for(role)
    installed = ", ".join(sorted(name for name, _ in plugins.get_plugin_manager().list_name_plugin())) or "none"
    lines = [
        f"# Configuration of {COMMANDS[role]} for this profile.",
        "#",
        "# Every option is listed below, commented out, with its default.  Uncomment a",
        "# line and change the value to set it; command-line options override this file.",
        "# The seed's IPython names (c.HubFactory.ip, c.IPClusterEngines.n ...) work too.",
        f"# Generated by cluster-launcher-core {__version__} with these plugins installed: {installed}.",
        "# Regenerate with: cluster-launcher profile create NAME --overwrite",
        "",
        "c = get_config()  # noqa: F821 (get_config is provided when the file is loaded)",
    ]
    for cls in classes:
        lines += class_section(cls)
    return "\n".join(lines) + "\n"


def start_logging(role: str, profile_dir: str, cluster_id: str = "", to_file: bool = False,
                  level: str = "INFO") -> None:
    """Log the ``role`` process (controller or engine) to stderr, which a
    launcher captures into the profile's ``log/`` folder; with ``to_file``
    (started by hand: ``--log-to-file``) also to ``log/<role>[-<id>]-<pid>.log``."""
    fmt = f"%(asctime)s {role} %(levelname)s %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if to_file:
        log_dir = os.path.join(ensure_profile_dir(profile_dir), "log")
        name = f"{role}{'-' + cluster_id if cluster_id else ''}-{os.getpid()}.log"
        handlers.append(logging.FileHandler(os.path.join(log_dir, name)))
    numeric = int(level) if str(level).isdigit() else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"log level {level!r}: use DEBUG, INFO, WARNING, ERROR or a number")
    logging.basicConfig(level=numeric, format=fmt, handlers=handlers, force=True)
