"""Where things live on disk: the home folder and the profile folders in it.

The home is ``$CLUSTER_LAUNCHER_DIR`` (default ``~/.cluster-launcher``); profile
``NAME`` lives in ``<home>/profile_NAME/`` with its ``security/`` (0700),
``log/`` and ``pid/`` folders; ``--profile-dir=DIR`` names a profile folder
anywhere instead.  A leaf module: it imports nothing internal but the errors.
"""

from __future__ import annotations

import os
import re

from .error import ConfigError

HOME_ENV = "CLUSTER_LAUNCHER_DIR"
DEFAULT_HOME = os.path.join("~", ".cluster-launcher")
DEFAULT_PROFILE = "default"
PROFILE_PREFIX = "profile_"
SUBDIRS = ("security", "log", "pid")
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



def profile_name(profile_dir: str) -> str:
    """``'default'`` for ``…/profile_default``; the folder name for other folders."""
    base = os.path.basename(os.path.normpath(profile_dir))
    return base.removeprefix(PROFILE_PREFIX) if base.startswith(PROFILE_PREFIX) else base
