"""Config loading: the seed's configuration lines, verbatim, land on our traits;
bad options and broken files give one-line FILE:LINE errors."""

from __future__ import annotations

import logging
import os
import textwrap
import warnings

import pytest
from traitlets.config import Config, Configurable

from cluster_launcher import config, plugins
from cluster_launcher.cluster import Cluster
from cluster_launcher.controller import Controller
from cluster_launcher.engine import Engine
from cluster_launcher.error import ConfigError, UnknownNameError
from cluster_launcher.scheduler import TaskScheduler

# Every configuration line of the seed document ("Starting the IPython
# controller and engines", parallel_process.txt, IPython 0.12/0.13), copied
# verbatim, grouped by the file the seed puts it in.  The lines the seed shows
# commented out are uncommented here (with the `import os` they need).
SEED_CLUSTER_LINES = '''\
c.IPClusterEngines.engine_launcher_class = 'SSH'
c.IPClusterEngines.engine_launcher_class = 'SSHEngineSetLauncher'
c.IPClusterEngines.engine_launcher_class = 'IPython.parallel.apps.launcher.SSHEngineSetLauncher'
c.IPClusterEngines.engine_launcher_class = 'MPIEngineSetLauncher'
c.IPClusterStart.controller_launcher_class = 'MPIControllerLauncher'
c.IPClusterStart.controller_launcher_class = 'PBSControllerLauncher'
c.IPClusterEngines.engine_launcher_class = 'PBSEngineSetLauncher'
c.PBSEngineSetLauncher.batch_template_file = "pbs.engine.template"
c.PBSControllerLauncher.batch_template_file = "pbs.controller.template"
c.PBSLauncher.queue = 'veryshort.q'
c.IPClusterEngines.n = 64
c.IPClusterEngines.engine_launcher_class = 'SSHEngineSetLauncher'
c.IPClusterStart.controller_launcher_class = 'SSHControllerLauncher'
c.SSHControllerLauncher.hostname = 'controller.example.com'
c.SSHControllerLauncher.user = os.environ.get('USER','username')
c.SSHControllerLauncher.controller_args = ['--reuse', '--ip=*', '--profile-dir=/path/to/cd']
c.SSHEngineSetLauncher.engines = { 'host1.example.com' : 2,
            'host2.example.com' : 5,
            'host3.example.com' : (1, ['--profile-dir=/home/different/location']),
            'host4.example.com' : 8 }
c.SSHEngineSetLauncher.engine_args = ['--profile-dir=/path/to/profile_ssh']
c.SSHLauncher.to_send = []
c.SSHLauncher.to_fetch = []
'''
SEED_CONTROLLER_LINES = '''\
c.HubFactory.ip = '*'
c.HubFactory.location = '10.0.1.1'
c.HubFactory.ip = '*'
c.HubFactory.location = '10.0.1.5'
import socket
hostname = socket.gethostname()
ex_ip = socket.gethostbyname_ex(hostname)[-1][-1]
c.HubFactory.location = ex_ip
c.HubFactory.ssh_server = 'login.mycluster.net'
c.HubFactory.db_class = 'IPython.parallel.controller.dictdb.DictDB'
c.HubFactory.db_class = 'IPython.parallel.controller.mongodb.MongoDB'
c.HubFactory.db_class = 'IPython.parallel.controller.sqlitedb.SQLiteDB'
c.HubFactory.db_class = 'IPython.parallel.controller.dictdb.NoDB'
c.MongoDB.database = 'tasks'
c.SQLiteDB.table = 'tasks'
c.MongoDB.connection_args = []
c.MongoDB.connection_kwargs = {}
'''
SEED_ENGINE_LINES = '''\
c.MPI.use = 'mpi4py'
c.IPEngineApp.startup_script = u'/path/to/my/startup.py'
c.IPEngineApp.startup_command = 'import numpy, scipy, mpi4py'
c.IPEngineApp.work_dir = u'/path/to/scratch/'
'''
# Lines of the seed's other releases (0.11 names) and of its generated config
# files that users carry in old profiles.
LEGACY_LINES = {
    "cluster": '''\
c.IPClusterEngines.engine_launcher = 'IPython.parallel.apps.launcher.SSHEngineSetLauncher'
c.IPClusterStart.controller_launcher = 'IPython.parallel.apps.launcher.LocalControllerLauncher'
c.IPClusterStart.daemonize = True
c.IPClusterStart.delay = 2.0
c.LocalControllerLauncher.controller_args = ['--log-to-file', '--log-level=20']
c.MPIExecEngineSetLauncher.mpi_args = ['-machinefile', 'hosts']
c.SSHControllerLauncher.program_args = ['--reuse']
c.SGELauncher.queue = 'all.q'
''',
    "controller": '''\
c.HubFactory.engine_ip = '*'
c.HubFactory.client_ip = '*'
c.IPControllerApp.reuse_files = True
c.IPControllerApp.ssh_server = 'login.example.com'
c.IPControllerApp.log_level = 30
c.TaskScheduler.hwm = 1
c.TaskScheduler.scheme_name = 'lru'
c.SQLiteDB.filename = 'tasks.db'
''',
    "engine": '''\
c.IPEngineApp.url_file = u'/path/to/ipcontroller-engine.json'
c.IPEngineApp.wait_for_url_file = 60
c.EngineFactory.timeout = 30
c.EngineFactory.sshserver = 'login.example.com'
''',
}


def configured(cls, cfg: Config):
    """An instance of ``cls`` with ``cfg`` applied by traitlets, without running
    the class's own ``__init__`` (the runtime classes need a live profile)."""
    obj = cls.__new__(cls)
    Configurable.__init__(obj, config=cfg)
    return obj


def write(profile_dir, name: str, text: str) -> str:
    path = os.path.join(profile_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", str(tmp_path))
    path = tmp_path / "profile_test"
    path.mkdir()
    return str(path)


def test_seed_cluster_lines_land_on_our_traits(profile_dir):
    write(profile_dir, "cluster_config.py", "import os\n" + SEED_CLUSTER_LINES)
    cfg = config.build_config("cluster", profile_dir)
    cluster = configured(Cluster, cfg)
    assert cluster.engine_launcher_class == "SSHEngineSetLauncher"  # the last one set; kept as given
    assert cluster.controller_launcher_class == "SSHControllerLauncher"
    assert cluster.n == 64
    assert cfg.PBSEngineSetLauncher.batch_template_file == "pbs.engine.template"
    assert cfg.PBSControllerLauncher.batch_template_file == "pbs.controller.template"
    # PBSLauncher is the base class of both PBS launchers: traitlets gives its options to each.
    for name in ("PBSEngineSetLauncher", "PBSControllerLauncher"):
        assert configured(plugins.resolve("launcher", name), cfg).queue == "veryshort.q"
    assert cfg.SSHControllerLauncher.hostname == "controller.example.com"
    assert cfg.SSHControllerLauncher.user == os.environ.get("USER", "username")
    assert cfg.SSHControllerLauncher.controller_args == ["--reuse", "--ip=*", "--profile-dir=/path/to/cd"]
    assert cfg.SSHEngineSetLauncher.engines["host3.example.com"] == (1, ["--profile-dir=/home/different/location"])
    assert cfg.SSHEngineSetLauncher.engine_args == ["--profile-dir=/path/to/profile_ssh"]
    # SSHLauncher is the base class of both SSH launchers: traitlets gives its options to each.
    for name in ("SSHEngineSetLauncher", "SSHControllerLauncher"):
        launcher = configured(plugins.resolve("launcher", name), cfg)
        assert launcher.to_send == [] and launcher.to_fetch == []


@pytest.mark.parametrize("line, expected", [
    ("c.IPClusterEngines.engine_launcher_class = 'SSH'", "SSH"),
    ("c.IPClusterEngines.engine_launcher_class = 'MPIEngineSetLauncher'", "MPIEngineSetLauncher"),
    ("c.IPClusterEngines.engine_launcher_class = 'PBSEngineSetLauncher'", "PBSEngineSetLauncher"),
])
def test_each_seed_launcher_line_alone(profile_dir, line, expected):
    assert line in SEED_CLUSTER_LINES
    write(profile_dir, "cluster_config.py", line + "\n")
    assert configured(Cluster, config.build_config("cluster", profile_dir)).engine_launcher_class == expected


def test_seed_controller_lines_land_on_our_traits(profile_dir):
    write(profile_dir, "controller_config.py", SEED_CONTROLLER_LINES)
    cfg = config.build_config("controller", profile_dir)
    controller = configured(Controller, cfg)
    assert controller.ip == "*"
    assert controller.location == "127.0.0.1"  # ex_ip on this loopback-only host
    assert controller.ssh == "login.mycluster.net"
    assert controller.db_class == "IPython.parallel.controller.dictdb.NoDB"
    assert plugins.resolve("db", controller.db_class).__name__ == "NoDB"
    assert cfg.MongoDB.database == "tasks" and cfg.MongoDB.connection_args == []
    assert cfg.MongoDB.connection_kwargs == {} and cfg.SQLiteDB.table == "tasks"


@pytest.mark.parametrize("value, cls_name", [
    ("IPython.parallel.controller.dictdb.DictDB", "DictDB"),
    ("IPython.parallel.controller.dictdb.NoDB", "NoDB"),
    ("DictDB", "DictDB"),
])
def test_seed_db_class_values_resolve_to_installed_plugins(profile_dir, value, cls_name):
    write(profile_dir, "controller_config.py", f"c.HubFactory.db_class = {value!r}\n")
    cfg = config.build_config("controller", profile_dir)
    config.check_names(cfg, "controller")
    assert plugins.resolve("db", configured(Controller, cfg).db_class).__name__ == cls_name


def test_seed_engine_lines_land_on_our_traits(profile_dir):
    write(profile_dir, "engine_config.py", SEED_ENGINE_LINES)
    engine = configured(Engine, config.build_config("engine", profile_dir))
    assert engine.mpi == "mpi4py"
    assert engine.startup_script == "/path/to/my/startup.py"
    assert engine.startup_command == "import numpy, scipy, mpi4py"
    assert engine.work_dir == "/path/to/scratch/"


def test_legacy_lines_land_on_our_traits(profile_dir):
    for role, text in LEGACY_LINES.items():
        write(profile_dir, f"{role}_config.py", text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cluster_cfg = config.build_config("cluster", profile_dir)
    cluster = configured(Cluster, cluster_cfg)
    assert cluster.engine_launcher_class == "IPython.parallel.apps.launcher.SSHEngineSetLauncher"
    assert cluster.controller_launcher_class == "IPython.parallel.apps.launcher.LocalControllerLauncher"
    assert cluster.daemonize is True and cluster.delay == 2.0
    local = plugins.resolve("launcher", cluster.controller_launcher_class, "controller")
    assert configured(local, cluster_cfg).controller_args == ["--log-to-file", "--log-level=20"]
    assert cluster_cfg.MPIEngineSetLauncher.mpi_args == ["-machinefile", "hosts"]
    assert cluster_cfg.SSHControllerLauncher.controller_args == ["--reuse"]
    assert configured(plugins.resolve("launcher", "SGEEngineSetLauncher"), cluster_cfg).queue == "all.q"

    controller_cfg = config.build_config("controller", profile_dir)
    controller = configured(Controller, controller_cfg)
    assert controller.ip == "*" and controller.reuse is True and controller.ssh == "login.example.com"
    assert controller.log_level == 30  # IPControllerApp.log_level: the seed's numeric level
    scheduler = configured(TaskScheduler, controller_cfg)
    assert scheduler.hwm == 1 and scheduler.scheme_name == "lru"
    assert controller_cfg.SQLiteDB.filename == "tasks.db"

    engine = configured(Engine, config.build_config("engine", profile_dir))
    assert engine.file == "/path/to/ipcontroller-engine.json"
    assert engine.connect_timeout == 60 and engine.timeout == 30 and engine.ssh == "login.example.com"


def test_seed_file_names_in_a_copied_ipython_profile_are_read(profile_dir):
    write(profile_dir, "ipcontroller_config.py",
          "c = get_config()\nc.HubFactory.ip = '*'\nc.HubFactory.location = 'a'\n")
    write(profile_dir, "controller_config.py", "c.Controller.location = 'b'\n")
    controller = configured(Controller, config.build_config("controller", profile_dir))
    assert (controller.ip, controller.location) == ("*", "b")


def test_our_names_win_over_legacy_names_in_one_file(profile_dir):
    write(profile_dir, "cluster_config.py", "c.Cluster.n = 3\nc.IPClusterEngines.n = 64\n")
    assert config.build_config("cluster", profile_dir).Cluster.n == 3


def test_command_line_overrides_files_and_is_typed(profile_dir):
    write(profile_dir, "cluster_config.py", "c.Cluster.n = 3\n")
    cfg = config.build_config("cluster", profile_dir, ["--IPClusterEngines.n=5", "--Cluster.daemonize=True",
                                                       "--LocalEngineSetLauncher.engine_args=['-v']"])
    assert cfg.Cluster.n == 5 and cfg.Cluster.daemonize is True
    assert cfg.LocalEngineSetLauncher.engine_args == ["-v"]


def test_each_mapping_is_announced_once_and_old_names_warn(profile_dir, caplog):
    config.loader._announced.clear()
    write(profile_dir, "cluster_config.py", "c.IPClusterEngines.engine_launcher = 'Local'\n")
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        with pytest.warns(DeprecationWarning, match="engine_launcher_class"):
            config.build_config("cluster", profile_dir)
        config.build_config("cluster", profile_dir)
    messages = [r.getMessage() for r in caplog.records if r.name == "cluster_launcher"]
    assert messages.count("config: IPClusterEngines.engine_launcher is read as Cluster.engine_launcher_class "
                          "(deprecated name)") == 1
    assert messages.count("config: section IPClusterEngines is read as Cluster") == 1


def test_unknown_option_names_file_line_and_closest(profile_dir):
    path = write(profile_dir, "controller_config.py", "c = get_config()\n\nc.Controller.ipp = '*'\n")
    with pytest.raises(ConfigError) as info:
        config.build_config("controller", profile_dir)
    assert str(info.value) == f"{path}:3: unknown option Controller.ipp (did you mean ip?)"


def test_unknown_option_under_a_legacy_name_says_both(profile_dir):
    path = write(profile_dir, "controller_config.py", "c.HubFactory.ipp = '*'\n")
    with pytest.raises(ConfigError, match=r"^.*controller_config.py:1: unknown option Controller.ipp "
                       r"\(written HubFactory.ipp\) \(did you mean ip\?\)$") as info:
        config.build_config("controller", profile_dir)
    assert path in str(info.value)


def test_unknown_option_of_an_installed_plugin_class(profile_dir):
    path = write(profile_dir, "cluster_config.py", "c.LocalEngineSetLauncher.engin_args = []\n")
    with pytest.raises(ConfigError, match="did you mean engine_args") as info:
        config.build_config("cluster", profile_dir)
    assert str(info.value).startswith(f"{path}:1: unknown option LocalEngineSetLauncher.engin_args")


def test_unknown_option_on_the_command_line(profile_dir):
    with pytest.raises(ConfigError, match=r"^command line --Cluster.nn=4: unknown option Cluster.nn"):
        config.build_config("cluster", profile_dir, ["--Cluster.nn=4"])


def test_bad_value_names_the_option(profile_dir):
    path = write(profile_dir, "engine_config.py", "c.Engine.timeout = 'soon'\n")
    with pytest.raises(ConfigError, match="bad value for Engine.timeout") as info:
        config.build_config("engine", profile_dir)
    assert str(info.value).startswith(f"{path}:1: ")


@pytest.mark.parametrize("text, line, kind", [
    ("c.Cluster.n = 4\nc.Cluster.delay = (\n", 2, "SyntaxError"),
    ("c.Cluster.n = 4\n\nc.Cluster.delay = 1 / 0\n", 3, "ZeroDivisionError"),
    ("import os\nx = os.environ['CLUSTER_LAUNCHER_SURELY_UNSET']\n", 2, "KeyError"),
])
def test_python_error_in_config_file_is_one_line_with_file_and_line(profile_dir, text, line, kind):
    path = write(profile_dir, "cluster_config.py", text)
    with pytest.raises(ConfigError) as info:
        config.build_config("cluster", profile_dir)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: {kind}") and "\n" not in message


def test_seed_line_without_c_gets_a_hint(profile_dir):
    # The seed shows `HubFactory.ip = '192.168.1.16'` without `c.`; say how to write it.
    path = write(profile_dir, "controller_config.py", "# in ipcontroller_config.py\nHubFactory.ip = '192.168.1.16'\n")
    with pytest.raises(ConfigError, match=r"e.g. c.HubFactory.option = value") as info:
        config.build_config("controller", profile_dir)
    assert str(info.value).startswith(f"{path}:2: NameError")


def test_malformed_override_is_rejected(profile_dir):
    with pytest.raises(ConfigError, match="expected --Class.option=value"):
        config.build_config("cluster", profile_dir, ["--n4"])


def test_all_spellings_of_an_installed_launcher_resolve_to_one_class(profile_dir):
    spellings = ["Local", "LocalEngineSetLauncher", "IPython.parallel.apps.launcher.LocalEngineSetLauncher",
                 "cluster_launcher_local.LocalEngineSetLauncher", "local"]
    classes = set()
    for name in spellings:
        write(profile_dir, "cluster_config.py", f"c.IPClusterEngines.engine_launcher_class = {name!r}\n")
        cfg = config.build_config("cluster", profile_dir)
        config.check_names(cfg, "cluster")
        classes.add(plugins.resolve("launcher", configured(Cluster, cfg).engine_launcher_class, "engines"))
    assert len(classes) == 1 and classes.pop().__name__ == "LocalEngineSetLauncher"


def test_unknown_launcher_name_is_one_line_with_closest_match(profile_dir):
    cfg = config.build_config("cluster", profile_dir, ["--Cluster.engine_launcher_class=Locl"])
    with pytest.raises(UnknownNameError) as info:
        config.check_names(cfg, "cluster")
    message = str(info.value)
    assert message.startswith("Cluster.engine_launcher_class: unknown launcher 'Locl'")
    assert "did you mean 'Local'" in message and "\n" not in message
    cfg = config.build_config("cluster", profile_dir, ["--Cluster.engine_launcher_class=SHS"])
    with pytest.raises(UnknownNameError, match=r"unknown launcher 'SHS'; installed: .*Local"):
        config.check_names(cfg, "cluster")


def test_no_files_gives_an_empty_config(profile_dir):
    assert config.build_config("engine", profile_dir) == Config()
    with pytest.raises(ConfigError, match="unknown role"):
        config.build_config("hub", profile_dir)


def test_config_file_helper_text_is_dedented():
    # Guards the test data itself: every seed line is flush left, as in a config file.
    for text in (SEED_CLUSTER_LINES, SEED_CONTROLLER_LINES, SEED_ENGINE_LINES):
        assert textwrap.dedent(text) == text


def test_ipython_heart_monitor_names_land_on_ours_in_our_units(profile_dir):
    """IPython's HeartMonitor.period is milliseconds; Controller.heartbeat_period is seconds."""
    write(profile_dir, "controller_config.py",
          "c.HeartMonitor.period = 3000\nc.HeartMonitor.max_heartmonitor_misses = 5\n")
    controller = configured(Controller, config.build_config("controller", profile_dir))
    assert controller.heartbeat_period == 3.0
    assert controller.heartbeat_max_misses == 5
    cfg = config.build_config("controller", profile_dir, ["--HeartMonitor.period=250",
                                                          "--HeartMonitor.max_heartmonitor_misses=12"])
    controller = configured(Controller, cfg)
    assert (controller.heartbeat_period, controller.heartbeat_max_misses) == (0.25, 12)


def test_heart_monitor_period_that_is_not_a_number_names_the_option(profile_dir):
    path = write(profile_dir, "controller_config.py", "c.HeartMonitor.period = 'often'\n")
    with pytest.raises(ConfigError, match=r"bad value for HeartMonitor.period: 'often' is not a number") as info:
        config.build_config("controller", profile_dir)
    assert str(info.value).startswith(f"{path}:1: ")


def test_allowed_heartbeat_misses_default_to_timeout_over_period():
    controller = configured(Controller, Config({"Controller": {"heartbeat_period": 0.2, "heartbeat_timeout": 2.0}}))
    assert controller.allowed_misses == 10
    controller = configured(Controller, Config({"Controller": {"heartbeat_period": 3.0, "heartbeat_timeout": 10.0}}))
    assert controller.allowed_misses == 4  # rounded up: never less time than heartbeat_timeout
    controller = configured(Controller, Config({"Controller": {"heartbeat_max_misses": 7}}))
    assert controller.allowed_misses == 7
