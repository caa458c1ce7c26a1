"""The sftp transport against a real sshd (cluster_launcher.testing.sshd):
files land 0600, whole, in folders made 0700; fetches say when a file is not
there yet; a connection the transport opened itself is closed by close()."""

from __future__ import annotations

import os
import stat

import pytest
from cluster_launcher_sftp import SFTPTransport

from cluster_launcher import plugins
from cluster_launcher.error import SSHError
from cluster_launcher.protocol.ssh import connect_ssh
from cluster_launcher.testing.processes import wait_for
from cluster_launcher.testing.sshd import SSHServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with SSHServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def connection(sshd, monkeypatch):
    monkeypatch.setenv("HOME", str(sshd.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with connect_ssh(sshd.alias, timeout=10) as ssh:
        yield ssh
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_is_the_sftp_transport():
    assert plugins.resolve("transport", "sftp") is SFTPTransport


def test_send_lands_0600_in_new_0700_folders_and_replaces_whole(connection, tmp_path):
    local = tmp_path / "controller-engine.json"
    local.write_text('{"key": "secret"}')
    os.chmod(local, 0o644)
    target = tmp_path / "remote" / "profile" / "security" / "controller-engine.json"
    transport = SFTPTransport()
    transport.send(str(local), str(target), connection)
    assert target.read_text() == '{"key": "secret"}'
    assert _mode(target) == 0o600
    assert _mode(tmp_path / "remote") == _mode(target.parent) == 0o700

    target.write_text("old")
    os.chmod(target, 0o644)
    old_inode = os.stat(target).st_ino
    local.write_text('{"key": "new"}')
    transport.send(str(local), str(target), connection)
    assert target.read_text() == '{"key": "new"}' and _mode(target) == 0o600
    assert os.stat(target).st_ino != old_inode  # replaced in one rename, never rewritten in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["controller-engine.json"]  # nothing partial left


def test_fetch_is_0600_here_and_says_when_the_file_is_not_there(connection, tmp_path):
    remote = tmp_path / "there.json"
    remote.write_text('{"a": 1}')
    local = tmp_path / "here" / "copy.json"
    transport = SFTPTransport()
    transport.fetch(str(remote), str(local), connection)
    assert local.read_text() == '{"a": 1}' and _mode(local) == 0o600
    with pytest.raises(FileNotFoundError):
        transport.fetch(str(tmp_path / "not-yet.json"), str(tmp_path / "x.json"), connection)
    assert not (tmp_path / "x.json").exists()


def test_a_path_through_a_file_is_a_one_line_error(connection, tmp_path):
    (tmp_path / "plain").write_text("not a folder")
    local = tmp_path / "f.json"
    local.write_text("{}")
    with pytest.raises(SSHError, match=r"cannot send .*f\.json to .*plain/sub/f\.json: .*plain is not a folder"):
        SFTPTransport().send(str(local), str(tmp_path / "plain" / "sub" / "f.json"), connection)


def test_a_destination_gets_a_connection_of_its_own_closed_by_close(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(sshd.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    local = tmp_path / "f.json"
    local.write_text("{}")
    transport = SFTPTransport()
    transport.send(str(local), str(tmp_path / "out" / "f.json"), sshd.alias)
    transport.fetch(str(tmp_path / "out" / "f.json"), str(tmp_path / "back.json"), sshd.alias)  # the same connection
    assert sshd.session_pids()
    transport.close()
    wait_for(lambda: not sshd.session_pids(), 10, "the transport's SSH session to end")
    assert (tmp_path / "back.json").read_text() == "{}"
