"""Third-party plugins, installed for real: each is a distribution built with
hatchling and installed with uv into a throwaway venv beside the workspace's
core, then seen through ``cluster-launcher plugins`` and ``resolve`` in that
venv's own processes.  Also runs the out-of-tree example
(examples/cluster-launcher-condor) and its tests the way its author would,
and every shell command in the plugin docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster_launcher.testing.processes import running_with, wait_for

ROOT = Path(__file__).resolve().parents[1]
CONDOR_EXAMPLE = ROOT / "examples" / "cluster-launcher-condor"
DOCS = [ROOT / "docs" / "plugins.md", ROOT / "docs" / "writing-plugins.md"]

DEMO_MODULE = '''
from cluster_launcher import hookimpl
from cluster_launcher.launcher import EngineSetLauncher
from cluster_launcher.scheduler import Scheduler


class DemoEngineSetLauncher(EngineSetLauncher):
    """Engines started the demo way."""


class DemoScheduler(Scheduler):
    name = "demo"

    def choose(self, loads):
        return len(loads) - 1


@hookimpl
def cluster_launcher_register_launchers():
    return [DemoEngineSetLauncher]


@hookimpl
def cluster_launcher_register_schedulers():
    return [DemoScheduler]


def _event(*words):
    import os
    if os.environ.get("DEMO_EVENTS"):
        with open(os.environ["DEMO_EVENTS"], "a") as log:
            log.write(" ".join(str(w) for w in words) + "\\n")


@hookimpl
def cluster_launcher_controller_started(connection_info, profile_dir):
    _event("controller_started", connection_info["client_port"] > 0)


@hookimpl
def cluster_launcher_engine_registered(engine_id, info):
    _event("engine_registered", engine_id, info["pid"] > 0)


@hookimpl
def cluster_launcher_engine_unregistered(engine_id, reason):
    _event("engine_unregistered", engine_id, reason)


@hookimpl
def cluster_launcher_cluster_stopping(profile_dir, cluster_id):
    _event("cluster_stopping", bool(cluster_id))
'''
BROKEN_MODULE = "import cluster_launcher_no_such_dependency\n"
DUPLICATE_MODULE = '''
from cluster_launcher import hookimpl
from cluster_launcher.launcher import EngineSetLauncher


class LocalEngineSetLauncher(EngineSetLauncher):
    """Claims the builtin's name."""


@hookimpl
def cluster_launcher_register_launchers():
    return [LocalEngineSetLauncher]
'''


def write_plugin(parent: Path, name: str, version: str, module_source: str) -> Path:
    """A plugin distribution ``cluster-launcher-<name>`` laid out as a third party would."""
    folder = parent / f"cluster-launcher-{name}"
    folder.mkdir()
    (folder / f"cluster_launcher_{name}.py").write_text(module_source)
    (folder / "pyproject.toml").write_text(textwrap.dedent(f'''
        [project]
        name = "cluster-launcher-{name}"
        version = "{version}"
        dependencies = ["cluster-launcher-core"]

        [project.entry-points."cluster_launcher"]
        {name} = "cluster_launcher_{name}"

        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [tool.hatch.build.targets.wheel]
        only-include = ["cluster_launcher_{name}.py"]
        '''))
    return folder


class Venv:
    """A throwaway venv with the workspace's core and the Local and Dict builtins (editable), plus ``requirements``.
    Built with uv, which .ci/run installs: without it these tests fail rather than skip."""

    def __init__(self, path: Path, *requirements: str):
        self.path = path
        subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(path)], check=True, timeout=120)
        builtins = [arg for name in ("launchers/local", "dbs/dict") for arg in ("-e", str(ROOT / "plugins" / name))]
        self.install("-e", str(ROOT / "core"), *builtins, *requirements)

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def install(self, *requirements: str) -> None:
        subprocess.run(["uv", "pip", "install", "--quiet", "--python", self.python, *requirements],
                       check=True, timeout=300, cwd=ROOT)

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_LAUNCHER_", "PYTHON"))}
        environ.pop("VIRTUAL_ENV", None)
        bin_dir = str(self.path / "bin")
        return {**environ, "VIRTUAL_ENV": str(self.path), "PATH": bin_dir + os.pathsep + environ["PATH"], **extra}

    def run(self, args: list[str] | str, shell: bool = False, cwd: Path = ROOT, **extra: str,
            ) -> subprocess.CompletedProcess:
        return subprocess.run(args, shell=shell, env=self.env(**extra), capture_output=True, text=True,
                              timeout=180, cwd=cwd)

    def resolve(self, kind: str, name: str, role: str | None = None) -> str:
        code = (f"from cluster_launcher import plugins; cls = plugins.resolve({kind!r}, {name!r}, role={role!r}); "
                "print(f'{cls.__module__}.{cls.__qualname__}')")
        result = self.run([self.python, "-c", code])
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def doc_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def write_doc_plugin(parent: Path) -> Path:
    """The smallest plugin of docs/writing-plugins.md, from its first toml and python blocks."""
    page = ROOT / "docs" / "writing-plugins.md"
    pyproject, module = doc_blocks(page, "toml")[0], doc_blocks(page, "python")[0]
    folder = parent / "cluster-launcher-hello"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(pyproject)
    (folder / "cluster_launcher_hello.py").write_text(module)
    return folder


@pytest.fixture(scope="module")
def good_venv(tmp_path_factory) -> Venv:
    """Core, the Local builtin, the demo plugin, the docs' smallest plugin and
    the Condor example (installed from its checkout)."""
    tmp = tmp_path_factory.mktemp("third-party")
    demo = write_plugin(tmp, "demo", "1.2.3", DEMO_MODULE)
    return Venv(tmp / "venv", str(demo), str(write_doc_plugin(tmp)), f"{CONDOR_EXAMPLE}[test]")


@pytest.fixture(scope="module")
def bad_venv(tmp_path_factory) -> Venv:
    """Core, the Local builtin, a plugin that cannot import and one that claims a builtin's name."""
    tmp = tmp_path_factory.mktemp("bad-plugins")
    broken = write_plugin(tmp, "broken", "0.0.1", BROKEN_MODULE)
    duplicate = write_plugin(tmp, "dupe", "0.2.0", DUPLICATE_MODULE)
    return Venv(tmp / "venv", str(broken), str(duplicate))


def test_plugins_command_lists_third_party_plugin(good_venv):
    result = good_venv.run(["cluster-launcher", "plugins"])
    assert result.returncode == 0, result.stderr
    listing = result.stdout
    for expected in ("cluster-launcher-demo", "1.2.3", "launcher", "scheduler", "Demo", "demo",
                     "cluster_launcher_register_launchers", "cluster_launcher_register_schedulers",
                     "cluster_launcher_engine_registered",
                     "cluster-launcher-condor", "Condor", "cluster-launcher-local", "Local"):
        assert expected in listing, f"{expected!r} missing from `cluster-launcher plugins`:\n{listing}"


def test_resolve_third_party_names(good_venv):
    assert good_venv.resolve("launcher", "Demo", "engines") == "cluster_launcher_demo.DemoEngineSetLauncher"
    assert good_venv.resolve("launcher", "demo") == "cluster_launcher_demo.DemoEngineSetLauncher"
    assert good_venv.resolve("scheduler", "DEMO") == "cluster_launcher_demo.DemoScheduler"
    assert good_venv.resolve("launcher", "Condor", "engines") == "cluster_launcher_condor.CondorEngineSetLauncher"
    assert good_venv.resolve("launcher", "Local", "controller") == "cluster_launcher_local.LocalControllerLauncher"


def test_smallest_plugin_of_the_docs_works(good_venv):
    listing = good_venv.run(["cluster-launcher", "plugins"]).stdout
    assert "cluster-launcher-hello" in listing and "firstoftwo" in listing, listing
    assert good_venv.resolve("scheduler", "FirstOfTwo") == "cluster_launcher_hello.FirstOfTwo"
    code = "from cluster_launcher import plugins; print(plugins.resolve('scheduler', 'firstoftwo')().choose([3, 1, 0]))"
    assert good_venv.run([good_venv.python, "-c", code]).stdout.strip() == "1"


def test_condor_example_own_tests_pass(good_venv):
    result = good_venv.run([good_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(CONDOR_EXAMPLE / "tests")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b(6 passed, 1 skipped|7 passed)\b", result.stdout), result.stdout  # 7 where HTCondor runs


def test_condor_example_starts_engines_through_the_real_htcondor(condor_bed):
    """Installed into a fresh venv, `--engines=Condor` submits engines to a real HTCondor (its schedd in
    a Debian 13 chroot, cluster_launcher.testing.batchbeds); they get the connection file by HTCondor's
    file transfer and run code; `stop` leaves the queue empty.  Everything runs as HTCondor's submit
    user inside the chroot, as a user of the pool would: `start` (whose condor_submit must read the
    0600 connection file to send it), the controller, the client; the venv is in a job folder, where
    that user can reach it."""
    jobs = condor_bed.job_dir("third-party")
    venv = Venv(jobs / "venv", str(CONDOR_EXAMPLE), "-e", str(ROOT / "plugins" / "schedulers" / "leastload"))
    home = jobs / "home"

    def as_submit_user(*argv: str) -> subprocess.CompletedProcess:
        command = condor_bed.command(argv, cwd=jobs, env={"CLUSTER_LAUNCHER_DIR": str(home)})
        return subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)

    started = as_submit_user(str(venv.path / "bin" / "cluster-launcher"), "start", "--engines=Condor", "-n", "2",
                             "--daemonize", "--CondorLauncher.poll_interval=0.5")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert re.search(r"2 engines started \(Condor job \d+", started.stdout), started.stdout
        description = (home / "profile_default" / "batch").glob("condor-engines-*.submit")
        assert "transfer_input_files = " in next(description).read_text()
        code = ("import json, os; from cluster_launcher import Client\n"
                "with Client(timeout=20) as c:\n"
                "    c.wait_for_engines(2, timeout=60)\n"
                "    print(json.dumps(c[:].apply_sync(lambda: [os.getuid(), os.getcwd(), os.listdir()])))")
        ran = as_submit_user(venv.python, "-c", code)
        assert ran.returncode == 0, ran.stderr
        # HTCondor's user ran them, each in a scratch folder of its own holding the connection file it was sent.
        engines = json.loads(ran.stdout)
        assert [uid for uid, _, _ in engines] == [condor_bed.submit_uid] * 2
        assert len({cwd for _, cwd, _ in engines}) == 2 and all(cwd != str(jobs) for _, cwd, _ in engines)
        assert all("controller-engine.json" in listing for _, _, listing in engines), engines
        listed = as_submit_user(str(venv.path / "bin" / "cluster-launcher"), "list")
        assert re.search(r"Condor job \d+ (Running|2 running)", listed.stdout), listed.stdout + listed.stderr
    finally:
        stopped = as_submit_user(str(venv.path / "bin" / "cluster-launcher"), "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert condor_bed.jobs() == []
    wait_for(lambda: not running_with(str(jobs)), 30, "the controller and engines to end")


def test_plugin_that_fails_to_import_is_named(bad_venv):
    result = bad_venv.run(["cluster-launcher", "plugins"], CLUSTER_LAUNCHER_LOAD_PLUGINS="local,broken")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "cluster-launcher: error: plugin 'broken' (cluster-launcher-broken 0.0.1, cluster_launcher_broken) "
        "failed to load: ModuleNotFoundError: No module named 'cluster_launcher_no_such_dependency'"]


def test_plugin_taking_a_builtin_name_is_named_with_the_builtin(bad_venv):
    result = bad_venv.run(["cluster-launcher", "plugins"], CLUSTER_LAUNCHER_LOAD_PLUGINS="local,dupe")
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("cluster-launcher: error: launcher name 'LocalEngineSetLauncher' is registered twice: ")
    assert "plugin 'local' (cluster-launcher-local 0.1.0)" in line
    assert "plugin 'dupe' (cluster-launcher-dupe 0.2.0)" in line


def test_bad_plugins_can_be_left_out(bad_venv):
    result = bad_venv.run(["cluster-launcher", "plugins"], CLUSTER_LAUNCHER_LOAD_PLUGINS="local")
    assert result.returncode == 0, result.stderr
    assert "cluster-launcher-local" in result.stdout and "broken" not in result.stdout


def doc_commands(path: Path) -> list[tuple[str, int]]:
    """``$ command`` lines of the ```console blocks in a docs page, each with
    the exit code the page promises (``# exits N`` at the end; default 0)."""
    commands = []
    for line in (line for block in doc_blocks(path, "console") for line in block.splitlines() if line.startswith("$ ")):
        command, _, code = line[2:].partition("# exits ")
        commands.append((command.strip(), int(code or 0)))
    return commands


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_doc_shell_commands_run(good_venv, page):
    commands = doc_commands(page)
    assert commands, f"{page} has no console examples"
    for command, exit_code in commands:
        result = good_venv.run(command, shell=True)
        assert result.returncode == exit_code, f"{page.name}: `{command}`\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, f"{page.name}: `{command}`\n{result.stderr}"


def test_lifecycle_hooks_are_called_in_the_running_cluster(good_venv, tmp_path):
    """The demo plugin's lifecycle hooks fire in the controller and in the
    process stopping the cluster (a real cluster, started in the plugin's venv)."""
    good_venv.install("-e", str(ROOT / "plugins" / "schedulers" / "leastload"))
    events = tmp_path / "events.log"
    code = ("from cluster_launcher import Cluster\n"
            f"with Cluster(n=1, profile_dir={str(tmp_path / 'profile')!r}) as client:\n"
            "    assert client[:].apply_sync(lambda: 1) == [1]\n")
    result = good_venv.run([good_venv.python, "-c", code], DEMO_EVENTS=str(events))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = events.read_text().splitlines()
    assert lines[:2] == ["controller_started True", "engine_registered 0 True"], lines
    assert "cluster_stopping True" in lines
    assert any(line.startswith("engine_unregistered 0 ") for line in lines), lines
