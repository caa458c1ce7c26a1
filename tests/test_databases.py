"""Task databases behind a real controller: every history request with each
backend, the durability promise of SQLiteDB under SIGKILL and ``--reuse``,
selection as users write it, and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

import pytest

from cluster_launcher import Client
from cluster_launcher.error import NoTaskHistory, RemoteError
from cluster_launcher.protocol import connection
from cluster_launcher.testing.processes import LocalCluster, Process

pytestmark = pytest.mark.timeout(120)

MONGODB_URL = os.environ.get("CLUSTER_LAUNCHER_TEST_MONGODB_URL", "")
BACKENDS = {
    "dict": (),
    "sqlite": ("--db=sqlite",),
    # A real server only (mongomock cannot serve another process): CI has none, see docs/databases.md.
    "mongodb": ("--db=mongodb", f"--MongoDB.connection_args=['{MONGODB_URL}']"),
}


@pytest.fixture
def cluster(tmp_path):
    made: list[LocalCluster] = []

    def make(*controller_args: str, n: int = 2) -> LocalCluster:
        # Engines outlive a controller restart (they reconnect), so the timeout is long.
        (tmp_path / "profile").mkdir(exist_ok=True)
        started = LocalCluster(tmp_path / "profile", n=n, controller_args=controller_args,
                               engine_args=("--Engine.timeout=60",))
        made.append(started)
        return started.start()

    yield make
    for started in made:
        started.stop()


def _square(x):
    print(f"squaring {x}")
    return x * x


def _megabyte(byte):
    return bytes([byte]) * 2**20


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_history_request_with_each_backend(backend, cluster):
    if backend == "mongodb" and not MONGODB_URL:
        pytest.skip("no MongoDB server: set CLUSTER_LAUNCHER_TEST_MONGODB_URL to run this against one")
    started = cluster(*BACKENDS[backend])
    with started.client() as client, started.client() as other:
        before = datetime.now(timezone.utc)
        ars = [client.load_balanced_view().apply_async(_square, i) for i in range(6)]
        assert [ar.get(20) for ar in ars] == [i * i for i in range(6)]
        ids = [ar.msg_id for ar in ars]

        # a task another client submitted, from the controller's database
        assert other.get_result(ids[3]).get(10) == 9
        assert other.get_result(ids).get(10) == [i * i for i in range(6)]
        with pytest.raises(RemoteError, match="KeyError"):
            other.get_result("no-such-task").get(10)

        records = other.db_query({"msg_id": {"$in": ids}, "completed": {"$gt": before}},
                                 keys=["completed", "engine_uuid", "stdout", "result_content"])
        assert [r["msg_id"] for r in records] == ids  # submission order
        assert {r["engine_uuid"] for r in records} <= {e["uuid"] for e in client.engines.values()}
        assert records[2]["stdout"] == "squaring 2\n" and records[2]["result_content"]["status"] == "ok"
        assert all(r["completed"] > before and r["completed"].tzinfo is not None for r in records)
        assert set(records[0]) == {"msg_id", "completed", "engine_uuid", "stdout", "result_content"}
        assert other.db_query({"completed": {"$lt": before}}) == []
        assert other.hub_history()[-6:] == ids

        again = other.resubmit(ids[:2])
        assert again.get(20) == [0, 1] and set(again.msg_ids).isdisjoint(ids)
        resubmitted = other.db_query({"msg_id": {"$in": ids[:2]}}, keys=["resubmitted"])
        assert [r["resubmitted"] for r in resubmitted] == again.msg_ids

        client.purge_results([ids[0]])
        assert other.db_query({"msg_id": ids[0]}) == []
        engine = client.db_query({"msg_id": ids[1]}, keys=["engine_uuid"])[0]["engine_uuid"]
        engine_id = next(i for i, e in client.engines.items() if e["uuid"] == engine)
        client.purge_results(targets=[engine_id])
        assert other.db_query({"engine_uuid": engine}) == []
        client.purge_results("all")
        assert other.db_query({"completed": {"$ne": None}}) == []


def test_received_results_survive_sigkill_and_reuse_five_times(cluster, tmp_path):
    """The durability promise: a result a client has received is in the SQLite
    file, whatever happens to the controller right after."""
    started = cluster("--db=sqlite", "--reuse")
    received: dict[str, int] = {}
    for restart in range(5):
        with started.client() as client:
            ars = [client.load_balanced_view().apply_async(_square, restart * 100 + i) for i in range(20)]
            ars.append(client[0].apply_async(_square, restart))  # a direct task too
            ars.append(client[1].apply_async(_megabyte, restart))  # through shared memory (over 256 KiB)
            for ar in ars:
                received[ar.msg_id] = ar.get(20)
        # Killed the moment the last result arrived: no chance to flush anything more.
        started.controller.stop(signal.SIGKILL)
        started.start_controller("--reuse")
        with started.client() as fresh:  # a client that never saw those tasks
            msg_ids = list(received)
            assert fresh.get_result(msg_ids).get(20) == list(received.values()), f"after restart {restart + 1}"
            records = fresh.db_query({"msg_id": {"$in": msg_ids}}, keys=["completed", "result_content"])
            assert [r["msg_id"] for r in records] == msg_ids
            assert all(r["completed"] is not None and r["result_content"]["status"] == "ok" for r in records)
    tables = _tables(tmp_path / "profile" / "tasks.db")
    assert len(tables) == 2, f"--reuse must keep one table (the session's) across restarts: {tables}"


def test_a_named_table_keeps_history_for_the_next_controller(cluster, tmp_path):
    started = cluster("--db=sqlite", "--SQLiteDB.table=tasks", n=1)
    with started.client() as client:
        ar = client[0].apply_async(_square, 7)
        assert ar.get(20) == 49
    started.controller.stop()
    started.start_controller()  # a new controller, new key and ports: no --reuse
    with started.client(n=0) as fresh:  # the old engine is not needed: the answer is in the file
        assert fresh.get_result(ar.msg_id).get(20) == 49
        assert fresh.hub_history() == [ar.msg_id]


def _tables(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]


# -- selection the way users write it ------------------------------------------------------

@pytest.mark.parametrize("line, stored", [
    ("c.HubFactory.db_class = 'IPython.parallel.controller.sqlitedb.SQLiteDB'", "sqlite"),
    ("c.Controller.db_class = 'SQLiteDB'", "sqlite"),
    ("c.HubFactory.db_class = 'IPython.parallel.controller.dictdb.NoDB'", "none"),
    ("c.HubFactory.db_class = 'IPython.parallel.controller.dictdb.DictDB'", "memory"),
])
def test_db_class_lines_from_ipython_configs(line, stored, tmp_path, cluster):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "controller_config.py").write_text(f"c = get_config()\n{line}\n")
    started = cluster(n=1)
    with started.client() as client:
        ar = client[0].apply_async(_square, 3)
        assert ar.get(20) == 9
        if stored == "none":
            assert client.task_history is False
            with pytest.raises(NoTaskHistory):
                client.db_query({})
        else:
            assert client.db_query({"msg_id": ar.msg_id}, keys=["msg_id"]) == [{"msg_id": ar.msg_id}]
    assert (profile / "tasks.db").exists() == (stored == "sqlite")


# -- bad input: one line, the controller does not start, nothing half-written ----------------

def _controller_error(profile_dir, *args: str) -> str:
    controller = Process("controller", str(profile_dir), *args)
    try:
        assert controller.wait(timeout=30) not in (None, 0), controller.output()
        output = controller.output()
    finally:
        controller.stop()
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert not os.path.exists(connection.connection_file(str(profile_dir), "client")), "half-started"
    return lines[-1]


def test_a_file_that_is_not_sqlite_stops_the_controller_with_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 50)
    line = _controller_error(tmp_path, "--db=sqlite", f"--SQLiteDB.location={tmp_path}",
                             "--SQLiteDB.filename=notes.txt")
    assert line.startswith("cluster-launcher: error: SQLiteDB:") and str(notes) in line, line
    assert "is not a SQLite database" in line and "c.SQLiteDB.filename" in line
    assert notes.read_text() == "not a database\n" * 50


def test_an_unknown_db_name_is_named(tmp_path):
    line = _controller_error(tmp_path, "--db=sqlight")
    assert line.startswith("cluster-launcher: error:") and "'sqlight'" in line and "SQLiteDB" in line, line


def test_an_unreachable_mongodb_names_the_url(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"mongodb://someone:secret@127.0.0.1:{port}"
    line = _controller_error(tmp_path, "--db=mongodb", f"--MongoDB.connection_args={json.dumps([url])}",
                             "--MongoDB.server_selection_timeout=0.5")
    assert line.startswith("cluster-launcher: error:") and f"127.0.0.1:{port}" in line, line
    assert "secret" not in line


def test_plugins_lists_both_backends_and_the_meta_distribution_installs_them():
    listing = subprocess.run([sys.executable, "-m", "cluster_launcher", "plugins"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    by_distribution = {entry["distribution"]: entry for entry in json.loads(listing)}
    assert by_distribution["cluster-launcher-sqlite"]["classes"] == ["SQLiteDB"]
    assert by_distribution["cluster-launcher-mongodb"]["classes"] == ["MongoDB"]
    meta = {requirement.split(";")[0].strip() for requirement in metadata.requires("cluster-launcher") or []}
    assert {"cluster-launcher-sqlite", "cluster-launcher-mongodb"} <= meta


FAILING_DB = '''
from cluster_launcher_dict import DictDB


class ResultRefusingDB(DictDB):
    """A backend that cannot store results (a third party's bug, a server gone)."""

    def update_record(self, msg_id, changes):
        if "result_header" in changes:
            raise RuntimeError("this backend cannot store results")
        super().update_record(msg_id, changes)
'''


def test_a_result_the_db_cannot_record_still_reaches_its_client(cluster, tmp_path, monkeypatch):
    (tmp_path / "refusing_db.py").write_text(FAILING_DB)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    started = cluster("--Controller.db_class=refusing_db.ResultRefusingDB", n=1)
    with started.client() as client:
        assert client[0].apply_async(_square, 5).get(20) == 25
    assert "could not record the result of task" in started.controller.output()


# -- start --db=NAME: the controller `start` runs uses it ------------------------------------

CLI = [sys.executable, "-m", "cluster_launcher"]


def test_start_with_db_sqlite_keeps_history_in_the_profile(tmp_path, env):
    started = subprocess.run([*CLI, "start", "-n", "1", "--daemonize", "--db=sqlite"], env=env,
                             capture_output=True, text=True, timeout=90)
    assert started.returncode == 0, started.stdout + started.stderr
    profile = tmp_path / "home" / "profile_default"
    try:
        with Client(profile_dir=str(profile), timeout=10) as client:
            client.wait_for_engines(1, timeout=30)
            ar = client[0].apply_async(_square, 4)
            assert ar.get(20) == 16
        with sqlite3.connect(profile / "tasks.db") as connection:
            (table,) = [t for t in _tables(profile / "tasks.db") if t != "cluster_launcher_tables"]
            assert connection.execute(f'SELECT msg_id FROM "{table}"').fetchall() == [(ar.msg_id,)]
    finally:
        stopped = subprocess.run([*CLI, "stop"], env=env, capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr


def test_start_with_an_unknown_db_fails_before_starting_anything(tmp_path, env):
    started = subprocess.run([*CLI, "start", "-n", "1", "--daemonize", "--db=sqlight"], env=env,
                             capture_output=True, text=True, timeout=90)
    assert started.returncode == 2
    assert started.stderr.strip().splitlines() == [
        "cluster-launcher: error: Controller.db_class: unknown db 'sqlight'; installed: DictDB, MongoDB, NoDB, "
        "SQLiteDB; did you mean 'SQLiteDB'?"]
    assert not (tmp_path / "home").exists()
