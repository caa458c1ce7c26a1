"""The reference query semantics (cluster_launcher.db.matches/check_query),
checked against the conformance suite's cases that every backend must pass."""

from __future__ import annotations

import pytest

from cluster_launcher.db import OPERATORS, RECORD_FIELDS, check_keys, check_query, check_record, matches
from cluster_launcher.testing import db_conformance
from cluster_launcher.testing.db_conformance import BAD_QUERIES, QUERY_CASES, at, make_records


@pytest.mark.parametrize(("query", "expected"), [case[1:] for case in QUERY_CASES],
                         ids=[case[0] for case in QUERY_CASES])
def test_reference_semantics_select_the_expected_records(query, expected):
    check_query(query)
    assert [r["msg_id"] for r in make_records() if matches(r, query)] == expected


def test_query_cases_use_every_operator():
    used = {op for _, query, _ in QUERY_CASES for condition in query.values()
            if isinstance(condition, dict) for op in condition}
    assert set(OPERATORS) <= used, set(OPERATORS) - used


@pytest.mark.parametrize(("query", "word"), BAD_QUERIES, ids=[w for _, w in BAD_QUERIES])
def test_bad_query_is_a_one_line_value_error_naming_it(query, word):
    with pytest.raises(ValueError) as caught:
        check_query(query)
    assert word in str(caught.value) and "\n" not in str(caught.value)


def test_mismatched_types_match_nothing_rather_than_raise():
    query = {"msg_id": {"$lt": 5}}
    check_query(query)
    assert not any(matches(r, query) for r in make_records())


def test_check_keys_puts_msg_id_first_and_rejects_unknown_fields():
    assert check_keys(None) is None
    assert check_keys([]) == ["msg_id"]
    assert check_keys(["completed", "msg_id", "completed"]) == ["msg_id", "completed"]
    with pytest.raises(ValueError, match="'nope'"):
        check_keys(["nope"])
    with pytest.raises(ValueError, match="string 'stdout'"):
        check_keys("stdout")


def test_check_record_accepts_known_fields_only():
    check_record(dict.fromkeys(RECORD_FIELDS))
    with pytest.raises(ValueError, match="'extra'.*task record update"):
        check_record({"stdout": "", "extra": 1}, "task record update")


def test_conformance_cases_are_tz_aware():
    assert all(value.tzinfo is not None for record in make_records()
               for value in record.values() if hasattr(value, "tzinfo"))
    assert at(1).utcoffset().total_seconds() == 0


def test_every_check_is_listed():
    defined = {name for name in vars(db_conformance) if name.startswith("check_") and name != "check_name"}
    listed = db_conformance.CHECKS + db_conformance.PERSISTENT_CHECKS
    assert defined == {check.__name__ for check in listed}
