"""Logging of the controller and engine processes.  A leaf module: it
imports nothing internal but the errors."""

from __future__ import annotations

import logging
import logging.handlers
import os

from traitlets import Bool, Integer, Unicode, Union
from traitlets.config import LoggingConfigurable

from .error import ConfigError

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUP_COUNT = 5


def log_file_path(role: str, profile_dir: str, cluster_id: str = "") -> str:
    """``<profile>/log/<role>[-<id>]-<pid>.log``, the file a process started by hand logs to."""
    name = f"{role}{'-' + cluster_id if cluster_id else ''}-{os.getpid()}.log"
    return os.path.join(profile_dir, "log", name)


def start_logging(role: str, profile_dir: str, cluster_id: str = "", to_file: bool = True,
                  level: str | int = "INFO", max_bytes: int = DEFAULT_LOG_MAX_BYTES,
                  backup_count: int = DEFAULT_LOG_BACKUP_COUNT) -> str | None:
    """Log the ``role`` process (controller or engine) to stderr and, with
    ``to_file`` (the default: a process started by hand, as IPython does), to
    :func:`log_file_path`, rotated at ``max_bytes`` keeping ``backup_count``
    old files so a long-lived process cannot fill the disk.  A launcher, which
    captures stderr into ``log/`` itself, passes ``to_file=False``
    (``--Controller.log_to_file=False``).  Returns the log file's path, if any."""
    numeric = int(level) if str(level).isdigit() else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"log level {level!r}: use DEBUG, INFO, WARNING, ERROR or a number")
    fmt = f"%(asctime)s {role} %(levelname)s %(message)s"
    # stderr always: a terminal shows it, and whoever redirected it (2>file, a test harness) expects it there.
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    path = None
    if to_file:
        path = log_file_path(role, profile_dir, cluster_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count))
    logging.basicConfig(level=numeric, format=fmt, handlers=handlers, force=True)
    quiet_libraries(numeric <= logging.DEBUG)
    return path


def quiet_libraries(debug: bool) -> None:
    """Keep the libraries' chatter (paramiko logs every login at INFO) out of
    our output, unless debugging."""
    logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.WARNING)


class ProcessLogging(LoggingConfigurable):
    """The logging options of a controller or engine process (a base of
    ``Controller`` and ``Engine``: set them as ``c.Controller.log_level`` ...)."""

    log_level = Union([Integer(), Unicode()], default_value="INFO", help="Log level: DEBUG, INFO, WARNING, "
                      "ERROR or a number.").tag(config=True)
    log_to_file = Bool(True, help="Write the log to the profile's log/ folder (log/<controller or engine>"
                       "[-<id>]-<pid>.log, rotated) as well as to stderr.  A launcher captures stderr into log/ "
                       "itself and passes False.").tag(config=True)
    log_max_bytes = Integer(DEFAULT_LOG_MAX_BYTES, min=1024, help="Size at which the log file is rotated "
                            "(log_to_file).").tag(config=True)
    # At least 1: Python's RotatingFileHandler never rotates with no backup file.
    log_backup_count = Integer(DEFAULT_LOG_BACKUP_COUNT, min=1, help="How many rotated log files are kept "
                               "(<name>.log.1 ...).").tag(config=True)

    def start_logging(self, role: str, profile_dir: str, cluster_id: str = "") -> str | None:
        """:func:`start_logging` with these options; returns the log file's path, if any."""
        return start_logging(role, profile_dir, cluster_id, self.log_to_file, self.log_level,
                             self.log_max_bytes, self.log_backup_count)
