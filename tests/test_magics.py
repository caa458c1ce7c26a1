"""The IPython magics (%px, %%px, %pxresult, %pxconfig, %autopx, %load_ext cluster_launcher) in a real
IPython shell, run cell by cell with ``shell.run_cell``, against a real cluster; and the example notebook
script run by the ``ipython`` command."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from traitlets.config import Config as IPythonConfig

from cluster_launcher import Cluster
from cluster_launcher.client import magics
from cluster_launcher.client.asyncresult import AsyncResult
from cluster_launcher.client.client import Client
from cluster_launcher.error import CompositeError, RemoteError
from cluster_launcher.testing.processes import wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "px_notebook.ipy"


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """One IPython shell for the module; its profile in a tmp dir, its history in memory."""
    saved_env = os.environ.get("IPYTHONDIR")
    saved_hooks = sys.displayhook, sys.excepthook
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    config = IPythonConfig()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()
        sys.displayhook, sys.excepthook = saved_hooks
        if saved_env is None:
            os.environ.pop("IPYTHONDIR", None)
        else:
            os.environ["IPYTHONDIR"] = saved_env


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with Cluster(n=2, profile_dir=str(tmp_path_factory.mktemp("cluster") / "p")) as client:
        client.wait_for_engines(2, timeout=60)
        yield client


@pytest.fixture
def px(shell: InteractiveShell, rc: Client) -> Iterator[magics.ParallelMagics]:
    """Fresh magics bound to ``rc[:]`` for each test (no %pxconfig or %pxresult of another test)."""
    magics.activate(rc[:])
    active = magics._registered[""]
    try:
        yield active
    finally:
        for registered in magics._registered.values():
            registered.disable_autopx()


def run(shell: InteractiveShell, cell: str) -> ExecutionResult:
    return shell.run_cell(cell, store_history=False)


def run_ok(shell: InteractiveShell, cell: str) -> ExecutionResult:
    result = run(shell, cell)
    result.raise_error()
    return result


@contextlib.contextmanager
def stderr_into_stdout() -> Iterator[None]:
    """Both streams into pytest's captured stdout, so a test sees their order."""
    with contextlib.redirect_stderr(sys.stdout):
        yield


# --- %px and %%px ---------------------------------------------------------------------------------------------


def test_px_runs_on_every_engine_and_prints_as_engines(shell, px, rc, capsys):
    run_ok(shell, "%px import os")
    run_ok(shell, '%px print("pid", os.getpid())')
    out = capsys.readouterr().out
    for engine_id in rc.ids:
        assert f"[stdout:{engine_id}] pid {rc.engines[engine_id]['pid']}\n" in out


def test_px_options_targets_and_noblock(shell, px, rc, capsys):
    result = run_ok(shell, "%px --targets '[1]'  --noblock   marker = 41 + 1")  # quoted value, extra spaces
    assert isinstance(result.result, AsyncResult)
    result.result.get(timeout=30)
    assert rc[1].pull("marker", block=True) == 42
    with pytest.raises(RemoteError, match="NameError"):
        rc[0].pull("marker", block=True)

    # --block waits: the name is there when the magic returns
    assert run_ok(shell, "%px --targets [0] --block marker = 7").result is None
    assert rc[:].pull("marker", block=True) == [7, 42]
    # "$x" and "{x}" are the engines' code: IPython does not expand them in %px
    run_ok(shell, '%px --targets 0 print(f"{marker}$")')
    assert "[stdout:0] 7$\n" in capsys.readouterr().out


def test_cell_px_prints_output_of_each_engine_grouped(shell, px, capsys):
    cell = "import sys\nprint('out', 1)\nprint('err', 2, file=sys.stderr)\nprint('out', 3)\n"
    with stderr_into_stdout():
        run_ok(shell, "%%px --no-stream --group-outputs=type\n" + cell)
    by_type = capsys.readouterr().out.splitlines()
    assert by_type == ["[stdout:0] out 1", "[stdout:0] out 3", "[stdout:1] out 1", "[stdout:1] out 3",
                       "[stderr:0] err 2", "[stderr:1] err 2"]

    with stderr_into_stdout():
        run_ok(shell, "%%px --no-stream --group-outputs=engine\n" + cell)
    by_engine = capsys.readouterr().out.splitlines()
    assert by_engine == ["[stdout:0] out 1", "[stdout:0] out 3", "[stderr:0] err 2",
                         "[stdout:1] out 1", "[stdout:1] out 3", "[stderr:1] err 2"]

    run_ok(shell, "%%px --targets 1 -o saved_result\nprint('only one')")
    assert capsys.readouterr().out == "[stdout:1] only one\n"
    assert shell.user_ns["saved_result"].stdout == "only one\n"


def test_cell_px_streams_output_while_the_cell_runs(shell, px, tmp_path, capsys):
    gate = tmp_path / "gate"
    cell = ("%%px --targets 0\n"
            "from cluster_launcher.testing.processes import wait_for_gate\n"
            "print('before the gate', flush=True)\n"
            f"wait_for_gate({str(gate)!r}, timeout=60)\n"
            "print('after the gate')\n")
    outcome: list[ExecutionResult] = []
    runner = threading.Thread(target=lambda: outcome.append(run(shell, cell)), daemon=True)
    runner.start()
    seen: list[str] = []
    try:
        # The first line is printed while the engine still waits at the gate, i.e. before the cell ends.
        wait_for(lambda: seen.append(capsys.readouterr().out) or "[stdout:0] before the gate\n" in "".join(seen),
                 30, "the engine's first line, streamed")
        assert runner.is_alive() and "after the gate" not in "".join(seen)
    finally:
        gate.touch()
        runner.join(60)
    assert not runner.is_alive()
    outcome[0].raise_error()
    assert "".join(seen) + capsys.readouterr().out == "[stdout:0] before the gate\n[stdout:0] after the gate\n"


def test_streamed_output_keeps_lines_whole_and_stderr_apart(shell, px, capsys):
    run_ok(shell, "%%px --stream\nimport sys\nprint('par', end='', flush=True)\nprint('tial', flush=True)\n"
                  "print('to stderr', file=sys.stderr)\nprint('no newline at the end', end='')")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 4  # the engines' lines may interleave, as they arrive; each engine's keep their order
    for engine_id in (0, 1):
        assert [line for line in lines if line.startswith(f"[stdout:{engine_id}]")] == [
            f"[stdout:{engine_id}] partial", f"[stdout:{engine_id}] no newline at the end"]
    assert sorted(captured.err.splitlines()) == ["[stderr:0] to stderr", "[stderr:1] to stderr"]


def test_px_bad_options_are_usage_errors(shell, px):
    result = run(shell, "%%px --group-outputs=sideways\nx = 1")
    assert type(result.error_in_exec) is UsageError
    assert "invalid choice" in str(result.error_in_exec)
    result = run(shell, "%px --targets")
    assert type(result.error_in_exec) is UsageError


# --- errors ---------------------------------------------------------------------------------------------------


def test_engine_errors_show_the_remote_tracebacks(shell, px, capsys):
    result = run(shell, "%%px\ndef check(x):\n    raise ValueError(f'bad value {x}')\ncheck(3)\n")
    assert type(result.error_in_exec) is CompositeError
    assert len(result.error_in_exec.elist) == 2
    shown = capsys.readouterr().out
    for engine_id in (0, 1):
        assert f"[engine {engine_id}] ValueError: bad value 3\n" in shown
    assert shown.count('File "<execute>", line 2, in check') == 2
    assert "magics.py" not in shown  # the engines' stack, not this process's

    result = run(shell, "%px --targets 1 1 / 0")
    assert type(result.error_in_exec) is RemoteError  # a single engine: its own error
    assert "[engine 1] ZeroDivisionError: division by zero" in capsys.readouterr().out
    with pytest.raises(CompositeError):
        run(shell, "%px undefined_name").raise_error()


# --- %pxresult --------------------------------------------------------------------------------------------------


def test_pxresult_shows_the_last_noblock_result(shell, px, capsys):
    result = run(shell, "%pxresult")
    assert type(result.error_in_exec) is UsageError and "no %px has run yet" in str(result.error_in_exec)

    submitted = run_ok(shell, "%px --noblock print('later', 6 * 7)").result
    assert isinstance(submitted, AsyncResult)
    capsys.readouterr()
    run_ok(shell, "%pxresult")
    assert capsys.readouterr().out == "[stdout:0] later 42\n[stdout:1] later 42\n"
    run_ok(shell, "%pxresult -o kept")
    assert shell.user_ns["kept"] is submitted

    # A non-blocking error is raised by %pxresult, with the engines' tracebacks
    assert run(shell, "%px --noblock raise KeyError('late')").success
    result = run(shell, "%pxresult")
    assert type(result.error_in_exec) is CompositeError
    assert "[engine 0] KeyError: 'late'" in capsys.readouterr().out


# --- %pxconfig ---------------------------------------------------------------------------------------------------


def test_pxconfig_sets_the_magics_defaults(shell, px, rc, capsys):
    run_ok(shell, "%pxconfig --targets 1 --noblock --verbose")
    result = run_ok(shell, "%px config_marker = 1")
    assert isinstance(result.result, AsyncResult)
    assert result.result.get(timeout=30) is None  # a single target: a single value
    assert "Async parallel execution on engine(s): 1\n" in capsys.readouterr().out
    run_ok(shell, "%pxconfig")
    assert capsys.readouterr().out == "targets=1 block=False verbose=True stream=True\n"
    assert px.view is not None and px.view.block is False and px.view.targets == [0, 1]  # the view is unchanged

    run_ok(shell, "%pxconfig --targets ::2 --block --no-verbose")
    assert run_ok(shell, "%px config_marker = 2").result is None
    assert rc[:].pull("config_marker", block=True) == [2, 1]
    run_ok(shell, "%pxconfig --targets all")
    assert px.targets == "all"
    run_ok(shell, "%pxconfig --targets 0,1")
    assert px.targets == [0, 1]
    result = run(shell, "%pxconfig --targets zero")
    assert type(result.error_in_exec) is UsageError and "--targets 'zero'" in str(result.error_in_exec)


# --- %autopx -------------------------------------------------------------------------------------------------------


def test_autopx_runs_every_cell_on_the_engines_until_turned_off(shell, px, capsys):
    run_ok(shell, "%autopx")
    assert capsys.readouterr().out == "%autopx enabled\n"
    # While on, an unfinished block still asks for more lines (the transformer is skipped by check_complete).
    assert shell.input_transformer_manager.check_complete("for i in range(2):\n")[0] == "incomplete"
    run_ok(shell, "autopx_value = 6\nfor i in range(2):\n    print(autopx_value * 7 + i)\n")
    assert capsys.readouterr().out == "[stdout:0] 42\n[stdout:0] 43\n[stdout:1] 42\n[stdout:1] 43\n"
    assert "autopx_value" not in shell.user_ns

    run_ok(shell, "%autopx")
    assert capsys.readouterr().out == "%autopx disabled\n"
    run_ok(shell, "autopx_value = 'local'")
    assert shell.user_ns["autopx_value"] == "local"
    assert px.view is not None and px.view.pull("autopx_value", block=True) == [6, 6]


# --- %load_ext, suffixes, and no view ------------------------------------------------------------------------------


def test_load_ext_before_and_after_activate(shell, rc, monkeypatch, capsys):
    monkeypatch.setattr(magics, "_most_recent", None)
    monkeypatch.setattr(magics, "_registered", {})
    shell.extension_manager.loaded.discard("cluster_launcher")

    run_ok(shell, "%load_ext cluster_launcher")
    assert "call view.activate()" in capsys.readouterr().out
    result = run(shell, "%px x = 1")
    assert type(result.error_in_exec) is UsageError and "no view is active" in str(result.error_in_exec)

    # Activating binds the same names; %load_ext after it binds them to the most recent view.
    magics.activate(rc[[1]], suffix="_one")
    shell.extension_manager.loaded.discard("cluster_launcher")
    run_ok(shell, "%load_ext cluster_launcher")
    assert capsys.readouterr().out == ""
    run_ok(shell, "%px print('plain')")
    run_ok(shell, "%px_one print('suffixed')")
    assert capsys.readouterr().out == "[stdout:1] plain\n[stdout:1] suffixed\n"

    magics.activate(rc[:])
    run_ok(shell, "%px print('all')")
    run_ok(shell, "%px_one print('still one')")
    assert capsys.readouterr().out == "[stdout:0] all\n[stdout:1] all\n[stdout:1] still one\n"


def test_view_and_client_activate_register_suffixed_magics(shell, px, rc, capsys):
    rc[0].activate("_zero")
    view = rc.activate(targets=[1], suffix="_last")
    assert view.targets == [1]
    run_ok(shell, "%px_zero print('zero')")
    run_ok(shell, "%%px_last\nprint('last')")
    assert capsys.readouterr().out == "[stdout:0] zero\n[stdout:1] last\n"
    run_ok(shell, "%pxconfig_last --noblock")
    assert isinstance(run_ok(shell, "%px_last print('later')").result, AsyncResult)
    assert run_ok(shell, "%px_zero pass").result is None  # each suffix has its own settings
    capsys.readouterr()
    run_ok(shell, "%pxresult_last")
    assert capsys.readouterr().out == "[stdout:1] later\n"


def test_activate_outside_ipython_says_so(rc):
    script = ("import sys\nfrom cluster_launcher.client.magics import activate\n"
              "try:\n    activate(None)\nexcept RuntimeError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout == "the parallel magics need a running IPython (IPython or a Jupyter kernel)\n"


def test_core_imports_without_ipython():
    script = ("import sys\nsys.modules['IPython'] = None  # as if not installed\n"
              "import cluster_launcher, cluster_launcher.client.magics\nprint(cluster_launcher.Client.__name__)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "Client\n"), done.stderr


# --- the example, run by the ipython command --------------------------------------------------------------------------


def _run_example(script: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[int]]:
    env = {**os.environ, "CLUSTER_LAUNCHER_DIR": str(tmp_path / "home"), "IPYTHONDIR": str(tmp_path / "ipython")}
    done = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--colors=nocolor", str(script)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    found = re.search(r"^engine pids: ([\d ]+)$", done.stdout, re.MULTILINE)
    assert found, done.stdout + done.stderr
    return done, [int(pid) for pid in found.group(1).split()]


def _assert_no_process_left(pids: list[int], marker: str) -> None:
    def alive() -> list[int]:
        return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not alive(), 10, "the example's engines to exit")
    strays = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    left = alive()
    for pid in left:
        psutil.Process(pid).kill()
    assert not left and not strays, f"left running: {left} {[p.info['cmdline'] for p in strays]}"


def test_example_notebook_runs_in_ipython(tmp_path):
    done, pids = _run_example(EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(pids) == 2
    for engine_id in (0, 1):
        assert any(re.fullmatch(rf"\[stdout:{engine_id}\] engine {engine_id}: pi ~ 3\.1\d", line) for line in lines)
        assert f"[stdout:{engine_id}] engine {engine_id} used 200000 points" in lines
    assert re.search(r"^mean of 2 engines: pi ~ 3\.1\d$", done.stdout, re.MULTILINE)
    assert lines[-1] == "cluster stopped"
    _assert_no_process_left(pids, str(tmp_path / "home"))


def test_example_notebook_stops_its_cluster_when_a_cell_fails(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    marker = "    # In[5]"
    assert text.count(marker) == 1
    failing = tmp_path / "failing.ipy"
    failing.write_text(text.replace(marker, "    raise RuntimeError('a cell failed')\n" + marker), encoding="utf-8")
    done, pids = _run_example(failing, tmp_path)
    assert done.returncode != 0
    assert "RuntimeError: a cell failed" in done.stdout + done.stderr
    assert "cluster stopped" in done.stdout
    _assert_no_process_left(pids, str(tmp_path / "home"))


def test_target_forms():
    """The --targets forms the shell tests above do not all go through."""
    assert magics.parse_targets("1:", [0, 1, 2]) == [1, 2]
    assert magics.parse_targets("[2, 0]", [0, 1, 2]) == [2, 0]
    with pytest.raises(magics.MagicArgumentError, match="slice bounds are ints"):
        magics.parse_targets("a:b", [0, 1])
