"""IPython magics for a DirectView: ``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig``.

As ipyparallel's magics: ``activate(view)`` (or ``view.activate()``) registers them in the running
IPython, bound to that view; ``activate(view, suffix="_a")`` names them ``%px_a``, ``%pxresult_a``, ...
so several views can each have their own.  ``%load_ext cluster_launcher`` registers the plain names
bound to the most recently activated view (it connects nothing by itself).

IPython is an optional dependency of the core: it is imported here only, inside functions, so this
module (and the rest of the core) imports without it.  See docs/magics.md.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .asyncresult import AsyncResult, Metadata

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .view import DirectView

# How often a blocking %px looks for new output of its tasks while waiting for them.
OUTPUT_POLL_SECONDS = 0.05
GROUPINGS = ("type", "engine", "order")
# An option of %px, before its code: known long options only, since "-x" or "--x" alone are Python too.
# A value is one word, or quoted ("--targets '[0, 2]'"); one missing at the end is the parser's error to report.
PX_LINE_OPTION = re.compile(r"""\s*(?:--(?:targets|group-outputs|out)(?:=|\s+)(?:"[^"]*"|'[^']*'|\S+)"""
                            r"|--(?:block|noblock|stream|no-stream)|--(?:targets|group-outputs|out)\s*$)(?=\s|$)")
NO_VIEW = "no view is active for the parallel magics: call view.activate() on a DirectView (e.g. rc[:].activate())"

# The magics of each suffix, and the most recently activated ones (what %load_ext binds %px to).
_registered: dict[str, ParallelMagics] = {}
_most_recent: ParallelMagics | None = None


class MagicArgumentError(Exception):
    """Bad options of a magic; shown to the user as IPython's one-line UsageError."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise MagicArgumentError(f"%{self.prog}: {message}")


def _execution_parser(prog: str) -> _Parser:
    """Options of %%px (and, before the code, of %px)."""
    parser = _Parser(prog=prog, add_help=False)
    _add_execution_options(parser)
    _add_output_options(parser)
    return parser


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--targets",
                        help="engines to run on: all, 0, 0,2, [0, 2], or a slice of the ids (1:, ::2)")
    parser.add_argument("-b", "--block", action="store_const", const=True, dest="block",
                        help="wait for the engines, printing their output as it arrives")
    parser.add_argument("-a", "--noblock", action="store_const", const=False, dest="block",
                        help="return at once; %%pxresult shows the outcome later")
    parser.add_argument("--stream", action="store_const", const=True, dest="stream",
                        help="when blocking, print output as it arrives (the default)")
    parser.add_argument("--no-stream", action="store_const", const=False, dest="stream",
                        help="when blocking, print output once every engine has finished, grouped")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-outputs", dest="group_outputs", choices=GROUPINGS, default="type",
                        help="type: all stdout, then all stderr; engine: each engine's stdout and stderr together; "
                             "order: as type (engines send no rich outputs to collate)")
    parser.add_argument("-e", action="store_const", const="engine", dest="group_outputs", help="--group-outputs=engine")
    parser.add_argument("-r", action="store_const", const="order", dest="group_outputs", help="--group-outputs=order")
    parser.add_argument("-o", "--out", dest="save_name", help="also store the AsyncResult under this name")


def _config_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False)
    _add_execution_options(parser)
    parser.add_argument("--verbose", action="store_const", const=True, dest="verbose",
                        help="say where each %%px runs")
    parser.add_argument("--no-verbose", action="store_const", const=False, dest="verbose")
    return parser


def _result_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, add_help=False)
    _add_output_options(parser)
    return parser


@dataclass
class RunOptions:
    """How one %px / %%px runs; ``None`` means the view's (or %pxconfig's) setting."""

    targets: Any = None
    block: bool | None = None
    stream: bool | None = None
    group_outputs: str = "type"
    save_name: str | None = None


def parse_targets(text: str, engine_ids: list[int]) -> int | list[int] | str:
    """``all``, ``0``, ``0,2``, ``[0, 2]``, or a slice of the registered ids (``1:``, ``::2``) -> targets.
    Parsed, never evaluated: the text is the user's, but so is any typo."""
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        parts = text.strip("[]").split(":")
        if len(parts) > 3:
            raise MagicArgumentError(f"--targets {text!r}: a slice has at most three parts")
        try:
            bounds = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise MagicArgumentError(f"--targets {text!r}: slice bounds are ints") from None
        return engine_ids[slice(*bounds)]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise MagicArgumentError(f"--targets {text!r}: expected all, an engine id, ids like 0,2 or a slice") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise MagicArgumentError(f"--targets {text!r}: expected all, an engine id, ids like 0,2 or a slice")


def _metadata_of(result: AsyncResult) -> list[Metadata]:
    metadata = result.metadata
    return [metadata] if isinstance(metadata, Metadata) else list(metadata)


def _prefixed(name: str, engine_id: Any, text: str) -> str:
    """``[stdout:0] line`` for every line of ``text``."""
    return "".join(f"[{name}:{engine_id}] {line}" for line in text.splitlines(keepends=True))


class OutputEcho:
    """Prints the stdout/stderr of a running result's tasks as they arrive, one prefixed line at a time.

    Only whole lines are printed while the tasks run (a partial line waits for its end), so the lines of
    two engines never mix; once the tasks are done, ``flush(whole_lines_only=False)`` prints what is left."""

    def __init__(self, result: AsyncResult, engine_ids: list[int]):
        self.result = result
        self.engine_ids = engine_ids
        self.shown: list[dict[str, int]] = [{"stdout": 0, "stderr": 0} for _ in engine_ids]

    def flush(self, whole_lines_only: bool = True) -> None:
        for index, metadata in enumerate(_metadata_of(self.result)):
            engine_id = metadata.get("engine_id")
            if engine_id is None and index < len(self.engine_ids):
                engine_id = self.engine_ids[index]
            for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                text = metadata[name]
                new = text[self.shown[index][name]:]
                if whole_lines_only:
                    new = new[:new.rfind("\n") + 1]
                if new:
                    stream.write(_prefixed(name, engine_id, new if new.endswith("\n") else new + "\n"))
                    stream.flush()
                    self.shown[index][name] += len(new)

    def follow(self) -> None:
        """Print output until every task has finished (waits as long as ``get()`` would; Ctrl-C stops
        waiting, not the tasks)."""
        while not self.result.wait(OUTPUT_POLL_SECONDS):
            self.flush()
        self.flush(whole_lines_only=False)


def display_outputs(result: AsyncResult, group_outputs: str = "type") -> None:
    """Print a finished result's outputs: ``type`` (and ``order``): every engine's stdout, then every
    engine's stderr; ``engine``: each engine's stdout and stderr together."""
    metadata = _metadata_of(result)

    def show(md: Metadata, name: str, stream: TextIO) -> None:
        text = md[name]
        if text:
            stream.write(_prefixed(name, md.get("engine_id"), text if text.endswith("\n") else text + "\n"))
            stream.flush()

    if group_outputs == "engine":
        for md in metadata:
            show(md, "stdout", sys.stdout)
            show(md, "stderr", sys.stderr)
        return
    for md in metadata:
        show(md, "stdout", sys.stdout)
    for md in metadata:
        show(md, "stderr", sys.stderr)


def _raise_remote_errors(result: AsyncResult) -> None:
    """Raise the result's error, if any: IPython shows a RemoteError's remote
    tracebacks (its ``_render_traceback_``), not this magic's stack."""
    result.get()


def _usage_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a magic so that bad options show as IPython's short UsageError, not a traceback."""

    def magic(*args: Any) -> Any:
        from IPython.core.error import UsageError
        try:
            return func(*args)
        except MagicArgumentError as exc:
            raise UsageError(str(exc)) from None

    magic.__doc__ = func.__doc__
    magic.__name__ = func.__name__
    return magic


class AutopxTransform:
    """An input transformer of IPython (run before it reads the cell as Python): it turns every cell into
    a %%px of that cell, except the cell that turns %autopx off."""

    # IPython's check_complete() skips transformers with side effects: multi-line input still waits for
    # its last line in the terminal instead of being sent at its first.
    has_side_effects = True

    def __init__(self, px_name: str, autopx_name: str):
        self.px_name = px_name
        self.autopx_name = autopx_name

    def __call__(self, lines: list[str]) -> list[str]:
        cell = "".join(lines)
        stripped = cell.strip()
        if not stripped or stripped.split()[0] == f"%{self.autopx_name}":
            return lines
        return [f"get_ipython().run_cell_magic({self.px_name!r}, '', {cell!r})\n"]


class ParallelMagics:
    """The magics of one view (``None``: not activated yet, each magic says so) under one suffix."""

    def __init__(self, shell: InteractiveShell, view: DirectView | None, suffix: str = ""):
        self.shell = shell
        self.view = view
        self.suffix = suffix
        # The magics' own settings (%pxconfig): blocking by default, as ipyparallel's %px after
        # rc.activate(); the view's own block/targets, used by Python code, are left alone.
        self.block = True
        self.targets: Any = None  # None: the view's targets
        self.verbose = False
        self.stream = True
        self.last_result: AsyncResult | None = None
        self.autopx: AutopxTransform | None = None

    # --- registration ------------------------------------------------------------------------------------

    def magic_names(self) -> dict[str, str]:
        s = self.suffix
        return {"px": f"px{s}", "pxresult": f"pxresult{s}", "pxconfig": f"pxconfig{s}", "autopx": f"autopx{s}"}

    def register(self) -> None:
        names = self.magic_names()
        manager = self.shell.magics_manager
        px_line = _usage_errors(self.px_line)
        # %px's argument is Python: "{x}" and "$x" in it are the engines' business, not IPython's to expand.
        setattr(px_line, "_ipython_no_var_expand", True)  # noqa: B010 - an attribute of a function object
        manager.register_function(px_line, "line", names["px"])
        manager.register_function(_usage_errors(self.px_cell), "cell", names["px"])
        manager.register_function(_usage_errors(self.pxresult), "line", names["pxresult"])
        manager.register_function(_usage_errors(self.pxconfig), "line", names["pxconfig"])
        manager.register_function(_usage_errors(self.toggle_autopx), "line", names["autopx"])

    def _require_view(self) -> DirectView:
        if self.view is None:
            raise MagicArgumentError(NO_VIEW)
        return self.view

    # --- running code ------------------------------------------------------------------------------------

    def run(self, code: str, options: RunOptions) -> AsyncResult | None:
        """Run ``code`` on the engines: wait and print their output (blocking), or return the AsyncResult."""
        view = self._require_view()
        block = self.block if options.block is None else options.block
        targets = next(t for t in (options.targets, self.targets, view.targets, "all") if t is not None)
        if self.verbose:
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): {targets}")
        engine_ids = view.client._resolve_targets(targets)  # the tasks' engines, in order, for the prefixes
        result = view.execute(code, block=False, targets=targets)
        self.last_result = result
        if options.save_name:
            self.shell.user_ns[options.save_name] = result
        if not block:
            return result
        if self.stream if options.stream is None else options.stream:
            OutputEcho(result, engine_ids).follow()
        else:
            result.wait()
            display_outputs(result, options.group_outputs)
        _raise_remote_errors(result)
        return None

    def _options(self, args: argparse.Namespace) -> RunOptions:
        view = self._require_view()
        targets = None if args.targets is None else parse_targets(args.targets, view.client.ids)
        return RunOptions(targets=targets, block=args.block, stream=args.stream, group_outputs=args.group_outputs,
                          save_name=args.save_name)

    def px_line(self, line: str) -> AsyncResult | None:
        """Run one line of Python on the engines: ``%px a = os.getpid()``.

        Long options of %%px may come before the code (``%px --targets 0 --noblock x = 1``); the line is
        code from its first word that is not one of them."""
        options_end = 0
        while match := PX_LINE_OPTION.match(line, options_end):
            options_end = match.end()
        args = _execution_parser(self.magic_names()["px"]).parse_args(shlex.split(line[:options_end]))
        code = line[options_end:].strip()
        if not code:
            raise MagicArgumentError(f"%{self.magic_names()['px']}: no code to run")
        return self.run(code, self._options(args))

    def px_cell(self, line: str, cell: str) -> AsyncResult | None:
        """Run the cell on the engines.  Options: -t/--targets, -b/--block, -a/--noblock, --stream,
        --no-stream, --group-outputs=type|engine|order (-e, -r), -o/--out NAME."""
        args = _execution_parser(self.magic_names()["px"]).parse_args(shlex.split(line))
        return self.run(cell, self._options(args))

    # --- results and configuration -----------------------------------------------------------------------

    def pxresult(self, line: str = "") -> None:
        """Wait for the last %px result and show its output and errors.  Options: --group-outputs, -e, -r,
        -o/--out NAME (store the AsyncResult instead of showing it)."""
        args = _result_parser(self.magic_names()["pxresult"]).parse_args(shlex.split(line))
        if self.last_result is None:
            raise MagicArgumentError(f"%{self.magic_names()['pxresult']}: no %px has run yet")
        if args.save_name:
            self.shell.user_ns[args.save_name] = self.last_result
            return
        self.last_result.wait()
        display_outputs(self.last_result, args.group_outputs)
        _raise_remote_errors(self.last_result)

    def pxconfig(self, line: str = "") -> None:
        """Set the magics' defaults: --targets T, --block, --noblock, --verbose, --no-verbose, --stream,
        --no-stream (the view's own attributes are not changed).  Without options, print the settings."""
        view = self._require_view()
        args = _config_parser(self.magic_names()["pxconfig"]).parse_args(shlex.split(line))
        if args.targets is not None:
            self.targets = parse_targets(args.targets, view.client.ids)
        if args.block is not None:
            self.block = args.block
        if args.verbose is not None:
            self.verbose = args.verbose
        if args.stream is not None:
            self.stream = args.stream
        if not line.strip():
            targets = view.targets if self.targets is None else self.targets
            print(f"targets={targets!r} block={self.block} verbose={self.verbose} stream={self.stream}")

    def toggle_autopx(self, line: str = "") -> None:
        """Turn auto-parallel mode on or off: while on, every cell runs on the engines (as %%px)."""
        self._require_view()
        if self.autopx is None:
            self.autopx = AutopxTransform(self.magic_names()["px"], self.magic_names()["autopx"])
            self.shell.input_transformers_cleanup.append(self.autopx)
            print(f"%{self.magic_names()['autopx']} enabled")
        else:
            self.disable_autopx()
            print(f"%{self.magic_names()['autopx']} disabled")

    def disable_autopx(self) -> None:
        if self.autopx is not None and self.autopx in self.shell.input_transformers_cleanup:
            self.shell.input_transformers_cleanup.remove(self.autopx)
        self.autopx = None


def _running_shell() -> InteractiveShell:
    try:
        from IPython import get_ipython
    except ImportError:
        raise ImportError("the parallel magics need IPython: pip install ipython") from None
    shell = get_ipython()
    if shell is None:
        raise RuntimeError("the parallel magics need a running IPython (IPython or a Jupyter kernel)")
    return shell


def _install(magics: ParallelMagics) -> None:
    previous = _registered.get(magics.suffix)
    if previous is not None and previous is not magics:
        previous.disable_autopx()  # its transformer would call the new %px, not the view it was turned on for
    magics.register()
    _registered[magics.suffix] = magics


def activate(view: DirectView, suffix: str = "") -> None:
    """Register %px{suffix}, %%px{suffix}, %pxresult{suffix}, %pxconfig{suffix} and %autopx{suffix} in the
    running IPython, bound to ``view``."""
    global _most_recent
    magics = ParallelMagics(_running_shell(), view, suffix)
    _install(magics)
    _most_recent = magics


def load_ipython_extension(shell: InteractiveShell) -> None:
    """``%load_ext cluster_launcher``: the plain names (%px, ...) bound to the most recently activated view,
    or, before any, magics that ask for ``view.activate()``.  Connects nothing."""
    if _most_recent is not None and _most_recent.suffix == "" and _most_recent.shell is shell:
        _install(_most_recent)  # already the plain names: keep its state (%pxresult, %autopx)
        return
    view = _most_recent.view if _most_recent is not None else None
    _install(ParallelMagics(shell, view))
    if view is None:
        print("cluster_launcher magics loaded; " + NO_VIEW.replace("no view is active for the parallel magics: ", ""))
