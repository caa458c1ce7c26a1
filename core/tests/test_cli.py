"""The cluster-launcher command line: help, flags into config, one-line errors,
plugin subcommands, the commands docs/cli.md shows."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_launcher import cli, hookimpl, plugins

REPO = Path(__file__).resolve().parents[2]
EXECUTABLE = Path(sys.executable).parent / "cluster-launcher"
SUBCOMMANDS = [["start"], ["stop"], ["engines"], ["list"], ["controller"], ["engine"], ["profile"],
               ["profile", "create"], ["profile", "list"], ["profile", "locate"], ["plugins"]]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("words", [[]] + SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_help_exits_zero(words, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: cluster-launcher" in capsys.readouterr().out


def test_plugins_prints_json_of_the_builtins_from_a_real_process(home):
    env = {**os.environ, "CLUSTER_LAUNCHER_DIR": str(home)}
    result = subprocess.run([str(EXECUTABLE), "plugins"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    described = {p["name"]: p for p in json.loads(result.stdout)}
    assert {"local", "dict", "leastload", "file"} <= set(described)
    assert described["local"]["short_names"] == ["Local"]
    assert described["local"]["distribution"] == "cluster-launcher-local"
    assert {"DictDB", "NoDB"} <= set(described["dict"]["classes"])


def test_plugins_all_lists_the_hook_specs(capsys):
    assert cli.main(["plugins", "--all"]) == 0
    out = json.loads(capsys.readouterr().out)
    specs = {s["name"]: s for s in out["hookspecs"]}
    assert "local" in specs["cluster_launcher_register_launchers"]["implemented_by"]
    assert specs["cluster_launcher_register_commands"]["summary"]
    assert {p["name"] for p in out["plugins"]} >= {"local", "dict"}


def config_of(argv: list[str]):
    args = cli.parse(argv)
    return cli.command_config(args)


def test_start_flags_land_in_cluster_config(home):
    profile_dir, cfg = config_of(["start", "-n", "4", "--engines=Local", "--controller=LocalControllerLauncher",
                                  "--daemonize", "--cluster-id=abc", "--profile=work", "--Cluster.delay=0.5"])
    assert profile_dir == str(home / "profile_work")
    assert os.path.isdir(os.path.join(profile_dir, "security"))
    assert cfg.Cluster.n == 4 and cfg.Cluster.daemonize is True and cfg.Cluster.delay == 0.5
    assert cfg.Cluster.engine_launcher_class == "Local"
    assert cfg.Cluster.controller_launcher_class == "LocalControllerLauncher"
    assert cfg.Cluster.cluster_id == cfg.Controller.cluster_id == cfg.Engine.cluster_id == "abc"


def test_controller_flags_land_in_controller_config(tmp_path):
    profile_dir, cfg = config_of(["controller", "--ip=127.0.0.1", "--location=localhost", "--reuse", "--nodb",
                                  "--enginessh=user@host", "--ssh=host", f"--profile-dir={tmp_path / 'p'}",
                                  "--HubFactory.heartbeat_period", "2"])
    assert profile_dir == str(tmp_path / "p")
    c = cfg.Controller
    assert (c.ip, c.location, c.reuse, c.db_class, c.enginessh, c.ssh, c.heartbeat_period) == \
        ("127.0.0.1", "localhost", True, "NoDB", "user@host", "host", 2.0)


def test_engine_and_engines_flags():
    _, cfg = config_of(["engine", "--file=/x/controller-engine.json", "--ssh=login"])
    assert (cfg.Engine.file, cfg.Engine.ssh) == ("/x/controller-engine.json", "login")
    args = cli.parse(["engines", "--n=3", "--engines=Local"])
    assert args.n == 3 and cli.command_config(args)[1].Cluster.engine_launcher_class == "Local"


def test_profile_file_and_command_line_combine(home):
    assert cli.main(["profile", "create", "p"]) == 0
    (home / "profile_p" / "controller_config.py").write_text("c.HubFactory.ip = '*'\nc.Controller.reuse = True\n")
    _, cfg = config_of(["controller", "--profile=p", "--ip=127.0.0.1"])
    assert cfg.Controller.ip == "127.0.0.1" and cfg.Controller.reuse is True


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["start", "--engines=SHS"], "Cluster.engine_launcher_class: unknown launcher 'SHS'; installed: "),
    (["start", "--engines=Locl"], "did you mean 'Local'?"),
    (["controller", "--Controller.ipp=1"], "command line --Controller.ipp=1: unknown option Controller.ipp "
                                           "(did you mean ip?)"),
    (["start", "-n", "four"], "argument -n/--n: invalid int value: 'four'"),
    (["start", "--bogus"], "unrecognized argument '--bogus'"),
    (["profile", "locate", "nope"], "--profile=nope: no profile at "),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    (["controller", "--Engine.timeout=soon"], "bad value for Engine.timeout"),
])
def test_errors_are_one_line_exit_two(argv, message, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("cluster-launcher: error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    code, _, err = run_cli(["start", "--engines=SHS", "--debug"], capsys)
    assert code == 2 and "Traceback" in err
    assert err.rstrip().endswith("unknown launcher 'SHS'; installed: LSF, Local, MPI, PBS, SGE, SSH, Slurm, "
                                 "Srun, WindowsHPC; did you mean 'SSH'?")


def test_config_file_error_through_the_cli(home, capsys):
    assert cli.main(["profile", "create"]) == 0
    path = home / "profile_default" / "engine_config.py"
    path.write_text("c = get_config()\nc.Engine.timeout = (\n")
    code, _, err = run_cli(["engine"], capsys)
    assert code == 2 and err == f"cluster-launcher: error: {path}:2: SyntaxError: '(' was never closed\n"


def test_profile_commands(home, capsys):
    code, out, _ = run_cli(["profile", "create", "mpi", "--parallel"], capsys)
    assert code == 0 and f"wrote {home}/profile_mpi/cluster_config.py" in out
    code, out, _ = run_cli(["profile", "create", "mpi"], capsys)
    assert code == 0 and f"kept  {home}/profile_mpi/engine_config.py" in out
    assert run_cli(["profile", "list"], capsys)[1].splitlines()[1:] == ["  mpi"]
    assert run_cli(["profile", "locate", "mpi"], capsys)[1] == f"{home}/profile_mpi\n"


class HelloPlugin:
    @hookimpl
    def cluster_launcher_register_commands(self, commands):
        parser = commands.add("hello", lambda args: print(f"hello {args.name}") or 7, help="Say hello.")
        parser.add_argument("--name", default="world")


def test_a_plugin_adds_a_subcommand(capsys):
    pm = plugins.get_plugin_manager()
    pm.register(HelloPlugin(), name="test-hello")
    try:
        assert run_cli(["hello", "--name=you"], capsys)[:2] == (7, "hello you\n")
    finally:
        pm.unregister(name="test-hello")


def docs_commands() -> list[list[str]]:
    text = (REPO / "docs" / "cli.md").read_text()
    return [shlex.split(line[2:])[1:] for line in re.findall(r"^\$ cluster-launcher .*$", text, re.M)]


def test_docs_cli_shows_every_subcommand():
    shown = {tuple(words[:2]) if words[0] == "profile" else (words[0],) for words in docs_commands()}
    assert shown >= {tuple(w) for w in SUBCOMMANDS if w != ["profile"]}


@pytest.mark.parametrize("words", docs_commands(), ids=" ".join)
def test_docs_cli_commands_parse_and_configure(words, capsys):
    """Every command docs/cli.md shows is accepted; runtime ones build their
    config (they are not run: that starts clusters), the rest run."""
    args = cli.parse(words)
    if not hasattr(args, "role"):
        code = cli.main(words if words[:2] != ["profile", "locate"] else ["profile", "create", words[2]])
        assert code == 0
        return
    if any(w in ("--engines=Locl", "--Controller.ipp=127.0.0.1") for w in words):  # shown as errors
        assert run_cli(words, capsys)[0] == 2
    elif any(w in ("--controller=PBS", "--engines=PBS", "--engines=MPI") for w in words):
        # Plugins not installed in this environment: the rest of the command must still be right.
        cli.command_config(cli.parse([w for w in words if not w.startswith(("--controller=", "--engines="))]))
    else:
        cli.command_config(args)
