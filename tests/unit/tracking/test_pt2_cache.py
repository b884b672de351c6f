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


def test_a_model_of_an_architecture_seen_before_reuses_its_trace_with_its_own_weights(
    tracker: StudyTracker, cache: Pt2Cache
) -> None:
    # dropout's rate does not change the graph; the trace is kept from the second model on
    models = [mlp(1, dropout=0.3), mlp(2, dropout=0.45), mlp(3, dropout=0.1)]
    uris = [log(tracker, n, model) for n, model in enumerate(models)]
    assert (cache.misses, cache.hits) == (2, 1)
    assert models[2].training and models[2][3].p == 0.1  # mode and rate given back

    # each loads back as itself, at another batch size than the example's
    for uri, model in zip(uris, models, strict=True):
        np.testing.assert_array_equal(outputs(uri, tracker), expected(model))
    assert not np.allclose(expected(models[1]), expected(models[2]))

    # the directory is what MLflow's own save writes, but for the model's identity
    traced, reused = model_dir(tracker, uris[0]), model_dir(tracker, uris[2])
    assert files(traced) == files(reused)
    assert mlmodel(traced) == mlmodel(reused)
    assert mlmodel(reused)["metadata"] == {"classes": ["a", "b", "c"]}
    ident = yaml.safe_load((reused / "MLmodel").read_text())
    assert ident["model_id"] == uris[2].removeprefix("models:/")

    # MLflow's loaders read the reused one (what the UI's snippet and `mlflow models serve` run)
    with utils._use_tracking_uri(tracker.tracking_uri):
        again = mlflow.pytorch.load_model(uris[2])
        served = mlflow.pyfunc.load_model(uris[2]).predict(X)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(X)).numpy(), expected(models[2]))
    np.testing.assert_allclose(np.asarray(served), expected(models[2]))


def test_another_architecture_is_traced_again(tracker: StudyTracker, cache: Pt2Cache) -> None:
    log(tracker, 0, mlp(1, width=16))
    log(tracker, 1, mlp(2, width=16))
    uri = log(tracker, 2, mlp(3, width=8))
    log(tracker, 3, nn.Sequential(nn.Linear(4, 3)))
    assert (cache.misses, cache.hits) == (4, 0)
    np.testing.assert_array_equal(outputs(uri, tracker), expected(mlp(3, width=8)))


def test_a_trace_that_does_not_reproduce_the_model_is_replaced(
    tracker: StudyTracker, cache: Pt2Cache
) -> None:
    plain, flipped = Flipped(flip=False), Flipped(flip=True)
    assert architecture(plain) == architecture(flipped)  # the key cannot tell them apart
    log(tracker, 0, plain)
    log(tracker, 1, Flipped(flip=False))  # kept
    uri = log(tracker, 2, flipped)
    assert (cache.misses, cache.hits) == (3, 0)  # the check refused the kept trace
    np.testing.assert_array_equal(outputs(uri, tracker), expected(flipped))
    log(tracker, 3, Flipped(flip=True))  # the new trace is the one kept
    assert cache.hits == 1


def test_the_least_recently_used_trace_goes_past_the_cache_size(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = Pt2Cache(size=2)
    monkeypatch.setattr(pt2_cache, "CACHE", small)
    number = 0
    for width in (4, 8, 12):  # each kept from its second model on; 4 goes when 12 comes
        for _ in range(2):
            log(tracker, number, mlp(number, width=width))
            number += 1
    assert (small.misses, small.hits) == (6, 0)
    log(tracker, 6, mlp(6, width=12))
    log(tracker, 7, mlp(7, width=8))
    assert small.hits == 2
    log(tracker, 8, mlp(8, width=4))
    assert small.misses == 7


def test_dropout_is_off_for_the_trace_and_restored() -> None:
    model = mlp(1, dropout=0.4)
    with dropout_off(model):
        assert model[3].p == 0.0
    assert model[3].p == 0.4
    with pytest.raises(RuntimeError), dropout_off(model):
        raise RuntimeError("the trace failed")
    assert model[3].p == 0.4


def archive_records(path: Path) -> dict[str, bytes]:
    from torch.export.pt2_archive import PT2ArchiveReader

    reader = PT2ArchiveReader(str(path))
    names = reader.archive_file.get_all_records()
    return {n: reader.read_bytes(n) for n in names if n != ".data/serialization_id"}


def test_a_reused_archive_holds_what_torch_export_save_writes(
    tracker: StudyTracker, cache: Pt2Cache, tmp_path: Path
) -> None:
    models = [mlp(1), mlp(2), mlp(3, dropout=0.1)]
    uris = [log(tracker, n, model) for n, model in enumerate(models)]
    assert cache.hits == 1
    (template,) = cache._templates.values()
    assert template.records is not None  # weights are raw records: written without a save
    reused = archive_records(model_dir(tracker, uris[2]) / "data" / "model.pt2")

    # the same model exported and saved by torch itself, record for record
    model = models[2].eval()
    with dropout_off(model):
        program = torch.export.export(
            model,
            (torch.from_numpy(np.repeat(X[:5], 1, axis=0)),),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    saved = archive_records(tmp_path / "model.pt2")
    weights = {n for n in saved if n.startswith("data/weights/weight_")}
    assert len(weights) == len(model.state_dict())  # BatchNorm's int64 counter included
    assert {n: saved[n] for n in weights} == {n: reused[n] for n in weights}
    assert reused.keys() == saved.keys()


def test_an_archive_with_weights_stored_otherwise_is_saved_by_torch(
    tracker: StudyTracker, cache: Pt2Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pt2_cache, "_archive_records", lambda *a: (None, None))
    models = [mlp(1), mlp(2), mlp(3)]
    uris = [log(tracker, n, model) for n, model in enumerate(models)]
    (template,) = cache._templates.values()
    assert template.records is None and cache.hits == 1
    np.testing.assert_array_equal(outputs(uris[2], tracker), expected(models[2]))


def test_the_mlmodel_file_is_the_text_mlflow_writes(tmp_path: Path) -> None:
    """save_mlmodel (libyaml) writes what ``Model.save`` (PyYAML's Python emitter) writes, for
    values YAML quotes, wraps or escapes."""
    from mlflow.models import Model

    from hpo.tracking.pt2_cache import save_mlmodel

    model = Model(
        artifact_path="/tmp/a path/with: colon",
        flavors={"pytorch": {"pytorch_version": "2.13.0+cpu", "code": None}},
        metadata={
            "hpo": {
                "classes": ["0", "yes", "no", "null", "1.0", "-", "é", "a\nb", "'q'", '"d"'],
                "mean": [0.4975266004935479, 1e-300, float("inf"), -0.0, 3],
                "long": "word " * 60,
                "flags": [True, False, None],
                "nested": {"empty": [], "dict": {}},
            }
        },
    )
    save_mlmodel(model, tmp_path / "MLmodel")
    model.save(str(tmp_path / "MLmodel.mlflow"))
    assert (tmp_path / "MLmodel").read_text() == (tmp_path / "MLmodel.mlflow").read_text()
    assert Model.load(str(tmp_path / "MLmodel")).metadata == model.metadata

    # The next model of the study: its metadata entry comes from the cache, the rest is new.
    model.run_id = "r2"
    model.model_size_bytes = 123
    save_mlmodel(model, tmp_path / "MLmodel")
    model.save(str(tmp_path / "MLmodel.mlflow"))
    assert (tmp_path / "MLmodel").read_text() == (tmp_path / "MLmodel.mlflow").read_text()

    # Values whose JSON is another value's, and shared values (YAML anchors, numbered per
    # document): written whole, as MLflow writes them.
    shared = ["x", "y"]
    for metadata in (
        {"hpo": {1: "a key"}},
        {"hpo": {"1": "a key"}},
        {"a": shared, "b": shared},
    ):
        model.metadata = metadata
        model.flavors = {"pytorch": {"shared": shared}} if "a" in metadata else model.flavors
        save_mlmodel(model, tmp_path / "MLmodel")
        model.save(str(tmp_path / "MLmodel.mlflow"))
        assert (tmp_path / "MLmodel").read_text() == (tmp_path / "MLmodel.mlflow").read_text()
