"""Faults with real processes: what a crash, an outage or Ctrl-C must not cost.

* Postgres connections killed (``pg_terminate_backend``) again and again while two
  ``hpo worker`` processes share a study: they ride it out, trial numbers stay unique, and the
  budget is met exactly.
* Postgres unreachable for one worker (cut off by :class:`tests.faults.FaultProxy`) for longer
  than the heartbeat grace while its trial trains: another worker fails that trial as stale, and
  the trial's result is kept all the same.
* SIGINT during ``hpo study start``: the trial ends FAIL ("interrupted"), its run is closed, the
  command says one line, and running it again completes the budget.
* ``hpo study start --workers 2``: the budget is met exactly, under one parent run.

MLflow is a SQLite store here: these are the storage's faults (the tracking server's have their
own tests). Trials are tiny (iris, a few epochs); heartbeats are 1 s with a grace of 3 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from hpo.worker import RECOVERED_FROM_ATTR, budget_usage
from tests.conftest import PG_ADMIN_DSN
from tests.faults import FaultProxy

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
heartbeat: {{interval: 1, grace: {grace}, max_retries: {retries}}}
"""
GRACE = 3
HPO = [sys.executable, "-m", "hpo"]
ENV = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: The test's own connections, spared by pg_terminate_backend.
TEST_APP = "hpo-fault-test"


def write_spec(
    root: Path, name: str, trials: int, epochs: int = 2, batch: int = 32, retries: int = 2
) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(
        SPEC.format(
            name=name, trials=trials, epochs=epochs, batch=batch, grace=GRACE, retries=retries
        )
    )
    return path


def start_worker(spec: Path, storage: str, tracking: str, k: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *HPO, "worker", str(spec), "--storage", storage, "--tracking-uri", tracking,
            "--local-workers", str(k), "-q",
        ],
        cwd=spec.parent, env=ENV, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[str]:
    """Wait for every process; return their stderr."""
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        errs.append(err)
    return errs


def watch(url: str, name: str) -> Callable[[], list[FrozenTrial]]:
    """The study's trials as the workers see them, read on the test's own connection."""
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"application_name": TEST_APP}  # type: ignore[assignment]
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)

    def trials() -> list[FrozenTrial]:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # not created yet
            return []
        return study.get_trials(deepcopy=False)

    return trials


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(what: str, condition: Callable[[], object], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def training(trials: Callable[[], list[FrozenTrial]], pid: int) -> Callable[[], FrozenTrial | None]:
    """A condition: a trial of process ``pid`` is in its objective (its MLflow run exists)."""

    def find() -> FrozenTrial | None:
        for t in trials():
            mine = t.user_attrs.get("worker", "").endswith(f":{pid}")
            if mine and t.state == TrialState.RUNNING and t.user_attrs.get("mlflow_run_id"):
                return t
        return None

    return find


def terminate_backends(database: str) -> int:
    """``pg_terminate_backend`` every connection to ``database`` but the test's own."""
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid() AND application_name <> %s",
            (database, TEST_APP),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def describe(study: optuna.Study) -> str:
    """The trials, for assertion messages."""
    return "\n".join(
        f"{t.number} {t.state.name} {t.user_attrs.get('worker')} "
        f"error={t.user_attrs.get('error')!r} system={t.system_attrs}"
        for t in study.trials
    )


@pytest.fixture
def sqlite_stores(tmp_path: Path) -> Iterator[tuple[str, str]]:
    yield f"sqlite:///{tmp_path}/hpo.db", f"sqlite:///{tmp_path}/mlflow.db"


# -- Postgres connections killed ---------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_workers_ride_out_killed_connections(tmp_path: Path, postgres_url: str) -> None:
    budget = 6
    spec = write_spec(tmp_path, "killed", trials=budget, epochs=40, batch=8)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    procs = [start_worker(spec, postgres_url, tracking, 2) for _ in range(2)]
    trials = watch(postgres_url, "killed")
    # Mid-study: once every worker is in a trial (a database that is away when a command starts
    # is a one-line error by design), until the last trial is claimed.
    wait_until(
        "every worker to run a trial",
        lambda: (
            {t.user_attrs.get("worker", "").split(":")[-1] for t in trials()}
            >= {str(p.pid) for p in procs}
        ),
    )
    database = urlsplit(postgres_url).path.lstrip("/")
    rounds = killed = 0
    while budget_usage(study_of(postgres_url, "killed"))[0] < budget:
        if any(p.poll() is not None for p in procs):
            break
        killed += terminate_backends(database)
        rounds += 1
        time.sleep(0.3)
    errs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not any("Traceback" in e for e in errs), errs
    assert killed >= rounds >= 3, (rounds, killed)  # it really was mid-study

    study = study_of(postgres_url, "killed")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicate (or missing) numbers
    shown = describe(study) + "\n" + "\n".join(errs)
    assert not [t for t in study.trials if not t.state.is_finished()], shown
    # The budget, exactly: a trial a claim left behind half-way (RUNNING, no heartbeat) was
    # failed after the grace period and its retry ran; none is left waiting or running.
    assert budget_usage(study) == (budget, 0), shown


# -- Postgres unreachable for longer than the grace --------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_a_trial_outliving_a_long_outage_keeps_its_result(
    tmp_path: Path, postgres_url: str
) -> None:
    # No retries: the stale trial's result can then only be kept by its own worker's recovery,
    # and the budget stays exact (with a retry queued, the retry may already run by the time
    # the result comes back: one trial over budget, see README "Several workers").
    budget = 3
    spec = write_spec(tmp_path, "outage", trials=budget, epochs=150, batch=8, retries=0)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    server = urlsplit(PG_ADMIN_DSN)
    with FaultProxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
        cut_off = start_worker(spec, proxy.via(postgres_url), tracking, 2)
        other = start_worker(spec, postgres_url, tracking, 2)
        trials = watch(postgres_url, "outage")
        live = wait_until("the worker behind the proxy to train", training(trials, cut_off.pid))
        assert isinstance(live, FrozenTrial)
        proxy.cut()
        cut_at = time.monotonic()
        # The other worker sees no heartbeat for the grace period and fails the live trial.
        wait_until(
            "the live trial to be failed as stale",
            lambda: any(t.number == live.number and t.state == TrialState.FAIL for t in trials()),
        )
        assert time.monotonic() - cut_at > GRACE - 1.5  # not before its heartbeats stopped
        proxy.restore()
        errs = finish([cut_off, other])
    assert [cut_off.returncode, other.returncode] == [0, 0], errs
    assert f"trial {live.number} was failed as stale while it ran" in errs[0], errs[0]

    study = study_of(postgres_url, "outage")
    failed = study.trials[live.number]
    assert failed.state == TrialState.FAIL
    kept = [t for t in study.trials if t.system_attrs.get(RECOVERED_FROM_ATTR) == live.number]
    assert len(kept) == 1, [(t.number, t.state, t.system_attrs) for t in study.trials]
    assert kept[0].state == TrialState.COMPLETE and kept[0].value is not None
    assert kept[0].params == live.params
    assert kept[0].user_attrs["mlflow_run_id"] == live.user_attrs["mlflow_run_id"]
    assert not [t for t in study.trials if not t.state.is_finished()]
    assert budget_usage(study) == (budget, 0)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == budget  # every slot holds a result


# -- Ctrl-C ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_fails_the_trial_closes_its_run_and_a_rerun_completes(
    tmp_path: Path, sqlite_stores: tuple[str, str]
) -> None:
    storage, tracking = sqlite_stores
    budget = 2
    spec = write_spec(tmp_path, "ctrl-c", trials=budget, epochs=150, batch=8)
    cmd = [*HPO, "study", "start", str(spec), "--storage", storage, "--tracking-uri", tracking]
    cmd.append("-q")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As in a terminal: a test run started in the background of a shell without job control
        # inherits SIGINT ignored, and Python then installs no Ctrl-C handler at all.
        preexec_fn=_default_sigint,
    )
    trials = watch(storage, "ctrl-c")
    live = wait_until("a trial to train", training(trials, proc.pid))
    assert isinstance(live, FrozenTrial)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "interrupted: finished trials are saved; run the same command to resume"
    ]

    study = study_of(storage, "ctrl-c")
    stopped = study.trials[live.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["error"] == "interrupted"
    client = MlflowClient(tracking)
    run = client.get_run(live.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags.get("hpo.error") == "interrupted"

    again = subprocess.run(cmd, cwd=tmp_path, env=ENV, text=True, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr
    study = study_of(storage, "ctrl-c")
    # The interrupted trial counts against the budget (a failed trial that was not re-run).
    assert budget_usage(study) == (budget, 0)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == budget - 1
    experiment = client.get_experiment_by_name("ctrl-c")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the parent run too


# -- hpo study start --workers -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("finisher", ["inline", "background"])
def test_study_start_with_two_workers_meets_the_budget_under_one_parent(
    tmp_path: Path, sqlite_stores: tuple[str, str], finisher: str
) -> None:
    """``finisher``: each worker sends its runs (``inline``), or ``hpo study start`` sends them
    all (``background``: the choice when training leaves a core idle)."""
    storage, tracking = sqlite_stores
    budget = 4
    spec = write_spec(tmp_path, "two", trials=budget, epochs=1)
    from mlflow.entities import LoggedModelStatus

    spool = tmp_path / "spool"
    result = subprocess.run(
        [
            *HPO, "study", "start", str(spec), "--workers", "2", "--storage", storage,
            "--tracking-uri", tracking, "-q",
        ],
        cwd=tmp_path, env={**ENV, "HPO_SPOOL_DIR": str(spool), "HPO_FINISHER": finisher},
        text=True, capture_output=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = study_of(storage, "two")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * budget  # exactly
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("two")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == budget
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert f"{budget} in total (budget {budget})" in " ".join(result.stdout.split())
    # Every run was sent before the study's end, which then found the best model and its plots.
    assert [p for p in spool.rglob("*") if p.is_dir() and p.parent != spool] == []
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params
        (model,) = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'"
        )
        assert model.status == LoggedModelStatus.READY
    assert parents[0].data.tags["hpo.champion_version"]
    # A point is the study when its trial ended; the trial that ended last saw every one. The
    # run's shown value is the highest trial number's point, which may have ended before another
    # worker's lower-numbered trial: the study's end writes the totals there.
    counts = client.get_metric_history(parents[0].info.run_id, "n_complete")
    assert max(m.value for m in counts) == budget
    assert parents[0].data.metrics["n_complete"] == budget
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "study_report")}
    assert "study_report/report.html" in artifacts, artifacts
