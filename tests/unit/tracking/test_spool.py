"""The spool: a trial's remaining MLflow work on disk, whole or not at all, in plain data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hpo.tracking import spool
from hpo.tracking.spool import Job, ModelInputs, PlotInputs


def a_job(run_id: str = "r1", *, with_artifacts: bool = True) -> Job:
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    return Job(
        study="my study/1",
        trial=7,
        run_id=run_id,
        state="COMPLETE",
        metrics=[["val_loss", 0.5, 3, 1700000000000], ["val_f1", 0.25, 3, 1700000000001]],
        tags={"hpo.device": "cpu"},
        plots=PlotInputs(
            y_true=np.array([0, 1, 2]),
            proba=rng.dirichlet(np.ones(3), 3),
            classes=["a", "b", "c"],
            history=[{"epoch": 1.0, "val_loss": 0.5}],
            prediction_counts=[[1, 1, 1]],
            boundary={"X_train": rng.normal(size=(4, 2)), "y_train": np.array([0, 1, 2, 0])},
            feature_names=["x", "y"],
        )
        if with_artifacts
        else None,
        model=ModelInputs(
            family="mlp",
            family_params={"depth": 1, "width": 4},
            input_shape=[2],
            n_classes=3,
            state_dict=model.state_dict(),
            example=np.ones((2, 2), np.float32),
            metadata={"hpo": {"study": "s"}},
            params={"lr": "0.1"},
            tags={"hpo.trial": "7"},
            step=3,
            model_id="m-123",
            artifact_location="mlflow-artifacts:/1/models/m-123/artifacts",
        )
        if with_artifacts
        else None,
        tracking_uri="sqlite:////x/mlflow.db",
    )


def test_a_job_reads_back_as_written(tmp_path: Path) -> None:
    job = a_job()
    assert job.model is not None and job.plots is not None
    path = spool.write_job(job, tmp_path)
    assert path == tmp_path / "my_study_1" / "r1"  # the study's name made a safe file name
    back = spool.read_job(path)
    assert back.path == path
    assert (back.study, back.trial, back.run_id, back.state) == ("my study/1", 7, "r1", "COMPLETE")
    assert back.metrics == job.metrics
    assert back.tags == job.tags and back.tracking_uri == job.tracking_uri
    assert back.plots is not None and back.model is not None
    np.testing.assert_array_equal(back.plots.y_true, job.plots.y_true)
    np.testing.assert_allclose(back.plots.proba, job.plots.proba)
    assert back.plots.history == job.plots.history
    assert back.plots.boundary is not None and set(back.plots.boundary) == {"X_train", "y_train"}
    assert back.model.model_id == "m-123" and back.model.family_params == {"depth": 1, "width": 4}
    assert back.model.artifact_location == "mlflow-artifacts:/1/models/m-123/artifacts"
    for key, tensor in job.model.state_dict.items():
        assert torch.equal(back.model.state_dict[key], tensor), key
    np.testing.assert_array_equal(back.model.example, job.model.example)


def test_a_job_of_an_earlier_version_reads_without_the_model_s_location(tmp_path: Path) -> None:
    path = spool.write_job(a_job(), tmp_path)
    record = json.loads((path / spool.JOB_FILE).read_text())
    del record["model"]["artifact_location"]  # jobs spooled before it was kept
    (path / spool.JOB_FILE).write_text(json.dumps(record))
    back = spool.read_job(path)
    assert back.model is not None and back.model.artifact_location is None


def test_a_job_is_plain_data(tmp_path: Path) -> None:
    path = spool.write_job(a_job(), tmp_path)
    json.loads((path / spool.JOB_FILE).read_text())  # JSON
    np.load(path / spool.ARRAYS_FILE, allow_pickle=False)  # arrays without pickles
    torch.load(path / spool.STATE_DICT_FILE, weights_only=True)  # tensors only


def test_a_job_without_artifacts_has_only_its_record(tmp_path: Path) -> None:
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [spool.JOB_FILE]
    back = spool.read_job(path)
    assert back.plots is None and back.model is None


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError, match="No space"):
        spool.write_job(a_job(), tmp_path)
    assert list((tmp_path / "my_study_1").iterdir()) == []
    assert spool.list_jobs("my study/1", tmp_path) == []


def test_jobs_are_listed_oldest_first_and_removed_with_their_directories(tmp_path: Path) -> None:
    import os

    first = spool.write_job(a_job("r1", with_artifacts=False), tmp_path)
    second = spool.write_job(a_job("r2", with_artifacts=False), tmp_path)
    os.utime(first / spool.JOB_FILE, (1, 1))
    assert spool.list_jobs("my study/1", tmp_path) == [first, second]
    spool.remove_job(first)
    assert not first.exists()
    # The study's directory stays while jobs may come (made once per study, not per job) ...
    spool.remove_empty("my study/1", tmp_path)
    assert spool.list_jobs("my study/1", tmp_path) == [second]
    spool.remove_job(second)
    assert (tmp_path / "my_study_1").is_dir()
    spool.remove_empty("my study/1", tmp_path)  # ... and goes once it is empty
    assert not (tmp_path / "my_study_1").exists()
    assert not tmp_path.exists()  # the spool too: nothing else was in it


def test_a_job_is_written_when_its_directory_was_removed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's remove_empty() can remove the study's (empty) directory between two
    jobs, or between a worker's look and its write."""
    import tempfile

    spool.remove_job(spool.write_job(a_job("r1", with_artifacts=False), tmp_path))
    real = tempfile.mkdtemp
    calls = []

    def removed_first(*args: object, **kwargs: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            spool.remove_empty("my study/1", tmp_path)
        return real(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(tempfile, "mkdtemp", removed_first)
    path = spool.write_job(a_job("r2", with_artifacts=False), tmp_path)
    assert spool.read_job(path).run_id == "r2" and len(calls) == 2


def test_a_job_of_another_format_is_refused(tmp_path: Path) -> None:
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    record = json.loads((path / spool.JOB_FILE).read_text())
    (path / spool.JOB_FILE).write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(spool.SpoolError, match="job format 99"):
        spool.read_job(path)


def test_one_process_at_a_time_works_on_a_job(tmp_path: Path) -> None:
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    with spool.locked(path) as mine:
        assert mine
        with spool.locked(path) as again:  # another open file description: refused
            assert not again
    with spool.locked(path) as mine_again:
        assert mine_again
    spool.remove_job(path)
    with spool.locked(path) as gone:
        assert not gone
    assert [p.name for p in path.parent.iterdir()] == []  # the lock left no file behind


def test_the_lock_of_a_job_written_again_is_not_the_new_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ended twice: its job is removed and written again under the same name. A
    process that holds the first job's lock does not hold the new one's; one that opened the
    first job's file just before it was replaced takes nothing."""
    import fcntl

    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    with spool.locked(path) as first:
        assert first
        assert spool.write_job(a_job(with_artifacts=False), tmp_path) == path
        with spool.locked(path) as second:
            assert second

    real = fcntl.flock
    calls = []

    def written_again_meanwhile(fd: int, operation: int) -> None:
        calls.append(operation)
        if len(calls) == 1:
            spool.write_job(a_job(with_artifacts=False), tmp_path)
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", written_again_meanwhile)
    with spool.locked(path) as stale:
        assert not stale
    with spool.locked(path) as fresh:
        assert fresh


def test_progress_is_kept_next_to_the_job(tmp_path: Path) -> None:
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    assert spool.read_progress(path) == {"done": []}
    spool.write_progress(path, {"done": ["metrics"], "started": ["metrics", "plots"]})
    assert spool.read_progress(path)["started"] == ["metrics", "plots"]
    spool.write_progress(path, {"done": ["metrics", "plots"], "started": ["metrics", "plots"]})
    assert spool.read_progress(path)["done"] == ["metrics", "plots"]
    # One file appended to, nothing else made next to the job.
    assert sorted(p.name for p in path.iterdir()) == ["job.json", "progress.log"]


def test_progress_cut_short_by_a_crash_keeps_the_record_before(tmp_path: Path) -> None:
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    spool.write_progress(path, {"done": ["metrics"]})
    with open(path / spool.PROGRESS_LOG, "ab") as log:
        log.write(b'{"done": ["metrics", "pl')  # the process died mid-write
    assert spool.read_progress(path) == {"done": ["metrics"]}
    spool.write_progress(path, {"done": ["metrics", "plots"]})  # the next attempt goes on
    assert spool.read_progress(path) == {"done": ["metrics", "plots"]}


def test_progress_of_a_job_from_an_older_version_is_read(tmp_path: Path) -> None:
    """Jobs spooled before 2026-12-08 kept their progress in progress.json."""
    path = spool.write_job(a_job(with_artifacts=False), tmp_path)
    (path / spool.PROGRESS_FILE).write_text(json.dumps({"done": ["metrics", "plots"]}))
    assert spool.read_progress(path) == {"done": ["metrics", "plots"]}
    spool.write_progress(path, {"done": ["metrics", "plots", "model"]})  # newer records win
    assert spool.read_progress(path) == {"done": ["metrics", "plots", "model"]}


def test_the_spool_is_the_env_or_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(spool.SPOOL_ENV, str(tmp_path / "s"))
    assert spool.spool_root() == tmp_path / "s"
    monkeypatch.delenv(spool.SPOOL_ENV)
    monkeypatch.chdir(tmp_path)
    assert spool.spool_root() == tmp_path / ".hpo-spool"
