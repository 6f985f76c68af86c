"""Test-wide settings: offline hubs, and no network beyond loopback.

Any test whose code path opens a connection to a non-loopback address fails with NetworkBlocked, so a
hidden download (a hub lookup, a dataset fetch) is caught here rather than hanging on a machine without network.
Loopback stays open: Jupyter kernels (papermill) and torch.distributed (gloo) talk over 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.pop("EDGEVL_ALLOW_DOWNLOAD", None)


class NetworkBlocked(RuntimeError):
    """Raised when a test's code path tries to reach a non-loopback address."""


def _is_local(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like
    host = str(address[0])
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name that would need DNS


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(real):
        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
                raise NetworkBlocked(f"test tried to reach {address!r}; the workbench must work offline")
            return real(self, address)
        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread (fastest on a shared 2-core machine); restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
