"""classification_metrics against scikit-learn, computed independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from hpo.training.metrics import OBJECTIVE_METRICS, classification_metrics

KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "loss"}


def random_proba(n: int, k: int, seed: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(n, k))
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def check_against_sklearn(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    metrics = classification_metrics(y, proba, n_classes)
    assert set(metrics) == KEYS
    pred = proba.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert metrics["precision"] == pytest.approx(
        precision_score(y, pred, average="macro", zero_division=0)
    )
    assert metrics["recall"] == pytest.approx(
        recall_score(y, pred, average="macro", zero_division=0)
    )
    assert metrics["loss"] == pytest.approx(log_loss(y, proba, labels=list(range(n_classes))))
    return metrics


def test_binary() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    proba = random_proba(200, 2, 1)
    metrics = check_against_sklearn(y, proba, 2)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]))


def test_multiclass() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    proba = random_proba(300, 4, 3)
    # Make it better than chance so the numbers are not degenerate.
    proba[np.arange(300), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    metrics = check_against_sklearn(y, proba, 4)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert metrics["accuracy"] > 0.4


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[y] * 0.98 + 0.01 / 1.5
    metrics = classification_metrics(y, proba, 3)
    assert metrics["accuracy"] == metrics["f1"] == metrics["roc_auc"] == 1.0


def test_float32_probabilities_are_accepted() -> None:
    # A float32 softmax may miss a row sum of 1 by more than scikit-learn tolerates at float64.
    y = np.array([0, 1, 2, 1])
    proba = random_proba(4, 3, 5).astype(np.float32)
    metrics = classification_metrics(y, proba, 3)
    exact = proba.astype(np.float64)
    exact /= exact.sum(axis=1, keepdims=True)
    assert metrics["loss"] == pytest.approx(log_loss(y, exact, labels=[0, 1, 2]))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_class_missing_from_y_true_gives_nan_auc(n_classes: int) -> None:
    y = np.zeros(10, dtype=np.int64)
    if n_classes == 3:
        y[5:] = 1  # class 2 never occurs
    proba = random_proba(10, n_classes, 7)
    metrics = classification_metrics(y, proba, n_classes)
    assert math.isnan(metrics["roc_auc"])
    assert metrics["loss"] == pytest.approx(log_loss(y, proba, labels=list(range(n_classes))))
    assert all(math.isfinite(v) for k, v in metrics.items() if k != "roc_auc")


def test_objective_metric_directions() -> None:
    assert OBJECTIVE_METRICS == {
        "val_accuracy": "maximize",
        "val_loss": "minimize",
        "val_f1": "maximize",
        "val_precision": "maximize",
        "val_recall": "maximize",
        "val_roc_auc": "maximize",
        "n_params": "minimize",
        "train_seconds": "minimize",
        "inference_ms": "minimize",
    }
    # Every val_* objective is a classification_metrics key.
    keys = {f"val_{k}" for k in KEYS}
    assert {m for m in OBJECTIVE_METRICS if m.startswith("val_")} <= keys


@pytest.mark.parametrize("seed", range(12))
def test_random_cases_with_ties_and_missing_predictions_match_sklearn(seed: int) -> None:
    """NumPy's numbers are scikit-learn's: tied scores, classes never predicted, 2-7 classes."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    n = int(rng.integers(k * 3, 200))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    proba = random_proba(n, k, seed + 100)
    proba[:, -1] *= 0.05  # the last class is (almost) never predicted
    proba = np.round(proba / proba.sum(axis=1, keepdims=True), 2) + 1e-3  # many ties
    proba /= proba.sum(axis=1, keepdims=True)
    metrics = check_against_sklearn(y, proba, k)
    # classification_metrics renormalises in float64 first (see its docstring): so does this.
    exact = proba / proba.sum(axis=1, keepdims=True)
    expected = (
        roc_auc_score(y, exact[:, 1])
        if k == 2
        else roc_auc_score(y, exact, multi_class="ovr", average="macro", labels=list(range(k)))
    )
    assert metrics["roc_auc"] == pytest.approx(expected)
