"""Which engines `start` uses inside a batch allocation: the answer of the
``cluster_launcher_allocation`` hook, unless the engine launcher (or the
number of engines) is configured (Cluster.use_allocation).  A stand-in
plugin answers here; the Slurm and MPI plugins' own answers are tested with
them, and the real thing in tests/test_allocation.py."""

from __future__ import annotations

import contextlib

import pytest
from traitlets.config import Config

from cluster_launcher import Cluster, hookimpl, plugins
from cluster_launcher.config import build_config
from cluster_launcher.error import ClusterError
from cluster_launcher.launcher import Allocation

JOB = Allocation(system="Batchy", job_id="42", engine_launcher="Local", slots=6, nodes=("n1", "n2"))


class Batchy:
    """A plugin that knows one variable of a made-up batch system."""

    @staticmethod
    @hookimpl
    def cluster_launcher_allocation(environ):
        return JOB if "BATCHY_JOB" in environ else None


class Broken:
    @staticmethod
    @hookimpl
    def cluster_launcher_allocation(environ):
        raise KeyError("BATCHY_NODES")


@pytest.fixture(autouse=True)
def only_batchy(monkeypatch):
    """A registry of the builtins that answer nothing here, plus Batchy."""
    monkeypatch.setenv("CLUSTER_LAUNCHER_LOAD_PLUGINS", "local")
    plugins.reset()
    plugins.get_plugin_manager().register(Batchy, name="batchy")
    yield
    plugins.reset()


def _cluster(tmp_path, config: Config | None = None, **kwargs) -> Cluster:
    return Cluster(profile_dir=str(tmp_path / "profile"), cluster_id="", config=config or Config(), **kwargs)


def test_inside_an_allocation_the_engines_are_its_launchers_and_as_many_as_its_slots(tmp_path):
    cluster = _cluster(tmp_path)
    cluster.engine_launcher_class = "Local"  # the default, as nothing configured it
    assert cluster.use_allocation({"BATCHY_JOB": "42"}) is JOB
    assert (cluster.engine_launcher_class, cluster.n) == ("Local", 6)
    assert cluster.controller_launcher_class == "Local"


def test_outside_an_allocation_nothing_changes(tmp_path):
    cluster = _cluster(tmp_path)
    assert cluster.use_allocation({"PATH": "/bin"}) is None
    assert (cluster.engine_launcher_class, cluster.n) == ("Local", 4)


@pytest.mark.parametrize("section, trait", [("Cluster", "engine_launcher_class"),
                                            ("IPClusterEngines", "engine_launcher_class"),  # IPython's
                                            ("IPClusterStart", "engine_launcher")])  # 0.11's
def test_a_configured_engine_launcher_wins_even_local(tmp_path, section, trait):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "cluster_config.py").write_text(f"c = get_config()\nc.{section}.{trait} = 'Local'\n")
    with pytest.warns(DeprecationWarning) if trait == "engine_launcher" else contextlib.nullcontext():
        config = build_config("cluster", str(profile))
    cluster = _cluster(tmp_path, config)
    assert cluster.use_allocation({"BATCHY_JOB": "42"}) is None
    assert cluster.n == 4, "n is the cluster's own default, not the allocation's"


def test_an_engine_launcher_given_in_python_wins(tmp_path):
    cluster = _cluster(tmp_path, engine_launcher_class="MPI")
    assert cluster.use_allocation({"BATCHY_JOB": "42"}) is None
    assert cluster.engine_launcher_class == "MPI"


def test_a_configured_n_wins_over_the_slots(tmp_path):
    config = Config()
    config.Cluster.n = 2
    cluster = _cluster(tmp_path, config)
    assert cluster.use_allocation({"BATCHY_JOB": "42"}) is JOB
    assert cluster.n == 2


def test_a_hook_that_raises_fails_start_in_one_line(tmp_path):
    plugins.get_plugin_manager().register(Broken, name="broken")
    with pytest.raises(ClusterError, match=r"^a cluster_launcher_allocation hook failed: KeyError: 'BATCHY_NODES'$"):
        _cluster(tmp_path).use_allocation({"BATCHY_JOB": "42"})
