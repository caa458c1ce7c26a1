"""IPython's fully restricted network, for real: the engine host is a
network namespace (cluster_launcher.testing.netns) that cannot reach the
controller's ports, which listen on this host's loopback only; a login host
(an sshd on this side of the veth pair) can.  Engines started there over SSH
register only because they tunnel through the login host
(``--enginessh``), and a client there runs tasks through ``sshserver``.
The negative control comes first: without the tunnel the same engines never
register, and ``start`` says why."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_launcher.cluster import state_file
from cluster_launcher.protocol.connection import connection_file
from cluster_launcher.testing.netns import NetworkNamespace, why_unavailable
from cluster_launcher.testing.processes import wait_for
from cluster_launcher.testing.sshd import SSHHosts

pytestmark = pytest.mark.timeout(180)

CLI = [sys.executable, "-m", "cluster_launcher"]
LOGIN, NODE = "login.example.com", "node2.example.com"


@pytest.fixture
def topology(tmp_path, env):
    """(hosts, namespace): the login host on this side, the engine host inside the namespace."""
    reason = why_unavailable()
    if reason:
        # CI runs as root with iproute2 installed: there a missing piece is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    with NetworkNamespace() as namespace:
        hosts = SSHHosts(tmp_path / "hosts", [LOGIN, NODE],
                         addresses={LOGIN: namespace.outside_address, NODE: namespace.inside_address},
                         netns={NODE: namespace.name})
        with hosts:
            hosts.copy_client_to(NODE)  # engines and clients there reach the login host as you do
            yield hosts, namespace
            wait_for(lambda: not hosts.session_pids(), 10, f"every SSH session to end: {hosts.session_pids()}")
            assert namespace.pids() == [hosts[NODE].pid], "processes left in the engine host's namespace"


def run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_engines_and_a_client_behind_a_login_host_work_through_tunnels_only(topology, env):
    hosts, namespace = topology
    user = {**env, **hosts.env()}
    user.pop("SSH_AUTH_SOCK", None)
    profile = Path(env["CLUSTER_LAUNCHER_DIR"]) / "profile_login"
    profile.mkdir(parents=True)
    (profile / "cluster_config.py").write_text(
        "c.Cluster.engine_launcher_class = 'SSH'\n"
        f"c.SSHEngineSetLauncher.engines = {{{NODE!r}: 2}}\n"
        "c.Cluster.start_timeout = 12\n")

    # Without a tunnel: a warning at once, then no engine registers (they cannot reach 127.0.0.1 of this host).
    blocked = run(["start", "--profile=login", "--daemonize", "--Engine.timeout=5"], user)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert re.search(rf"{re.escape(NODE)}: the controller listens on 127\.0\.0\.1, which engines there cannot "
                     r"reach: .* \(--enginessh=HOST, c\.Controller\.enginessh\)", blocked.stderr), blocked.stderr
    assert not Path(state_file(str(profile))).exists()

    started = run(["start", "--profile=login", "--daemonize", f"--enginessh={LOGIN}", f"--ssh={LOGIN}"], user)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster ready with 2 engines" in started.stdout
    assert "cannot reach" not in started.stderr
    info = json.loads(Path(connection_file(str(profile), "client")).read_text())
    assert info["location"] == "127.0.0.1" and info["ssh"] == LOGIN

    # A client inside the engine host's network: it reaches the controller through the login host only,
    # and its engines cannot reach the controller's port directly either.
    client_code = (
        "import socket, sys\n"
        "from cluster_launcher import Client\n"
        f"port = {info['client_port']}\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', port), timeout=5)\n"
        "    sys.exit('reached the controller directly: the namespace is not isolated')\n"
        "except ConnectionRefusedError:\n"
        "    pass\n"
        f"with Client(profile_dir={str(profile)!r}, timeout=20) as client:\n"  # sshserver from the file: ssh
        "    client.wait_for_engines(2, timeout=30)\n"
        "    def probe(port=port):\n"
        "        import os, socket\n"
        "        try:\n"
        "            socket.create_connection(('127.0.0.1', port), timeout=5)\n"
        "            return 'direct'\n"
        "        except ConnectionRefusedError:\n"
        "            return os.environ['HOME']\n"
        "    print(sorted(client[:].apply_sync(probe)))\n")
    node_env = {**user, "HOME": str(hosts[NODE].remote_home)}
    inside = subprocess.run(namespace.command(sys.executable, "-c", client_code), env=node_env,
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert inside.stdout.strip() == str([str(hosts[NODE].remote_home)] * 2)
    assert "subsystem 'sftp'" in hosts[NODE].output()  # the engines' connection file went over SFTP

    stopped = run(["stop", "--profile=login"], user)
    assert stopped.returncode == 0, stopped.stderr
