"""Signed messages over zmq: every message carries an HMAC-SHA256 of its
frames, keyed by the connection file's key; a message with a bad or
missing signature is dropped and logged."""

from __future__ import annotations

from traitlets import Integer, Unicode
from traitlets.config import Configurable


class Session(Configurable):
    signature_scheme = Unicode("hmac-sha256", help="How messages are signed.").tag(config=True)
    key = Unicode("", help="The signing key (normally read from the connection file).").tag(config=True)
    buffer_threshold = Integer(1024, help="Objects larger than this many bytes travel as separate "
                               "zero-copy frames.").tag(config=True)
