"""How a login's settings are put together, without a server: ssh's
command-line options (``SSHLauncher.ssh_args``), the destination, and
``~/.ssh/config``, in OpenSSH's order of precedence.  Logins for real are
tested against sshd in tests/test_ssh_tunnels.py and tests/test_ssh_launchers.py."""

from __future__ import annotations

import pytest

from cluster_launcher.error import SSHError
from cluster_launcher.protocol.ssh import parse_ssh_args, resolve_target, split_destination


@pytest.mark.parametrize("args, expected", [
    (["-p", "2222", "-l", "me"], {"port": "2222", "user": "me"}),
    (["-p2222", "-lme"], {"port": "2222", "user": "me"}),
    (["-i", "/k1", "-i", "/k2"], {"identityfile": ["/k1", "/k2"]}),
    (["-J", "login.example.org"], {"proxyjump": "login.example.org"}),
    (["-o", "StrictHostKeyChecking=accept-new", "-oConnectTimeout=5"],
     {"stricthostkeychecking": "accept-new", "connecttimeout": "5"}),
    (["-o", "User alice"], {"user": "alice"}),
    (["-o", "Port=1", "-p", "2"], {"port": "1"}),  # as OpenSSH: the first value given wins
    (["-tt", "-q", "-x", "-o", "BatchMode=yes", "-o", "ServerAliveCountMax=3"], {}),  # no effect here
    (["-F", "/etc/cluster/ssh_config"], {"configfile": "/etc/cluster/ssh_config"}),
])
def test_ssh_args_become_config_keywords(args, expected):
    assert parse_ssh_args(args) == expected


@pytest.mark.parametrize("args, message", [
    (["-L", "8080:localhost:80"], "SSHLauncher.ssh_args: the ssh option -L is not supported here"),
    (["-p"], "SSHLauncher.ssh_args: the ssh option -p needs a value"),
    (["-o", "LocalForward=1 x:2"], "SSHLauncher.ssh_args: -o LocalForward=1 x:2: the SSH option 'localforward' is "
                                   "not supported here"),
    (["-o", "Port"], "SSHLauncher.ssh_args: -o 'Port': expected -o Key=Value"),
    (["node1"], "SSHLauncher.ssh_args: 'node1' is not an ssh option"),
])
def test_ssh_args_we_cannot_honour_are_named(args, message):
    with pytest.raises(SSHError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_ssh_args(args, "SSHLauncher.ssh_args")


@pytest.mark.parametrize("destination, expected", [
    ("node1", (None, "node1", None)),
    ("me@node1:2222", ("me", "node1", 2222)),
    ("me@[::1]:2222", ("me", "::1", 2222)),
    ("a@b@node1", ("a@b", "node1", None)),
])
def test_destinations(destination, expected):
    assert split_destination(destination) == expected


def test_bad_destination_is_named():
    with pytest.raises(SSHError, match=r"SSH server 'node1:http': expected \[user@\]host\[:port\]"):
        split_destination("node1:http")


@pytest.fixture
def home(tmp_path, monkeypatch):
    (tmp_path / ".ssh").mkdir()
    (tmp_path / "key_config").write_text("k")
    (tmp_path / "key_cli").write_text("k")
    (tmp_path / ".ssh" / "config").write_text(
        "Host cluster\n"
        "    HostName login.example.org\n"
        "    Port 2200\n"
        "    User carol\n"
        f"    IdentityFile {tmp_path / 'key_config'}\n"
        f"    IdentityFile {tmp_path / 'missing_key'}\n"
        "    IdentitiesOnly yes\n"
        "    ProxyJump gateway.example.org\n"
        "    StrictHostKeyChecking accept-new\n"
        "    ServerAliveInterval 15\n"
        "Host *\n"
        "    ConnectTimeout 7\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_config_file_gives_what_the_destination_does_not_say(home):
    target = resolve_target("cluster")
    assert (target.hostname, target.port, target.username) == ("login.example.org", 2200, "carol")
    assert target.key_filenames == (str(home / "key_config"),)  # a missing IdentityFile is skipped, as by OpenSSH
    assert target.identities_only and target.keepalive == 15 and target.connect_timeout == 7.0
    assert target.proxy_jump == "gateway.example.org"
    assert target.strict_host_key_checking == "accept-new"
    assert target.known_hosts_files[0] == str(home / ".ssh" / "known_hosts")
    assert target.where == "carol@login.example.org:2200" and target.origin == " (from 'cluster')"


def test_destination_then_options_then_config(home):
    options = parse_ssh_args(["-p", "2300", "-l", "dave", "-i", str(home / "key_cli"), "-o", "ProxyJump=none"])
    target = resolve_target("erin@cluster", options=options)
    assert (target.username, target.port) == ("erin", 2300)  # user@ wins over -l; -p over the config's Port
    assert target.key_filenames == (str(home / "key_cli"), str(home / "key_config"))  # -i first, as OpenSSH
    assert target.proxy_jump == ""
    assert resolve_target("cluster:2400", options=options).port == 2400


def test_no_config_file_means_openssh_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    target = resolve_target("node1")
    assert (target.hostname, target.port) == ("node1", 22)
    assert (target.strict_host_key_checking, target.proxy_jump, target.identities_only) == ("yes", "", False)


def test_named_config_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SSHError, match=r"the ssh config file .*nowhere \(-F\) does not exist"):
        resolve_target("node1", options={"configfile": str(tmp_path / "nowhere")})


def test_bad_host_key_checking_value_is_named(home):
    with pytest.raises(SSHError, match="StrictHostKeyChecking 'maybe': expected yes, accept-new or no"):
        resolve_target("node1", options={"stricthostkeychecking": "maybe"})
