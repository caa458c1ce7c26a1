"""The ``cluster-launcher`` command line.

Each runtime subcommand builds its configuration (the profile's config file
for its role, then the command line's flags and ``--Class.option=value``
overrides, see :func:`cluster_launcher.config.build_config`) and hands it to
the runtime: ``controller.main``, ``engine.main``, ``cluster.start_main`` …
Errors we raise on purpose print one line, ``cluster-launcher: error: …``,
and exit 2; ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeAlias

from traitlets.config import Config

from . import __version__, config, hookspecs, paths, plugins
from .config import profile
from .error import ClusterLauncherError, ConfigError, PluginError
from .logs import quiet_libraries
from .protocol.connection import ENGINE_CONNECTION_ENV

PROG = "cluster-launcher"
EXIT_ERROR = 2
STARTING_COMMANDS = ("start", "engines", "controller")
TRAIT_HELP = ("Any option of a configurable class can be given as --Class.option=value "
              "(e.g. --Controller.heartbeat_period=2); IPython's names (--HubFactory.ip=*) work too.")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as ConfigError so they print like
    every other error (one line, exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: IPython's `--profile=NAME` must not silently mean `--profile-dir`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


class Commands:
    """The subcommands of ``cluster-launcher``, as the
    ``cluster_launcher_register_commands`` hook gives them to a plugin."""

    def __init__(self, subparsers: argparse._SubParsersAction[_Parser]) -> None:
        self._subparsers = subparsers

    def add(self, name: str, handler: Callable[[argparse.Namespace], int], *, help: str,
            description: str | None = None) -> argparse.ArgumentParser:
        """Add the subcommand ``name``, run by ``handler(args)``, which returns
        the exit code.  ``help`` is its line in ``cluster-launcher --help``;
        ``description`` (default: ``help``) heads its own ``--help``.  Returns
        its parser, for its arguments: their usage errors print as every error
        of the command line does (one line, exit 2)."""
        taken = self._subparsers.choices  # argparse keeps the parsers by name here
        if isinstance(taken, Mapping) and name in taken:
            raise PluginError(f"cluster_launcher_register_commands: a plugin adds the subcommand {name!r}, "
                              "which exists already")
        parser = self._subparsers.add_parser(name, help=help, description=description or help, allow_abbrev=False)
        parser.set_defaults(func=handler)
        return parser


# --- flags shared by the runtime subcommands ---------------------------------


def _profile_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parent.add_argument_group("profile")
    group.add_argument("--profile", metavar="NAME", help="Use profile NAME (default: 'default'), "
                       "in $CLUSTER_LAUNCHER_DIR (default ~/.cluster-launcher).")
    group.add_argument("--profile-dir", metavar="DIR", help="Use the profile directory DIR instead of a named profile.")
    group.add_argument("--cluster-id", metavar="ID", help="Run the cluster with this id, so that several "
                       "clusters can share one profile (sets Cluster/Controller/Engine.cluster_id).")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="Show tracebacks and debug logging.")
    return parent


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The subcommand's flags, as ``--Class.option=value`` overrides."""
    overrides = []
    if getattr(args, "cluster_id", None) is not None:
        overrides += [f"--{section}.cluster_id={args.cluster_id}" for section in ("Cluster", "Controller", "Engine")]
    for dest, option, constant in args.flag_options:
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        overrides.append(f"--{option}={value if constant is None else constant}")
    return overrides


def _split_trait_arguments(extra: list[str]) -> list[str]:
    """``--Class.option=value`` or ``--Class.option value`` arguments; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        argument = extra[i]
        name = argument[2:].partition("=")[0]
        if not (argument.startswith("--") and "." in name and name[:1].isupper()):
            raise ConfigError(f"unrecognized argument {argument!r} (see {PROG} --help)")
        if "=" not in argument:
            if i + 1 >= len(extra):
                raise ConfigError(f"{argument}: expected a value (--Class.option=value)")
            argument, i = f"{argument}={extra[i + 1]}", i + 1
        overrides.append(argument)
        i += 1
    return overrides


def command_config(args: argparse.Namespace) -> tuple[str, Config]:
    """The profile directory and the checked Config of a parsed runtime subcommand."""
    profile_dir = paths.profile_dir_for(args.profile, args.profile_dir)
    cfg = config.build_config(args.role, profile_dir, _flag_overrides(args) + args.trait_overrides)
    if args.command in STARTING_COMMANDS:  # `stop`/`list` must work even if a plugin went away
        config.check_names(cfg, args.role)
    if args.role == "engine" and (ENGINE_CONNECTION_ENV in os.environ or getattr(args, "file", None)):
        # An engine of a batch job, its connection in its environment or a file sent with the job: the
        # profile folder (the submit host's path) may not exist on this node, and it needs nothing from it.
        return profile_dir, cfg
    # Only once the config is right: a mistyped option leaves no trace on disk.
    return paths.ensure_profile_dir(profile_dir), cfg


def _runtime(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The handler of a runtime subcommand: build the role's config, call ``module.function``."""

    def handler(args: argparse.Namespace) -> int:
        profile_dir, cfg = command_config(args)
        try:
            main = getattr(importlib.import_module(f"cluster_launcher.{module}"), function)
        except (ImportError, AttributeError) as exc:
            raise ClusterLauncherError(f"{args.command}: cluster_launcher.{module}.{function} is not available "
                                       f"({type(exc).__name__}: {exc})") from exc
        extra = [args.n] if function == "engines_main" else []
        if function == "start_main":  # handed to the watcher process of start --daemonize
            extra = [_flag_overrides(args) + args.trait_overrides]
        return int(main(cfg, profile_dir, *extra) or 0)

    return handler


# A flag: (option strings, dest, option, argparse keyword arguments); its option is the --Class.option
# it sets to its value, or (--Class.option, fixed value) for an on/off flag, or None.
Flag: TypeAlias = tuple[tuple[str, ...], str, str | tuple[str, str] | None, dict[str, Any]]

# The task database, for `controller` and for the controller `start` runs.
DB_FLAGS: list[Flag] = [
    (("--nodb",), "nodb", ("Controller.db_class", "NoDB"),
     {"action": "store_true", "help": "Keep no task database (Controller.db_class=NoDB)."}),
    (("--db",), "db", "Controller.db_class",
     {"metavar": "NAME", "help": "The task database: dict (default, in memory), sqlite, mongodb, nodb, "
      "or any installed backend's class name (Controller.db_class)."}),
]

# Where the controller listens and how engines and clients reach it: `controller`, and `start` for the
# controller it starts.
NETWORK_FLAGS: list[Flag] = [
    (("--ip",), "ip", "Controller.ip", {"help": "Interface to listen on; '*' for all (default: 127.0.0.1)."}),
    (("--location",), "location", "Controller.location",
     {"metavar": "HOST", "help": "Host name or address engines and clients connect to."}),
    (("--enginessh",), "enginessh", "Controller.enginessh",
     {"metavar": "[USER@]HOST", "help": "SSH server engines tunnel through (written to controller-engine.json)."}),
    (("--ssh",), "ssh", "Controller.ssh",
     {"metavar": "[USER@]HOST", "help": "SSH server clients tunnel through (written to controller-client.json)."}),
]

# (name, help, module, function, role, flags)
RUNTIME_COMMANDS: list[tuple[str, str, str, str, str, list[Flag]]] = [
    ("start", "Start a controller and engines (as configured in cluster_config.py).", "cluster.commands", "start_main",
     "cluster", [
         (("-n", "--n"), "n", "Cluster.n", {"type": int, "metavar": "N",
                                             "help": "Number of engines (default: one per CPU)."}),
         (("--engines",), "engines", "Cluster.engine_launcher_class",
          {"metavar": "LAUNCHER", "help": "How to start engines: Local, MPI, SSH, PBS, ... or a class name."}),
         (("--controller",), "controller", "Cluster.controller_launcher_class",
          {"metavar": "LAUNCHER", "help": "How to start the controller: Local, SSH, MPI, PBS, ..."}),
         (("--daemonize",), "daemonize", "Cluster.daemonize",
          {"action": "store_true", "help": "Return once the cluster runs, leaving it in the background with a "
           "watcher process that restarts engines that die."}),
         (("--dry-run",), "dry_run", "Cluster.dry_run",
          {"action": "store_true", "help": "Print the commands and job scripts it would run or submit; start "
           "nothing."}),
         (("--adapt",), "adapt", ("Cluster.adaptive", "True"),
          {"action": "store_true", "help": "Scale the engines with the load: more while tasks wait, fewer once "
           "idle (starts --min engines unless -n is given; decided by start in the foreground, or with "
           "--daemonize by its watcher process)."}),
         (("--min",), "adapt_minimum", "Cluster.adapt_minimum",
          {"type": int, "metavar": "N", "help": "The fewest engines --adapt keeps (default 0)."}),
         (("--max",), "adapt_maximum", "Cluster.adapt_maximum",
          {"type": int, "metavar": "N", "help": "The most engines --adapt asks for (default 64)."}),
         (("--engine-restart-limit",), "engine_restart_limit", "Cluster.engine_restart_limit",
          {"type": int, "metavar": "N", "help": "Restart an engine process that died up to N times per engine, "
           "with backoff (default 3; 0: never)."}),
        *DB_FLAGS,
        *NETWORK_FLAGS,
     ]),
    ("stop", "Stop a cluster started with `start`.", "cluster.commands", "stop_main", "cluster", []),
    ("engines", "Start more engines for a running cluster.", "cluster.commands", "engines_main", "cluster", [
        (("-n", "--n"), "n", None,
         {"type": int, "metavar": "N", "help": "Number of engines (default: one per CPU)."}),
        (("--engines",), "engines", "Cluster.engine_launcher_class",
         {"metavar": "LAUNCHER", "help": "How to start engines: Local, MPI, SSH, PBS, ..."}),
        (("--daemonize",), "daemonize", "Cluster.daemonize",
         {"action": "store_true", "help": "Return once the engines run."}),
    ]),
    ("list", "List the clusters of a profile and whether they run.", "cluster.commands", "list_main", "cluster", []),
    ("controller", "Run a controller in this process.", "controller", "main", "controller", [
        *NETWORK_FLAGS,
        (("--reuse",), "reuse", "Controller.reuse",
         {"action": "store_true", "help": "Reuse the ports and key of the existing connection files."}),
        (("--curve",), "curve", ("Controller.curve", "True"),
         {"action": "store_true", "help": "Encrypt all traffic with CurveZMQ."}),
        *DB_FLAGS,
        (("--log-to-file",), "log_to_file", ("Controller.log_to_file", "True"),
         {"action": "store_true", "help": "Write the log to the profile's log/ folder: the default "
          "(rotated; --Controller.log_to_file=False turns it off), accepted for IPython compatibility."}),
        (("--log-level",), "log_level", "Controller.log_level",
         {"metavar": "LEVEL", "help": "DEBUG, INFO, WARNING, ERROR or a number (default: INFO)."}),
    ]),
    ("engine", "Run an engine in this process.", "engine", "main", "engine", [
        (("--file",), "file", "Engine.file",
         {"metavar": "PATH", "help": "The controller-engine.json to use (default: the profile's security/ one)."}),
        (("--ssh",), "ssh", "Engine.ssh",
         {"metavar": "[USER@]HOST[:PORT]", "help": "SSH server (or ~/.ssh/config alias) every connection to the "
          "controller goes through (default: the connection file's ssh field)."}),
        (("--log-to-file",), "log_to_file", ("Engine.log_to_file", "True"),
         {"action": "store_true", "help": "Write the log to the profile's log/ folder: the default "
          "(rotated; --Engine.log_to_file=False turns it off), accepted for IPython compatibility."}),
        (("--log-level",), "log_level", "Engine.log_level",
         {"metavar": "LEVEL", "help": "DEBUG, INFO, WARNING, ERROR or a number (default: INFO)."}),
    ]),
]


def _add_runtime_commands(subparsers: argparse._SubParsersAction) -> None:
    parent = _profile_options()
    for name, help_text, module, function, role, flags in RUNTIME_COMMANDS:
        parser = subparsers.add_parser(name, help=help_text, description=help_text, parents=[parent],
                                       epilog=TRAIT_HELP, allow_abbrev=False)
        flag_options = []
        for option_strings, dest, option, kwargs in flags:
            parser.add_argument(*option_strings, dest=dest, **kwargs)
            if option:
                option, constant = option if isinstance(option, tuple) else (option, None)
                flag_options.append((dest, option, constant))
        parser.set_defaults(func=_runtime(module, function), role=role, flag_options=flag_options,
                            accepts_traits=True)


# --- profile and plugins -----------------------------------------------------


def _profile_name(args: argparse.Namespace) -> str | None:
    """The profile named positionally or by ``--profile NAME`` (IPython's form); both only if they agree."""
    if args.name is not None and args.profile is not None and args.name != args.profile:
        raise ConfigError(f"profile {args.action}: two profile names given, {args.name!r} and "
                          f"--profile={args.profile!r}; give one")
    return args.name if args.name is not None else args.profile


def _profile_create(args: argparse.Namespace) -> int:
    path, written = profile.create_profile(_profile_name(args), args.profile_dir, overwrite=args.overwrite)
    print(f"profile: {path}")
    for filename in profile.CONFIG_FILES.values():
        full = f"{path}/{filename}"
        print(f"  {'wrote' if full in written else 'kept '} {full}")
    return 0


def _profile_list(args: argparse.Namespace) -> int:
    names = paths.list_profiles()
    print(f"profiles in {paths.home_dir()}:" if names else f"no profiles in {paths.home_dir()}")
    for name in names:
        print(f"  {name}")
    return 0


def _profile_locate(args: argparse.Namespace) -> int:
    print(paths.locate_profile(_profile_name(args)))
    return 0


def _add_profile_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("profile", help="Create, list and locate profiles.",
                                   description="Create, list and locate profiles.", allow_abbrev=False)
    actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,locate}", parser_class=_Parser)
    create = actions.add_parser("create", help="Create a profile with commented config files.",
                                description="Create a profile: cluster_config.py, controller_config.py, "
                                "engine_config.py (every option commented out and explained), security/, log/, "
                                "pid/.  Existing config files are kept unless --overwrite.", allow_abbrev=False)
    create.add_argument("name", nargs="?", default=None, metavar="NAME", help="Profile name (default: 'default').")
    create.add_argument("--profile", metavar="NAME", help="Profile name, IPython's way (same as NAME).")
    create.add_argument("--profile-dir", metavar="DIR", help="Create the profile in DIR instead.")
    create.add_argument("--parallel", action="store_true", help="Accepted for IPython compatibility "
                        "(every profile is a parallel one).")
    create.add_argument("--overwrite", action="store_true", help="Replace existing config files.")
    create.set_defaults(func=_profile_create)
    listing = actions.add_parser("list", help="List the profiles in $CLUSTER_LAUNCHER_DIR.",
                                 description="List the profiles in $CLUSTER_LAUNCHER_DIR "
                                 "(default ~/.cluster-launcher).", allow_abbrev=False)
    listing.set_defaults(func=_profile_list)
    locate = actions.add_parser("locate", help="Print the directory of a profile.",
                                description="Print the directory of an existing profile.", allow_abbrev=False)
    locate.add_argument("name", nargs="?", default=None, metavar="NAME", help="Profile name (default: 'default').")
    locate.add_argument("--profile", metavar="NAME", help="Profile name, IPython's way (same as NAME).")
    locate.set_defaults(func=_profile_locate)


def _hookspecs() -> list[dict[str, object]]:
    pm = plugins.get_plugin_manager()
    specs = []
    for name in sorted(n for n in dir(hookspecs) if n.startswith(hookspecs.PROJECT + "_")):
        caller = getattr(pm.hook, name)
        doc = (getattr(hookspecs, name).__doc__ or "").strip().split("\n")[0]
        specs.append({"name": name, "summary": doc,
                      "implemented_by": sorted(impl.plugin_name for impl in caller.get_hookimpls())})
    return specs


def _plugins(args: argparse.Namespace) -> int:
    described = plugins.describe()
    print(json.dumps({"plugins": described, "hookspecs": _hookspecs()} if args.all else described, indent=2))
    return 0


# --- the parser and main -------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, plugins' subcommands included."""
    parser = _Parser(prog=PROG, description="Parallel Python on many cores and many machines: start a controller "
                     "and engines, locally, over SSH, with MPI or through a batch system.", epilog=TRAIT_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks and debug logging.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_runtime_commands(subparsers)
    _add_profile_command(subparsers)
    plugin_parser = subparsers.add_parser("plugins", help="List installed plugins as JSON.",
                                          description="List installed plugins (name, distribution, version, "
                                          "kinds, classes, short names, hooks) as JSON.", allow_abbrev=False)
    plugin_parser.add_argument("--all", action="store_true", help="Print an object with the plugins and every hook "
                               "spec of the core, with the plugins implementing each.")
    plugin_parser.set_defaults(func=_plugins)
    plugins.get_plugin_manager().hook.cluster_launcher_register_commands(commands=Commands(subparsers))
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``--Class.option=value`` arguments end up in ``args.trait_overrides``."""
    args, extra = build_parser().parse_known_args(argv)
    args.trait_overrides = []
    if extra:
        if not getattr(args, "accepts_traits", False):
            raise ConfigError(f"unrecognized argument {extra[0]!r} (see {PROG} {args.command} --help)")
        args.trait_overrides = _split_trait_arguments(extra)
    if getattr(args, "n", None) is not None and args.n < 1:  # `start -n` and `engines -n`
        raise ConfigError(f"{PROG} {args.command}: argument -n/--n: {args.n} engines: must be at least 1")
    return args


def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the subcommand (errors propagate)."""
    args = parse(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """The ``cluster-launcher`` entry point: returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(name)s: %(message)s")
    quiet_libraries(debug)
    try:
        return run(argv)
    except ClusterLauncherError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
