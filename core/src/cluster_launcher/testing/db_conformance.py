"""Conformance suite every task-database backend must pass.

The suite is plain functions, so any backend's tests can run it without
pytest plugins.  Each ``check_*`` takes ``make_db``, a callable returning a
fresh, empty, ready-to-use database, and raises ``AssertionError`` on a
difference from the reference semantics (:func:`cluster_launcher.db.matches`).
A backend's test file runs them all::

    import pytest
    from cluster_launcher.testing import db_conformance

    @pytest.mark.parametrize("check", db_conformance.CHECKS, ids=db_conformance.check_name)
    def test_sqlitedb_conformance(check, tmp_path):
        check(lambda: SQLiteDB(location=str(tmp_path)))

:data:`QUERY_CASES` and :data:`BAD_QUERIES` are also usable on their own
(core's tests run them against :func:`~cluster_launcher.db.matches`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from ..db import RECORD_FIELDS, BaseDB, Query

MakeDB = Callable[[], BaseDB]

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
# A second zone: backends must compare instants, not wall-clock text.
PLUS_TWO = timezone(timedelta(hours=2))


def at(seconds: float, tz: timezone = timezone.utc) -> datetime:
    """``T0 + seconds`` as an aware datetime in ``tz``."""
    return (T0 + timedelta(seconds=seconds)).astimezone(tz)


def make_records() -> list[dict[str, Any]]:
    """Five task records in submission order, fresh on every call.

    a: finished on e1; b: direct (mux), finished on e2, times in UTC+2;
    c: pending, not yet assigned; d: finished on e1, resubmitted as e;
    e: assigned to e2, not started.
    """
    def record(msg_id: str, **fields: Any) -> dict[str, Any]:
        return {"msg_id": msg_id, "header": {"msg_id": msg_id, "msg_type": "apply_request"},
                "content": {}, "buffers": [b"function-" + msg_id.encode()], "queue": "task",
                "client_uuid": "c1", **fields}

    return [
        record("a", submitted=at(0), engine_uuid="e1", started=at(1), completed=at(2),
               received=at(2.5), result_header={"msg_id": "ra"}, result_content={"status": "ok"},
               result_buffers=[b"result-a", memoryview(b"second buffer")], stdout="hello\n",
               stderr=""),
        record("b", submitted=at(1, PLUS_TWO), queue="mux", engine_uuid="e2", started=None,
               completed=at(5, PLUS_TWO), result_header={"msg_id": "rb"},
               result_content={"status": "error"}, result_buffers=[], stdout="", stderr="boom\n"),
        record("c", submitted=at(2), client_uuid="c2"),
        record("d", submitted=at(3), engine_uuid="e1", started=at(4), completed=at(10),
               result_header={"msg_id": "rd"}, result_content={"status": "ok"}, resubmitted="e"),
        record("e", submitted=at(6), engine_uuid="e2"),
    ]


# (name, query, msg_ids expected in submission order) over make_records().
QUERY_CASES: list[tuple[str, Query, list[str]]] = [
    ("empty query matches all", {}, ["a", "b", "c", "d", "e"]),
    ("plain equality", {"engine_uuid": "e1"}, ["a", "d"]),
    ("plain equality with None", {"engine_uuid": None}, ["c"]),
    ("plain equality, no match", {"engine_uuid": "nowhere"}, []),
    ("plain equality on a dict", {"result_content": {"status": "ok"}}, ["a", "d"]),
    ("$eq", {"client_uuid": {"$eq": "c2"}}, ["c"]),
    ("$eq None", {"started": {"$eq": None}}, ["b", "c", "e"]),
    ("$ne includes missing values", {"engine_uuid": {"$ne": "e1"}}, ["b", "c", "e"]),
    ("$ne None", {"completed": {"$ne": None}}, ["a", "b", "d"]),
    ("$in", {"engine_uuid": {"$in": ["e2", None]}}, ["b", "c", "e"]),
    ("$in keeps submission order", {"msg_id": {"$in": ["e", "a", "zz"]}}, ["a", "e"]),
    ("$in empty", {"msg_id": {"$in": []}}, []),
    ("$nin", {"engine_uuid": {"$nin": ["e1", "e2"]}}, ["c"]),
    ("$lt datetime", {"submitted": {"$lt": at(2)}}, ["a", "b"]),
    ("$lte datetime", {"submitted": {"$lte": at(2)}}, ["a", "b", "c"]),
    ("$gt datetime skips None", {"completed": {"$gt": at(2)}}, ["b", "d"]),
    # ipyparallel's DictDB evaluates $gt as "less than": these three tell the two apart.
    ("$gt is greater than, on str", {"msg_id": {"$gt": "c"}}, ["d", "e"]),
    ("$gt is greater than, on datetime", {"submitted": {"$gt": at(2)}}, ["d", "e"]),
    ("$gt and $lt bound a range", {"submitted": {"$gt": at(0), "$lt": at(6)}}, ["b", "c", "d"]),
    ("$gte datetime", {"completed": {"$gte": at(2)}}, ["a", "b", "d"]),
    ("datetimes compare across time zones", {"completed": {"$lt": at(5.5, PLUS_TWO)}}, ["a", "b"]),
    ("equal instants in other zones", {"submitted": {"$eq": at(1)}}, ["b"]),
    ("$lt str", {"msg_id": {"$lt": "c"}}, ["a", "b"]),
    ("$exists True", {"completed": {"$exists": True}}, ["a", "b", "d"]),
    ("$exists False", {"started": {"$exists": False}}, ["b", "c", "e"]),
    ("range on one field", {"submitted": {"$gte": at(1), "$lt": at(6)}}, ["b", "c", "d"]),
    ("two fields", {"queue": "task", "completed": {"$exists": True}}, ["a", "d"]),
    ("$in with a datetime range", {"engine_uuid": {"$in": ["e1", "e2"]}, "completed": {"$gt": at(3)}},
     ["b", "d"]),
    ("contradiction", {"engine_uuid": "e1", "queue": "mux"}, []),
]

# (query, a word the ValueError must name).
BAD_QUERIES: list[tuple[Any, str]] = [
    (["msg_id"], "dict"),
    ({"bogus": 1}, "bogus"),
    ({"completed": {"$regex": "x"}}, "$regex"),
    ({"header": {"$eq": {}, "msg_id": "x"}}, "msg_id"),
    ({"engine_uuid": {"$in": "e1"}}, "$in"),
    ({"engine_uuid": {"$nin": None}}, "$nin"),
    ({"completed": {"$exists": 1}}, "$exists"),
    ({"completed": {"$gt": None}}, "$gt"),
    ({"completed": {"$lt": "yesterday"}}, "completed"),
    ({"completed": {"$gt": datetime(2024, 1, 1)}}, "naive"),
    ({"submitted": datetime(2024, 1, 1)}, "naive"),
    ({"submitted": {"$in": [datetime(2024, 1, 1)]}}, "naive"),
]


@contextlib.contextmanager
def _filled(make_db: MakeDB) -> Iterator[BaseDB]:
    """A fresh database holding make_records(), closed afterwards."""
    db = make_db()
    try:
        for record in make_records():
            db.add_record(record["msg_id"], record)
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def _raises(kind: type[Exception], *words: str) -> Iterator[None]:
    try:
        yield
    except kind as error:
        for word in words:
            assert word in str(error), f"{kind.__name__} {error} should name {word!r}"
    else:
        raise AssertionError(f"expected {kind.__name__} naming {words}")


def _ids(records: list[dict[str, Any]]) -> list[str]:
    return [record["msg_id"] for record in records]


def check_query_cases(make_db: MakeDB) -> None:
    """Every operator, alone and combined, selects what the reference does."""
    with _filled(make_db) as db:
        for name, query, expected in QUERY_CASES:
            assert _ids(db.find_records(query)) == expected, f"{name}: {query}"


def check_bad_queries_name_the_problem(make_db: MakeDB) -> None:
    """A bad field, operator or argument is a ValueError naming it, for finds and drops."""
    with _filled(make_db) as db:
        for query, word in BAD_QUERIES:
            with _raises(ValueError, word):
                db.find_records(query)
            with _raises(ValueError, word):
                db.drop_matching_records(query)
        assert db.get_history() == ["a", "b", "c", "d", "e"], "a rejected drop dropped records"


def check_projection(make_db: MakeDB) -> None:
    """``keys`` selects fields, always with msg_id; a bad key is a ValueError naming it."""
    with _filled(make_db) as db:
        found = db.find_records({"engine_uuid": "e1"}, keys=["completed", "stdout"])
        assert found == [{"msg_id": "a", "completed": at(2), "stdout": "hello\n"},
                         {"msg_id": "d", "completed": at(10), "stdout": None}], found
        assert db.find_records({"queue": "mux"}, keys=[]) == [{"msg_id": "b"}]
        assert db.find_records({"queue": "mux"}, keys=("msg_id",)) == [{"msg_id": "b"}]
        buffers = db.find_records({"msg_id": "a"}, keys=["result_buffers"])[0]["result_buffers"]
        assert [bytes(b) for b in buffers] == [b"result-a", b"second buffer"]
        with _raises(ValueError, "bogus"):
            db.find_records({}, keys=["completed", "bogus"])
        with _raises(ValueError, "completed"):
            db.find_records({}, keys="completed")


def check_records_round_trip(make_db: MakeDB) -> None:
    """get_record returns every field as stored: missing ones None, datetimes aware, buffers intact."""
    with _filled(make_db) as db:
        for original in make_records():
            stored = db.get_record(original["msg_id"])
            assert set(stored) == set(RECORD_FIELDS), sorted(set(stored) ^ set(RECORD_FIELDS))
            for field in RECORD_FIELDS:
                value, expected = stored[field], original.get(field)
                if field in ("buffers", "result_buffers") and expected is not None:
                    assert [bytes(b) for b in value] == [bytes(b) for b in expected], field
                else:
                    assert value == expected, (original["msg_id"], field, value, expected)
                if isinstance(value, datetime):
                    assert value.tzinfo is not None, (original["msg_id"], field)


def check_history_in_submission_order(make_db: MakeDB) -> None:
    """get_history and find_records follow submission order, not msg_id order."""
    db = make_db()
    try:
        for msg_id, second in (("z", 0), ("m", 1), ("a", 2)):
            db.add_record(msg_id, {"msg_id": msg_id, "submitted": at(second)})
        assert db.get_history() == ["z", "m", "a"]
        assert _ids(db.find_records({})) == ["z", "m", "a"]
    finally:
        db.close()


def check_update_record(make_db: MakeDB) -> None:
    """Updates merge into the record and are visible to queries."""
    with _filled(make_db) as db:
        db.update_record("c", {"engine_uuid": "e3", "started": at(7), "completed": at(8),
                               "result_buffers": [b"late"]})
        record = db.get_record("c")
        assert (record["engine_uuid"], record["completed"], record["client_uuid"]) == ("e3", at(8), "c2")
        assert [bytes(b) for b in record["result_buffers"]] == [b"late"]
        assert _ids(db.find_records({"completed": {"$gte": at(8)}})) == ["c", "d"]
        with _raises(ValueError, "bogus"):
            db.update_record("c", {"bogus": 1})


def check_unknown_and_duplicate_ids(make_db: MakeDB) -> None:
    """An unknown msg_id is a KeyError for get, update and drop; adding one twice is a KeyError."""
    with _filled(make_db) as db:
        with _raises(KeyError, "nope"):
            db.get_record("nope")
        with _raises(KeyError, "nope"):
            db.update_record("nope", {"stdout": "x"})
        with _raises(KeyError, "nope"):
            db.drop_record("nope")
        with _raises(KeyError, "a"):
            db.add_record("a", make_records()[0])
        with _raises(ValueError, "bogus"):
            db.add_record("new", {"msg_id": "new", "bogus": 1})
        assert "new" not in db.get_history()


def check_drops(make_db: MakeDB) -> None:
    """drop_record and drop_matching_records forget exactly what they are asked to."""
    with _filled(make_db) as db:
        db.drop_record("b")
        assert db.get_history() == ["a", "c", "d", "e"]
        db.drop_matching_records({"completed": {"$lt": at(5)}, "engine_uuid": "e1"})
        assert db.get_history() == ["c", "d", "e"]
        with _raises(KeyError, "a"):
            db.get_record("a")
        db.drop_matching_records({"msg_id": {"$in": []}})
        assert db.get_history() == ["c", "d", "e"]
        db.drop_matching_records({})
        assert db.get_history() == [] and db.find_records({}) == []


def check_returned_records_are_copies(make_db: MakeDB) -> None:
    """Mutating a returned (or submitted) record does not change the database."""
    db = make_db()
    try:
        submitted = make_records()[0]
        db.add_record("a", submitted)
        submitted["header"]["msg_type"] = "changed by caller"
        submitted["result_buffers"].append(b"extra")
        for record in (db.get_record("a"), db.find_records({})[0],
                       db.find_records({}, keys=["header", "result_buffers"])[0]):
            record["header"]["msg_type"] = "changed"
            record["result_buffers"].append(b"x")
            record["stdout"] = "changed"
        again = db.get_record("a")
        assert again["header"]["msg_type"] == "apply_request"
        assert len(again["result_buffers"]) == 2 and again["stdout"] == "hello\n"
    finally:
        db.close()


def check_records_survive_reopen(make_db: MakeDB, reopen_db: MakeDB) -> None:
    """A persistent backend's records, closed and opened again, are all there:
    same history, same records, same answers to queries."""
    db = make_db()
    try:
        for record in make_records():
            db.add_record(record["msg_id"], record)
        db.update_record("c", {"engine_uuid": "e3", "completed": at(8), "result_buffers": [b"late"]})
    finally:
        db.close()
    again = reopen_db()
    try:
        assert again.get_history() == ["a", "b", "c", "d", "e"]
        assert [bytes(b) for b in again.get_record("a")["result_buffers"]] == [b"result-a", b"second buffer"]
        assert again.get_record("c")["completed"] == at(8)
        assert _ids(again.find_records({"completed": {"$gte": at(8)}})) == ["c", "d"]
        again.add_record("f", {"msg_id": "f", "submitted": at(20)})
        assert again.get_history()[-1] == "f", "a record added after reopening goes last"
        with _raises(KeyError, "a"):
            again.add_record("a", make_records()[0])
    finally:
        again.close()


CHECKS: list[Callable[[MakeDB], None]] = [
    check_query_cases,
    check_bad_queries_name_the_problem,
    check_projection,
    check_records_round_trip,
    check_history_in_submission_order,
    check_update_record,
    check_unknown_and_duplicate_ids,
    check_drops,
    check_returned_records_are_copies,
]


# Checks for backends whose records outlive the object (``persistent``): each
# takes ``make_db`` (a fresh, empty store) and ``reopen_db`` (a new object on
# the same store).
PERSISTENT_CHECKS: list[Callable[[MakeDB, MakeDB], None]] = [
    check_records_survive_reopen,
]


def check_name(check: Callable[..., None]) -> str:
    """A short test id for a check (``ids=`` of pytest.mark.parametrize)."""
    return check.__name__.removeprefix("check_")
