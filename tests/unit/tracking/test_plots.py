"""The trial figures: binary and 10-class inputs, readable labels, valid PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from hpo.tracking.plots import (
    confusion_matrix_figure,
    figure_png,
    learning_curves_figure,
    roc_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def predictions(n_classes: int, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are right more often than chance."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def legend_texts(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def png_of(fig: Figure) -> bytes:
    data = figure_png(fig)
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000
    return data


@pytest.mark.parametrize("n_classes", [2, 10])
def test_confusion_matrix_counts_every_sample(n_classes: int) -> None:
    y, proba = predictions(n_classes)
    classes = [f"class {i}" for i in range(n_classes)]
    fig = confusion_matrix_figure(y, proba.argmax(axis=1), classes)
    ax = fig.axes[0]
    counts = [int(t.get_text()) for t in ax.texts]
    assert len(counts) == n_classes**2
    assert sum(counts) == len(y)
    assert [t.get_text() for t in ax.get_yticklabels()] == classes
    assert ax.get_xlabel() == "predicted class"
    assert ax.get_ylabel() == "true class"
    assert "accuracy" in ax.get_title()
    png_of(fig)


def test_confusion_matrix_shortens_long_class_names() -> None:
    classes = ["a very long class name indeed", "b"]
    fig = confusion_matrix_figure([0, 1], [0, 0], classes)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].endswith("…") and len(labels[0]) <= 14
    assert labels[1] == "b"


def test_binary_roc_is_one_curve_for_the_positive_class() -> None:
    y, proba = predictions(2)
    fig = roc_figure(y, proba, ["neg", "pos"])
    texts = legend_texts(fig)
    assert texts[0].startswith("chance")
    assert len(texts) == 2
    assert texts[1].startswith("pos (AUC 0.")
    png_of(fig)
    # P(positive) alone is accepted too
    assert legend_texts(roc_figure(y, proba[:, 1], ["neg", "pos"])) == texts


def test_ten_class_roc_has_every_class_and_both_averages() -> None:
    y, proba = predictions(10)
    fig = roc_figure(y, proba, [str(i) for i in range(10)])
    texts = legend_texts(fig)
    assert len(texts) == 1 + 10 + 2
    assert all("AUC" in t for t in texts)
    assert any(t.startswith("micro-average") for t in texts)
    assert any(t.startswith("macro-average") for t in texts)
    png_of(fig)


def test_roc_names_a_class_without_samples() -> None:
    y, proba = predictions(3)
    y = np.where(y == 2, 0, y)  # class 2 never occurs in the validation split
    texts = legend_texts(roc_figure(y, proba, ["a", "b", "c"]))
    assert "c: no samples" in texts
    assert any(t.startswith("macro-average") for t in texts)


def test_learning_curves_have_loss_and_accuracy_panels() -> None:
    history = [
        {
            "epoch": float(e),
            "train_loss": 1.0 / e,
            "val_loss": 1.1 / e,
            "train_accuracy": 1 - 1 / (e + 1),
            "val_accuracy": 0.9 - 1 / (e + 2),
        }
        for e in range(1, 16)
    ]
    fig = learning_curves_figure(history)
    loss, accuracy = fig.axes
    assert loss.get_title() == "loss" and accuracy.get_title() == "accuracy"
    for ax in (loss, accuracy):
        assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
        assert np.asarray(ax.get_lines()[0].get_xdata()).tolist() == list(range(1, 16))
    png_of(fig)


def test_learning_curves_without_validation_or_epoch_numbers() -> None:
    fig = learning_curves_figure([{"train_loss": 0.5, "train_accuracy": 0.7}] * 3)
    loss, _ = fig.axes
    assert [line.get_label() for line in loss.get_lines()] == ["train"]
    assert np.asarray(loss.get_lines()[0].get_xdata()).tolist() == [1, 2, 3]
    png_of(fig)


def test_roc_of_non_finite_probabilities_is_a_note_not_a_crash() -> None:
    y, proba = predictions(3)
    proba[0, 0] = np.nan
    fig = roc_figure(y, proba, ["a", "b", "c"])
    assert "not finite" in fig.axes[0].texts[0].get_text()
    png_of(fig)
