"""The plugin registry with the builtins really installed through their entry points."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster_launcher import hookimpl, plugins
from cluster_launcher.error import PluginError, UnknownNameError
from cluster_launcher.launcher import EngineSetLauncher

BUILTIN_ENTRY_POINTS = {"local", "mpi", "dict", "sqlite", "mongodb", "leastload", "lru", "twobin", "weighted",
                        "plainrandom", "file"}


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the registry as a new process would, and leaves it that way."""
    plugins.reset()
    yield
    plugins.reset()


def test_builtins_load_through_entry_points():
    described = {p["name"]: p for p in plugins.describe()}
    assert BUILTIN_ENTRY_POINTS <= set(described)
    local = described["local"]
    assert (local["distribution"], local["kinds"]) == ("cluster-launcher-local", ["launcher"])
    assert local["short_names"] == ["Local"]
    assert local["hooks"] == ["cluster_launcher_register_launchers"]
    assert described["dict"]["classes"] == ["DictDB", "NoDB"]
    registry = plugins.get_registry()
    assert {"leastload", "lru", "twobin", "weighted", "plainrandom"} <= set(registry.names("scheduler"))
    assert registry.names("launcher", role="controller") == [
        "LSFControllerLauncher", "LocalControllerLauncher", "MPIControllerLauncher", "PBSControllerLauncher",
        "SGEControllerLauncher", "SSHControllerLauncher", "SlurmControllerLauncher", "WindowsHPCControllerLauncher"]


@pytest.mark.parametrize(("kind", "name", "role", "expected"), [
    ("launcher", "LocalEngineSetLauncher", None, "LocalEngineSetLauncher"),
    ("launcher", "Local", "engines", "LocalEngineSetLauncher"),
    ("launcher", "Local", "controller", "LocalControllerLauncher"),
    ("launcher", "local", "engines", "LocalEngineSetLauncher"),
    ("launcher", "LOCALcontrollerlauncher", None, "LocalControllerLauncher"),
    ("launcher", "IPython.parallel.apps.launcher.LocalEngineSetLauncher", "engines", "LocalEngineSetLauncher"),
    ("launcher", "cluster_launcher_local.LocalEngineSetLauncher", "engines", "LocalEngineSetLauncher"),
    ("db", "DictDB", None, "DictDB"),
    ("db", "nodb", None, "NoDB"),
    ("db", "IPython.parallel.controller.dictdb.DictDB", None, "DictDB"),
    ("scheduler", "leastload", None, "LeastLoad"),
    ("scheduler", "LRU", None, "LRU"),
    ("transport", "File", None, "FileTransport"),
])
def test_resolve(kind, name, role, expected):
    assert plugins.resolve(kind, name, role=role).__name__ == expected


def test_every_spelling_gives_the_same_class():
    import cluster_launcher_local

    spellings = ["Local", "local", "LocalEngineSetLauncher", "cluster_launcher_local.LocalEngineSetLauncher",
                 "IPython.parallel.apps.launcher.LocalEngineSetLauncher"]
    assert {plugins.resolve("launcher", s, role="engines") for s in spellings} == {
        cluster_launcher_local.LocalEngineSetLauncher}
    assert plugins.resolve("launcher", cluster_launcher_local.LocalEngineSetLauncher) is (
        cluster_launcher_local.LocalEngineSetLauncher)


def test_short_name_without_role_is_ambiguous_when_both_roles_exist():
    with pytest.raises(UnknownNameError, match="needs a role.*LocalEngineSetLauncher or LocalControllerLauncher"):
        plugins.resolve("launcher", "Local")


def test_unknown_builtin_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_LOAD_PLUGINS", "local,mpi")  # as if only those were installed
    plugins.reset()
    with pytest.raises(UnknownNameError) as info:
        plugins.resolve("launcher", "PBS", role="engines")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown launcher 'PBS'; installed: Local, MPI")
    assert "(pip install cluster-launcher-pbs)" in message
    legacy = "IPython.parallel.apps.launcher.PBSEngineSetLauncher"
    with pytest.raises(UnknownNameError, match=r"pip install cluster-launcher-pbs"):
        plugins.resolve("launcher", legacy, role="engines")


def test_unknown_name_lists_installed_and_closest_match():
    with pytest.raises(UnknownNameError) as info:
        plugins.resolve("scheduler", "leastlod")
    assert str(info.value) == ("unknown scheduler 'leastlod'; installed: leastload, lru, plainrandom, twobin, "
                               "weighted; did you mean 'leastload'?")
    with pytest.raises(UnknownNameError, match="did you mean 'Local'"):
        plugins.resolve("launcher", "Locale", role="engines")


def test_bad_dotted_path_is_one_line():
    with pytest.raises(UnknownNameError) as info:
        plugins.resolve("db", "no_such_module.SomeDB")
    assert str(info.value) == ("cannot import db 'no_such_module.SomeDB': "
                               "ModuleNotFoundError: No module named 'no_such_module'")


class DuplicateLocal:
    class LocalEngineSetLauncher(EngineSetLauncher):
        pass

    @staticmethod
    @hookimpl
    def cluster_launcher_register_launchers():
        return [DuplicateLocal.LocalEngineSetLauncher]


def test_duplicate_name_names_both_plugins():
    plugins.get_plugin_manager().register(DuplicateLocal, name="my-local")
    with pytest.raises(PluginError) as info:
        plugins.get_registry()
    assert str(info.value) == (
        "launcher name 'LocalEngineSetLauncher' is registered twice: by plugin 'local' "
        "(cluster-launcher-local 0.1.0) and by plugin 'my-local'; uninstall one")


class NotALauncher:
    @staticmethod
    @hookimpl
    def cluster_launcher_register_launchers():
        return [dict]


def test_registering_a_class_of_the_wrong_kind_names_the_plugin():
    plugins.get_plugin_manager().register(NotALauncher, name="confused")
    with pytest.raises(PluginError, match="plugin 'confused': cluster_launcher_register_launchers returned "
                                          "<class 'dict'>, not a Launcher subclass"):
        plugins.get_registry()


class RaisingHook:
    @staticmethod
    @hookimpl
    def cluster_launcher_register_dbs():
        raise RuntimeError("no\ndatabase here")


def test_a_register_hook_that_raises_names_the_plugin_in_one_line():
    plugins.get_plugin_manager().register(RaisingHook, name="raiser")
    with pytest.raises(PluginError) as info:
        plugins.get_registry()
    assert str(info.value) == "plugin 'raiser': cluster_launcher_register_dbs raised RuntimeError: no database here"


def plugin_names_in_fresh_process(**env: str) -> list[str]:
    """The plugins a new process loads under ``env`` (the variables are read at first use)."""
    code = "from cluster_launcher import plugins; print(','.join(p['name'] for p in plugins.describe()))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_LAUNCHER_")}
    result = subprocess.run([sys.executable, "-c", code], env={**environ, **env}, capture_output=True,
                            text=True, timeout=60, check=True)
    return [n for n in result.stdout.strip().split(",") if n]


def test_disable_autoload_loads_nothing():
    assert plugin_names_in_fresh_process(CLUSTER_LAUNCHER_DISABLE_PLUGIN_AUTOLOAD="1") == []


def test_load_plugins_selects_entry_points():
    assert plugin_names_in_fresh_process(CLUSTER_LAUNCHER_LOAD_PLUGINS="local, leastload") == ["leastload", "local"]
    assert plugin_names_in_fresh_process(CLUSTER_LAUNCHER_LOAD_PLUGINS="") == []
    assert BUILTIN_ENTRY_POINTS <= set(plugin_names_in_fresh_process())


def test_env_vars_in_this_process_after_reset(monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_LOAD_PLUGINS", "dict")
    plugins.reset()
    assert [p["name"] for p in plugins.describe()] == ["dict"]
    with pytest.raises(UnknownNameError, match="unknown launcher 'Local'; installed: none"):
        plugins.resolve("launcher", "Local", role="engines")
    monkeypatch.delenv("CLUSTER_LAUNCHER_LOAD_PLUGINS")
    monkeypatch.setenv("CLUSTER_LAUNCHER_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins.reset()
    assert plugins.describe() == []


MPIEXEC_NAMES = ("IPython.parallel.apps.launcher.MPIExecEngineSetLauncher", "MPIExecEngineSetLauncher", "MPIExec")


def test_seed_mpiexec_names_resolve_to_the_mpi_launcher_names():
    """The 0.11 name MPIExec… is today's MPI…."""
    for name in MPIEXEC_NAMES:
        assert plugins.resolve("launcher", name, role="engines").__name__ == "MPIEngineSetLauncher"


def test_without_the_mpi_plugin_the_error_names_its_distribution(monkeypatch):
    """With the MPI plugin not loaded, the error names the MPI launcher and
    the distribution to install, not the 0.11 name MPIExec."""
    monkeypatch.setenv("CLUSTER_LAUNCHER_LOAD_PLUGINS", "local")
    plugins.reset()
    for name in MPIEXEC_NAMES:
        with pytest.raises(UnknownNameError, match=r"'MPI(EngineSetLauncher)?'.*pip install cluster-launcher-mpi"):
            plugins.resolve("launcher", name, role="engines")
