"""MongoDB: the shared conformance suite, config, BSON safety, a server lost
at start or while running.

Every test that needs a server runs against mongomock; with
``CLUSTER_LAUNCHER_TEST_MONGODB_URL`` set (``mongodb://localhost:27017``) the
same tests also run against that server (test ids ``[mongomock]`` /
``[mongodb]``), each in a database of its own, dropped afterwards.
"""

from __future__ import annotations

import inspect
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import cluster_launcher_mongodb
import mongomock
import mongomock.collection
import pymongo
import pymongo.errors
import pytest
from cluster_launcher_mongodb import MongoDB, redact
from traitlets.config import Config

from cluster_launcher import plugins
from cluster_launcher.db import matches
from cluster_launcher.error import TaskDBError
from cluster_launcher.testing import db_conformance
from cluster_launcher.testing.db_conformance import at

REAL_URL = os.environ.get("CLUSTER_LAUNCHER_TEST_MONGODB_URL", "")
BACKENDS = ["mongomock"] + (["mongodb"] if REAL_URL else [])
MOCK_URL = "mongodb://mongomock.invalid:27017"
LOGGER = "test.mongodb"
DEADLINE = 20.0  # seconds any wait for the writer may take before the test fails

MakeDB = Callable[..., MongoDB]


def _use_mongomock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the module's MongoClient to mongomock, every client sharing one
    in-memory server (so a reopened database finds its records)."""
    store = mongomock.store.ServerStore()

    def client(*args: Any, **kwargs: Any) -> mongomock.MongoClient:
        return mongomock.MongoClient(*args, _store=store, **kwargs)

    monkeypatch.setattr(cluster_launcher_mongodb.pymongo, "MongoClient", client)
    # mongomock 4.3 predates pymongo 4.11's ``sort`` argument to UpdateOne.
    builder = mongomock.collection.BulkOperationBuilder
    if "sort" not in inspect.signature(builder.add_update).parameters:
        original = builder.add_update

        def add_update(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            return original(self, *args, **kwargs)

        monkeypatch.setattr(builder, "add_update", add_update)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "mongomock":
        _use_mongomock(monkeypatch)
    return request.param


@pytest.fixture
def make_db(backend: str) -> Iterator[MakeDB]:
    """``make_db(**traits)``: a MongoDB on this test's own database (the
    same one on every call, so a second call reopens it; ``fresh=True``: a
    new, empty one)."""
    url = REAL_URL if backend == "mongodb" else MOCK_URL
    names = [f"cl-test-{uuid.uuid4().hex[:12]}"]
    opened: list[MongoDB] = []

    def make(fresh: bool = False, **traits: Any) -> MongoDB:
        if fresh:
            names.append(f"cl-test-{uuid.uuid4().hex[:12]}")
        traits = {"log": logging.getLogger(LOGGER), "server_selection_timeout": 2.0, **traits}
        db = MongoDB(database=names[-1], connection_args=[url], **traits)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()
    if backend == "mongodb":
        with pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client:
            for name in names:
                client.drop_database(name)


@pytest.mark.parametrize("check", db_conformance.CHECKS, ids=db_conformance.check_name)
def test_mongodb_conformance(check: Callable[[MakeDB], None], make_db: MakeDB, backend: str) -> None:
    check(lambda: make_db(fresh=True))


@pytest.mark.parametrize("check", getattr(db_conformance, "PERSISTENT_CHECKS", []), ids=db_conformance.check_name)
def test_mongodb_persistent_conformance(check: Callable[[MakeDB, MakeDB], None], make_db: MakeDB,
                                        backend: str) -> None:
    check(make_db, make_db)


def test_plugin_resolves_by_class_name_short_name_and_ipython_path() -> None:
    assert plugins.resolve("db", "MongoDB") is MongoDB
    assert plugins.resolve("db", "mongodb") is MongoDB
    assert plugins.resolve("db", "IPython.parallel.controller.mongodb.MongoDB") is MongoDB
    assert MongoDB.persistent is True and MongoDB.stores_records is True


# -- config ----------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments every MongoClient is created with (the client is mongomock)."""
    _use_mongomock(monkeypatch)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    mock_client = cluster_launcher_mongodb.pymongo.MongoClient

    def client(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return mock_client(*args, **kwargs)

    monkeypatch.setattr(cluster_launcher_mongodb.pymongo, "MongoClient", client)
    return calls


def test_ipython_config_names_reach_the_client(recorded: list) -> None:
    config = Config()
    config.MongoDB.database = "my-tasks"
    config.MongoDB.connection_args = ["mongodb://dbhost:27017"]
    config.MongoDB.connection_kwargs = {"appname": "controller", "serverSelectionTimeoutMS": 1234}
    db = MongoDB(config=config, session="the-session")
    try:
        assert recorded == [(("mongodb://dbhost:27017",), {"appname": "controller", "serverSelectionTimeoutMS": 1234})]
        assert db.database_name == "my-tasks"
        assert db._records.name == "task_records" and db._records.database.name == "my-tasks"
    finally:
        db.close()


def test_defaults_database_is_the_session_and_timeout_is_passed(recorded: list) -> None:
    db = MongoDB(session="abc-123", server_selection_timeout=0.25)
    other = MongoDB(session="")
    try:
        assert db.database_name == "abc-123" and other.database_name == "cluster-launcher"
        assert recorded[0] == ((), {"serverSelectionTimeoutMS": 250})
        assert recorded[1] == ((), {"serverSelectionTimeoutMS": 5000})
        assert db.url == "mongodb://localhost:27017"
    finally:
        db.close()
        other.close()


# -- a server lost at start ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_at_start_is_one_line_naming_the_url() -> None:
    url = f"mongodb://127.0.0.1:{_free_port()}"
    with pytest.raises(TaskDBError, match="cannot reach the MongoDB task database at " + url) as info:
        MongoDB(connection_args=[url], server_selection_timeout=0.2)
    assert "\n" not in str(info.value) and "connection_args" in str(info.value)


def test_unreachable_server_message_hides_the_password() -> None:
    port = _free_port()
    url = f"mongodb://alice:s3cr%40t-pw@127.0.0.1:{port}/?authSource=admin"
    with pytest.raises(TaskDBError, match=f"alice:\\*\\*\\*@127.0.0.1:{port}") as info:
        MongoDB(connection_args=[url], server_selection_timeout=0.2)
    assert "s3cr" not in str(info.value) and "\n" not in str(info.value)


def test_a_bad_url_is_a_task_db_error_naming_the_settings() -> None:
    with pytest.raises(TaskDBError, match="fix c.MongoDB.connection_args"):
        MongoDB(connection_args=["mongodb://bob:hunter2@"])


def test_redact_keeps_user_and_host() -> None:
    assert redact("mongodb://u:p%40ss@h1:1,h2:2/db") == "mongodb://u:***@h1:1,h2:2/db"
    assert redact("mongodb+srv://u:pw@cluster.example.net") == "mongodb+srv://u:***@cluster.example.net"
    assert redact("mongodb://h:27017") == "mongodb://h:27017"


# -- a server lost while running ------------------------------------------


class FlakyCollection:
    """The real collection, except that bulk writes fail with AutoReconnect
    while ``down`` is set: a server that went away and comes back."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.down = True
        self.attempts = 0
        self.changed = threading.Condition()

    def bulk_write(self, requests: list[Any], **kwargs: Any) -> Any:
        with self.changed:
            self.attempts += 1
            self.changed.notify_all()
            down = self.down
        if down:
            raise pymongo.errors.AutoReconnect("connection closed")
        return self.inner.bulk_write(requests, **kwargs)

    def wait_for_attempts(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.attempts >= count, timeout=DEADLINE), self.attempts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _run_callbacks_until(db: MongoDB, done: Callable[[], bool]) -> None:
    """The controller's poll loop: wait on durable_fd, run the callbacks due."""
    fd = db.durable_fd()
    assert fd is not None
    deadline = time.monotonic() + DEADLINE
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "the durable callbacks never ran"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            db.run_durable_callbacks()


def test_lost_server_results_still_flow_and_records_arrive_later(make_db: MakeDB,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    db = make_db()
    flaky = FlakyCollection(db._records)
    db._records = flaky
    delivered: list[str] = []
    for record in db_conformance.make_records():
        db.add_record(record["msg_id"], record)
        db.update_record(record["msg_id"], {"stdout": f"out of {record['msg_id']}"})
        db.when_durable(lambda msg_id=record["msg_id"]: delivered.append(msg_id))
    _run_callbacks_until(db, lambda: len(delivered) == 5)
    assert delivered == ["a", "b", "c", "d", "e"], "results go out in order while the server is lost"
    flaky.wait_for_attempts(4)  # several retries: still one error in the log
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "AutoReconnect" in errors[0].getMessage() and "results still go to clients" in errors[0].getMessage()
    with pytest.raises(TaskDBError, match="AutoReconnect"):
        db.get_record("a")  # a read while failing says so at once, it does not hang
    with flaky.changed:
        flaky.down = False
    db.writer.flush(timeout=DEADLINE, fail_fast=False)  # waits for the retry to succeed
    assert db.get_history() == ["a", "b", "c", "d", "e"]
    assert db.get_record("d")["stdout"] == "out of d" and db.get_record("d")["completed"] == at(10)
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_close_with_the_server_gone_returns_and_reports_the_loss(make_db: MakeDB,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    db = make_db(server_selection_timeout=0.3)
    flaky = FlakyCollection(db._records)
    db._records = flaky
    db.add_record("x", {"msg_id": "x", "submitted": at(0)})
    flaky.wait_for_attempts(1)
    started = time.monotonic()
    db.close()
    assert time.monotonic() - started < DEADLINE / 2
    assert any("lost" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    db.close()  # twice is harmless (the controller and a test fixture may both close)


def test_a_write_that_can_never_succeed_is_skipped_and_logged(make_db: MakeDB,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    db = make_db()
    # Another writer stored "dup" behind this object's back: the unique index refuses our insert.
    db._records.insert_one({"msg_id": "dup", "seq": -1})
    db.add_record("first", {"msg_id": "first", "submitted": at(0)})
    db.add_record("dup", {"msg_id": "dup", "submitted": at(1)})
    db.add_record("last", {"msg_id": "last", "submitted": at(2)})
    assert db.get_history() == ["dup", "first", "last"], "the writes after the refused one are made"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'dup'" in message and "skipped" in message for message in warnings), warnings


# -- keys and lookups --------------------------------------------------------


def test_updates_of_records_added_here_never_ask_the_server(make_db: MakeDB) -> None:
    db = make_db()
    flaky = FlakyCollection(db._records)
    db._records = flaky  # down: any lookup that flushed would raise TaskDBError
    db.add_record("a", {"msg_id": "a", "submitted": at(0)})
    db.update_record("a", {"engine_uuid": "e1"})
    db.update_record("a", {"completed": at(1), "stdout": "late output"})
    with pytest.raises(KeyError, match="'a' already exists"):
        db.add_record("a", {"msg_id": "a"})
    with flaky.changed:
        flaky.down = False
    db.writer.flush(timeout=DEADLINE, fail_fast=False)
    assert db.get_record("a")["stdout"] == "late output"


def test_the_msg_ids_kept_in_memory_are_bounded_and_older_ones_asked_of_the_server(
        make_db: MakeDB, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cluster_launcher_mongodb, "KNOWN_LIMIT", 3)
    db = make_db()
    for i in range(10):
        db.add_record(f"t{i}", {"msg_id": f"t{i}", "submitted": at(i)})
    assert list(db._known) == ["t7", "t8", "t9"]
    db.update_record("t0", {"completed": at(20)})  # not in memory: found on the server
    assert db.get_record("t0")["completed"] == at(20)
    with pytest.raises(KeyError, match="no task record 'never'"):
        db.update_record("never", {"completed": at(20)})
    db.add_record("t1", {"msg_id": "t1", "submitted": at(30)})  # forgotten here: the unique index refuses it
    db.writer.flush(timeout=DEADLINE, fail_fast=False)
    assert db.get_history() == [f"t{i}" for i in range(10)]
    assert db.get_record("t1")["submitted"] == at(1)
    assert any("t1" in record.getMessage() and "skipped" in record.getMessage() for record in caplog.records)


class _NoLookups:
    """A collection that fails the test if the controller's hot path asks the server for a record."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("add_record looked a msg_id up on the server")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)


def test_after_reuse_new_tasks_are_added_without_asking_the_server(make_db: MakeDB) -> None:
    first = make_db()
    for i in range(3):
        first.add_record(f"old{i}", {"msg_id": f"old{i}", "submitted": at(i)})
    first.close()
    second = make_db()  # a controller restarted with --reuse: the same collection
    second._records = _NoLookups(second._records)
    second.add_record("new", {"msg_id": "new", "submitted": at(9)})
    with pytest.raises(KeyError, match="'old1' already exists"):  # known from the collection's latest ids
        second.add_record("old1", {"msg_id": "old1", "submitted": at(9)})
    second.writer.flush(timeout=DEADLINE, fail_fast=False)
    assert second.get_history() == ["old0", "old1", "old2", "new"]


def test_records_of_an_earlier_run_are_found_updated_and_not_added_twice(make_db: MakeDB) -> None:
    first = make_db()
    first.add_record("old", {"msg_id": "old", "submitted": at(0)})
    first.close()
    second = make_db()
    with pytest.raises(KeyError, match="'old' already exists"):
        second.add_record("old", {"msg_id": "old", "submitted": at(0)})
    second.update_record("old", {"completed": at(3)})
    with pytest.raises(KeyError, match="no task record 'gone'"):
        second.update_record("gone", {"completed": at(3)})
    assert second.get_record("old")["completed"] == at(3)
    second.drop_record("old")
    second.add_record("old", {"msg_id": "old", "submitted": at(5)})  # dropped: may be added again
    assert second.get_history() == ["old"]


# -- BSON safety and exact queries ------------------------------------------

IST = timezone(timedelta(hours=5, minutes=30))


def _awkward_record() -> dict[str, Any]:
    submitted = datetime(2024, 5, 1, 17, 30, 0, 123456, tzinfo=IST)
    return {
        "msg_id": "odd",
        "header": {"$set": 1, "a.b": {"c.d": ["x", {"$in": None}]}, "100%": "%24", "%t": 7, "%v": 8,
                   "date": submitted, "naive": datetime(2024, 1, 2, 3, 4, 5, 6), "big": 2**70,
                   "tuple": (1, 2), "nul\0key": True, "empty": {}},
        "content": {1: "int key", "s": "str key"},
        "buffers": [memoryview(b"mem\x00view"), b"bytes", bytearray(b"array")],
        "submitted": submitted,
        "started": submitted + timedelta(microseconds=1),
        "completed": datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=timezone.utc),
        "result_buffers": [memoryview(b"x" * 1000)[10:20]],
        "stdout": "ünïcode ✓\n",
        "client_uuid": "c",
    }


def test_awkward_records_round_trip_exactly(make_db: MakeDB) -> None:
    db = make_db()
    db.add_record("odd", _awkward_record())
    stored = db.get_record("odd")
    original = _awkward_record()
    assert [bytes(b) for b in stored["buffers"]] == [b"mem\x00view", b"bytes", b"array"]
    assert all(type(b) is bytes for b in stored["buffers"] + stored["result_buffers"])
    assert stored["result_buffers"] == [b"x" * 10]
    for name in ("submitted", "started", "completed"):
        assert stored[name] == original[name] and stored[name].tzinfo is not None, name
        assert stored[name].utcoffset() == timedelta(0), name
    assert stored["started"] - stored["submitted"] == timedelta(microseconds=1)
    original["header"]["tuple"] = [1, 2]  # BSON, like JSON, has lists only
    assert stored["header"] == original["header"]
    assert stored["header"]["naive"].tzinfo is None
    assert stored["content"] == original["content"]
    assert stored["stdout"] == original["stdout"]
    instant = original["submitted"].astimezone(timezone(timedelta(hours=-7)))
    assert [r["msg_id"] for r in db.find_records({"submitted": instant})] == ["odd"]
    assert [r["msg_id"] for r in db.find_records({"submitted": {"$gt": instant}})] == []
    assert [r["msg_id"] for r in db.find_records({"header": {"$eq": original["header"]}})] == ["odd"]


def _odd_records() -> list[dict[str, Any]]:
    """Records whose values MongoDB and Python compare differently unless stored with care."""
    return [
        {"msg_id": "str", "engine_uuid": "e1", "stdout": "b", "completed": at(1)},
        {"msg_id": "list", "engine_uuid": ["e1"], "stdout": ["b"], "completed": [at(1)]},
        {"msg_id": "int", "engine_uuid": 1, "stdout": 2, "completed": 1},
        {"msg_id": "bool", "engine_uuid": True, "stdout": False},
        {"msg_id": "naive", "completed": datetime(2024, 5, 1, 12, 0, 1), "engine_uuid": None},
        {"msg_id": "dict", "engine_uuid": {"$eq": "e1"}, "result_content": {"status": "ok"},
         "result_buffers": [None, b"x"]},
        {"msg_id": "missing"},
        {"msg_id": "empty", "engine_uuid": "", "result_buffers": [], "result_content": {}},
    ]


ODD_QUERIES: list[dict[str, Any]] = [
    {"engine_uuid": "e1"}, {"engine_uuid": {"$ne": "e1"}}, {"engine_uuid": {"$in": ["e1", None]}},
    {"engine_uuid": {"$nin": ["e1"]}}, {"engine_uuid": {"$lt": "f"}}, {"engine_uuid": {"$gte": ""}},
    {"engine_uuid": 1}, {"engine_uuid": True}, {"engine_uuid": {"$in": [1, "e1"]}}, {"engine_uuid": ["e1"]},
    {"engine_uuid": {"$exists": True}}, {"engine_uuid": {"$exists": False}}, {"engine_uuid": None},
    {"engine_uuid": {"$exists": True, "$ne": "e1"}}, {"engine_uuid": {"$lt": 5}},
    {"stdout": {"$gt": "a"}}, {"stdout": {"$lt": 3}}, {"stdout": 0},
    {"completed": at(1)}, {"completed": {"$lte": at(1)}}, {"completed": {"$ne": at(1)}},
    {"completed": {"$in": [at(1), None]}}, {"completed": {"$nin": [at(1)]}}, {"completed": None},
    {"result_content": {"status": "ok"}}, {"result_content": {}}, {"result_content": {"$ne": None}},
    {"result_buffers": {"$exists": False}}, {"result_buffers": None}, {"result_buffers": []},
    {"result_buffers": {"$ne": None}}, {"msg_id": {"$gt": "i", "$lt": "n"}},
]


def test_queries_on_odd_values_agree_with_the_reference(make_db: MakeDB) -> None:
    db = make_db()
    for record in _odd_records():
        db.add_record(record["msg_id"], record)
    for query in ODD_QUERIES:
        expected = [r["msg_id"] for r in _odd_records() if matches(r, query)]
        assert [r["msg_id"] for r in db.find_records(query)] == expected, query
        assert [r["msg_id"] for r in db.find_records(query, keys=["stdout"])] == expected, query
    db.drop_matching_records({"engine_uuid": {"$ne": "e1"}, "completed": {"$exists": False}})
    assert db.get_history() == [r["msg_id"] for r in _odd_records()
                                if not matches(r, {"engine_uuid": {"$ne": "e1"}, "completed": {"$exists": False}})]


def test_a_value_bson_cannot_hold_is_a_value_error_naming_the_field(make_db: MakeDB) -> None:
    db = make_db()
    with pytest.raises(ValueError, match="header"):
        db.add_record("s", {"msg_id": "s", "header": {"tags": {"a", "b"}}})
    assert db.get_history() == []


class PoisonedCollection:
    """Refuses, as pymongo does while encoding, any bulk write holding the
    record 'poison' (a document too large, say): before anything is sent."""

    def __init__(self, inner: Any):
        self.inner = inner

    def bulk_write(self, requests: list[Any], **kwargs: Any) -> Any:
        if any("'poison'" in repr(request) for request in requests):
            raise pymongo.errors.DocumentTooLarge("BSON document too large (17000000 bytes)")
        return self.inner.bulk_write(requests, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_record_the_client_cannot_encode_is_skipped_and_the_rest_written(make_db: MakeDB,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    db = make_db()
    db._records = PoisonedCollection(db._records)
    for msg_id in ("before", "poison", "after"):
        db.add_record(msg_id, {"msg_id": msg_id, "submitted": at(0)})
    db.update_record("after", {"stdout": "still written"})
    assert db.get_history() == ["before", "after"]
    assert db.get_record("after")["stdout"] == "still written"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "'poison'" in errors[0] and "DocumentTooLarge" in errors[0], errors


def test_a_long_running_task_gets_its_result_without_asking_the_server(
        make_db: MakeDB, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_launcher_mongodb, "KNOWN_LIMIT", 2)
    db = make_db()
    db.add_record("long", {"msg_id": "long", "submitted": at(0)})
    for i in range(5):  # more tasks than the window holds come and go meanwhile
        db.add_record(f"quick{i}", {"msg_id": f"quick{i}", "submitted": at(1 + i), "completed": at(2 + i)})
    assert "long" not in db._known
    collection = db._records
    db._records = _NoLookups(collection)
    db.update_record("long", {"completed": at(30), "result_header": {"status": "ok"}})
    db._records = collection
    db.writer.flush(timeout=DEADLINE, fail_fast=False)
    assert db.get_record("long")["completed"] == at(30)


def test_output_that_is_not_utf8_is_kept_escaped(make_db: MakeDB) -> None:
    """A task printing a non-UTF-8 file name gives a lone surrogate, which BSON
    cannot hold: it is stored escaped rather than stopping every write."""
    db = make_db()
    printed = "caf\udce9 \u00e9t\u00e9"
    db.add_record("t", {"msg_id": "t", "submitted": at(0), "stdout": printed,
                        "result_header": {"stdout": printed, "caf\udce9": 1}})
    db.writer.flush(timeout=DEADLINE, fail_fast=False)
    record = db.get_record("t")
    assert record["stdout"] == "caf\\udce9 \u00e9t\u00e9"
    assert record["result_header"] == {"stdout": "caf\\udce9 \u00e9t\u00e9", "caf\\udce9": 1}
