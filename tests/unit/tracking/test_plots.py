"""The trial figures (SVG documents): binary and 10-class inputs, readable labels, the numbers
behind each curve, and ROC curves that agree with scikit-learn."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from hpo.tracking.plots import (
    auc,
    confusion_matrix_figure,
    learning_curves_figure,
    roc_curve,
    roc_figure,
)

SVG = "{http://www.w3.org/2000/svg}"


def predictions(n_classes: int, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are right more often than chance."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits)
    return y, proba / proba.sum(axis=1, keepdims=True)


def parse(document: str) -> ET.Element:
    """The document as XML: well formed, an ``<svg>`` with a size and a white background."""
    root = ET.fromstring(document)
    assert root.tag == f"{SVG}svg"
    assert float(root.get("width", 0)) >= 300 and float(root.get("height", 0)) >= 200
    return root


def texts(root: ET.Element, css_class: str) -> list[str]:
    return [e.text or "" for e in root.iter(f"{SVG}text") if e.get("class") == css_class]


def group_texts(root: ET.Element, css_class: str) -> list[str]:
    return [
        t.text or ""
        for g in root.iter(f"{SVG}g")
        if g.get("class") == css_class
        for t in g.iter(f"{SVG}text")
    ]


def series(root: ET.Element) -> list[tuple[str, list[float], list[float]]]:
    """Each drawn series: its label and the data it carries."""
    found = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "series":
            xs = [float(v) for v in g.get("data-x", "").split()]
            ys = [float(v) for v in g.get("data-y", "").split()]
            found.append((g.get("data-label", ""), xs, ys))
    return found


@pytest.mark.parametrize("n_classes", [2, 10])
def test_confusion_matrix_counts_every_sample(n_classes: int) -> None:
    y, proba = predictions(n_classes)
    classes = [f"class {i}" for i in range(n_classes)]
    root = parse(confusion_matrix_figure(y, proba.argmax(axis=1), classes))
    counts = [int(t) for t in texts(root, "count")]
    assert len(counts) == n_classes**2
    assert sum(counts) == len(y)
    # row by row: the diagonal holds the right answers
    right = int((proba.argmax(axis=1) == y).sum())
    assert sum(counts[i * n_classes + i] for i in range(n_classes)) == right
    assert group_texts(root, "yticks") == classes
    assert group_texts(root, "xticks") == classes
    assert texts(root, "xlabel") == ["predicted class"]
    assert texts(root, "ylabel") == ["true class"]
    assert texts(root, "axes-title") == [
        f"Confusion matrix (validation, accuracy {right / len(y):.3f})"
    ]


def test_confusion_matrix_shortens_long_class_names_and_escapes_them() -> None:
    classes = ["a very long class name indeed", "<b & c>"]
    root = parse(confusion_matrix_figure([0, 1], [0, 0], classes))
    labels = group_texts(root, "yticks")
    assert labels[0].endswith("…") and len(labels[0]) <= 14
    assert labels[1] == "<b & c>"  # escaped in the file, read back as written


def test_binary_roc_is_one_curve_for_the_positive_class() -> None:
    y, proba = predictions(2)
    root = parse(roc_figure(y, proba, ["neg", "pos"]))
    entries = texts(root, "legend-entry")
    assert entries[0].startswith("chance")
    assert len(entries) == 2
    expected = roc_auc_score(y, proba[:, 1])
    assert entries[1] == f"pos (AUC {expected:.3f})"
    (label, fpr, tpr) = series(root)[1]
    assert label == "pos" and fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    # P(positive) alone is accepted too
    assert texts(parse(roc_figure(y, proba[:, 1], ["neg", "pos"])), "legend-entry") == entries


def test_ten_class_roc_has_every_class_and_both_averages() -> None:
    y, proba = predictions(10)
    root = parse(roc_figure(y, proba, [str(i) for i in range(10)]))
    entries = texts(root, "legend-entry")
    assert len(entries) == 1 + 10 + 2
    assert all("AUC" in t for t in entries)
    micro = roc_auc_score(np.eye(10)[y].ravel(), proba.ravel())
    assert f"micro-average (AUC {micro:.3f})" in entries
    assert any(t.startswith("macro-average") for t in entries)
    for k in range(10):
        assert f"{k} (AUC {roc_auc_score(y == k, proba[:, k]):.3f})" in entries
    assert [s[0] for s in series(root)][-2:] == ["micro-average", "macro-average"]


def test_roc_names_a_class_without_samples() -> None:
    y, proba = predictions(3)
    y = np.where(y == 2, 0, y)  # class 2 never occurs in the validation split
    entries = texts(parse(roc_figure(y, proba, ["a", "b", "c"])), "legend-entry")
    assert "c: no samples" in entries
    assert any(t.startswith("macro-average") for t in entries)


def test_roc_of_non_finite_probabilities_is_a_note_not_a_crash() -> None:
    y, proba = predictions(3)
    proba[0, 0] = np.nan
    root = parse(roc_figure(y, proba, ["a", "b", "c"]))
    assert "not finite" in " ".join(texts(root, "note"))


@pytest.mark.parametrize("seed", range(8))
def test_roc_curve_and_auc_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    positive = rng.random(n) < rng.uniform(0.1, 0.9)
    positive[:2] = [True, False]  # both classes occur
    # rounded scores: many ties, as a model's saturated softmax gives
    score = np.round(rng.normal(size=n) + positive * rng.uniform(0, 2), int(rng.integers(0, 3)))
    fpr, tpr = roc_curve(positive, score)
    want_fpr, want_tpr, _ = sklearn_roc_curve(positive, score)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(positive, score))


def history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": float(e),
            "train_loss": 1.0 / e,
            "val_loss": 1.1 / e,
            "train_accuracy": 1 - 1 / (e + 1),
            "val_accuracy": 0.9 - 1 / (e + 2),
        }
        for e in range(1, epochs + 1)
    ]


def test_learning_curves_have_loss_and_accuracy_panels() -> None:
    root = parse(learning_curves_figure(history(15)))
    assert texts(root, "axes-title") == ["loss", "accuracy"]
    drawn = series(root)
    assert [label for label, _, _ in drawn] == ["train", "validation"] * 2
    for _, xs, _ in drawn:
        assert xs == list(range(1, 16))
    assert drawn[0][2][0] == pytest.approx(1.0) and drawn[3][2][-1] == pytest.approx(0.9 - 1 / 17)
    assert "epoch" in texts(root, "xlabel")


def test_learning_curves_without_validation_or_epoch_numbers() -> None:
    root = parse(learning_curves_figure([{"train_loss": 0.5, "train_accuracy": 0.7}] * 3))
    drawn = series(root)
    assert [label for label, _, _ in drawn] == ["train", "train"]
    assert drawn[0][1] == [1, 2, 3]


def test_a_nan_epoch_breaks_the_line_instead_of_breaking_the_plot() -> None:
    rows = history(6)
    rows[2]["val_loss"] = float("nan")
    root = parse(learning_curves_figure(rows))
    loss_val = next(g for g in root.iter(f"{SVG}g") if g.get("data-label") == "validation")
    assert loss_val.get("data-y", "").split()[2] == "nan"
    assert len(loss_val.findall(f"{SVG}polyline")) == 2  # epochs 1-2 and 4-6
