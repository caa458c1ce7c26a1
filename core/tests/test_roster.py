"""The controller's record of its engines' ids (controller/roster.py): which
id a registering engine gets, and which records a restarted controller trusts."""

from __future__ import annotations

import json
import logging
import os

import pytest

from cluster_launcher.controller.roster import EngineRoster

UUID_A, UUID_B, UUID_C = "a" * 32, "b" * 32, "c" * 32


def saved(tmp_path, engines: dict[int, str], next_id: int) -> EngineRoster:
    roster = EngineRoster(str(tmp_path / "controller-engines.json"))
    for engine_id, uuid in engines.items():
        roster.add(engine_id, uuid)
    roster.next_id = next_id
    roster.save()
    return EngineRoster(roster.path)


def test_a_returning_engine_gets_its_id_and_a_new_one_gets_an_id_above_every_reserved_one(tmp_path):
    roster = saved(tmp_path, {0: UUID_A, 4: UUID_B}, next_id=6)
    roster.load()
    assert roster.loaded and roster.reserved == {0: UUID_A, 4: UUID_B}
    # A brand-new engine first: it must not take 0 or 4, nor 5 (given before the crash).
    assert roster.choose_id(None, UUID_C, in_use=set()) == 6
    roster.add(6, UUID_C)
    assert roster.choose_id(4, UUID_C, in_use={6}) == 7  # asking for another engine's id does not get it
    assert roster.choose_id(4, UUID_B, in_use={6}) == 4
    roster.add(4, UUID_B)
    assert roster.choose_id(0, UUID_A, in_use={4, 6}) == 0
    roster.add(0, UUID_A)
    assert roster.reserved == {}
    # Below the record's next id and reserved for nobody: an engine the previous controller had
    # declared dead; its id stays retired.
    assert roster.choose_id(2, UUID_C, in_use={0, 4, 6}) == 7
    # Above it: an engine that registered after the record was written gets its id back, once.
    assert roster.choose_id(9, UUID_C, in_use={0, 4, 6}) == 9
    roster.add(9, UUID_C)
    roster.remove(9)  # declared dead by this controller: it comes back as a new engine
    assert roster.choose_id(9, UUID_C, in_use={0, 4, 6}) == 10
    assert roster.choose_id(0, UUID_C, in_use={0, 4, 6}) == 10
    assert roster.choose_id(-1, UUID_C, in_use=set()) == 10
    assert roster.choose_id(True, UUID_C, in_use=set()) == 10


def test_the_record_is_private_written_only_when_changed_and_lists_the_engines(tmp_path):
    roster = EngineRoster(str(tmp_path / "controller-engines.json"))
    roster.save()
    assert not os.path.exists(roster.path)  # nothing changed: nothing written
    roster.add(0, UUID_A)
    roster.add(1, UUID_B)
    roster.remove(1)
    roster.save()
    assert os.stat(roster.path).st_mode & 0o777 == 0o600
    with open(roster.path) as f:
        assert json.load(f) == {"engines": {"0": UUID_A}, "next_engine_id": 2}
    mtime = os.stat(roster.path).st_mtime_ns
    roster.save()
    assert os.stat(roster.path).st_mtime_ns == mtime


@pytest.mark.parametrize("content, problem", [
    (b'{"engines": {"0": "', "not valid JSON"),
    (b'[1, 2]', "no 'engines' object"),
    (b'{"engines": {"0": "' + b"a" * 32 + b'"}, "next_engine_id": -1}', "next_engine_id"),
    (b'{"engines": {"x": "' + b"a" * 32 + b'"}, "next_engine_id": 1}', "bad entry 'x'"),
    (b'{"engines": {"0": "../../etc"}, "next_engine_id": 1}', "bad entry '0'"),
])
def test_a_malformed_record_is_ignored_with_a_warning_naming_the_file(tmp_path, caplog, content, problem):
    path = tmp_path / "controller-engines.json"
    path.write_bytes(content)
    path.chmod(0o600)
    roster = EngineRoster(str(path))
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        roster.load()
    assert roster.reserved == {} and roster.next_id == 0 and not roster.loaded
    assert str(path) in caplog.text and problem in caplog.text


def test_a_record_others_may_write_or_a_symlink_is_not_trusted(tmp_path, caplog):
    good = saved(tmp_path, {0: UUID_A}, next_id=1)
    os.chmod(good.path, 0o622)
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        good.load()
    assert good.reserved == {} and "others may write it" in caplog.text
    os.chmod(good.path, 0o600)
    link = tmp_path / "linked-engines.json"
    link.symlink_to(good.path)
    linked = EngineRoster(str(link))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        linked.load()
    assert linked.reserved == {} and str(link) in caplog.text


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_record_of_another_user_is_not_trusted(tmp_path, caplog):
    roster = saved(tmp_path, {0: UUID_A}, next_id=1)
    os.chown(roster.path, 12345, -1)
    with caplog.at_level(logging.WARNING, logger="cluster_launcher"):
        roster.load()
    assert roster.reserved == {} and "owned by uid 12345" in caplog.text
