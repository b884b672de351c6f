"""The training loop: learning, reproducibility, callbacks, divergence, full batch, isolation."""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from torch import nn

import hpo.training.loop as loop_module
from hpo.data.base import Dataset
from hpo.models.mlp import MLP, MLPParams
from hpo.training.callbacks import Callback
from hpo.training.config import TrainParams
from hpo.training.loop import (
    TrainingDiverged,
    TrainResult,
    predict_proba,
    seed_everything,
    train,
)

CPU = torch.device("cpu")
EPOCH_KEYS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}


def blobs(n: int = 400, seed: int = 0) -> Dataset:
    X, y = make_blobs(n_samples=n, centers=3, n_features=4, cluster_std=1.0, random_state=seed)
    X = X.astype(np.float32)
    y = y.astype(np.int64)
    cut = n * 3 // 4
    return Dataset("blobs", X[:cut], y[:cut], X[cut:], y[cut:], ["a", "b", "c"])


def run(
    data: Dataset,
    seed: int = 0,
    epochs: int = 3,
    callbacks: tuple[Callback, ...] = (),
    model_params: MLPParams | None = None,
    **train_params: Any,
) -> tuple[nn.Module, TrainResult]:
    seed_everything(seed)
    params = model_params or MLPParams(width=16, dropout=0.1)
    model = MLP().build(params, data.input_shape, data.n_classes)
    result = train(
        model,
        data,
        TrainParams(**train_params),
        epochs=epochs,
        device=CPU,
        seed=seed,
        callbacks=callbacks,
    )
    return model, result


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.calls.append((epoch, dict(metrics)))


def test_learns_separable_blobs() -> None:
    data = blobs()
    model, result = run(data, epochs=5, batch_size=32, lr=1e-2)
    assert result.history[-1]["val_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.epochs_run == 5 and len(result.history) == 5
    assert result.train_seconds > 0 and result.samples_per_second > 0
    assert not model.training  # left in eval mode
    proba = predict_proba(model, data.X_val, CPU)
    assert proba.shape == (len(data.y_val), 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == data.y_val).mean() == pytest.approx(
        result.history[-1]["val_accuracy"]
    )


def test_history_has_epoch_and_finite_metrics() -> None:
    _, result = run(blobs(), epochs=2)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for entry in result.history:
        assert set(entry) == EPOCH_KEYS | {"epoch"}
        assert all(math.isfinite(v) for v in entry.values())
        assert 0 <= entry["train_accuracy"] <= 1 and 0 <= entry["val_accuracy"] <= 1


def test_same_seed_same_history_different_seed_different() -> None:
    data = blobs()
    _, first = run(data, seed=1)
    _, again = run(data, seed=1)
    _, other = run(data, seed=2)
    assert first.history == again.history
    assert first.history != other.history


def test_callbacks_get_every_epoch_with_the_four_keys() -> None:
    recorders = (Recorder(), Recorder())
    _, result = run(blobs(), epochs=4, callbacks=recorders)
    for recorder in recorders:
        assert [epoch for epoch, _ in recorder.calls] == [1, 2, 3, 4]
        for (_, metrics), entry in zip(recorder.calls, result.history, strict=True):
            assert set(metrics) == EPOCH_KEYS
            assert metrics == {k: entry[k] for k in EPOCH_KEYS}


def test_callback_exception_stops_training_and_propagates() -> None:
    class Stop(Exception):
        pass

    class StopAtTwo(Recorder):
        def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
            super().on_epoch_end(epoch, metrics)
            if epoch == 2:
                raise Stop("pruned")

    callback = StopAtTwo()
    with pytest.raises(Stop, match="pruned"):
        run(blobs(), epochs=10, callbacks=(callback,))
    assert [epoch for epoch, _ in callback.calls] == [1, 2]


def test_huge_learning_rate_diverges() -> None:
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch \d+") as info:
        run(blobs(), epochs=5, optimizer="sgd", lr=1e10)
    assert info.value.epoch >= 1
    assert not math.isfinite(info.value.loss)
    assert "learning rate too high" in str(info.value)


def test_non_finite_input_diverges_at_the_first_batch() -> None:
    data = blobs()
    X = data.X_train.copy()
    X[0, 0] = np.nan
    broken = Dataset("broken", X, data.y_train, data.X_val, data.y_val, data.classes)
    with pytest.raises(TrainingDiverged) as info:
        run(broken, batch_size="full")
    assert info.value.epoch == 1


def test_training_diverged_pickles() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(TrainingDiverged(3, math.inf)))
    assert (exc.epoch, exc.loss) == (3, math.inf)
    assert str(exc) == "loss became inf at epoch 3 (learning rate too high?)"


class CountingAdam(torch.optim.Adam):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


def count_steps(monkeypatch: pytest.MonkeyPatch, data: Dataset, **train_params: Any) -> int:
    CountingAdam.steps = 0
    monkeypatch.setattr(
        loop_module, "make_optimizer", lambda name, params, **kw: CountingAdam(params, lr=kw["lr"])
    )
    run(data, epochs=3, **train_params)
    return CountingAdam.steps


def test_full_batch_is_one_step_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert count_steps(monkeypatch, blobs(), batch_size="full") == 3


def test_mini_batches_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 training rows, batches of 64: 4 full batches and one of 44.
    assert count_steps(monkeypatch, blobs(), batch_size=64) == 3 * 5


def test_last_batch_of_one_is_dropped_so_batch_norm_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = blobs(n=132)  # 99 training rows: batches of 49, 49 and a lone 1
    steps = count_steps(monkeypatch, data, batch_size=49)
    assert steps == 3 * 2
    _, result = run(data, model_params=MLPParams(width=8, batch_norm=True), batch_size=49)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_batch_size_larger_than_the_data() -> None:
    _, result = run(blobs(), epochs=1, batch_size=10_000)
    assert result.epochs_run == 1


def test_every_optimizer_trains() -> None:
    for optimizer in ("adam", "adamw", "sgd", "rmsprop"):
        _, result = run(blobs(), epochs=1, optimizer=optimizer, lr=1e-2, momentum=0.5)
        assert math.isfinite(result.history[0]["train_loss"])


def test_predict_proba_restores_mode_and_batches() -> None:
    data = blobs()
    model, _ = run(data, epochs=1)
    model.train()
    whole = predict_proba(model, data.X_val, CPU)
    batched = predict_proba(model, data.X_val, CPU, batch_size=7)
    assert model.training
    assert np.allclose(whole, batched)
    assert whole.dtype == np.float64


def test_loop_imports_neither_optuna_nor_mlflow() -> None:
    tree = ast.parse(inspect.getsource(loop_module))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, "no imports found: the check would be vacuous"
    assert "optuna" not in imported and "mlflow" not in imported
