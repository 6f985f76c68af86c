"""The test suite runs offline: the conftest guard blocks non-loopback connections (every test runs under it;
the open_clip offline failure is tested in test_teachers.py)."""
from __future__ import annotations

import socket

import pytest

from conftest import NetworkBlocked


def test_guard_blocks_non_loopback_connections():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked, match="1.1.1.1"):
        s.connect(("1.1.1.1", 443))


def test_guard_leaves_loopback_open():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())

