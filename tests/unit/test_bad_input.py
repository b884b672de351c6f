"""Bad input (issue 5): every mistake a user can make is one line, exit code 2, and leaves nothing.

One table, one case per mistake: a study file (and the data files it names), the command line, and
the parts the message must hold — the file, the field and the offending value. For every case:

* the exit code is 2 and the process did not die of an unexpected exception;
* stdout is empty and stderr is exactly one non-blank line, ``error: …``, without a traceback;
* nothing is half-created: the Optuna storage and the MLflow store hold exactly what they held
  before (for mistakes in the file or the data, neither store is even created).

The commands run in-process through click's ``CliRunner`` (fast); a few run as real subprocesses
to check what the terminal shows. A learning rate that makes the loss NaN is not an error: that
trial is pruned with the reason and the study goes on (tested at the end).
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from hpo.cli import main

SPEC_NAME = "study.yaml"
#: A study that loads and trains in well under a second (iris, one epoch).
IRIS = "name: bad\ndata: {source: sklearn, name: iris}\ntrain: {epochs: 1}\ntrials: 1\n"
START = ("study", "start", "{spec}", "--storage", "{storage}", "--tracking-uri", "{tracking}", "-q")
CSV = "name: x\ndata: {source: csv, path: d.csv, target: label}\ntrain: {epochs: 1}\ntrials: 1\n"
NPZ = "name: x\ndata: {source: npz, path: d.npz}\ntrain: {epochs: 1}\ntrials: 1\n"
ROWS = "".join(f"{i},{i * 2},{'x' if i % 2 else 'y'}\n" for i in range(20))


@dataclass
class Ctx:
    """Where a case runs: its directory, study file and stores."""

    dir: Path
    spec: Path
    storage: str
    tracking: str

    @property
    def optuna_db(self) -> Path:
        return self.dir / "optuna.db"

    @property
    def mlflow_db(self) -> Path:
        return self.dir / "mlflow.db"

    def fill(self, text: str) -> str:
        """``text`` with ``{spec}``, ``{dir}``, ``{storage}`` and ``{tracking}`` filled in."""
        return (
            text.replace("{spec}", str(self.spec))
            .replace("{dir}", str(self.dir))
            .replace("{storage}", self.storage)
            .replace("{tracking}", self.tracking)
        )


DataFile = str | bytes | Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One bad input: the study file, its data files, the command, the message's parts."""

    id: str
    spec: str | None
    expected: tuple[str, ...]
    args: tuple[str, ...] = START
    files: Mapping[str, DataFile] = field(default_factory=dict)
    #: Runs before the failing command (e.g. a first, good, start of the study).
    setup: Callable[[Ctx], None] | None = None
    #: The local stores ("optuna", "mlflow") the command may have opened, i.e. initialised as
    #: empty databases, before it found the mistake; every other one must not exist afterwards.
    opens: tuple[str, ...] = ()


def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        np.savez(path, **arrays)  # type: ignore[arg-type]

    return write


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def invoke(ctx: Ctx, args: tuple[str, ...]) -> Result:
    """Run ``hpo ARGS`` in this process, placeholders filled in."""
    return CliRunner().invoke(main, [ctx.fill(a) for a in args])


def start_then_drift(ctx: Ctx) -> None:
    """Run the study once (1 trial), then change its search space in the file."""
    result = invoke(ctx, START)
    assert result.exit_code == 0, result.output
    # one study with its trial; one experiment with the parent run and the trial's run
    assert stores(ctx) == ({"bad": 1}, {"bad": 2})
    text = ctx.spec.read_text()
    ctx.spec.write_text(text.replace("high: 0.01", "high: 0.05"))


DRIFT = IRIS + "search:\n  lr: {type: float, low: 0.001, high: 0.01, log: true}\n"

CASES = [
    # -- the study file: syntax and structure ------------------------------------------------
    Case("yaml-malformed", "name: x\ntrials: [\n", ("{spec}", "invalid YAML", "line 3")),
    Case(
        "yaml-impossible-date",
        IRIS.replace("trials: 1", "trials: 2001-13-45"),
        ("{spec}", "invalid YAML: line 4", "'2001-13-45'", "month must be in 1..12"),
    ),
    Case(
        "yaml-alias-containing-itself",
        IRIS + "fixed: {dropout: &a [*a]}\n",
        ("{spec}", "fixed.dropout.0", "YAML alias", "contain itself"),
    ),
    Case(
        "field-name-with-a-line-break",
        IRIS + '"tri\\nals": 5\n',
        ("{spec}", "unknown field 'tri\\nals'", "allowed: name"),
    ),
    Case("yaml-not-a-mapping", "- a\n- b\n", ("{spec}", "must be a mapping", "got list")),
    Case(
        "unknown-field",
        IRIS + "trails: 5\n",
        ("{spec}", "unknown field 'trails'", "did you mean 'trials'"),
    ),
    Case(
        "unknown-nested-field",
        IRIS.replace("{epochs: 1}", "{epocs: 1}"),
        ("{spec}", "train", "unknown field 'epocs'", "did you mean 'epochs'"),
    ),
    Case("wrong-type-trials", IRIS + "trials: many\n", ("{spec}", "trials", '"many"')),
    Case(
        "wrong-type-bound",
        IRIS + "search:\n  lr: {type: float, low: abc, high: 0.1}\n",
        ("{spec}", "search.lr.low", '"abc"'),
    ),
    Case(
        "wrong-type-fixed",
        IRIS + "fixed: {batch_size: big}\n",
        ("{spec}", "fixed.batch_size", '"big"'),
    ),
    Case("trials-0", IRIS.replace("trials: 1", "trials: 0"), ("{spec}", "trials", "(got 0)")),
    Case(
        "infinite-learning-rate",
        IRIS + "fixed: {lr: .inf}\n",
        ("{spec}", "fixed.lr", "must be a finite number", "(got Infinity)"),
    ),
    # -- the search space ------------------------------------------------------------------------
    Case(
        "low-above-high",
        IRIS + "search:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
        ("{spec}", "search.lr", "'low' must be <= 'high'", "low=0.1, high=0.01"),
    ),
    Case(
        "log-with-low-0",
        IRIS + "search:\n  lr: {type: float, low: 0, high: 0.1, log: true}\n",
        ("{spec}", "search.lr", "'log: true' needs 'low' > 0", "low=0"),
    ),
    Case(
        "step-with-log",
        IRIS + "search:\n  width: {type: int, low: 8, high: 64, step: 8, log: true}\n",
        (
            "{spec}",
            "search.width",
            "'step' and 'log: true' cannot be combined",
            '"step": 8, "log": true',
        ),
    ),
    Case(
        "grid-too-large",
        IRIS
        + "sampler: {name: grid}\nsearch:\n"
        + "  width: {type: int, low: 1, high: 1000}\n  depth: {type: int, low: 1, high: 1000}\n"
        + "  lr: {type: float, low: 0.001, high: 1, step: 0.001}\n",
        ("{spec}", "search", "1,000,000,000 points", "width 1000 × depth 1000 × lr 1000"),
    ),
    Case(
        "empty-choices",
        IRIS + "search:\n  optimizer: {type: categorical, choices: []}\n",
        ("{spec}", "search.optimizer.choices", "at least 1", "(got [])"),
    ),
    Case(
        "when-unknown-param",
        IRIS
        + "search:\n  optimizer: {type: categorical, choices: [adam, sgd]}\n"
        + "  momentum: {type: float, low: 0, high: 0.9, when: {optimiser: sgd}}\n",
        ("{spec}", "search.momentum.when", "'optimiser'", "did you mean 'optimizer'"),
    ),
    # -- names that must be registered -------------------------------------------------------
    Case(
        "unknown-family",
        IRIS + "model: {family: transformer}\n",
        ("{spec}", "model.family", "unknown model family 'transformer'", "mlp"),
    ),
    Case(
        "unknown-optimizer",
        IRIS + "fixed: {optimizer: lbfgs}\n",
        ("{spec}", "fixed.optimizer", "unknown optimizer 'lbfgs'", "adam"),
    ),
    Case(
        "unknown-activation",
        IRIS + "search:\n  activation: {type: categorical, choices: [relu, swishy]}\n",
        ("{spec}", "search.activation.choices.1", "swishy"),
    ),
    Case(
        "unknown-sampler",
        IRIS + "sampler: {name: bayes}\n",
        ("{spec}", "sampler.name", "'tpe'", '"bayes"'),
    ),
    Case(
        "unknown-pruner",
        IRIS + "pruner: {name: early}\n",
        ("{spec}", "pruner.name", "'median'", '"early"'),
    ),
    Case(
        "unknown-data-source",
        "name: x\ndata: {source: parquet}\n",
        ("{spec}", "data.source", "unknown data source 'parquet'", "csv"),
    ),
    Case(
        "unknown-sklearn-set",
        "name: x\ndata: {source: sklearn, name: digts}\n",
        ("{spec}", "data.name", "'digts'", "did you mean 'digits'"),
    ),
    # -- CSV files -----------------------------------------------------------------------------
    Case(
        "csv-missing",
        CSV.replace("d.csv", "missing.csv"),
        ("{spec}", "data.path", "file not found", "{dir}/missing.csv"),
    ),
    Case(
        "csv-empty",
        CSV,
        ("{spec}", "data.path", "{dir}/d.csv", "is empty"),
        files={"d.csv": ""},
    ),
    Case(
        "csv-header-only",
        CSV,
        ("{spec}", "data.path", "{dir}/d.csv", "no data rows"),
        files={"d.csv": "a,b,label\n"},
    ),
    Case(
        "csv-no-target-column",
        CSV.replace("target: label", "target: lable"),
        ("{spec}", "data.target", "column 'lable' not in {dir}/d.csv", "did you mean 'label'"),
        files={"d.csv": "a,b,label\n" + ROWS},
    ),
    Case(
        "csv-single-class",
        CSV,
        ("{spec}", "data.target", "{dir}/d.csv", "single class 'same'"),
        files={"d.csv": "a,label\n" + "".join(f"{i},same\n" for i in range(10))},
    ),
    Case(
        "csv-empty-target-column",
        CSV,
        ("{spec}", "data.target", "column 'label' in {dir}/d.csv has no values"),
        files={"d.csv": "a,label\n1,\n2,\n3,\n"},
    ),
    Case(
        "csv-all-empty-feature-columns",
        CSV,
        ("{spec}", "data", "every feature column of {dir}/d.csv is empty", "'a', 'b'"),
        files={"d.csv": "a,b,label\n" + "".join(f",,{'x' if i % 2 else 'y'}\n" for i in range(10))},
    ),
    Case(
        "csv-infinite-feature",
        CSV,
        ("{spec}", "data.path", "column 'b' of {dir}/d.csv", "infinite number in data row 4 (inf)"),
        files={"d.csv": "a,b,label\n" + ROWS.replace("3,6,x", "3,inf,x")},
    ),
    Case(
        "csv-text-feature-that-cannot-be-encoded",
        CSV,
        ("{spec}", "data.path", "text column 'note' of {dir}/d.csv", "'note 0'", "data.drop"),
        files={
            "d.csv": "a,note,label\n"
            + "".join(f"{i},note {i},{'x' if i % 2 else 'y'}\n" for i in range(40))
        },
    ),
    # -- npz files and image folders -----------------------------------------------------------
    Case(
        "npz-mismatched-lengths",
        NPZ,
        ("{spec}", "data.path", "{dir}/d.npz", "X has 10 rows but y has 9"),
        files={"d.npz": npz(X=np.zeros((10, 4, 4), np.uint8), y=np.arange(9) % 2)},
    ),
    Case(
        "npz-impossible-shape",
        NPZ,
        ("{spec}", "data.path", "X in {dir}/d.npz", "shape 10×16 (2-D)"),
        files={"d.npz": npz(X=np.zeros((10, 16)), y=np.arange(10) % 2)},
    ),
    Case(
        "npz-labels-not-1d",
        NPZ,
        ("{spec}", "data.path", "y in {dir}/d.npz", "shape 10×2", "1-D"),
        files={"d.npz": npz(X=np.zeros((10, 4, 4)), y=np.zeros((10, 2)))},
    ),
    Case(
        "images-empty-folder",
        "name: x\ndata: {source: images, path: pics}\n",
        ("{spec}", "data.path", "folder {dir}/pics is empty"),
        files={"pics/.keep": ""},
    ),
    # -- the data against the spec -------------------------------------------------------------
    Case(
        "batch-size-above-train-split",
        IRIS + "fixed: {batch_size: 1000}\n",
        ("{spec}", "fixed.batch_size", "batch size 1000", "training split (112 rows)"),
    ),
    Case(
        "searched-batch-size-above-train-split",
        IRIS + "search:\n  batch_size: {type: categorical, choices: [16, 512]}\n",
        ("{spec}", "search.batch_size.choices.1", "batch size 512", "112 rows"),
    ),
    # -- the machine ---------------------------------------------------------------------------
    Case(
        "device-cuda-without-gpu",
        IRIS.replace("{epochs: 1}", "{epochs: 1, device: cuda}"),
        ("{spec}", "train.device", "'cuda' is not available"),
    ),
    Case(
        "device-unknown",
        IRIS.replace("{epochs: 1}", "{epochs: 1, device: gpu0}"),
        ("{spec}", "train.device", "invalid device 'gpu0'"),
    ),
    # -- storage and tracking ------------------------------------------------------------------
    Case(
        "storage-invalid-url",
        IRIS,
        ("storage", "invalid URL 'hpo.db'", "sqlite:///"),
        args=("study", "start", "{spec}", "--storage", "hpo.db", "--tracking-uri", "{tracking}"),
    ),
    Case(
        "storage-unknown-database",
        IRIS,
        ("storage", "unsupported database", "oracle2://u@h/db"),
        args=(
            *("study", "start", "{spec}", "--storage", "oracle2://u@h/db"),
            *("--tracking-uri", "{tracking}"),
        ),
    ),
    Case(
        "storage-port-not-a-number",
        IRIS,
        ("storage", "invalid URL", "postgresql+psycopg://u@localhost:port/db", "'port'"),
        args=(
            *("study", "start", "{spec}", "--storage", "postgresql+psycopg://u@localhost:port/db"),
            *("--tracking-uri", "{tracking}"),
        ),
    ),
    Case(
        "postgres-unreachable",
        IRIS,
        ("storage", "cannot connect", "postgresql+psycopg://postgres:***@127.0.0.1:1/hpo"),
        args=(
            *("study", "start", "{spec}", "--tracking-uri", "{tracking}"),
            *("--storage", "postgresql+psycopg://postgres:secret@127.0.0.1:1/hpo"),
        ),
    ),
    Case(
        "tracking-server-unreachable",
        IRIS,
        ("tracking_uri", "cannot reach MLflow tracking server", "http://127.0.0.1:"),
        args=(
            *("study", "start", "{spec}", "--storage", "{storage}"),
            *("--tracking-uri", "http://127.0.0.1:{port}"),
        ),
    ),
    Case(
        "unknown-study-show",
        None,
        ("study 'nope' not found", "sqlite:///", "known studies: none"),
        args=("study", "show", "nope", "--storage", "{storage}"),
        opens=("optuna",),
    ),
    Case(
        "unknown-study-worker",
        None,
        ("study 'nope' not found", "known studies: none"),
        args=(
            "worker",
            "--study",
            "nope",
            "--storage",
            "{storage}",
            "--tracking-uri",
            "{tracking}",
        ),
        opens=("optuna",),
    ),
    Case(
        "drifted-spec",
        DRIFT,
        ("{spec}", "different spec", "search.lr.high: 0.01 -> 0.05", "--force"),
        setup=start_then_drift,
        opens=("optuna", "mlflow"),
    ),
    # -- the same checks through the other entry point -----------------------------------------
    Case(
        "worker-csv-missing",
        CSV.replace("d.csv", "missing.csv"),
        ("{spec}", "data.path", "file not found", "{dir}/missing.csv"),
        args=("worker", "{spec}", "--storage", "{storage}", "--tracking-uri", "{tracking}", "-q"),
    ),
]


def _rows(db: Path, sql: str) -> dict[str, int]:
    if not db.exists():
        return {}
    with closing(sqlite3.connect(db)) as conn:
        try:
            return {str(name): int(n) for name, n in conn.execute(sql)}
        except sqlite3.OperationalError:  # a file without the tables yet
            return {}


def stores(ctx: Ctx) -> tuple[dict[str, int], dict[str, int]]:
    """What the stores hold: Optuna studies → trials, MLflow experiments → runs.

    MLflow's empty ``Default`` experiment, made with the tables, is not the study's.
    """
    studies = _rows(
        ctx.optuna_db,
        "SELECT s.study_name, COUNT(t.trial_id) FROM studies s "
        "LEFT JOIN trials t ON t.study_id = s.study_id GROUP BY s.study_name",
    )
    experiments = _rows(
        ctx.mlflow_db,
        "SELECT e.name, COUNT(r.run_uuid) FROM experiments e "
        "LEFT JOIN runs r ON r.experiment_id = e.experiment_id GROUP BY e.name",
    )
    if experiments.get("Default") == 0:
        del experiments["Default"]
    return studies, experiments


@pytest.fixture
def ctx(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Ctx:
    # The CUDA case must not depend on this machine's GPU: every case runs as if there were none.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return Ctx(
        workdir,
        workdir / SPEC_NAME,
        f"sqlite:///{workdir}/optuna.db",
        f"sqlite:///{workdir}/mlflow.db",
    )


def prepare(ctx: Ctx, case: Case) -> None:
    if case.spec is not None:
        ctx.spec.write_text(case.spec)
    for name, content in case.files.items():
        path = ctx.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_the_table_has_at_least_30_distinct_cases() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(ctx: Ctx, case: Case) -> None:
    prepare(ctx, case)
    if case.setup is not None:
        case.setup(ctx)
    before = stores(ctx)
    port = str(closed_port())
    args = tuple(a.replace("{port}", port) for a in case.args)

    result = invoke(ctx, args)

    output = result.output
    # an exception other than the exit is a crash, whatever the exit code says
    assert isinstance(result.exception, SystemExit), (result.exception, output)
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert "secret" not in output  # a storage URL's password is masked
    assert result.stdout.strip() == "", result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for part in case.expected:
        assert ctx.fill(part) in lines[0], f"{ctx.fill(part)!r} not in {lines[0]!r}"

    assert stores(ctx) == before, "the failed command created a study, an experiment or a run"
    for store, db in (("optuna", ctx.optuna_db), ("mlflow", ctx.mlflow_db)):
        if store not in case.opens:
            assert not db.exists(), f"the failed command created {db.name}"


SUBPROCESS_CASES = ["yaml-malformed", "csv-infinite-feature", "postgres-unreachable"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_the_terminal_shows_one_line_and_no_traceback(workdir: Path, case_id: str) -> None:
    # CliRunner never prints a traceback; a real process shows what the user sees.
    case = next(c for c in CASES if c.id == case_id)
    ctx = Ctx(
        workdir,
        workdir / SPEC_NAME,
        f"sqlite:///{workdir}/optuna.db",
        f"sqlite:///{workdir}/mlflow.db",
    )
    prepare(ctx, case)
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", *(ctx.fill(a) for a in case.args)],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_a_diverging_learning_rate_prunes_that_trial_and_the_study_goes_on(ctx: Ctx) -> None:
    # Not an input error: the point is bad, not the file. The first (enqueued) trial's loss
    # becomes NaN/inf; it is pruned with the reason, and the second trial still runs.
    ctx.spec.write_text(
        "name: nan\ndata: {source: sklearn, name: iris}\ntrain: {epochs: 2}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e+10, log: true}\n"
        "fixed: {optimizer: sgd, batch_size: 32}\n"
        "enqueue: [{lr: 1.0e+10}, {lr: 0.01}]\n"
        "sampler: {name: random}\npruner: {name: none}\ntrials: 2\n"
    )
    result = invoke(ctx, START)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    first, second = optuna.load_study(study_name="nan", storage=ctx.storage).trials
    assert first.params["lr"] == 1.0e10
    assert first.state == TrialState.PRUNED
    assert "loss became" in first.user_attrs["pruned_reason"]
    assert second.state == TrialState.COMPLETE
    run = MlflowClient(ctx.tracking).get_run(first.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "loss became" in run.data.tags["hpo.reason"]
