"""A real ``mlflow server`` that tests stop and start again, and an HTTP proxy in front of it that
answers 503 or 429, or drops the connection after the server did the work.

    with MlflowServer(tmp_path) as server:          # on a free loopback port, SQLite backend
        server.stop(); ...; server.start()          # same port, same store
        with FaultyProxy(server.url, faults) as proxy:
            ... point hpo at proxy.url ...

``faults(n, method, path, body)`` decides for the n-th request (from 1) what the proxy does:
``"pass"``, ``"503"``, ``"429"`` (answered by the proxy, the server never sees the request) or
``"drop"`` (forwarded, the server's answer thrown away and the client's connection closed: the
client cannot tell whether its request was applied).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from hpo.tracking.server import SERVER_OPTIONS, server_env, store_options
from hpo.tracking.store_seed import seed

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` with hpo's options (:mod:`hpo.tracking.server`) on
    ``127.0.0.1:<port>``, SQLite backend and artifacts in ``root``; stopped by its process
    group."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        env = {
            **server_env(os.environ),
            "MLFLOW_LOGGING_LEVEL": "WARNING",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        log = (self.root / "server.log").open("ab")
        where = ["--host", "127.0.0.1", "--port", str(self.port), *SERVER_OPTIONS]
        # The tables from their template, as hpo's own stores start (hpo.tracking.store_seed):
        # the server's start does not run MLflow's migrations.
        seed(self.root / "server.db")
        stores = [*store_options(f"sqlite:///{self.root / 'server.db'}")]
        stores += ["--artifacts-destination", str(self.root / "server-artifacts")]
        self._proc = subprocess.Popen(
            [MLFLOW, "server", *where, *stores],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + self.log()[-2000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer on {self.url}")
            time.sleep(0.3)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


Faults = Callable[[int, str, str, bytes], str]


class FaultyProxy:
    """An HTTP proxy on a free loopback port in front of ``target`` (``http://host:port``)."""

    def __init__(self, target: str, faults: Faults) -> None:
        host, port = target.removeprefix("http://").rstrip("/").split(":")
        self.target = (host, int(port))
        self.faults = faults
        self.count = 0
        #: ``(n, method, path, action)`` of every request, for assertions.
        self.seen: list[tuple[int, str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.count += 1
                    n = proxy.count
                action = proxy.faults(n, self.command, self.path, body)
                proxy.seen.append((n, self.command, self.path, action))
                if action in ("503", "429"):
                    payload = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected"}'
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(*proxy.target, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.target[0]}:{proxy.target[1]}"
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if action == "drop":
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
