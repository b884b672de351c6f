"""Several real ``hpo worker`` processes on one study.

* 8 processes start the same new study on the embedded SQLite store at the same moment: one
  study, one parent run, the budget met exactly, no "database is locked".
* The team topology: a fresh Postgres database for Optuna, a real ``mlflow server`` with basic
  auth and its own fresh Postgres database, three workers on one 12-trial study; then a worker
  killed with SIGKILL in the middle of a trial.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo.storage import open_storage
from hpo.tracking.server import SERVER_OPTIONS, server_env, store_options
from tests.conftest import PG_ADMIN_DSN

SPEC = """\
name: {name}
data: {{source: sklearn, name: iris}}
train: {{epochs: {epochs}, seed: 0}}
search:
  lr:    {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
  width: {{type: int, low: 4, high: 16, step: 4}}
fixed: {{batch_size: {batch}}}
pruner: {{name: none}}
sampler: {{name: random, seed: 1}}
trials: {trials}
heartbeat: {{interval: 1, grace: {grace}, max_retries: 2}}
"""
GRACE = 4
HPO = [sys.executable, "-m", "hpo"]


def write_spec(root: Path, name: str, trials: int, epochs: int = 2, batch: int | str = 32) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, trials=trials, epochs=epochs, batch=batch, grace=GRACE))
    return path


def worker_cmd(spec: Path, storage: str, tracking: str, k: int) -> list[str]:
    """``hpo worker``, one of ``k`` on this machine (each takes its share of the cores)."""
    return [
        *HPO, "worker", str(spec), "--storage", storage, "--tracking-uri", tracking,
        "--local-workers", str(k), "-q",
    ]  # fmt: skip


def wait_all(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
    """Wait for every process; return their stderr."""
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        errs.append(err)
    return errs


def child_runs(client: MlflowClient, study: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(study)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpo.role") != "study"]
    return parents, children


# -- SQLite, 8 processes -----------------------------------------------------------------------
@pytest.mark.slow
def test_eight_workers_create_and_share_one_sqlite_study(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "eight", trials=8)
    storage, tracking = f"sqlite:///{tmp_path}/hpo.db", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    procs = [
        subprocess.Popen(
            worker_cmd(spec, storage, tracking, 8), cwd=tmp_path, env=env, text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]  # fmt: skip
    errs = wait_all(procs)
    assert [p.returncode for p in procs] == [0] * 8, errs
    assert not any("locked" in e for e in errs), errs

    (summary,) = optuna.get_all_study_summaries(storage)  # one study, created once
    study = optuna.load_study(study_name="eight", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8  # budget met exactly
    assert len({t.user_attrs["worker"] for t in study.trials}) > 1  # shared out
    parents, children = child_runs(MlflowClient(tracking), "eight")
    assert len(parents) == 1  # one parent run, although 8 processes created the study at once
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert summary.n_trials == 8


# -- Postgres + mlflow server with basic auth --------------------------------------------------
@dataclass
class Server:
    url: str
    storage: str
    env: dict[str, str]
    root: Path


def _admin() -> object:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Postgres at {PG_ADMIN_DSN}: {exc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two fresh Postgres databases (Optuna, MLflow) and ``mlflow server`` with basic auth."""
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs mlflow[auth]")
    root = tmp_path_factory.mktemp("team")
    names = [f"hpo_test_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = _admin()
    with admin:  # type: ignore[attr-defined]
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    storage = f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{names[0]}"
    password = uuid.uuid4().hex
    auth_ini = root / "auth.ini"
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = sqlite:///{root}/auth.db\nadmin_username = admin\n"
        f"admin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Without it every request pays a PBKDF2 check: 12 trials took 3x as long.
        "auth_cache_ttl_seconds = 300\n"
    )
    port = _free_port()
    environment = {
        **server_env(os.environ),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
    }
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            *store_options(f"{base}/{names[1]}"),
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), *SERVER_OPTIONS,
        ],
        cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=log,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "mlflow server did not start:\n" + (root / "server.log").read_text()
                    )
                time.sleep(0.5)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        }
        yield Server(url, storage, env, root)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin2:
            for name in names:
                admin2.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def client(server: Server, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.env["MLFLOW_TRACKING_PASSWORD"])
    return MlflowClient(server.url)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_on_postgres_and_an_auth_server(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(server.root, "team", trials=12)
    procs = [
        subprocess.Popen(
            worker_cmd(spec, server.storage, server.url, 3), cwd=server.root, env=server.env,
            text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]  # fmt: skip
    errs = wait_all(procs)
    assert [p.returncode for p in procs] == [0] * 3, errs

    study = optuna.load_study(study_name="team", storage=server.storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 12
    assert sorted(t.number for t in study.trials) == list(range(12))  # no duplicate numbers
    parents, children = child_runs(client(server, monkeypatch), "team")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["hpo.trial"]) for r in children) == list(range(12))

    # The server refuses a request without credentials.
    request = urllib.request.Request(
        server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_worker_s_trial_is_retried_and_the_budget_met(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trials of ~1-2 s (many small batches), so that a worker can be caught in the middle of one.
    spec = write_spec(server.root, "kill", trials=4, epochs=60, batch=8)
    procs = [
        subprocess.Popen(
            worker_cmd(spec, server.storage, server.url, 2), cwd=server.root, env=server.env,
            text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]  # fmt: skip
    victim = procs[0]
    killed_trial = None
    killed_at = datetime.now()
    deadline = time.monotonic() + 60
    while killed_trial is None and time.monotonic() < deadline:
        try:
            # hpo's opening: it survives creating the tables at the moment a worker does.
            study = optuna.load_study(study_name="kill", storage=open_storage(server.storage))
        except KeyError:  # not created yet
            time.sleep(0.2)
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and t.user_attrs.get(
                "mlflow_run_id"
            ):
                victim.send_signal(signal.SIGKILL)
                killed_at = datetime.now()  # the clock the storage's timestamps use
                killed_trial = t
                break
        time.sleep(0.1)
    assert killed_trial is not None, "the worker never ran a trial"
    errs = wait_all(procs)
    assert victim.returncode == -signal.SIGKILL
    assert procs[1].returncode == 0, errs[1]

    study = optuna.load_study(study_name="kill", storage=server.storage)
    states = {t.number: t.state for t in study.trials}
    assert states[killed_trial.number] == TrialState.FAIL
    assert TrialState.RUNNING not in states.values()
    # Failed within the grace period: its last heartbeat was at most one interval (1 s) before
    # the kill, and the surviving worker looks before each trial, so add the longest trial it
    # ran (it does not look during one) and 3 s for what it does between trials (the parent
    # run's summary, the champion) and its poll.
    dead = study.trials[killed_trial.number]
    assert dead.datetime_complete is not None
    failed_after = (dead.datetime_complete - killed_at).total_seconds()
    longest = max(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.trials
        if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
    )
    assert GRACE - 1 <= failed_after <= GRACE + longest + 3, (failed_after, longest)
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_trial.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == killed_trial.params  # re-run with the same parameters
    assert list(states.values()).count(TrialState.COMPLETE) == 4  # the full budget

    mlflow = client(server, monkeypatch)
    dead_run = mlflow.get_run(killed_trial.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED"
    assert "worker died" in dead_run.data.tags["hpo.error"]
    _, children = child_runs(mlflow, "kill")
    assert not [r for r in children if r.info.status == "RUNNING"]


# -- hpo study start --workers: the workers start before the study is opened --------------------
def _workers_of(spec: Path) -> list[str]:
    """Command lines of the processes still running on ``spec`` (called once the command has
    ended: a worker, forked or not, still there was left behind)."""
    found = subprocess.run(["pgrep", "-af", str(spec)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """The child processes of ``pid``: their name and command line."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            for child in (task / "children").read_text().split():
                proc = Path(f"/proc/{child}")
                with suppress(OSError):
                    name = (proc / "comm").read_text().strip()
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    out[int(child)] = (name, cmdline)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_are_forked_from_the_command_or_started_anew(tmp_path: Path, start: str) -> None:
    """``--workers 2`` forks its workers from the command, which has imported what they need and
    loaded the data (they show as ``hpo-worker``); ``HPO_WORKER_START=spawn`` starts new
    interpreters. Either way the workers share the study out and end with it; with two torch
    threads each, so that a torch thread pool inherited from the command would hang them."""
    spec = write_spec(tmp_path, f"start-{start}", trials=4, epochs=2)
    spec.write_text(spec.read_text().replace("seed: 0}", "seed: 0, threads: 2}"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [*HPO, "study", "start", str(spec), "-q", "--workers", "2", "--storage", storage]
    cmd += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "HPO_WORKER_START": start}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # Every name and command line each child had: a worker caught between its fork and naming
    # itself (or its exec) still looks like the command, and the command has other, short-lived
    # children (MLflow's import runs `uname -p`). The trials say which children were the workers.
    seen: dict[int, set[tuple[str, str]]] = {}
    while proc.poll() is None:
        for pid, info in _children(proc.pid).items():
            seen.setdefault(pid, set()).add(info)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name=f"start-{start}", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    workers = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials}
    assert len(workers) == 2 and workers <= set(seen), (workers, seen)
    for pid in workers:
        names = {name for name, _ in seen[pid]}
        new_interpreter = any(" -m hpo worker " in cmdline for _, cmdline in seen[pid])
        if start == "fork":
            assert "hpo-worker" in names and not new_interpreter, seen[pid]
        else:
            assert "hpo-worker" not in names and new_interpreter, seen[pid]
    assert _workers_of(spec) == []


@pytest.mark.slow
def test_workers_started_early_are_stopped_when_the_study_cannot_run(tmp_path: Path) -> None:
    """``--workers`` starts its workers once the file and data are checked, then opens the
    study: a storage that fails then is one line of error, and a budget already met is said;
    either way no worker is left behind."""
    spec = write_spec(tmp_path, "early", trials=2, epochs=1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [*HPO, "study", "start", str(spec), "--workers", "2", "--tracking-uri", tracking]
    done = subprocess.run(
        [*cmd, "--storage", storage], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="early", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2

    again = subprocess.run(
        [*cmd, "--storage", storage], capture_output=True, text=True, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "the study already has 2 of its 2 trials" in again.stdout + again.stderr
    assert _workers_of(spec) == []
    assert len(optuna.load_study(study_name="early", storage=storage).trials) == 2

    missing = tmp_path / "no-such-dir" / "optuna.db"
    failed = subprocess.run(
        [*cmd, "--storage", f"sqlite:///{missing}"], capture_output=True, text=True, cwd=tmp_path
    )
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        f"error: storage: cannot create the lock file '{missing}.lock': [Errno 2] No such file "
        f"or directory: '{missing}.lock'"
    ]
    assert _workers_of(spec) == []
