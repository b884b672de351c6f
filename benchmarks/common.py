"""Shared pieces of the benchmarks: the reference workload, timers, subprocess helpers, a server.

Absolute times drift on a shared machine, so every benchmark measures its two sides interleaved
in one run and reports the ratio of medians; the raw figures of both sides are kept as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpo.tracking.server import SERVER_OPTIONS, server_env, store_options

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HPO = str(BIN / "hpo")
MLFLOW = str(BIN / "mlflow")

#: The reference trial (issue 6): MLP 100 → 128 → dropout → 64 → 10 on random 1,000 × 100 data,
#: 10 classes, 20 epochs, batch 32. ``width_decay: 0.5`` gives the 64-wide second layer.
REFERENCE_MODEL = {"depth": 2, "width": 128, "width_decay": 0.5, "dropout": 0.2}
REFERENCE_TRAIN = {"batch_size": 32, "optimizer": "adam", "lr": 1e-3}
REFERENCE_EPOCHS = 20


def reference_spec_yaml(
    name: str,
    *,
    trials: int = 1,
    search: str = "",
    sampler: str = "random",
    pruner: str = "median",
    extra: str = "",
) -> str:
    """A study file for the reference trial. ``search`` is YAML lines for the ``search:`` block;
    what it does not search is fixed at the reference values."""
    fixed = {**REFERENCE_MODEL, **REFERENCE_TRAIN}
    searched = {line.split(":")[0].strip() for line in search.splitlines() if line.strip()}
    fixed_lines = "\n".join(f"  {k}: {v}" for k, v in fixed.items() if k not in searched)
    search_block = f"search:\n{search}" if search.strip() else "search: {}"
    return f"""\
name: {name}
data:
  source: synthetic
  kind: random
  n_samples: 1000
  n_features: 100
  n_classes: 10
  val_fraction: 0.25
model: {{family: mlp}}
train: {{epochs: {REFERENCE_EPOCHS}, device: cpu, seed: 0, threads: 1}}
fixed:
{fixed_lines}
{search_block}
sampler: {{name: {sampler}, seed: 0}}
pruner: {{name: {pruner}}}
trials: {trials}
{extra}"""


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def result(
    value: float,
    goal: str,
    command: str,
    raw: dict[str, Any],
    note: str = "",
) -> dict[str, Any]:
    """One key of results.json: value, goal (``<= x`` / ``>= x``), pass, command, raw figures."""
    op, bound = goal.split()
    ok = value == value and (value <= float(bound) if op == "<=" else value >= float(bound))
    out = {
        "value": round(value, 4),
        "goal": goal,
        "pass": bool(ok),
        "command": command,
        "raw": rounded(raw),
    }
    if note:
        out["note"] = note
    return out


def load() -> list[float]:
    """The 1/5/15-minute load averages (other engineers share this machine)."""
    return [round(x, 2) for x in os.getloadavg()]


class Timers:
    """Accumulated wall time per label; :meth:`wrap` patches a function with a timer."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._patches: list[tuple[Any, str, Any]] = []

    def reset(self) -> None:
        self.seconds = {}
        self.calls = {}

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - started)

        self._patches.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches = []


def run_timed(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd``; return (wall seconds, the completed process). Raises on a non-zero exit."""
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return seconds, proc


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for ``hpo`` subprocesses: no MLflow chatter, no colour."""
    env = dict(os.environ)
    env.update(
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        MLFLOW_LOGGING_LEVEL="WARNING",
        NO_COLOR="1",
        TERM="dumb",
        PYTHONWARNINGS="ignore",
    )
    env.pop("HPO_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(workdir: Path, timeout: float = 120) -> Iterator[str]:
    """A real ``mlflow server`` on loopback (hpo's options: :mod:`hpo.tracking.server`; SQLite in
    ``workdir``); yields its URL and stops its whole process group afterwards."""
    from hpo.tracking.store_seed import seed

    port = free_port()
    env = server_env(quiet_env())
    log = (workdir / "server.log").open("w")
    seed(workdir / "server.db")  # its tables from their template, as hpo's stores start
    cmd = [
        MLFLOW,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *SERVER_OPTIONS,
        # hpo's store on the server's database, as hpo runs its servers (hpo.tracking.server).
        *store_options(f"sqlite:///{workdir / 'server.db'}"),
        "--artifacts-destination",
        str(workdir / "server-artifacts"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {proc.returncode}: "
                    + (workdir / "server.log").read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer on {url} in {timeout} s")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def interleave(n: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Call each side ``n`` times, alternating the order every round; return the figures."""
    names = list(sides)
    out: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        for name in names if i % 2 == 0 else list(reversed(names)):
            out[name].append(sides[name]())
    return out
