"""One trace per architecture: a reused trace must give exactly what MLflow's own save gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking._tracking_service import utils
from torch import nn

from hpo.tracking import pt2_cache
from hpo.tracking.models import load_pytorch_model
from hpo.tracking.pt2_cache import Pt2Cache, architecture, dropout_off
from hpo.tracking.runs import StudyTracker

#: MLmodel fields that name one model: everything else must match MLflow's own save.
IDENTITY = {"artifact_path", "model_uuid", "model_id", "run_id", "utc_time_created"}


def mlp(seed: int, dropout: float = 0.3, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, 3),
    )
    model.train()
    model(torch.randn(32, 4) * 2 + seed)  # batch-norm statistics that differ by seed
    return model


class Flipped(nn.Module):
    """A forward that depends on an attribute its repr does not show."""

    def __init__(self, flip: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.flip = flip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return -out if self.flip else out


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Pt2Cache:
    """A fresh cache for log_pytorch_model (the process's one is shared by every test)."""
    fresh = Pt2Cache()
    monkeypatch.setattr(pt2_cache, "CACHE", fresh)
    return fresh


X = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)


def log(tracker: StudyTracker, number: int, model: nn.Module) -> str:
    run = tracker.start_trial(number, {"seed": str(number)})
    return run.log_model(model, X[:5], metadata={"classes": ["a", "b", "c"]})


def model_dir(tracker: StudyTracker, uri: str) -> Path:
    from mlflow.utils.file_utils import local_file_uri_to_path

    model_id = uri.removeprefix("models:/")
    location = tracker.client.get_logged_model(model_id).artifact_location
    return Path(local_file_uri_to_path(location))


def files(root: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name not in ("MLmodel", "model.pt2")
    }


def mlmodel(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((root / "MLmodel").read_text())
    return {k: v for k, v in doc.items() if k not in IDENTITY}


def outputs(uri: str, tracker: StudyTracker) -> np.ndarray:
    loaded = load_pytorch_model(uri, tracking_uri=tracker.tracking_uri)
    with torch.no_grad():
        return loaded(torch.from_numpy(X)).numpy()


def expected(model: nn.Module) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


def test_a_second_model_of_an_architecture_reuses_the_trace_and_keeps_its_own_weights(
    tracker: StudyTracker, cache: Pt2Cache
) -> None:
    first, second = mlp(1, dropout=0.3), mlp(2, dropout=0.45)  # dropout's rate: same graph
    uri1 = log(tracker, 0, first)
    uri2 = log(tracker, 1, second)
    assert (cache.misses, cache.hits) == (1, 1)
    assert second.training and second[3].p == 0.45  # mode and rate given back

    # each loads back as itself, at another batch size than the example's
    np.testing.assert_array_equal(outputs(uri1, tracker), expected(first))
    np.testing.assert_array_equal(outputs(uri2, tracker), expected(second))
    assert not np.allclose(expected(first), expected(second))

    # the directory is what MLflow's own save writes, but for the model's identity
    dir1, dir2 = model_dir(tracker, uri1), model_dir(tracker, uri2)
    assert files(dir1) == files(dir2)
    assert mlmodel(dir1) == mlmodel(dir2)
    assert mlmodel(dir2)["metadata"] == {"classes": ["a", "b", "c"]}
    ident = yaml.safe_load((dir2 / "MLmodel").read_text())
    assert ident["model_id"] == uri2.removeprefix("models:/") != uri1.removeprefix("models:/")

    # MLflow's loaders read the reused one (what the UI's snippet and `mlflow models serve` run)
    with utils._use_tracking_uri(tracker.tracking_uri):
        again = mlflow.pytorch.load_model(uri2)
        served = mlflow.pyfunc.load_model(uri2).predict(X)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(X)).numpy(), expected(second))
    np.testing.assert_allclose(np.asarray(served), expected(second))


def test_another_architecture_is_traced_again(tracker: StudyTracker, cache: Pt2Cache) -> None:
    log(tracker, 0, mlp(1, width=16))
    uri = log(tracker, 1, mlp(2, width=8))
    log(tracker, 2, nn.Sequential(nn.Linear(4, 3)))
    assert (cache.misses, cache.hits) == (3, 0)
    np.testing.assert_array_equal(outputs(uri, tracker), expected(mlp(2, width=8)))


def test_a_trace_that_does_not_reproduce_the_model_is_replaced(
    tracker: StudyTracker, cache: Pt2Cache
) -> None:
    plain, flipped = Flipped(flip=False), Flipped(flip=True)
    assert architecture(plain) == architecture(flipped)  # the key cannot tell them apart
    log(tracker, 0, plain)
    uri = log(tracker, 1, flipped)
    assert (cache.misses, cache.hits) == (2, 0)  # the check refused the kept trace
    np.testing.assert_array_equal(outputs(uri, tracker), expected(flipped))
    log(tracker, 2, Flipped(flip=True))  # the new trace is the one kept
    assert cache.hits == 1


def test_the_oldest_architecture_is_forgotten_past_the_cache_size(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = Pt2Cache(size=2)
    monkeypatch.setattr(pt2_cache, "CACHE", small)
    for number, width in enumerate((4, 8, 12, 4)):
        log(tracker, number, mlp(number, width=width))
    assert (small.misses, small.hits) == (4, 0)
    log(tracker, 4, mlp(9, width=12))  # still kept
    assert small.hits == 1


def test_dropout_is_off_for_the_trace_and_restored() -> None:
    model = mlp(1, dropout=0.4)
    with dropout_off(model):
        assert model[3].p == 0.0
    assert model[3].p == 0.4
    with pytest.raises(RuntimeError), dropout_off(model):
        raise RuntimeError("the trace failed")
    assert model[3].p == 0.4
