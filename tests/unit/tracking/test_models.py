"""Logged models: pt2 only, loadable without the fluent state, predicting what the original did."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from hpo.tracking.models import global_tracking_uri, load_pytorch_model, pip_requirements
from hpo.tracking.runs import StudyTracker, TrialRun


def small_model() -> nn.Module:
    torch.manual_seed(1)
    # Dropout and batch norm behave differently in training: the export must be in eval mode.
    return nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )


def trained(model: nn.Module) -> nn.Module:
    """A few steps, so batch-norm statistics are not the defaults."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.randn(64, 4) * 3 + 1
    y = torch.randint(0, 3, (64,))
    model.train()
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.fixture
def run(tracker: StudyTracker) -> TrialRun:
    return tracker.start_trial(0, {"lr": 0.1})


def test_logged_model_loads_back_and_predicts_the_same_logits(
    run: TrialRun, tracker: StudyTracker, tmp_path: Path, template_db: Path
) -> None:
    from mlflow.tracking._tracking_service import utils

    # MLflow's global tracking URI names another store: log_model must neither use nor change it
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(template_db, other / "mlflow.db")
    other_uri = f"sqlite:///{other}/mlflow.db"
    model = trained(small_model())
    X = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    with utils._use_tracking_uri(other_uri):
        uri = run.log_model(model, X[:5])
        assert utils._tracking_uri == other_uri
        assert os.environ["MLFLOW_TRACKING_URI"] == other_uri
        # the store is named explicitly: the global one does not know the model
        loaded = load_pytorch_model(uri, tracking_uri=tracker.tracking_uri)
    assert model.training  # its mode is given back
    assert loaded.eval() is loaded  # the usual call before inference is accepted
    with pytest.raises(NotImplementedError, match="frozen in eval mode"):
        loaded.train()

    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
        # a batch size other than the example's: the batch dimension is dynamic
        np.testing.assert_allclose(loaded(torch.from_numpy(X)).numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(loaded(torch.from_numpy(X[:2])).numpy(), expected[:2], atol=1e-5)

    # mlflow's own loader reads it too (what a user of the UI's snippet runs)
    with utils._use_tracking_uri(tracker.tracking_uri):
        again = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(X)).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("env", [None, "sqlite:///elsewhere.db"])
def test_switching_the_global_uri_restores_the_environment_exactly(
    run: TrialRun, tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    from mlflow.tracking._tracking_service import utils

    # No global URI set (MLflow's default state); the variable present or absent.
    monkeypatch.setattr(utils, "_tracking_uri", None)
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    with global_tracking_uri(tracker.tracking_uri):
        assert mlflow.get_tracking_uri() == tracker.tracking_uri
    assert utils._tracking_uri is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == env
    with pytest.raises(RuntimeError), global_tracking_uri(tracker.tracking_uri):
        raise RuntimeError("a failing MLflow call")
    assert utils._tracking_uri is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == env
    # the real caller: logging a model switches the URI and leaves the environment as it was
    # (MLflow's _use_tracking_uri deleted the variable here)
    run.log_model(nn.Linear(4, 3), np.zeros((2, 4), dtype=np.float32))
    assert utils._tracking_uri is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == env


def test_model_is_pt2_with_signature_example_and_pinned_requirements(
    run: TrialRun, tracker: StudyTracker, tmp_path: Path
) -> None:
    uri = run.log_model(nn.Linear(4, 3), np.zeros((1, 4), dtype=np.float64))
    # (MLflow resolves models:/ URIs in its global store; the model's location is unambiguous)
    location = tracker.client.get_logged_model(uri.split("/")[-1]).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(location, dst_path=str(tmp_path)))
    assert (local / "data" / "model.pt2").is_file()
    assert not (local / "data" / "model.pth").exists()
    mlmodel = mlflow.models.Model.load(str(local))
    inputs = json.loads(mlmodel.signature.inputs.to_json())
    # float32 rows with a free batch size, though the example was one float64 row
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    assert (local / "input_example.json").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert "+" not in "".join(requirements)
    assert pip_requirements()[0].startswith("torch==")
    # a single-row example still exports a dynamic batch dimension
    loaded = load_pytorch_model(str(local))
    assert loaded(torch.zeros(3, 4)).shape == (3, 3)


def test_a_pickled_model_is_refused_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        nn.Linear(2, 2), str(path), serialization_format="pickle", pip_requirements=["torch"]
    )
    # even when the environment allows pickle, and torch.load is never reached
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(MlflowException, match="not saved in the pt2 format"):
        load_pytorch_model(str(path))


def test_log_model_refuses_a_model_off_the_cpu(run: TrialRun) -> None:
    model = nn.Linear(2, 2)
    model.to("meta")
    with pytest.raises(ValueError, match="move the model to the CPU"):
        run.log_model(model, np.zeros((2, 2), np.float32))


def test_importing_tracking_stays_light() -> None:
    """``import hpo.tracking`` does not pull in mlflow (seconds), and plots never load pyplot."""
    import subprocess
    import sys

    code = (
        "import sys, hpo.tracking, hpo.tracking.plots\n"
        "assert 'mlflow' not in sys.modules, 'mlflow'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_model_saved_in_place_or_uploaded_is_what_model_log_writes(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hpo's two ways to log a model whose LoggedModel exists and is linked to its run already
    (saved in place on a SQLite store with local artifacts; saved and uploaded on any other
    store, without reading the model back) write what MLflow's ``Model.log`` writes."""
    from mlflow.entities import LoggedModelStatus

    from hpo.tracking import models, sql_store

    model = trained(small_model())
    X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    client = tracker.client

    def logged(how: str) -> tuple[str, Path]:
        run = tracker.start_trial(0, {"lr": 0.1})
        model_id = run.create_model({"lr": "0.1"}, {"hpo.trial": "0"})
        location = client.get_logged_model(model_id).artifact_location
        # Kept from its creation (for the spooled job), on a SQL store as on a server.
        assert run.model_locations == {model_id: location}
        original = models._save_in_place
        took: list[bool] = []
        reads: list[str] = []

        def save_in_place(*args: object, **kwargs: object) -> bool:
            took.append(how == "in_place" and original(*args, **kwargs))  # type: ignore[arg-type]
            return took[-1]

        monkeypatch.setattr(models, "_save_in_place", save_in_place)
        if how == "uploaded":
            monkeypatch.setattr(type(client), "get_logged_model", lambda _, m: reads.append(m))
        monkeypatch.setattr(sql_store, "logged_model_location", lambda _, m: reads.append(m))
        uri = models.log_pytorch_model(
            client,
            model,
            X,
            experiment_id=tracker.experiment_id,
            run_id=run.run_id,
            model_id=model_id,
            metadata={"hpo": {"study": "demo"}},
            # The sender's call: the run's metrics are linked already. None: MLflow's Model.log
            # links the model to the run, reading the run's metrics back.
            step_metrics=None if how == "model_log" else [],
            location=location,
        )
        monkeypatch.undo()
        assert took == ([] if how == "model_log" else [how == "in_place"])
        assert reads == []  # the location was given: the model is not read back
        logged = client.get_logged_model(model_id)
        assert uri == f"models:/{model_id}"
        assert logged.status == LoggedModelStatus.READY
        assert [o.model_id for o in client.get_run(run.run_id).outputs.model_outputs] == [model_id]
        return model_id, Path(logged.artifact_location.removeprefix("file://"))

    ours, ours_dir = logged("in_place")
    uploaded, uploaded_dir = logged("uploaded")
    _, theirs_dir = logged("model_log")

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    assert files(ours_dir) == files(theirs_dir) == files(uploaded_dir)
    assert not [p for p in ours_dir.parent.iterdir() if p.name.startswith(".saving-")]
    volatile = ("utc_time_created", "model_uuid", "model_id", "artifact_path", "run_id")
    mlmodels = [
        {k: v for k, v in mlflow.models.Model.load(str(d)).to_dict().items() if k not in volatile}
        for d in (ours_dir, uploaded_dir, theirs_dir)
    ]
    assert mlmodels[0] == mlmodels[1] == mlmodels[2]
    model.eval()
    for model_id, directory in ((ours, ours_dir), (uploaded, uploaded_dir)):
        saved = mlflow.models.Model.load(str(directory))
        assert (saved.model_id, saved.model_uuid) == (model_id, model_id)
        loaded = load_pytorch_model(f"models:/{model_id}", tracking_uri=tracker.tracking_uri)
        with torch.no_grad():
            np.testing.assert_allclose(
                loaded(torch.from_numpy(X)).numpy(), model(torch.from_numpy(X)).numpy(), atol=1e-6
            )
