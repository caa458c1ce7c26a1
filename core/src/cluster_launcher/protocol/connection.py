"""Connection files: how engines and clients find and authenticate to the
controller.  ``security/controller[-<cluster_id>]-client.json`` and
``…-engine.json``, written 0600, read back with every field checked."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from typing import Any

import zmq

from ..error import ConnectionFileError

CLIENT_FIELDS = {"key": str, "signature_scheme": str, "location": str, "client_port": int,
                 "ssh": str, "cluster_id": str, "transport": str}
ENGINE_FIELDS = {"key": str, "signature_scheme": str, "location": str, "engine_port": int,
                 "heartbeat_port": int, "ssh": str, "cluster_id": str, "transport": str}
FIELDS = {"client": CLIENT_FIELDS, "engine": ENGINE_FIELDS}


def connection_file(profile_dir: str, role: str, cluster_id: str = "") -> str:
    """The path of the ``role`` ('client' or 'engine') connection file."""
    stem = f"controller-{cluster_id}" if cluster_id else "controller"
    return os.path.join(profile_dir, "security", f"{stem}-{role}.json")


def new_key() -> str:
    return secrets.token_hex(32)


def write_private_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a reader never
    sees half a file, and a key in it is never world-readable even briefly);
    the folder is made 0700 if missing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    # A new file of a random name, created O_EXCL and 0600 (mkstemp): nothing
    # planted in the folder beforehand (a symlink, a file of someone else's)
    # is opened or written through.
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


def write_private_json(path: str, data: dict[str, Any]) -> None:
    """:func:`write_private_file` of ``data`` as JSON."""
    write_private_file(path, json.dumps(data, indent=1, sort_keys=True).encode())


write_connection_file = write_private_json


# An engine started by a batch job finds its controller-engine.json's content here (the job
# script exports it), so the engines' hosts need no shared filesystem with the controller's.
ENGINE_CONNECTION_ENV = "CLUSTER_LAUNCHER_ENGINE_CONNECTION"


def read_connection_file(path: str, role: str) -> dict[str, Any]:
    """The checked content of a connection file; a ConnectionFileError naming
    the file and field when it is missing, unreadable or incomplete."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ConnectionFileError(f"{path}: connection file not found; is the controller running "
                                  "for this profile and cluster id?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnectionFileError(f"{path}: cannot read connection file: {exc}") from None
    return parse_connection_info(text, path, role)


def parse_connection_info(text: str, path: str, role: str) -> dict[str, Any]:
    """The checked content of connection information ``text`` from ``path``
    (a file, or where else it came from: the error names it)."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConnectionFileError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): "
                                  f"{exc.msg}; delete it and restart the controller") from None
    if not isinstance(info, dict):
        raise ConnectionFileError(f"{path}: a connection file holds a JSON object, not {type(info).__name__}")
    for field, kind in FIELDS[role].items():
        if field not in info:
            raise ConnectionFileError(f"{path}: missing field {field!r}; delete it and restart the controller")
        if not isinstance(info[field], kind) or isinstance(info[field], bool):
            raise ConnectionFileError(f"{path}: field {field!r} should be {kind.__name__}, "
                                      f"not {type(info[field]).__name__}")
    if not isinstance(info.get("curve_serverkey", ""), str):
        raise ConnectionFileError(f"{path}: field 'curve_serverkey' should be str")
    max_size = info.get("max_message_size", -1)
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < -1:
        raise ConnectionFileError(f"{path}: field 'max_message_size' should be an int >= -1")
    if not info["key"]:
        raise ConnectionFileError(f"{path}: field 'key' is empty; messages cannot be signed")
    port = info["client_port"] if "client_port" in info else info.get("engine_port", 0)
    if not 0 < port < 65536:
        raise ConnectionFileError(f"{path}: port out of range")
    return info


def url(info: dict[str, Any], port_field: str) -> str:
    host = info["location"]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"{info['transport']}://{host}:{info[port_field]}"


def secure(sock: zmq.Socket, info: dict[str, Any]) -> None:
    """Encrypt ``sock``'s traffic with CurveZMQ if the controller offers it
    (``curve_serverkey`` in its connection file; call before ``connect``).
    Each connection gets a fresh key pair: who may talk is decided by the
    HMAC key, the encryption only keeps the traffic private."""
    server_key = info.get("curve_serverkey")
    if server_key:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_key.encode()
        sock.curve_publickey, sock.curve_secretkey = public, secret


def curve_server_keys(profile_dir: str, cluster_id: str, reuse: bool) -> tuple[bytes, bytes]:
    """The controller's CurveZMQ key pair: reused from its 0600 key file with
    ``reuse``, else new (and saved, so a ``--reuse`` restart keeps it)."""
    path = connection_file(profile_dir, "curve", cluster_id)
    if reuse and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        return saved["public"].encode(), saved["secret"].encode()
    public, secret = zmq.curve_keypair()
    write_private_json(path, {"public": public.decode(), "secret": secret.decode()})
    return public, secret
