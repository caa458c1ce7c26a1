"""DictDB and NoDB: the shared conformance suite, bounded memory, no-history mode."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from cluster_launcher_dict import DictDB, NoDB
from traitlets import TraitError
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.testing import db_conformance
from cluster_launcher.testing.db_conformance import at

DOCS_PAGE = Path(__file__).resolve().parents[4] / "docs" / "databases.md"


@pytest.mark.parametrize("check", db_conformance.CHECKS, ids=db_conformance.check_name)
def test_dictdb_conformance(check):
    check(DictDB)


class _SortedByIdDB(DictDB):
    """A deliberately wrong backend: answers in msg_id order, not submission order."""

    def find_records(self, query, keys=None):
        return sorted(super().find_records(query, keys), key=lambda r: r["msg_id"], reverse=True)


def test_conformance_suite_catches_a_wrong_backend():
    with pytest.raises(AssertionError, match="empty query matches all"):
        db_conformance.check_query_cases(_SortedByIdDB)


def test_builtin_names_and_legacy_paths_resolve_through_entry_points():
    assert plugins.resolve("db", "DictDB") is DictDB
    assert plugins.resolve("db", "nodb") is NoDB
    assert plugins.resolve("db", "IPython.parallel.controller.dictdb.DictDB") is DictDB


# -- bounded memory ------------------------------------------------------


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger="test.dictdb")
    return logging.getLogger("test.dictdb")


def _culls(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "culled" in r.getMessage()]


def _finished(msg_id: str, second: float, nbytes: int = 0) -> dict:
    return {"msg_id": msg_id, "submitted": at(second), "completed": at(second + 0.5),
            "result_header": {"status": "ok"}, "result_buffers": [b"x" * nbytes] if nbytes else []}


def _pending(msg_id: str, second: float, nbytes: int = 0) -> dict:
    return {"msg_id": msg_id, "submitted": at(second), "buffers": [b"f" * nbytes] if nbytes else []}


def test_record_limit_culls_oldest_finished_in_chunks_and_keeps_pending(log, caplog):
    db = DictDB(record_limit=100, cull_fraction=0.1, log=log)
    for i in range(5):
        db.add_record(f"pending{i}", _pending(f"pending{i}", i))
    for i in range(96):
        db.add_record(f"done{i}", _finished(f"done{i}", 10 + i))
    # 101 records > 100: the 11 oldest finished go, down to 100 - 10% = 90
    assert len(db.get_history()) == 90 and len(_culls(caplog)) == 1
    history = db.get_history()
    assert history[:5] == [f"pending{i}" for i in range(5)], "pending records must survive"
    assert history[5:] == [f"done{i}" for i in range(11, 96)], "the oldest finished go first"
    for i in range(10):  # back up to the limit: no further cull
        db.add_record(f"more{i}", _finished(f"more{i}", 200 + i))
    assert len(db.get_history()) == 100 and len(_culls(caplog)) == 1
    with pytest.raises(KeyError, match="record_limit"):
        db.get_record("done0")
    with pytest.raises(KeyError, match="no task record 'never'"):
        db.get_record("never")


def test_culling_order_is_finish_order_not_submission_order(log):
    db = DictDB(record_limit=3, cull_fraction=0.0, log=log)
    db.add_record("slow", _pending("slow", 0))
    db.add_record("quick1", _finished("quick1", 1))
    db.add_record("quick2", _finished("quick2", 2))
    db.update_record("slow", {"completed": at(9), "result_header": {"status": "ok"}})
    db.add_record("quick3", _finished("quick3", 3))
    assert db.get_history() == ["slow", "quick2", "quick3"]


def test_all_pending_over_the_limit_warns_once_and_culls_as_they_finish(log, caplog):
    db = DictDB(record_limit=4, cull_fraction=0.5, log=log)
    for i in range(8):
        db.add_record(f"p{i}", _pending(f"p{i}", i))
    assert len(db.get_history()) == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pending" in warnings[0].getMessage()
    for i in range(8):  # each finished one is culled while still over the limit
        db.update_record(f"p{i}", {"completed": at(20 + i)})
    assert db.get_history() == ["p4", "p5", "p6", "p7"]
    assert len(_culls(caplog)) == 4
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    db.add_record("next", _finished("next", 30))  # over again with finished ones: 5 -> 2
    assert db.get_history() == ["p7", "next"]


def test_size_limit_counts_buffers_and_keeps_pending(log, caplog):
    db = DictDB(size_limit=1000, cull_fraction=0.0, log=log)
    db.add_record("big_pending", _pending("big_pending", 0, nbytes=700))
    db.add_record("a", _finished("a", 1, nbytes=200))
    db.add_record("b", _finished("b", 2, nbytes=200))  # 1100 bytes: a goes
    assert db.get_history() == ["big_pending", "b"]
    db.add_record("huge", _finished("huge", 3, nbytes=2000))  # even b and huge itself go
    assert db.get_history() == ["big_pending"]
    assert len(_culls(caplog)) == 2
    with pytest.raises(KeyError, match="size_limit"):
        db.get_record("huge")


def test_size_accounting_follows_updates_and_drops(log, caplog):
    db = DictDB(size_limit=1000, cull_fraction=0.0, log=log)
    db.add_record("a", _finished("a", 0, nbytes=400))
    db.add_record("b", _finished("b", 1, nbytes=400))
    db.update_record("b", {"result_buffers": [b"x" * 60, memoryview(b"y" * 40)]})  # 800 -> 500
    db.add_record("c", _finished("c", 2, nbytes=400))  # 900
    assert db.get_history() == ["a", "b", "c"]
    db.update_record("c", {"result_buffers": [b"x" * 600]})  # 1100: a goes -> 700
    assert db.get_history() == ["b", "c"]
    db.drop_record("b")  # 600
    db.add_record("d", _finished("d", 3, nbytes=400))  # exactly 1000: within the limit
    assert db.get_history() == ["c", "d"]
    db.drop_matching_records({"msg_id": "c"})  # 400
    db.add_record("e", _pending("e", 4, nbytes=600))  # 1000 again
    assert db.get_history() == ["d", "e"] and len(_culls(caplog)) == 1
    db.add_record("f", _pending("f", 5, nbytes=1))  # 1001: d (finished) goes, pending stay
    assert db.get_history() == ["e", "f"] and len(_culls(caplog)) == 2


def _profile_events(action) -> int:
    """How many Python-level calls (and builtin calls from Python) ``action`` makes."""
    events = 0

    def count(frame, event, arg):
        nonlocal events
        events += 1

    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
    return events


@pytest.mark.parametrize("operation", ["add", "update", "drop"])
def test_bookkeeping_per_write_does_not_grow_with_the_database(operation):
    """Size accounting is a running total: one write does the same work at 20 or 2000 records."""
    def work_at(size: int) -> int:
        db = DictDB(record_limit=10_000)
        for i in range(size):
            db.add_record(f"r{i}", _finished(f"r{i}", i, nbytes=10) | {"buffers": [b"f" * 10] * 3})
        db.add_record("probe", _pending("probe", size, nbytes=5))
        action = {"add": lambda: db.add_record("new", _finished("new", size + 1, nbytes=7)),
                  "update": lambda: db.update_record("probe", {"result_buffers": [b"r" * 9],
                                                               "completed": at(size + 2)}),
                  "drop": lambda: db.drop_record("probe")}[operation]
        return _profile_events(action)

    assert work_at(20) == work_at(2000)


def test_limits_are_config_traits_with_checked_values():
    config = Config()
    config.DictDB.record_limit = 50
    config.DictDB.size_limit = 2**20
    config.DictDB.cull_fraction = 0.25
    db = DictDB(config=config)
    assert (db.record_limit, db.size_limit, db.cull_fraction) == (50, 2**20, 0.25)
    defaults = DictDB()
    assert (defaults.record_limit, defaults.size_limit, defaults.cull_fraction) == (1024, 2**30, 0.1)
    with pytest.raises(TraitError, match="record_limit"):
        DictDB(record_limit=0)
    with pytest.raises(TraitError, match="cull_fraction"):
        DictDB(cull_fraction=1.5)


# -- NoDB ----------------------------------------------------------------


def test_nodb_stores_nothing_and_says_history_is_disabled():
    db = NoDB()
    record = db_conformance.make_records()[0]
    db.add_record("a", record)
    db.update_record("a", {"stdout": "more"})
    db.update_record("never-added", {"stdout": "more"})
    assert db.find_records({}) == [] and db.get_history() == []
    assert db.find_records({"msg_id": "a"}, keys=["stdout"]) == []
    with pytest.raises(KeyError, match=r"task history is disabled \(--nodb"):
        db.get_record("a")
    db.drop_record("a")
    db.drop_matching_records({})
    with pytest.raises(ValueError, match="bogus"):
        db.find_records({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        db.find_records({}, keys=["bogus"])
    assert db.persistent is False


@pytest.mark.parametrize("name", ["NoDB", "nodb", "IPython.parallel.controller.dictdb.NoDB"])
def test_nodb_in_any_spelling_tells_the_controller_it_keeps_nothing(name):
    # The controller drops a task's buffers early when the DB keeps nothing;
    # it asks the class, so every spelling that resolves to NoDB counts.
    assert plugins.resolve("db", name).stores_records is False
    assert plugins.resolve("db", "DictDB").stores_records is True


# -- docs ----------------------------------------------------------------


def _runnable_blocks(page: Path) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    return [block for block in blocks if "# test: run" in block]


def test_databases_doc_examples_run_against_dictdb():
    blocks = _runnable_blocks(DOCS_PAGE)
    assert blocks, f"{DOCS_PAGE} has no '# test: run' examples"
    for block in blocks:
        exec(compile(block, str(DOCS_PAGE), "exec"), {"__name__": "docs_example"})
