"""SSH tunnels for real: a client and engines reach the controller through a
real sshd (:class:`cluster_launcher.testing.sshd.SSHServer`) on 127.0.0.1,
with real controller and engine processes.

That traffic really goes through sshd is checked on the sockets: the
controller's ports are reached by sshd's session process, never directly by
the client or engine (which would still work, everything being on one host).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import threading
from pathlib import Path

import paramiko
import pytest

from cluster_launcher import Client
from cluster_launcher.error import SSHError, SSHTunnelError
from cluster_launcher.protocol import connection
from cluster_launcher.protocol.ssh import connect_ssh
from cluster_launcher.protocol.tunnel import open_tunnel
from cluster_launcher.testing.processes import LocalCluster, Process, wait_for
from cluster_launcher.testing.sshd import SSHServer, connections_to, write_ed25519_key

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ssh_home(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process finds the sshd alias (paramiko reads $HOME) and no agent of the user running the tests."""
    monkeypatch.setenv("HOME", str(sshd.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sshd.home


@pytest.fixture
def cluster(tmp_path: Path, sshd: SSHServer):
    running = LocalCluster(str(tmp_path / "profile"), n=0)
    os.makedirs(running.profile_dir)
    yield running
    try:
        running.stop()
    finally:
        # Whatever the test did, no SSH session may outlive it (the next test counts them).
        wait_for(lambda: not sshd.session_pids(), 10, f"sshd's sessions to end: {sshd.session_pids()}")


def _connection_info(cluster: LocalCluster, role: str) -> dict:
    return connection.read_connection_file(connection.connection_file(cluster.profile_dir, role), role)


def _log_of(process: Process) -> str:
    """A process's output, also after ``stop`` (which closes its log)."""
    return Path(process.log_path).read_text(errors="replace")


def _tunnel_threads() -> list[threading.Thread]:
    """Threads of SSH tunnels in this process: pumps and paramiko transports."""
    return [t for t in threading.enumerate() if t.name.startswith("ssh-tunnel-") or isinstance(t, paramiko.Transport)]


def _home_with(tmp_path: Path, sshd: SSHServer, known_hosts: str, identity_file: str | os.PathLike) -> Path:
    """A HOME of its own whose ``sshd.alias`` logs in with ``identity_file`` and trusts ``known_hosts``."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(known_hosts)
    block = sshd.host_block(sshd.alias, identity_file)
    block = block.replace(str(sshd.known_hosts_path), str(home / ".ssh" / "known_hosts"))
    (home / ".ssh" / "config").write_text(block)
    return home


# --- the tunnel itself --------------------------------------------------------------


def _serve_echo(server: socket.socket) -> None:
    """Echo each byte back on one accepted connection until its end of stream, then close it."""
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def test_tunnel_carries_megabytes_both_ways_and_passes_end_of_stream_on(sshd, ssh_home):
    """More than the tunnel buffers and the SSH window hold, in both directions
    at once: nothing lost, reordered or stuck; the sender's end of stream
    reaches the far side, whose close comes back."""
    payload = os.urandom(24 * 1024 * 1024)
    with socket.create_server(("127.0.0.1", 0)) as echo_server:
        echo = threading.Thread(target=_serve_echo, args=(echo_server,), daemon=True)
        echo.start()
        tunnel = open_tunnel(sshd.alias, "127.0.0.1", echo_server.getsockname()[1], timeout=10)
        try:
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=30) as conn:
                def send_all_then_end() -> None:
                    conn.sendall(payload)
                    conn.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send_all_then_end, daemon=True)
                sender.start()
                received = bytearray()
                while data := conn.recv(1 << 20):  # b"": the echo server closed after our end of stream
                    received += data
                sender.join(30)
            assert len(received) == len(payload) and received == payload
            echo.join(10)
            assert not echo.is_alive()
            assert tunnel.connections_forwarded == 1
        finally:
            tunnel.close()
            tunnel.close()  # idempotent
    assert not tunnel.running
    wait_for(lambda: not _tunnel_threads(), 10, "the tunnel's threads to end")


# --- the client -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["alias", "user@host:port+sshkey", "connection-file"])
def test_client_runs_a_task_through_sshd_and_closes_its_tunnel(sshd, ssh_home, cluster, how):
    cluster.start_controller(*([f"--ssh={sshd.alias}"] if how == "connection-file" else []))
    cluster.start_engines(1)
    client_port = _connection_info(cluster, "client")["client_port"]
    tunnel_args = {
        "alias": {"sshserver": sshd.alias},
        # No ~/.ssh/config entry matches: the key named here is the only one that works.
        "user@host:port+sshkey": {"sshserver": f"{sshd.user}@127.0.0.1:{sshd.port}",
                                  "sshkey": str(sshd.client_key_path)},
        "connection-file": {},
    }[how]
    client = Client(profile_dir=cluster.profile_dir, timeout=10, **tunnel_args)
    try:
        tunnel = client._conn.tunnel
        assert tunnel is not None
        client.wait_for_engines(1, timeout=20)
        assert client[0].apply_sync(lambda: 6 * 7) == 42
        assert tunnel.connections_forwarded >= 2  # the request and the reply sockets
        assert len(connections_to(sshd.session_pids(), client_port)) >= 2, sshd.output()
        assert connections_to([os.getpid()], client_port) == [], "the client bypassed the tunnel"
    finally:
        client.close()
    assert not tunnel.running
    wait_for(lambda: not _tunnel_threads(), 10, "the tunnel's threads to end")
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end")


# --- engines ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--ssh", "--enginessh", "legacy-config+sshkey"])
def test_engine_registers_and_runs_tasks_through_sshd(sshd, cluster, how):
    if how == "--enginessh":
        cluster.start_controller(f"--enginessh={sshd.alias}")  # written to the engine's connection file
    else:
        cluster.start_controller()
    args = {"--ssh": [f"--ssh={sshd.alias}"], "--enginessh": [], "legacy-config+sshkey": []}[how]
    if how == "legacy-config+sshkey":
        # IPython's spellings; no ~/.ssh/config entry matches, only the key named works.
        (Path(cluster.profile_dir) / "engine_config.py").write_text(
            "c = get_config()\n"
            f"c.EngineFactory.sshserver = {f'{sshd.user}@127.0.0.1:{sshd.port}'!r}\n"
            f"c.EngineFactory.sshkey = {str(sshd.client_key_path)!r}\n")
    info = _connection_info(cluster, "engine")
    assert info["ssh"] == (sshd.alias if how == "--enginessh" else "")
    engine = Process("engine", cluster.profile_dir, *args, env=sshd.env())
    cluster.engines.append(engine)
    with Client(profile_dir=cluster.profile_dir, timeout=10) as client:  # the client connects directly
        client.wait_for_engines(1, timeout=20)
        assert client[0].apply_sync(os.getpid) == engine.pid
        ar = client[0].apply_async(lambda: print("through the tunnel") or 7)
        assert ar.get(timeout=10) == 7 and ar.stdout == "through the tunnel\n"
        # Every engine socket (task, stream; heartbeat echo, heartbeat, task watchdog)
        # reaches the controller from sshd's session, none from the engine itself.
        for port, count in ((info["engine_port"], 2), (info["heartbeat_port"], 3)):
            wait_for(lambda port=port, count=count: len(connections_to(sshd.session_pids(), port)) == count, 10,
                     f"{count} connections from sshd to controller port {port}")
            assert connections_to([engine.pid], port) == [], f"the engine bypassed the tunnel:\n{engine.output()}"
        assert "through SSH server" in engine.output()
    assert engine.stop() == 0, _log_of(engine)
    assert "closed the SSH tunnels" in _log_of(engine)
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end with the engine")


# --- errors: one line, nothing left running ------------------------------------------


def _expected_error(sshd: SSHServer, home: Path, case: str) -> list[str]:
    """Pieces of the one-line message each failure must contain."""
    where = [f"127.0.0.1 port {sshd.port}", str(home / ".ssh" / "known_hosts")]
    return {"unknown-host-key": [*where, "connect once with ssh"],
            "changed-host-key": [*where, "does not match", "ssh-keygen -R '[127.0.0.1]:"],
            "refused-key": [f"{sshd.user}@127.0.0.1:{sshd.port}", "refused authentication"],
            "no-key": [f"{sshd.user}@127.0.0.1:{sshd.port}", "no key to log in with"]}[case]


def _failing_home(tmp_path: Path, sshd: SSHServer, case: str) -> Path:
    if case == "unknown-host-key":
        return _home_with(tmp_path, sshd, "", sshd.client_key_path)
    if case == "changed-host-key":
        impostor = write_ed25519_key(tmp_path / "impostor_host_key")
        return _home_with(tmp_path, sshd, f"[127.0.0.1]:{sshd.port} {impostor}\n", sshd.client_key_path)
    if case == "refused-key":
        unauthorized = tmp_path / "unauthorized_key"
        write_ed25519_key(unauthorized)
        return _home_with(tmp_path, sshd, sshd.known_hosts_line + "\n", unauthorized)
    # An IdentityFile that does not exist is skipped (as by OpenSSH): no key at all.
    return _home_with(tmp_path, sshd, sshd.known_hosts_line + "\n", tmp_path / "no_such_key")


CASES = ["unknown-host-key", "changed-host-key", "refused-key", "no-key"]


@pytest.mark.parametrize("case", CASES)
def test_client_ssh_failure_is_one_line_and_leaves_nothing(sshd, cluster, tmp_path, monkeypatch, case):
    cluster.start_controller()
    home = _failing_home(tmp_path, sshd, case)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(SSHTunnelError) as failure:
        Client(profile_dir=cluster.profile_dir, timeout=10, sshserver=sshd.alias)
    message = str(failure.value)
    assert "\n" not in message
    for piece in _expected_error(sshd, home, case):
        assert piece in message, message
    assert _tunnel_threads() == []
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end")


def test_unreachable_ssh_server_is_one_line(cluster, ssh_home):
    cluster.start_controller()
    with socket.socket() as unused:  # bound, never listening: nothing answers on it
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(SSHTunnelError) as failure:
            Client(profile_dir=cluster.profile_dir, timeout=10, sshserver=f"someone@127.0.0.1:{port}")
    assert str(failure.value).startswith(f"cannot reach SSH server someone@127.0.0.1:{port}")
    assert "\n" not in str(failure.value)
    assert _tunnel_threads() == []


@pytest.mark.parametrize("case", CASES)
def test_engine_ssh_failure_is_one_line_and_leaves_nothing(sshd, cluster, tmp_path, case):
    cluster.start_controller()
    home = _failing_home(tmp_path, sshd, case)
    engine = Process("engine", cluster.profile_dir, f"--ssh={sshd.alias}", env={"HOME": str(home)})
    cluster.engines.append(engine)
    assert engine.wait(30) == 2, engine.output()
    errors = [line for line in engine.output().splitlines() if line.startswith("cluster-launcher: error:")]
    assert len(errors) == 1, engine.output()
    for piece in _expected_error(sshd, home, case):
        assert piece in errors[0], errors[0]
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end")


def test_sshd_helper_config_works_for_openssh_too(sshd):
    """The SSH launcher work runs OpenSSH's own ssh, which ignores $HOME: with
    ``-F`` the helper's config must be enough (key and known_hosts by absolute path)."""
    done = subprocess.run(["ssh", "-F", str(sshd.config_path), sshd.alias, "echo", "logged in"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout == "logged in\n", done.stderr + sshd.output()
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's session to end")


def test_accept_new_adds_an_unknown_host_key_and_still_refuses_a_changed_one(sshd, tmp_path, monkeypatch):
    """StrictHostKeyChecking accept-new (-o, or ~/.ssh/config), as OpenSSH:
    the first login records the key; a later different key is refused."""
    monkeypatch.setenv("HOME", str(sshd.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    known_hosts = tmp_path / "ssh" / "known_hosts"
    options = {"stricthostkeychecking": "accept-new", "userknownhostsfile": str(known_hosts)}
    with connect_ssh(sshd.alias, timeout=10, options=options):
        pass
    assert known_hosts.read_text() == sshd.known_hosts_line + "\n"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    with connect_ssh(sshd.alias, timeout=10, options=options):  # known now: nothing added
        pass
    assert known_hosts.read_text() == sshd.known_hosts_line + "\n"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {write_ed25519_key(tmp_path / 'other_host_key')}\n")
    with pytest.raises(SSHTunnelError, match="sent a host key that does not match"):
        connect_ssh(sshd.alias, timeout=10, options=options)
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's sessions to end")


def test_a_key_held_by_ssh_agent_logs_in(sshd, tmp_path, monkeypatch):
    """No key file named anywhere and none in ~/.ssh: the login uses the key a
    real ssh-agent holds (SSH_AUTH_SOCK), as OpenSSH would."""
    home = _home_with(tmp_path, sshd, sshd.known_hosts_line + "\n", tmp_path / "no_such_key")
    config = home / ".ssh" / "config"
    config.write_text(config.read_text().replace("    IdentitiesOnly yes\n", ""))  # which would leave the agent out
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(socket_path.exists, 10, "ssh-agent's socket")
        agent_env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        added = subprocess.run(["ssh-add", str(sshd.client_key_path)], env=agent_env, capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert added.returncode == 0, added.stderr
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        with connect_ssh(sshd.alias, timeout=10) as ssh:
            assert ssh.run(["echo", "through the agent"]).stdout == b"through the agent\n"
        monkeypatch.delenv("SSH_AUTH_SOCK")
        with pytest.raises(SSHTunnelError, match="no key to log in with"):
            connect_ssh(sshd.alias, timeout=10)  # the same login without the agent: no key at all
    finally:
        agent.terminate()
        agent.wait(10)
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's sessions to end")


def test_known_hosts_markers_are_honoured_and_a_revoked_key_is_refused(sshd, tmp_path, monkeypatch):
    """OpenSSH's markers: a known_hosts with @cert-authority lines still works
    (they are skipped); a host key marked @revoked is refused, even when a
    plain line lists it too, and accept-new does not record it."""
    monkeypatch.setenv("HOME", str(sshd.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    known_hosts = tmp_path / "known_hosts"
    options = {"userknownhostsfile": str(known_hosts)}
    authority = write_ed25519_key(tmp_path / "host_ca")
    known_hosts.write_text(f"@cert-authority *.example.org {authority}\n{sshd.known_hosts_line}\n")
    with connect_ssh(sshd.alias, timeout=10, options=options) as ssh:
        assert ssh.run(["echo", "known"]).stdout == b"known\n"
    known_hosts.write_text(f"{sshd.known_hosts_line}\n@revoked * {sshd.host_public_key}\n")
    with pytest.raises(SSHError, match=rf"^SSH server 127.0.0.1 port {sshd.port} \(from '{sshd.alias}'\) sent a "
                                       rf"ssh-ed25519 host key that {known_hosts} marks @revoked: refusing it"):
        connect_ssh(sshd.alias, timeout=10, options=options)
    known_hosts.write_text(f"@revoked * {sshd.host_public_key}\n")
    with pytest.raises(SSHError, match="marks @revoked"):
        connect_ssh(sshd.alias, timeout=10, options={**options, "stricthostkeychecking": "accept-new"})
    assert known_hosts.read_text() == f"@revoked * {sshd.host_public_key}\n"  # not added back
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's sessions to end")


def test_a_proxy_command_from_the_options_gets_its_tokens_and_one_that_cannot_run_is_one_line(sshd, ssh_home):
    # OpenSSH's own ssh as the ProxyCommand (-W: a plain connection to %h:%p, through sshd itself).
    proxy = f"ssh -F {sshd.config_path} -W %h:%p {sshd.alias}"
    with connect_ssh(sshd.alias, timeout=20, options={"proxycommand": proxy}) as ssh:
        assert ssh.run(["echo", "through the proxy"]).stdout == b"through the proxy\n"
    with pytest.raises(SSHError, match=rf"^cannot reach SSH server \S+ \(from '{sshd.alias}'\): its ProxyCommand "
                                       r"'/no/such/proxy 127.0.0.1' cannot run: .*No such file"):
        connect_ssh(sshd.alias, timeout=10, options={"proxycommand": "/no/such/proxy %h"})
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's sessions to end")


def test_a_dropped_connection_says_it_is_closed(sshd, ssh_home):
    """The server or the network ending a connection makes it closed (so its
    users open another), and a command on it is a one-line error."""
    with connect_ssh(sshd.alias, timeout=10) as ssh:
        assert not ssh.closed
        for pid in sshd.session_pids():
            os.kill(pid, signal.SIGTERM)  # sshd's process of this connection: the server drops it
        wait_for(lambda: ssh.closed, 10, "the connection to be seen dropped")
        with pytest.raises(SSHError, match=r"^the SSH connection to \S+ is closed$"):
            ssh.run(["true"])
    wait_for(lambda: not sshd.session_pids(), 10, "sshd's sessions to end")
