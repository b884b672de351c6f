"""The decision-boundary (PNG) and prediction-distribution (SVG) figures, and when a trial logs
them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from hpo.data.base import Dataset
from hpo.tracking.plots import (
    BOUNDARY_GRID,
    decision_boundary_figure,
    figure_png,
    prediction_distribution_figure,
)
from hpo.tracking.runs import StudyTracker, boundary_inputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_of(fig: Figure) -> bytes:
    data = figure_png(fig)
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000
    return data


class LinearModel:
    """P(class k) from a softmax of a fixed linear map: a boundary we know."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.calls.append(X.shape)
        assert X.dtype == np.float32
        logits = X.astype(np.float64) @ self.weights
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)


def points(n: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), np.arange(n) % n_classes


# -- decision boundary ---------------------------------------------------------------------------
def test_binary_boundary_is_one_predict_call_over_the_grid_and_a_contour() -> None:
    X, y = points(60, 2)
    Xv, yv = points(20, 2, seed=1)
    model = LinearModel(np.array([[1.0, -1.0], [0.0, 0.0]]))  # class 1 where x0 < 0
    fig = decision_boundary_figure(
        model, X, y, ["left", "right"], X_val=Xv, y_val=yv, feature_names=["x0", "x1"]
    )
    assert model.calls == [(BOUNDARY_GRID * BOUNDARY_GRID, 2)]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x0" and ax.get_ylabel() == "x1"
    assert len(ax.images) == 1
    # the 0.5 level of P(class 1): the line x0 = 0
    (contour,) = [c for c in ax.collections if hasattr(c, "levels")]
    assert list(contour.levels) == [0.5]
    vertices = np.concatenate([p.vertices for p in contour.get_paths()])
    assert np.allclose(vertices[:, 0], 0.0, atol=0.05)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["left (train)", "left (validation)", "right (train)", "right (validation)"]
    # the view covers every point, validation ones included
    everything = np.concatenate([X, Xv])
    assert ax.get_xlim()[0] < everything[:, 0].min() and ax.get_xlim()[1] > everything[:, 0].max()
    png_of(fig)


def test_three_classes_draw_the_lines_where_the_predicted_class_changes() -> None:
    X, y = points(90, 3)
    angles = np.array([0.0, 2.1, 4.2])
    model = LinearModel(np.stack([np.cos(angles), np.sin(angles)]))
    fig = decision_boundary_figure(model, X, y, ["a", "b", "c"], grid=40)
    assert model.calls == [(1600, 2)]
    (contour,) = [c for c in fig.axes[0].collections if hasattr(c, "levels")]
    assert list(contour.levels) == [0.5, 1.5, 2.5]
    png_of(fig)


def test_boundary_needs_two_features() -> None:
    with pytest.raises(ValueError, match="2 features, got data of shape \\(10, 3\\)"):
        decision_boundary_figure(
            LinearModel(np.zeros((3, 2))), np.zeros((10, 3)), [0] * 10, ["a", "b"]
        )


def test_a_model_with_non_finite_probabilities_gets_a_note_not_an_error() -> None:
    X, y = points(20, 2)
    fig = decision_boundary_figure(
        lambda G: np.full((len(G), 2), np.nan), X, y, ["a", "b"], grid=20
    )
    assert any("not finite" in t.get_text() for t in fig.axes[0].texts)
    png_of(fig)


# -- prediction distribution ----------------------------------------------------------------------
SVG = "{http://www.w3.org/2000/svg}"


def bands(document: str) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.fromstring(document)
    return root, [e for e in root.iter() if e.get("class") == "band"]


def test_distribution_stacks_each_class_share_per_epoch_next_to_the_labels() -> None:
    counts = [[90, 5, 5], [60, 20, 20], [34, 33, 33]]
    y_true = np.array([0] * 30 + [1] * 30 + [2] * 40)
    root, stacked = bands(prediction_distribution_figure(counts, ["a", "b", "c"], y_true))
    assert [b.tag for b in stacked] == [f"{SVG}polygon"] * 3  # one band per class
    assert [b.get("data-label") for b in stacked] == ["a", "b", "c"]
    # the bands' tops are the cumulative shares: the first class's band ends at 0.9, 0.6, 0.34
    tops = [[float(v) for v in b.get("data-top", "").split()] for b in stacked]
    assert tops[0] == pytest.approx([0.9, 0.6, 0.34])
    assert tops[2] == pytest.approx([1.0, 1.0, 1.0])
    # each band has an upper and a lower edge: two points per epoch
    assert all(len(b.get("points", "").split()) == 6 for b in stacked)
    # the labels' shares: 0.3, 0.3, 0.4
    shares = [float(e.get("data-share", "")) for e in root.iter() if e.get("class") == "share"]
    assert shares == pytest.approx([0.3, 0.3, 0.4])
    legend = [e.text for e in root.iter(f"{SVG}text") if e.get("class") == "legend-entry"]
    assert legend == ["a", "b", "c"]


def test_distribution_of_a_single_epoch_and_without_labels() -> None:
    root, stacked = bands(prediction_distribution_figure([[3, 1]], ["no", "yes"]))
    assert [b.tag for b in stacked] == [f"{SVG}rect"] * 2  # one epoch: a bar, no area
    assert [float(b.get("data-top", "")) for b in stacked] == [0.75, 1.0]
    assert not [e for e in root.iter() if e.get("class") == "share"]


def test_distribution_beyond_twenty_classes_has_no_legend() -> None:
    counts = [list(range(1, 26))] * 4
    root, stacked = bands(prediction_distribution_figure(counts, [str(k) for k in range(25)]))
    assert len(stacked) == 25
    assert len({b.get("fill") for b in stacked}) == 25  # still distinct colours
    assert not [e for e in root.iter() if e.get("class") == "legend-entry"]


# -- what a trial logs ------------------------------------------------------------------------------
def dataset(n_features: int) -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, n_features)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    return Dataset("d", X[:30], y[:30], X[30:], y[30:], ["neg", "pos"], feature_names=None)


@pytest.mark.parametrize(("n_features", "boundary"), [(2, True), (3, False)])
def test_trial_logs_the_distribution_and_a_boundary_only_for_2d_data(
    tracker: StudyTracker, workdir: Path, n_features: int, boundary: bool
) -> None:
    data = dataset(n_features)
    weights = np.zeros((n_features, 2))
    weights[0] = [-1.0, 1.0]
    model = LinearModel(weights)
    proba = model(data.X_val)
    history = [{"epoch": 1.0, "train_loss": 0.7, "val_loss": 0.6}]
    run = tracker.start_trial(0, {})
    run.log_plots(
        data.y_val,
        proba,
        data.classes,
        history,
        prediction_counts=[[5, 5], [4, 6]],
        boundary=boundary_inputs(data),
        predict_proba=model,
    )
    run.end("COMPLETE")
    names = {a.path for a in tracker.client.list_artifacts(run.run_id)}
    expected = {
        "confusion_matrix.svg",
        "roc_curves.svg",
        "learning_curves.svg",
        "prediction_distribution.svg",
    }
    assert names == (expected | {"decision_boundary.png"} if boundary else expected)
    if boundary:
        local = tracker.client.download_artifacts(run.run_id, "decision_boundary.png", str(workdir))
        assert Path(local).read_bytes()[:8] == PNG_MAGIC
    roc = tracker.client.download_artifacts(run.run_id, "roc_curves.svg", str(workdir))
    root = ET.fromstring(Path(roc).read_text(encoding="utf-8"))
    assert root.tag == f"{SVG}svg"
