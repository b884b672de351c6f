"""Evaluation metrics of a classifier's predicted probabilities, and each objective's direction."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

#: Every metric a study may optimise → its natural direction (used when the file gives none).
#: ``val_*`` are :func:`classification_metrics` on the validation split; the others come from
#: the model (``n_params``), the training run (``train_seconds``) and the trained model's
#: prediction of the validation split (``inference_ms``: milliseconds per sample).
OBJECTIVE_METRICS: dict[str, str] = {
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


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """Binary: the positive class's AUC; multi-class: one-vs-rest macro AUC.

    NaN when a class is absent from ``y_true`` (AUC is undefined without positives and negatives
    of every class): a small validation split must not crash a trial over one metric.
    """
    if n_classes < 2 or len(np.unique(y_true)) < n_classes:
        return math.nan
    if n_classes == 2:
        return float(roc_auc_score(y_true, proba[:, 1]))
    return float(
        roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))
        )
    )


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, n_classes: int
) -> dict[str, float]:
    """``accuracy``, macro ``precision`` / ``recall`` / ``f1``, ``roc_auc`` and ``loss`` (log loss).

    ``proba`` has shape ``(n, n_classes)``; the prediction is its arg-max. Precision, recall and
    F1 average over the classes present in ``y_true`` or predicted (scikit-learn's macro), with 0
    for a class never predicted. ``roc_auc`` is NaN when a class is absent from ``y_true``.
    """
    y_true = np.asarray(y_true)
    # Renormalise in float64: float32 softmax rows may miss 1 by more than sklearn tolerates.
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": _roc_auc(y_true, proba, n_classes),
        "loss": float(log_loss(y_true, proba, labels=list(range(n_classes)))),
    }
