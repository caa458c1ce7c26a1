"""SQLiteDB: the shared conformance suite, persistence, retention, bad input."""

from __future__ import annotations

import logging
import os
import random
import select
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import cluster_launcher_sqlite
import pytest
from cluster_launcher_sqlite import SQLiteDB
from traitlets import TraitError
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.db import check_query, matches
from cluster_launcher.error import TaskDBError
from cluster_launcher.testing import db_conformance
from cluster_launcher.testing.db_conformance import at


@pytest.mark.parametrize("check", db_conformance.CHECKS, ids=db_conformance.check_name)
def test_sqlitedb_conformance(check, tmp_path):
    check(lambda: SQLiteDB(location=str(tmp_path), filename=f"{check.__name__}.db"))


@pytest.mark.parametrize("check", db_conformance.PERSISTENT_CHECKS, ids=db_conformance.check_name)
def test_sqlitedb_persistent_conformance(check, tmp_path):
    def make():
        return SQLiteDB(location=str(tmp_path), table="tasks")
    check(make, make)


# -- where and how records are kept -------------------------------------------------------

def _tables(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]


def test_file_in_the_profile_table_named_after_the_session_wal_and_indexes(tmp_path):
    db = SQLiteDB(profile_dir=str(tmp_path), session="4f2a-77c1")
    try:
        db.add_record("a", db_conformance.make_records()[0])
        assert db.get_history() == ["a"]
    finally:
        db.close()
    path = tmp_path / "tasks.db"
    assert "_4f2a_77c1" in _tables(path)  # IPython's default: '_' + the session, dashes made underscores
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexed = {row[4].split("(")[1].rstrip(")").strip() for row in connection.execute(
            "SELECT * FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
        assert indexed == {"completed", "engine_uuid", "client_uuid"}
        unique = [row for row in connection.execute("PRAGMA index_list('_4f2a_77c1')") if row[2]]
        assert unique, "msg_id must be unique (and indexed)"


def test_location_filename_and_table_are_config(tmp_path):
    config = Config()
    config.SQLiteDB.location = str(tmp_path / "elsewhere")
    config.SQLiteDB.filename = "history.sqlite"
    config.SQLiteDB.table = "tasks"
    (tmp_path / "elsewhere").mkdir()
    db = SQLiteDB(config=config, profile_dir=str(tmp_path), session="s")
    db.close()
    assert _tables(tmp_path / "elsewhere" / "history.sqlite") == ["cluster_launcher_tables", "tasks"]
    assert not (tmp_path / "tasks.db").exists()


def test_named_table_is_shared_by_successive_controllers_default_tables_are_not(tmp_path):
    first = SQLiteDB(location=str(tmp_path), table="tasks", session="one")
    first.add_record("a", {"msg_id": "a", "submitted": at(0)})
    first.close()
    second = SQLiteDB(location=str(tmp_path), table="tasks", session="two")
    assert second.get_history() == ["a"]
    second.close()
    own = SQLiteDB(location=str(tmp_path), session="three")
    assert own.get_history() == []
    own.close()


def test_names_resolve_as_users_write_them():
    for name in ("SQLiteDB", "sqlite", "sqlitedb", "IPython.parallel.controller.sqlitedb.SQLiteDB"):
        assert plugins.resolve("db", name) is SQLiteDB, name
    assert SQLiteDB.persistent and SQLiteDB.stores_records


# -- off the hot path, durable before delivered ----------------------------------------------

def test_writes_do_not_wait_for_a_busy_file_and_callbacks_wait_for_the_commit(tmp_path):
    db = SQLiteDB(location=str(tmp_path), table="tasks")
    blocker = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    delivered: list[str] = []
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: a stalled disk
        for i in range(50):
            db.add_record(f"t{i}", {"msg_id": f"t{i}", "submitted": at(i)})
            db.update_record(f"t{i}", {"engine_uuid": "e1"})
            db.update_record(f"t{i}", {"completed": at(i + 1), "result_buffers": [b"r"]})
            db.when_durable(lambda i=i: delivered.append(f"t{i}"))
        db.run_durable_callbacks()
        assert delivered == [], "a result went out before its record was committed"
        blocker.execute("ROLLBACK")
        fd = db.durable_fd()
        deadline = time.monotonic() + 30
        while len(delivered) < 50 and time.monotonic() < deadline:
            select.select([fd], [], [], 1.0)
            db.run_durable_callbacks()
        assert delivered == [f"t{i}" for i in range(50)], "callbacks run once, in order"
        with sqlite3.connect(tmp_path / "tasks.db") as reader:  # really in the file, seen by another connection
            rows = reader.execute("SELECT count(*) FROM tasks WHERE completed IS NOT NULL "
                                  "AND engine_uuid = 'e1'").fetchone()
        assert rows == (50,)
    finally:
        blocker.close()
        db.close()


def test_callbacks_run_at_once_when_nothing_is_pending(tmp_path):
    db = SQLiteDB(location=str(tmp_path))
    try:
        ran: list[int] = []
        db.when_durable(lambda: ran.append(1))
        assert ran == [1]
    finally:
        db.close()


def test_close_commits_what_is_queued_and_runs_its_callbacks(tmp_path):
    db = SQLiteDB(location=str(tmp_path), table="tasks")
    ran: list[int] = []
    for i in range(200):
        db.add_record(f"t{i}", {"msg_id": f"t{i}", "submitted": at(i)})
    db.when_durable(lambda: ran.append(1))
    db.close()
    assert ran == [1]
    again = SQLiteDB(location=str(tmp_path), table="tasks")
    try:
        assert len(again.get_history()) == 200
    finally:
        again.close()


# -- retention -----------------------------------------------------------------------------

def test_record_limit_deletes_the_oldest_finished_never_pending(tmp_path):
    db = SQLiteDB(location=str(tmp_path), record_limit=100)
    try:
        for i in range(5):
            db.add_record(f"pending{i}", {"msg_id": f"pending{i}", "submitted": at(i)})
        for i in range(1000):
            db.add_record(f"done{i}", {"msg_id": f"done{i}", "submitted": at(10 + i), "completed": at(11 + i)})
        history = db.get_history()
        assert history[:5] == [f"pending{i}" for i in range(5)]
        finished = history[5:]
        assert 100 <= len(finished) <= 110, len(finished)  # checked every tenth of the limit
        assert finished[-1] == "done999" and finished == [f"done{i}" for i in range(1000 - len(finished), 1000)]
    finally:
        db.close()


def test_max_age_deletes_records_completed_long_ago(tmp_path):
    db = SQLiteDB(location=str(tmp_path), max_age=3600)
    try:
        now = datetime.now(timezone.utc)
        db.add_record("old", {"msg_id": "old", "submitted": now - timedelta(hours=3),
                              "completed": now - timedelta(hours=2)})
        db.add_record("pending", {"msg_id": "pending", "submitted": now - timedelta(hours=3)})
        db.add_record("recent", {"msg_id": "recent", "submitted": now, "completed": now})
        db._last_retention = 0.0  # due now, not in five seconds
        db.add_record("trigger", {"msg_id": "trigger", "submitted": now})
        assert db.get_history() == ["pending", "recent", "trigger"]
    finally:
        db.close()


# -- bad input: one line naming the file, nothing half-written --------------------------------

def _one_line(error: TaskDBError, path) -> str:
    message = str(error)
    assert "\n" not in message and str(path) in message, message
    return message


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "tasks.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(TaskDBError, match="is not a SQLite database") as caught:
        SQLiteDB(location=str(tmp_path))
    assert "c.SQLiteDB.filename" in _one_line(caught.value, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.db"]


def test_a_missing_or_unwritable_folder_is_named(tmp_path):
    with pytest.raises(TaskDBError, match="folder does not exist") as caught:
        SQLiteDB(location=str(tmp_path / "nowhere"))
    _one_line(caught.value, tmp_path / "nowhere" / "tasks.db")
    # Root writes through permissions, so the unwritable folder is one no one can write to.
    unwritable = "/proc/self" if os.geteuid() == 0 else str(tmp_path / "readonly")
    if os.geteuid() != 0:
        os.mkdir(unwritable, 0o555)
    with pytest.raises(TaskDBError, match="cannot be (written|opened)") as caught:
        SQLiteDB(location=unwritable)
    assert "c.SQLiteDB.location" in _one_line(caught.value, os.path.join(unwritable, "tasks.db"))


def test_a_table_of_another_format_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "tasks.db"
    with sqlite3.connect(path) as connection:  # IPython 0.13's SQLiteDB layout
        connection.execute("CREATE TABLE tasks (msg_id text PRIMARY KEY, header dict text, content dict text, "
                           "buffers bufs blob, submitted timestamp, client_uuid text, engine_uuid text)")
        connection.execute("INSERT INTO tasks (msg_id) VALUES ('kept')")
    with pytest.raises(TaskDBError, match="table 'tasks' was written by another program or version") as caught:
        SQLiteDB(location=str(tmp_path), table="tasks")
    assert "c.SQLiteDB.table" in _one_line(caught.value, path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT msg_id FROM tasks").fetchall() == [("kept",)]
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["tasks"]


def test_a_table_of_a_newer_format_is_refused(tmp_path):
    SQLiteDB(location=str(tmp_path), table="tasks").close()
    with sqlite3.connect(tmp_path / "tasks.db") as connection:
        connection.execute("UPDATE cluster_launcher_tables SET format = 99 WHERE name = 'tasks'")
    with pytest.raises(TaskDBError, match="format 99"):
        SQLiteDB(location=str(tmp_path), table="tasks")


def test_a_locked_file_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "tasks.db"
    SQLiteDB(location=str(tmp_path), table="tasks").close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")  # kept until closed: no one else may read or write
        with pytest.raises(TaskDBError, match="is locked by another process") as caught:
            SQLiteDB(location=str(tmp_path), table="tasks", busy_timeout=0.1)
        assert "another controller" in _one_line(caught.value, path)
    finally:
        holder.close()


def test_bad_settings_are_trait_errors_naming_them():
    with pytest.raises(TraitError, match="record_limit"):
        SQLiteDB(record_limit=-1)
    with pytest.raises(TraitError, match="synchronous"):
        SQLiteDB(synchronous="SOMETIMES")


def test_duplicates_are_refused_from_memory_and_older_ones_by_the_unique_index(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cluster_launcher_sqlite, "RECENT_LIMIT", 3)
    db = SQLiteDB(location=str(tmp_path), table="tasks")
    try:
        for i in range(6):
            db.add_record(f"t{i}", {"msg_id": f"t{i}", "submitted": at(i), "completed": at(i), "stdout": "first"})
        with pytest.raises(KeyError, match="'t5' already exists"):  # recent: refused at once
            db.add_record("t5", {"msg_id": "t5", "submitted": at(9)})
        # Out of the window: queued, then refused by the index; the new task's updates
        # do not touch the stored record.
        db.add_record("t0", {"msg_id": "t0", "submitted": at(9)})
        db.update_record("t0", {"completed": at(10), "stdout": "second"})
        assert db.get_history() == [f"t{i}" for i in range(6)]
        assert db.get_record("t0")["stdout"] == "first" and db.get_record("t0")["completed"] == at(0)
        assert any("'t0' is already stored" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    finally:
        db.close()
    reopened = SQLiteDB(location=str(tmp_path), table="tasks")  # the window starts with the table's latest ids
    try:
        with pytest.raises(KeyError, match="'t4' already exists"):
            reopened.add_record("t4", {"msg_id": "t4"})
    finally:
        reopened.close()


def test_a_record_sqlite_refuses_is_left_out_and_the_rest_written(tmp_path, caplog):
    """A value SQLite refuses (here a result over its size limit, 1 GB by
    default, made 1,000 bytes) costs its record only, never the batch: results
    behind it are not held forever."""
    db = SQLiteDB(location=str(tmp_path), table="tasks")
    db._writer_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    delivered: list[str] = []
    try:
        db.add_record("ok1", {"msg_id": "ok1", "submitted": at(0), "client_uuid": 2**70})  # kept, tagged
        db.add_record("bad", {"msg_id": "bad", "submitted": at(1), "result_buffers": [b"x" * 2000]})
        db.add_record("ok2", {"msg_id": "ok2", "submitted": at(2), "stdout": "caf\udce9 \u00e9t\u00e9"})
        db.when_durable(lambda: delivered.append("after"))
        deadline = time.monotonic() + 30
        while not delivered:
            assert time.monotonic() < deadline, "a bad record held the results behind it"
            select.select([db.durable_fd()], [], [], 0.5)
            db.run_durable_callbacks()
        assert db.get_history() == ["ok1", "ok2"]
        # A lone surrogate (a non-UTF-8 file name a task printed) is kept, escaped.
        assert db.get_record("ok2")["stdout"] == "caf\\udce9 \u00e9t\u00e9"
        assert db.get_record("ok1")["client_uuid"] == 2**70
        assert any("'bad' cannot be stored (DataError" in r.getMessage() for r in caplog.records)
    finally:
        db.close()
        db.close()  # a second close does nothing


ODD_VALUES = ["a", "b", "", "5", 5, 2**70, 1.5, True, None, [1, 2], {"x": 1}, "\u00e9", "[1,2]"]
TEXT_FIELDS = ["client_uuid", "engine_uuid", "stdout", "queue", "resubmitted"]
OPERATORS = ["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists"]


def test_odd_values_in_text_fields_round_trip_and_query_as_the_reference_says(tmp_path):
    """Numbers, lists or booleans where text belongs (a peer may send them):
    SQLite orders numbers before text and would compare a list stored as text;
    Python compares neither.  2,000 seeded random queries agree with matches()."""
    chooser = random.Random(7)
    records = []
    for i in range(40):
        record = {"msg_id": f"m{i:02d}", "submitted": at(i)}
        record.update({f: chooser.choice(ODD_VALUES) for f in TEXT_FIELDS if chooser.random() < 0.7})
        records.append(record)
    db = SQLiteDB(location=str(tmp_path))
    try:
        for record in records:
            db.add_record(record["msg_id"], record)
        for record in records:
            stored = db.get_record(record["msg_id"])
            assert {f: stored[f] for f in TEXT_FIELDS} == {f: record.get(f) for f in TEXT_FIELDS}
        compared = 0
        while compared < 2000:
            field, op = chooser.choice(TEXT_FIELDS), chooser.choice(OPERATORS)
            arg = chooser.sample(ODD_VALUES, 3) if op in ("$in", "$nin") else \
                chooser.choice([True, False]) if op == "$exists" else chooser.choice(ODD_VALUES)
            query = {field: {op: arg}}
            try:
                check_query(query)
            except ValueError:
                continue
            expected = [r["msg_id"] for r in records if matches(r, query)]
            assert [r["msg_id"] for r in db.find_records(query, keys=[])] == expected, query
            compared += 1
    finally:
        db.close()
