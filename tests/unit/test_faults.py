"""The fault-injecting TCP proxy of the integration tests (tests/faults.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.faults import FaultProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on a free loopback port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        return s.recv(4096)


def test_forwards_then_cuts_then_restores(echo: int) -> None:
    with FaultProxy("127.0.0.1", echo) as proxy:
        assert proxy.port != echo
        assert _roundtrip(proxy.port) == b"ping"
        kept = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        kept.sendall(b"a")
        assert kept.recv(10) == b"a"

        proxy.cut()
        assert proxy.is_cut
        # The open connection is dropped (end of stream, or a reset) ...
        try:
            kept.sendall(b"b")
            got = kept.recv(10)
        except OSError:
            got = b""
        assert got == b""
        kept.close()
        # ... and new ones are closed at once, not left hanging.
        assert _roundtrip(proxy.port) == b""

        proxy.restore()
        assert _roundtrip(proxy.port, b"back") == b"back"
    assert proxy.accepted == 4


def test_via_rewrites_only_host_and_port() -> None:
    with FaultProxy("127.0.0.1", 5432) as proxy:
        p = proxy.port
        assert (
            proxy.via("postgresql+psycopg://bob:pw@127.0.0.1:5432/db?x=1")
            == f"postgresql+psycopg://bob:pw@127.0.0.1:{p}/db?x=1"
        )
        assert proxy.via("http://mlflow:5000/") == f"http://127.0.0.1:{p}/"
