"""The end of a trial's MLflow run, written to disk before it is sent: the spool.

When a trial ends, what is left to log on its run (the buffered metrics, the final metrics, the
plots, the model, the status) is written here as one *job*, a directory
``<spool>/<study>/<run_id>/``, before anything is sent to the tracking store:

* it can be sent off the trial's critical path (:mod:`hpo.tracking.finisher`, from a background
  process when the trials train on a GPU), so the next trial trains while the plots render and
  the model uploads;
* a tracking server that is down does not cost the trial's run: the job waits on disk and is
  sent when the server is back, by the worker, by the next worker started on this machine, or by
  ``hpo sync NAME``.

A job holds plain data only: JSON (``job.json``), NumPy arrays (``arrays.npz``, read with
``allow_pickle=False``) and the model's ``state_dict`` (``model.pt``, read with
``weights_only=True``); nothing in it is unpickled as code. It holds no storage or tracking URI
(they may carry passwords): whoever sends it says where to. Its progress (which steps were sent)
is kept next to it, so a job that is sent again after a crash or an outage does not log anything
twice (:mod:`hpo.tracking.finisher`).

The spool is ``$HPO_SPOOL_DIR``, else ``.hpo-spool`` in the working directory (where the default
stores are). A job is written to a temporary directory and renamed into place, so a reader sees
whole jobs only; one process at a time works on a job (``flock`` on its ``job.json``).

Files are few on purpose: creating one (or a directory) cost 0.4-0.6 ms of CPU on this project's
ext4 machines, against 0.01 ms to append to one that exists. A job's progress is therefore one
file appended to (``progress.log``), not a file written and renamed per step; its lock is the
job file itself, not a file of its own; and a study's directory stays while the study runs
(:func:`remove_empty` at the end), not removed after each job and made again for the next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

SPOOL_ENV = "HPO_SPOOL_DIR"
DEFAULT_SPOOL_DIR = ".hpo-spool"
JOB_FILE = "job.json"
ARRAYS_FILE = "arrays.npz"
STATE_DICT_FILE = "model.pt"
#: A job's progress: one JSON record per line, appended; the last whole line holds.
PROGRESS_LOG = "progress.log"
#: Where jobs of versions before 2026-12-08 kept their progress (one JSON record, replaced).
PROGRESS_FILE = "progress.json"
#: Bumped when the format changes; a job of another version is refused with a clear message.
FORMAT_VERSION = 1


def spool_root() -> Path:
    """``$HPO_SPOOL_DIR``, else ``./.hpo-spool`` (absolute)."""
    return Path(os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL_DIR).expanduser().absolute()


def study_spool(study_name: str, root: Path | None = None) -> Path:
    """The directory of a study's jobs (its name made safe as a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", study_name) or "_"
    return (root or spool_root()) / safe


@dataclass
class PlotInputs:
    """What the trial's plots are drawn from (see :meth:`hpo.tracking.runs.TrialRun.log_plots`)."""

    y_true: np.ndarray
    proba: np.ndarray
    classes: list[str]
    history: list[dict[str, float]]
    prediction_counts: list[list[int]] | None = None
    #: Two-feature data: the decision boundary is drawn over these (train and validation rows).
    boundary: dict[str, np.ndarray] | None = None
    feature_names: list[str] | None = None


@dataclass
class ModelInputs:
    """What it takes to rebuild the trained model and log it (:mod:`hpo.tracking.models`)."""

    family: str
    family_params: dict[str, Any]
    input_shape: list[int]
    n_classes: int
    state_dict: dict[str, Any]
    example: np.ndarray
    metadata: dict[str, Any] | None
    params: dict[str, str]
    tags: dict[str, str]
    step: int
    #: The LoggedModel created when the trial ended (None if the store was away then).
    model_id: str | None = None
    #: ``[key, value, step, timestamp_ms]`` rows of every metric the run has at ``step``, which
    #: the model links (None, as in jobs of older versions: MLflow reads them back from the run).
    step_metrics: list[list[Any]] | None = None
    #: Where the LoggedModel's files go, as its creation answered (a tracking server); None: it
    #: is asked for when needed (jobs of older versions, SQL stores: one query).
    artifact_location: str | None = None


@dataclass
class Job:
    """Everything that ends one trial's run."""

    study: str
    trial: int
    run_id: str
    #: The trial's state: COMPLETE, PRUNED or FAIL (:data:`hpo.tracking.runs.RUN_STATUS`).
    state: str
    #: The error (FAIL) or the reason (PRUNED), if any.
    error: str | None = None
    #: ``[key, value, step, timestamp_ms]`` rows, buffered epoch metrics and final metrics.
    metrics: list[list[Any]] = field(default_factory=list)
    #: Parameters of the run not written yet (stringified).
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    plots: PlotInputs | None = None
    model: ModelInputs | None = None
    #: ``hpo.tracking.runs.mask``-ed tracking URI the run lives in: a job is only sent there.
    tracking_uri: str = ""
    #: A LoggedModel created with the run for a model the trial never had (it was pruned or
    #: failed): deleted with the run's end.
    discard_model: str | None = None
    #: The run's artifact URI, if the process that created the run knew it (else the sender
    #: reads the run for it).
    artifact_uri: str | None = None
    #: Where the job lives once written or read.
    path: Path | None = None


# -- writing -------------------------------------------------------------------------------------
def write_job(job: Job, root: Path | None = None) -> Path:
    """Write ``job`` under the study's spool directory, atomically; return its directory."""
    directory = study_spool(job.study, root)
    final = directory / job.run_id
    tmp = _new_directory(directory, prefix=f".{job.run_id}-")
    try:
        arrays: dict[str, np.ndarray] = {}
        # Fields as they are, not dataclasses.asdict: that deep-copies every value first, the
        # model's weights and the plots' arrays included (3 ms of the 4.5 ms this took).
        record: dict[str, Any] = {
            "version": FORMAT_VERSION,
            **_fields(job, exclude=("plots", "model", "path")),
        }
        if job.plots is not None:
            p = job.plots
            arrays.update(y_true=np.asarray(p.y_true), proba=np.asarray(p.proba))
            for key, value in (p.boundary or {}).items():
                arrays[f"boundary_{key}"] = np.asarray(value)
            record["plots"] = {
                "classes": [str(c) for c in p.classes],
                "history": [{k: float(v) for k, v in row.items()} for row in p.history],
                "prediction_counts": (
                    [[int(c) for c in row] for row in p.prediction_counts]
                    if p.prediction_counts
                    else None
                ),
                "boundary": sorted(p.boundary) if p.boundary else None,
                "feature_names": p.feature_names,
            }
        if job.model is not None:
            import torch

            m = job.model
            arrays["model_example"] = np.asarray(m.example)
            torch.save(m.state_dict, tmp / STATE_DICT_FILE)
            record["model"] = _fields(m, exclude=("state_dict", "example"))
        if arrays:
            np.savez(tmp / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]
        (tmp / JOB_FILE).write_text(json.dumps(record, default=_json_default))
        if final.exists():  # the same run ended twice (FAIL after a failed COMPLETE): newest wins
            shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    job.path = final
    return final


def _new_directory(directory: Path, prefix: str) -> Path:
    """A new temporary directory in ``directory`` (made if missing)."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    except FileNotFoundError:
        # Missing: not made yet, or removed (empty) by another process's remove_empty().
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=directory))


def _fields(obj: Any, exclude: Sequence[str]) -> dict[str, Any]:
    """A dataclass's fields by name, but ``exclude`` (values not copied: JSON-encoded next)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.name not in exclude}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- reading -------------------------------------------------------------------------------------
class SpoolError(Exception):
    """A job directory that cannot be read (another format, a partial copy)."""


def read_job(path: Path) -> Job:
    """Read the job in directory ``path``."""
    try:
        record = json.loads((path / JOB_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise SpoolError(f"{path}: not a readable hpo job ({exc})") from None
    if record.get("version") != FORMAT_VERSION:
        raise SpoolError(
            f"{path}: job format {record.get('version')!r}, this hpo reads {FORMAT_VERSION}"
        )
    arrays: dict[str, np.ndarray] = {}
    if (path / ARRAYS_FILE).exists():
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}
    plots = None
    if record.get("plots") is not None:
        p = record["plots"]
        plots = PlotInputs(
            y_true=arrays["y_true"],
            proba=arrays["proba"],
            classes=p["classes"],
            history=p["history"],
            prediction_counts=p["prediction_counts"],
            boundary={k: arrays[f"boundary_{k}"] for k in p["boundary"]} if p["boundary"] else None,
            feature_names=p["feature_names"],
        )
    model = None
    if record.get("model") is not None:
        import torch

        m = record["model"]
        state_dict = torch.load(path / STATE_DICT_FILE, map_location="cpu", weights_only=True)
        model = ModelInputs(**m, state_dict=state_dict, example=arrays["model_example"])
    fields = {k: record[k] for k in Job.__dataclass_fields__ if k in record}
    fields.pop("path", None)
    return Job(**{**fields, "plots": plots, "model": model, "path": path})


def list_jobs(study_name: str, root: Path | None = None) -> list[Path]:
    """The study's job directories, oldest first (trials in the order they ended)."""
    directory = study_spool(study_name, root)
    if not directory.is_dir():
        return []
    jobs = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(
        jobs, key=lambda p: (p / JOB_FILE).stat().st_mtime if (p / JOB_FILE).exists() else 0
    )


# -- progress and locking ------------------------------------------------------------------------
def read_progress(path: Path) -> dict[str, Any]:
    """What was already done of the job at ``path`` (``{"done": [step, …], …}``)."""
    try:
        lines = (path / PROGRESS_LOG).read_bytes().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        # A line cut short (a crash while it was appended) does not parse: the one before holds.
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    try:  # a job written by an older version
        return dict(json.loads((path / PROGRESS_FILE).read_text()))
    except (OSError, ValueError):
        return {"done": []}


def write_progress(path: Path, progress: Mapping[str, Any]) -> None:
    """Record the job's progress: one line appended to its log (a crash leaves the old record
    or the new one: a line cut short is skipped when read)."""
    line = b"\n" + json.dumps(progress, default=_json_default).encode() + b"\n"
    # The leading newline ends a line an earlier crash may have cut short; empty lines are
    # skipped when read.
    fd = os.open(path / PROGRESS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[bool]:
    """Hold the job's lock while the block runs; yields False (and holds nothing) when another
    process has it, or the job is gone.

    The lock is ``flock`` on the job file. A job removed and written again under the same name
    (a run that ended twice) is a new file: holding the old one's lock is not holding the job's,
    so the lock counts only while the name still leads to the locked file.
    """
    try:
        fd = os.open(path / JOB_FILE, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            current = os.stat(path / JOB_FILE).st_ino
        except FileNotFoundError:
            current = None
        yield current == os.fstat(fd).st_ino
    finally:
        os.close(fd)


def remove_job(path: Path) -> None:
    """Delete a job that was sent (its study's directory stays: :func:`remove_empty`)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_empty(study_name: str, root: Path | None = None) -> None:
    """Remove the study's spool directory, and the spool, where they hold nothing (the end of a
    worker or of ``hpo sync``)."""
    directory = study_spool(study_name, root)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when empty
        with contextlib.suppress(OSError):
            directory.parent.rmdir()


def metric_rows(metrics: Sequence[Any]) -> list[list[Any]]:
    """MLflow ``Metric`` entities → ``[key, value, step, timestamp]`` rows."""
    return [[m.key, float(m.value), int(m.step), int(m.timestamp)] for m in metrics]


def row_metrics(
    rows: Iterable[Sequence[Any]], run_id: str | None = None, model_id: str | None = None
) -> list[Any]:
    """``[key, value, step, timestamp]`` rows → MLflow ``Metric`` entities; ``model_id``: linked
    to that LoggedModel (as MLflow links a model's metrics: with the ``run_id`` too)."""
    from mlflow.entities import Metric

    return [
        Metric(str(k), float(v), int(ts), int(step), run_id=run_id, model_id=model_id)
        for k, v, step, ts in rows
    ]
