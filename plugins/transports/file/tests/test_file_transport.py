import os
import stat

from cluster_launcher import plugins


def test_file_transport_copies_atomically_with_private_mode(tmp_path):
    transport = plugins.resolve("transport", "file")()
    source = tmp_path / "controller-engine.json"
    source.write_text('{"key": "secret"}')
    os.chmod(source, 0o644)
    target = tmp_path / "remote" / "security" / "controller-engine.json"
    transport.send(str(source), str(target), host="node1")
    assert target.read_text() == '{"key": "secret"}'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600  # the key never lands world-readable
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no partial file left

    back = tmp_path / "fetched.json"
    transport.fetch(str(target), str(back))
    assert back.read_text() == '{"key": "secret"}'
    transport.send(str(back), str(back))  # the same file: nothing to do, nothing lost
    assert back.read_text() == '{"key": "secret"}'
