"""The loop's per-epoch predicted-class counts on the validation split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_blobs

from hpo.data.base import Dataset
from hpo.models.mlp import MLP, MLPParams
from hpo.training.config import TrainParams
from hpo.training.loop import predict_proba, seed_everything, train

CPU = torch.device("cpu")


def four_blobs(n_val: int = 100) -> Dataset:
    X, y = make_blobs(n_samples=300 + n_val, centers=4, n_features=3, random_state=0)
    X, y = X.astype(np.float32), y.astype(np.int64)
    return Dataset("blobs", X[:300], y[:300], X[300:], y[300:], ["a", "b", "c", "d"])


def test_one_row_per_epoch_of_counts_over_every_class() -> None:
    data = four_blobs()
    seed_everything(0)
    model = MLP().build(MLPParams(width=16, dropout=0.2), data.input_shape, data.n_classes)
    result = train(model, data, TrainParams(), epochs=4, device=CPU, seed=0)

    counts = result.val_prediction_counts
    assert len(counts) == 4
    for row in counts:
        assert len(row) == data.n_classes
        assert all(isinstance(c, int) and c >= 0 for c in row)
        assert sum(row) == len(data.y_val)
    # The last epoch's counts are the trained model's predictions (eval mode: no dropout).
    predicted = predict_proba(model, data.X_val, CPU).argmax(axis=1)
    assert counts[-1] == np.bincount(predicted, minlength=data.n_classes).tolist()


def test_a_class_never_predicted_counts_zero() -> None:
    data = four_blobs()
    seed_everything(0)
    model = MLP().build(MLPParams(width=8), data.input_shape, data.n_classes)
    with torch.no_grad():
        # A huge bias for class 2 and zero weights into the output: always class 2, and with
        # lr=0 it stays that way.
        model.out.weight.zero_()
        model.out.bias.copy_(torch.tensor([0.0, 0.0, 100.0, 0.0]))
    result = train(
        model, data, TrainParams(optimizer="sgd", lr=1e-12), epochs=2, device=CPU, seed=0
    )
    assert result.val_prediction_counts == [[0, 0, len(data.y_val), 0]] * 2


def test_no_validation_split_records_no_counts() -> None:
    full = four_blobs()
    data = Dataset(
        "blobs",
        full.X_train,
        full.y_train,
        full.X_val[:0],
        full.y_val[:0],
        full.classes,
    )
    seed_everything(0)
    model = MLP().build(MLPParams(width=8), data.input_shape, data.n_classes)
    result = train(model, data, TrainParams(), epochs=2, device=CPU, seed=0)
    assert result.val_prediction_counts == []
    assert len(result.history) == 2
