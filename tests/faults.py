"""Fault injection for tests: a TCP proxy that can cut a service off and bring it back.

Point a client at the proxy instead of the service (Postgres, an MLflow server, anything on TCP)
and the test decides when the network fails::

    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.via("postgresql+psycopg://postgres@127.0.0.1:5432/db")  # same URL, proxy port
        ...                     # start workers on `url`
        proxy.cut()             # every open connection is closed; new ones are closed at once
        ...
        proxy.restore()         # connections are forwarded again

While cut, a client sees what a real outage shows it: its open connections drop ("server closed
the connection unexpectedly", "connection reset") and every new one is accepted and closed at
once, so reconnecting fails fast instead of hanging. Nothing is buffered or delayed; bytes pass
through unchanged. The proxy runs in daemon threads of the test process and listens on a free
port of the loopback interface only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy"]


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``; :meth:`cut` and
    :meth:`restore` the link. Use it as a context manager (or :meth:`start` / :meth:`close`)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so that the accept loop notices close()
        #: The port clients connect to (the host is always ``127.0.0.1``).
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        #: How many client connections were accepted (forwarded or refused), for assertions.
        self.accepted = 0

    # -- the API -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Start forwarding (the context manager does this)."""
        self._thread.start()
        return self

    def via(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user, password, path kept)."""
        parts = urlsplit(url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        """Close every open connection and refuse new ones until :meth:`restore`."""
        self._cut.set()
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)

    def restore(self) -> None:
        """Forward new connections again (connections closed by :meth:`cut` stay closed)."""
        self._cut.clear()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        self.cut()
        _close(self._listener)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the machinery -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.accepted += 1
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                _close(client)  # the service itself is down: the client sees that
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut.is_set():  # cut while connecting
                    _close(client)
                    _close(upstream)
                    continue
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst), name="fault-proxy-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side ended: end both, as a dropped link would.
        with self._lock:
            self._open.discard(src)
            self._open.discard(dst)
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
