"""The figures attached to every trial run: confusion matrix, ROC curves, learning curves, the
distribution of predicted classes by epoch, and (for data with two features) the decision boundary.

The first four are SVG documents written by :mod:`hpo.tracking.svg` (returned as ``str``, logged
as ``.svg`` artifacts that MLflow's UI shows as images): every trial draws them on the CPU that
trains, and matplotlib took 0.64 s for the four plots of a 10-class trial on 2 cores (building
0.31 s, Agg rendering with FreeType text 0.32 s) where the SVG writer takes a few milliseconds
(``benchmarks/overhead.py`` measures both). The decision boundary, drawn only for 2-feature data,
is a raster of 22,500 predictions with contour lines: that one is a matplotlib figure rendered to
PNG by :func:`figure_png`, built with the object-oriented API (``Figure`` + ``FigureCanvasAgg``),
never ``pyplot``, whose global state is not thread-safe. matplotlib is imported only for it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.tracking import svg
from hpo.tracking.svg import Axes, LegendEntry, Svg

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rendering resolution; 100 dpi keeps a 5x4 figure at ~500x400 px, plenty for the MLflow UI.
DPI = 100
#: Tick labels longer than this are shortened (CSV class names can be whole sentences).
MAX_LABEL_CHARS = 14
#: Classes beyond which the prediction-distribution figure has no legend.
MAX_LEGEND_CLASSES = 20


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches itself to the figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def confusion_matrix_figure(
    y_true: np.ndarray | Sequence[int],
    y_pred: np.ndarray | Sequence[int],
    classes: Sequence[str],
) -> str:
    """Counts in each cell, coloured by the row-normalised rate (per-class recall); SVG text.

    Colouring by rate rather than count keeps small classes visible next to large ones; the
    printed counts keep the absolute numbers. Labels are integers in ``[0, len(classes))``.
    """
    n = len(classes)
    truth = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    counts = np.bincount(n * truth + pred, minlength=n * n)[: n * n].reshape(n, n)
    totals = counts.sum(axis=1, keepdims=True)
    rates = counts / np.maximum(totals, 1)
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))

    side = min(4.0 + 0.18 * max(n - 6, 0), 10.0) * DPI  # grows with the class count, capped
    doc = Svg(side + DPI, side, "Confusion matrix")
    matrix = side * 0.7
    cell = matrix / max(n, 1)
    left, top = (side + DPI) * 0.2, side * 0.1
    ax = Axes(doc, (left, top, matrix, matrix), (-0.5, n - 0.5), (n - 0.5, -0.5))
    labels = _short_labels(classes)
    count_size = 9 if n <= 5 else 7 if n <= 10 else 5
    with doc.group("cells"):
        for i in range(n):
            for j in range(n):
                color = svg.interpolate(svg.BLUES, rates[i, j])
                doc.rect(left + j * cell, top + i * cell, cell, cell, color)
    # Counts are unreadable past ~25 classes; the colours still tell the story.
    if n <= 25:
        with doc.group("counts"):
            for i in range(n):
                for j in range(n):
                    ink = "#ffffff" if rates[i, j] > 0.5 else "#000000"
                    x, y = left + (j + 0.5) * cell, top + (i + 0.5) * cell
                    doc.text(x, y, str(counts[i, j]), count_size, "middle", ink, css_class="count")
    ax.frame()
    tick_size = 8 if n <= 10 else 6
    ticks = [float(k) for k in range(n)]
    ax.xticks(ticks, labels, tick_size, rotate=n > 4)
    ax.yticks(ticks, labels, tick_size)
    longest = max((svg.text_width(label, tick_size) for label in labels), default=0.0)
    below = longest * 0.71 + 18 if n > 4 else 2 * tick_size + 14
    ax.xlabel("predicted class", offset=below)
    ax.ylabel("true class", offset=longest + 16)
    ax.title(f"Confusion matrix (validation, accuracy {accuracy:.3f})")

    # The colour bar: the rate scale, light (0) to dark (1).
    bar_left = left + matrix + 0.05 * (side + DPI)
    bar = Axes(doc, (bar_left, top, 0.03 * (side + DPI), matrix), (0.0, 1.0), (0.0, 1.0))
    stops = "".join(
        f'<stop offset="{k / (len(svg.BLUES) - 1):.3f}" stop-color="{c}"/>'
        for k, c in enumerate(svg.BLUES)
    )
    doc.add(
        f'<defs><linearGradient id="rate" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient>'
        "</defs>"
    )
    doc.rect(bar.left, bar.top, bar.width, bar.height, "url(#rate)", stroke="#000000")
    scale = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    with doc.group("colorbar"):
        for value in scale:
            y = bar.py(value)
            doc.line(bar.right, y, bar.right + 3.5, y, "#000000", 0.8)
            doc.text(bar.right + 5, y, f"{value:.1f}", 7)
        doc.text(
            bar.right + 28, bar.top + bar.height / 2, "fraction of the true class", 8, "middle",
            rotate=-90,
        )  # fmt: skip
    return doc.render()


def roc_figure(
    y_true: np.ndarray | Sequence[int],
    proba: np.ndarray,
    classes: Sequence[str],
) -> str:
    """ROC curves with their AUC in the legend; SVG text.

    Binary problems get one curve, for the positive class (``classes[1]``). Multi-class problems
    get one one-vs-rest curve per class plus the micro-average (every (sample, class) decision
    pooled) and the macro-average (the mean of the per-class curves on a common FPR grid). A
    class absent from ``y_true`` has no ROC curve; it is named in the legend as such.
    """
    truth = np.asarray(y_true, dtype=np.int64).ravel()
    scores = np.asarray(proba, dtype=np.float64)
    n = len(classes)
    if scores.ndim == 1:  # binary, given as P(positive)
        scores = np.column_stack([1.0 - scores, scores])

    # A 10-class legend needs a little more room than a binary one.
    width, height = (500.0, 420.0) if n <= 8 else (560.0, 480.0)
    doc = Svg(width, height, "ROC curves")
    box = (0.12 * width, 0.07 * height, 0.85 * width, 0.82 * height)
    ax = Axes(doc, box, (-0.01, 1.0), (0.0, 1.01))
    ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ax.grid(ticks, ticks)
    legend: list[LegendEntry] = [LegendEntry("chance (AUC 0.5)", "#808080", "dotted", 1.0)]
    ax.series([0.0, 1.0], [0.0, 1.0], "#808080", "chance", 1.0, "1.5,2")

    if not np.isfinite(scores).all():
        # A model that blew up in its last step: say so instead of failing the trial over a plot.
        ax.note("no ROC: the predicted\nprobabilities are not finite")
    elif n == 2:
        positive = truth == 1
        name = _short(classes[1])
        if positive.all() or not positive.any():
            legend.append(LegendEntry(f"{name}: needs both classes", swatch="none"))
        else:
            fpr, tpr = roc_curve(positive, scores[:, 1])
            ax.series(fpr, tpr, svg.TAB10[0], name, 2.0)
            legend.append(LegendEntry(f"{name} (AUC {auc(fpr, tpr):.3f})", svg.TAB10[0], width=2))
    else:
        colors = svg.class_colors(n)
        onehot = truth[:, None] == np.arange(n)[None, :]
        grid = np.linspace(0.0, 1.0, 201)
        curves: list[np.ndarray] = []
        for k in range(n):
            name = _short(classes[k])
            if onehot[:, k].all() or not onehot[:, k].any():
                legend.append(LegendEntry(f"{name}: no samples", swatch="none"))
                continue
            fpr, tpr = roc_curve(onehot[:, k], scores[:, k])
            curves.append(np.interp(grid, fpr, tpr))
            ax.series(fpr, tpr, colors[k], name, 1.0, opacity=0.8)
            legend.append(LegendEntry(f"{name} (AUC {auc(fpr, tpr):.3f})", colors[k], width=1))
        fpr, tpr = roc_curve(onehot.ravel(), scores.ravel())
        ax.series(fpr, tpr, "#ff1493", "micro-average", 2.0, "5,2")
        legend.append(
            LegendEntry(f"micro-average (AUC {auc(fpr, tpr):.3f})", "#ff1493", "dashed", 2)
        )
        if curves:
            mean_tpr = np.mean(curves, axis=0)
            mean_tpr[0] = 0.0
            ax.series(grid, mean_tpr, "#000080", "macro-average", 2.0, "5,2")
            macro = f"macro-average (AUC {auc(grid, mean_tpr):.3f})"
            legend.append(LegendEntry(macro, "#000080", "dashed", 2))

    ax.frame()
    ax.xticks(ticks)
    ax.yticks(ticks)
    ax.xlabel("false positive rate", offset=24)
    ax.ylabel("true positive rate", offset=32)
    ax.title("ROC curves (validation)")
    # The lower right is where ROC curves are not; 10+ entries need a small font and 2 columns.
    ax.legend(
        legend,
        "lower right",
        size=7 if len(legend) <= 6 else 6,
        columns=1 if len(legend) <= 8 else 2,
    )
    return doc.render()


def learning_curves_figure(history: Sequence[dict[str, float]]) -> str:
    """Two panels, loss and accuracy, each train vs validation by epoch; SVG text.

    ``history`` holds one dict per epoch as the training loop reports it (``epoch``,
    ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``); a missing ``epoch`` is
    taken as the position (from 1), a missing metric is simply not drawn.
    """
    epochs = [float(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    width, height = 800.0, 340.0
    doc = Svg(width, height, "Learning curves")
    doc.text(width / 2, 0.06 * height, "Learning curves", 11, "middle", css_class="suptitle")
    panel = 0.91 * width / 2.22  # two panels with 0.22 of a panel between them
    xlim = svg.padded_range(epochs)
    xticks = svg.nice_ticks(*xlim, target=8, integer=True)
    markers = len(epochs) <= 30
    for i, what in enumerate(("loss", "accuracy")):
        lines = {
            split: [_number(row.get(f"{split}_{what}")) for row in history]
            for split in ("train", "val")
        }
        drawn = {k: v for k, v in lines.items() if not all(math.isnan(x) for x in v)}
        ylim = svg.padded_range([v for values in drawn.values() for v in values])
        left = 0.07 * width + i * 1.22 * panel
        ax = Axes(doc, (left, 0.15 * height, panel, 0.71 * height), xlim, ylim)
        yticks = svg.nice_ticks(*ylim, target=6)
        ax.grid(xticks, yticks)
        legend: list[LegendEntry] = []
        for split, color in (("train", svg.TAB10[0]), ("val", svg.TAB10[1])):
            if split in drawn:
                label = "train" if split == "train" else "validation"
                ax.series(epochs, drawn[split], color, label, 1.5, markers=markers)
                legend.append(LegendEntry(label, color))
        ax.frame()
        ax.xticks(xticks)
        ax.yticks(yticks)
        ax.title(what)
        ax.xlabel("epoch", offset=26)
        # Loss falls and accuracy rises: the empty corner is upper right for one, lower for the other.
        ax.legend(legend, "upper right" if what == "loss" else "lower right", size=8)
    return doc.render()


def prediction_distribution_figure(
    counts: Sequence[Sequence[int]],
    classes: Sequence[str],
    y_true: np.ndarray | Sequence[int] | None = None,
) -> str:
    """How the validation predictions spread over the classes, epoch by epoch; SVG text.

    ``counts`` holds one row per epoch (from 1) of predicted-class counts, as the training loop
    records them (``TrainResult.val_prediction_counts``). The main panel stacks each class's share
    of the predictions (each band's ``data-top`` holds its top edge per epoch); with ``y_true`` a
    bar at the right shows the labels' own shares, which a good model approaches and a collapsed
    one (everything predicted as one class) does not.
    """
    n = len(classes)
    table = np.asarray(counts, dtype=np.float64).reshape(-1, n) if len(counts) else np.zeros((0, n))
    totals = np.maximum(table.sum(axis=1, keepdims=True), 1.0)
    shares = table / totals
    tops = np.cumsum(shares, axis=1)
    epochs = list(range(1, len(table) + 1))
    colors = svg.class_colors(n)
    labels = _short_labels(classes)

    width, height = 700.0, 380.0
    doc = Svg(width, height, "Predicted classes by epoch")
    right = 0.74 if y_true is not None else 0.8
    box = (0.09 * width, 0.11 * height, (right - 0.09) * width, 0.76 * height)
    several = len(epochs) > 1
    xlim = (1.0, float(len(epochs))) if several else (0.5, 1.5)
    ax = Axes(doc, box, xlim, (0.0, 1.0))
    with doc.group("bands"):
        for k in range(n if epochs else 0):
            top = tops[:, k]
            bottom = tops[:, k - 1] if k else np.zeros(len(epochs))
            data = {"data_label": labels[k], "data_top": " ".join(f"{v:.4g}" for v in top)}
            if several:
                upper = [(ax.px(e), ax.py(v)) for e, v in zip(epochs, top, strict=True)]
                lower = [(ax.px(e), ax.py(v)) for e, v in zip(epochs, bottom, strict=True)]
                doc.polygon(upper + lower[::-1], colors[k], "band", **data)
            else:
                # One epoch has no area to stack: draw it as a bar.
                x0, x1 = ax.px(0.7), ax.px(1.3)
                y0, y1 = ax.py(top[0]), ax.py(bottom[0])
                doc.rect(x0, y0, x1 - x0, y1 - y0, colors[k], css_class="band", **data)
    ax.frame()
    xticks = svg.nice_ticks(*xlim, target=8, integer=True) if several else [1.0]
    ax.xticks(xticks)
    ax.yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.xlabel("epoch", offset=26)
    ax.ylabel("share of validation predictions", offset=34)
    ax.title("Predicted classes by epoch (validation)")

    if y_true is not None:
        truth = np.asarray(y_true, dtype=np.int64).ravel()
        true_shares = np.bincount(truth, minlength=n)[:n] / max(len(truth), 1)
        bar = Axes(doc, ((right + 0.015) * width, box[1], 0.05 * width, box[3]), (0, 1), (0, 1))
        bottom_share = 0.0
        with doc.group("labels-bar"):
            for k in range(n):
                y0, y1 = bar.py(bottom_share + true_shares[k]), bar.py(bottom_share)
                share = f"{true_shares[k]:.4g}"
                doc.rect(
                    bar.left, y0, bar.width, y1 - y0, colors[k], css_class="share", data_share=share
                )
                bottom_share += true_shares[k]
        bar.frame()
        doc.text(bar.left + bar.width / 2, bar.bottom + 10, "labels", 8, "middle")
    if n > MAX_LEGEND_CLASSES:
        return doc.render()  # a legend that long is unreadable; the colours run along viridis
    entries = [LegendEntry(labels[k], colors[k], "box") for k in range(n)]
    at = ((right + (0.08 if y_true is not None else 0.01)) * width, box[1])
    ax.legend(entries, size=7, title="class", at=at, frame=False)
    return doc.render()


# -- ROC without scikit-learn's input checks -----------------------------------------------------
def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from (0, 0) to (1, 1): the
    curve of ``sklearn.metrics.roc_curve`` (intermediate points dropped as it does), checked
    against it in the tests. ``positive`` is boolean; both classes must occur."""
    order = np.argsort(-score, kind="mergesort")
    hits = np.asarray(positive, dtype=bool)[order]
    ranked = score[order]
    # The last index of each run of equal scores: a threshold between distinct scores.
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tps = np.cumsum(hits)[last]
    fps = (last + 1) - tps
    # Keep the corners only (scikit-learn's drop_intermediate): a point on a straight stretch
    # adds nothing to the curve or its area, and large validation sets have thousands of them.
    if len(tps) > 2:
        corners = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[corners], fps[corners]
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule (x increasing)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


#: Grid points per axis of the decision-boundary figure: 150 x 150 = 22,500 predictions (one
#: forward pass), fine enough that the boundary looks smooth at 100 dpi.
BOUNDARY_GRID = 150


def decision_boundary_figure(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray | Sequence[int],
    classes: Sequence[str],
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | Sequence[int] | None = None,
    feature_names: Sequence[str] | None = None,
    grid: int = BOUNDARY_GRID,
) -> Figure:
    """The regions a 2-feature classifier assigns to each class, with the data on top.

    ``predict_proba`` maps an ``(m, 2)`` float32 array of points to ``(m, n_classes)``
    probabilities; it is called once, on a ``grid`` x ``grid`` mesh covering the points with a
    10 % margin. The background is the predicted class, shaded by its probability (pale where
    the model hesitates); the black line is the boundary: for two classes the 0.5 level of
    P(``classes[1]``), otherwise where the predicted class changes. Training points ``X``/``y``
    are filled circles, validation points (if given) outlined squares.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"a decision boundary needs 2 features, got data of shape {X.shape}")
    n = len(classes)
    points = [X] if X_val is None else [X, np.asarray(X_val, dtype=np.float64).reshape(-1, 2)]
    everything = np.concatenate(points)
    low, high = everything.min(axis=0), everything.max(axis=0)
    margin = np.maximum((high - low) * 0.1, 1e-3)
    low, high = low - margin, high + margin
    xs = np.linspace(low[0], high[0], grid)
    ys = np.linspace(low[1], high[1], grid)
    xx, yy = np.meshgrid(xs, ys)
    mesh = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float32)
    proba = np.asarray(predict_proba(mesh), dtype=np.float64).reshape(grid, grid, -1)
    finite = bool(np.isfinite(proba).all())

    colors = np.array([to_rgb(c) for c in svg.class_colors(n)])
    fig = Figure(figsize=(5.4, 4.4), dpi=DPI)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.92)
    ax = fig.add_subplot()
    if finite:
        predicted = proba.argmax(axis=2)
        confidence = proba.max(axis=2)
        # Blend each class colour with white by the model's confidence: 1/n (a coin toss) is
        # white, certainty is the colour at 45 %, light enough for the points to stand out.
        strength = np.clip((confidence - 1.0 / n) / (1.0 - 1.0 / n), 0.0, 1.0)[..., None] * 0.45
        image = 1.0 - strength * (1.0 - colors[predicted])
        ax.imshow(
            image,
            origin="lower",
            extent=(xs[0], xs[-1], ys[0], ys[-1]),
            aspect="auto",
            interpolation="bilinear",
        )
        if n == 2:
            ax.contour(xx, yy, proba[..., 1], levels=[0.5], colors="black", linewidths=1.2)
        else:
            ax.contour(
                xx,
                yy,
                predicted,
                levels=np.arange(n) + 0.5,
                colors="black",
                linewidths=0.8,
            )
    else:
        ax.text(
            0.5,
            0.5,
            "no boundary: the predicted\nprobabilities are not finite",
            ha="center",
            transform=ax.transAxes,
        )

    truth = np.asarray(y, dtype=np.int64).ravel()
    val_truth = None if y_val is None else np.asarray(y_val, dtype=np.int64).ravel()
    for k in range(n):
        color = colors[k]
        mine = truth == k
        ax.scatter(
            X[mine, 0],
            X[mine, 1],
            s=16,
            color=color,
            edgecolors="black",
            linewidths=0.4,
            label=f"{_short(classes[k])} (train)",
        )
        if X_val is not None and val_truth is not None:
            Xv = points[1]
            theirs = val_truth == k
            ax.scatter(
                Xv[theirs, 0],
                Xv[theirs, 1],
                s=22,
                marker="s",
                facecolors="none",
                edgecolors=[color],
                linewidths=1.2,
                label=f"{_short(classes[k])} (validation)",
            )
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    names = list(feature_names) if feature_names is not None and len(feature_names) == 2 else []
    ax.set_xlabel(names[0] if names else "feature 1", fontsize=9)
    ax.set_ylabel(names[1] if names else "feature 2", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.set_title("Decision boundary (scaled features)", fontsize=10, y=1.0)
    ax.legend(
        loc="best",
        fontsize=6 if n > 3 else 7,
        ncol=1 if n <= 3 else 2,
        framealpha=0.85,
        handletextpad=0.3,
    )
    return fig


# -- helpers -----------------------------------------------------------------------------------
def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _short(label: object) -> str:
    text = str(label)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _short_labels(classes: Sequence[object]) -> list[str]:
    return [_short(c) for c in classes]
