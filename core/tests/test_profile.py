"""Profiles: folders, modes, generated config files that load and can be edited."""

from __future__ import annotations

import os
import re
import stat

import pytest

from cluster_launcher import config, paths
from cluster_launcher.config import profile
from cluster_launcher.error import ConfigError

OPTION_LINE = re.compile(r"^# (c\.\w+\.\w+ = .*)$")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_LAUNCHER_DIR", str(tmp_path / "home"))
    return tmp_path / "home"


def test_create_writes_three_files_and_folders(home):
    path, written = profile.create_profile("work")
    assert path == str(home / "profile_work")
    assert sorted(os.path.basename(p) for p in written) == ["cluster_config.py", "controller_config.py",
                                                            "engine_config.py"]
    for sub in ("security", "log", "pid"):
        assert os.path.isdir(os.path.join(path, sub))
    assert stat.S_IMODE(os.stat(os.path.join(path, "security")).st_mode) == 0o700


@pytest.mark.parametrize("role, sections", [
    ("cluster", ["Cluster", "LocalControllerLauncher", "LocalEngineSetLauncher"]),
    ("controller", ["Controller", "TaskScheduler", "Session", "DictDB"]),
    ("engine", ["Engine", "Session"]),
])
def test_generated_files_list_every_option_commented_out(home, role, sections):
    path, _ = profile.create_profile()
    text = open(os.path.join(path, profile.CONFIG_FILES[role])).read()
    for cls in profile.classes_for(role):
        for name in cls.class_traits(config=True):
            assert f"# c.{cls.__name__}.{name} = " in text
    for section in sections:
        assert f"# c.{section}." in text
    # As generated, the file loads and sets nothing.
    assert config.build_config(role, path) == {}


@pytest.mark.parametrize("role", list(profile.CONFIG_FILES))
def test_uncommenting_every_option_line_loads_the_defaults(home, role):
    path, _ = profile.create_profile()
    filename = os.path.join(path, profile.CONFIG_FILES[role])
    lines = open(filename).read().splitlines()
    uncommented = [OPTION_LINE.sub(r"\1", line) for line in lines]
    assert sum(a != b for a, b in zip(lines, uncommented, strict=True)) > 5
    open(filename, "w").write("\n".join(uncommented) + "\n")
    cfg = config.build_config(role, path)
    for cls in profile.classes_for(role):
        for name, trait in cls.class_traits(config=True).items():
            assert cfg[cls.__name__][name] == trait.default(), f"{cls.__name__}.{name}"


def test_uncommenting_one_line_and_editing_it_works(home):
    path, _ = profile.create_profile()
    filename = os.path.join(path, "controller_config.py")
    text = open(filename).read()
    assert "# c.Controller.heartbeat_period = 1.0\n" in text
    open(filename, "w").write(text.replace("# c.Controller.heartbeat_period = 1.0\n",
                                           "c.Controller.heartbeat_period = 2.5\n"))
    assert config.build_config("controller", path).Controller.heartbeat_period == 2.5


def test_existing_files_are_kept_unless_overwrite(home):
    path, _ = profile.create_profile("p")
    filename = os.path.join(path, "engine_config.py")
    open(filename, "w").write("c.Engine.timeout = 3.0\n")
    assert profile.create_profile("p")[1] == []
    assert open(filename).read() == "c.Engine.timeout = 3.0\n"
    assert len(profile.create_profile("p", overwrite=True)[1]) == 3
    assert "# c.Engine.timeout = 10.0" in open(filename).read()


def test_list_and_locate(home, tmp_path):
    assert paths.list_profiles() == []
    profile.create_profile("b")
    profile.create_profile("a")
    assert paths.list_profiles() == ["a", "b"]
    assert paths.locate_profile("a") == str(home / "profile_a")
    with pytest.raises(ConfigError, match=r"--profile=zz: no profile at .*profile_zz"):
        paths.locate_profile("zz")
    elsewhere = tmp_path / "elsewhere"
    path, _ = profile.create_profile(profile_dir=str(elsewhere))
    assert path == str(elsewhere) and paths.locate_profile(profile_dir=str(elsewhere)) == str(elsewhere)


def test_default_home_is_under_the_user_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CLUSTER_LAUNCHER_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.home_dir() == str(tmp_path / ".cluster-launcher")
    assert paths.profile_dir_for() == str(tmp_path / ".cluster-launcher" / "profile_default")


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden"])
def test_bad_profile_names(home, name):
    with pytest.raises(ConfigError, match="bad profile name"):
        paths.profile_path(name)
