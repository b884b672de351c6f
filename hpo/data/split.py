"""The split every source shares: stratified, seeded train / validation / optional test.

The test rows are carved first from the whole set, then the validation rows from the rest, both with
``split.seed``; both fractions are of the whole set. Sources that need no preprocessing beyond
scaling (``synthetic``, ``sklearn``) use :func:`scaled_dataset`; the ``csv`` source splits with
:func:`split_indices` and fits its own preprocessing on the training rows. Image sources (``npz``,
``images``, ``sklearn`` digits as images) use :func:`normalised_image_dataset`: per-channel
statistics of the training images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hpo.data.base import Dataset, SplitOptions
from hpo.errors import DataError

if TYPE_CHECKING:
    from hpo.data.augment import Augmentation


@dataclass(frozen=True)
class SplitIndices:
    """Row indices (into the loaded rows) of each split; ``test`` is ``None`` without a test split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None = None


def _count(fraction: float, n: int) -> int:
    # Rows a fraction asks for, rounded up like scikit-learn does; the inner round() keeps
    # float noise (0.1 * 30 = 3.0000000000000004) from adding a row.
    return math.ceil(round(fraction * n, 9)) if fraction > 0 else 0


def split_indices(
    y: np.ndarray,
    split: SplitOptions,
    *,
    classes: Sequence[str] | None = None,
    where: str = "data",
) -> SplitIndices:
    """Split rows with labels ``y`` (ints in ``[0, len(classes))``) stratified by class.

    ``classes`` names the labels in messages; ``where`` starts a message about too few rows (e.g.
    ``"data.target: /data/x.csv: column 'label'"``). Raises :class:`DataError` when the fractions
    leave no training rows, or a split or class has too few rows to be stratified.
    """
    y = np.asarray(y)
    n = len(y)
    val_f, test_f = split.val_fraction, split.test_fraction
    if val_f + test_f >= 1.0:
        raise DataError(
            f"data.val_fraction + data.test_fraction: must be < 1, got {val_f} + {test_f}"
        )
    labels, counts = np.unique(y, return_counts=True)
    k = len(labels)
    if k < 2:
        raise DataError(f"{where}: a single class; classification needs at least 2")

    # A stratified split puts rows of every class on both sides, so every class needs a row per
    # split it is divided into (two divisions with a test split), and every split a row per class.
    need = 3 if test_f > 0 else 2
    smallest = int(np.argmin(counts))
    if counts[smallest] < need:
        label = labels[smallest]
        name = classes[int(label)] if classes is not None else str(label)
        parts = "train / validation / test" if test_f > 0 else "train / validation"
        raise DataError(
            f"{where}: class '{name}' has only {counts[smallest]} row(s); a stratified "
            f"{parts} split needs at least {need} rows per class"
        )
    n_test = _count(test_f, n)
    n_val = _count(val_f, n)
    n_train = n - n_test - n_val
    sizes = [
        ("data.val_fraction", n_val, "validation"),
        ("data.val_fraction + data.test_fraction", n_train, "training"),
    ]
    if test_f > 0:
        sizes.insert(0, ("data.test_fraction", n_test, "test"))
    for field, size, what in sizes:
        if size < k:
            raise DataError(
                f"{field}: the {what} split would have {size} of {n} rows, fewer than the {k} "
                "classes; a stratified split needs at least one row per class (change the "
                "fractions or use more rows)"
            )

    rows = np.arange(n)
    try:
        test: np.ndarray | None = None
        if n_test:
            rows, test = train_test_split(
                rows, test_size=n_test, stratify=y, random_state=split.seed
            )
        train, val = train_test_split(
            rows, test_size=n_val, stratify=y[rows], random_state=split.seed
        )
    except ValueError as exc:
        # Rare leftovers of the checks above (a class left with one row after the test split).
        raise DataError(f"{where}: cannot split stratified: {exc}") from None
    # Sorted, so the rows of each split keep the file's order (easier to inspect, same result).
    return SplitIndices(
        train=np.sort(train), val=np.sort(val), test=None if test is None else np.sort(test)
    )


def as_features(X: np.ndarray) -> np.ndarray:
    """Features as the trainers expect them: float32, C-contiguous."""
    return np.ascontiguousarray(X, dtype=np.float32)


def as_labels(y: np.ndarray) -> np.ndarray:
    """Labels as the trainers expect them: int64, C-contiguous."""
    return np.ascontiguousarray(y, dtype=np.int64)


def scaled_dataset(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    split: SplitOptions,
    *,
    feature_names: list[str] | None = None,
    info: dict[str, Any] | None = None,
    where: str = "data",
) -> Dataset:
    """Split ``X`` (2-D) / ``y`` stratified and standard-scale with statistics of the train split.

    The fitted :class:`~sklearn.preprocessing.StandardScaler` is the dataset's ``preprocessor``.
    """
    idx = split_indices(y, split, classes=classes, where=where)
    X = np.asarray(X, dtype=np.float64)
    # Fitted on the training rows only: validation and test rows must not shape the features.
    scaler = StandardScaler().fit(X[idx.train])

    def part(rows: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        if rows is None:
            return None, None
        return as_features(scaler.transform(X[rows])), as_labels(y[rows])

    X_train, y_train = part(idx.train)
    X_val, y_val = part(idx.val)
    X_test, y_test = part(idx.test)
    assert X_train is not None and y_train is not None and X_val is not None and y_val is not None
    names = feature_names if feature_names is not None else [f"x{i}" for i in range(X.shape[1])]
    return Dataset(
        name=name,
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        classes=classes,
        feature_names=names,
        preprocessor=scaler,
        info={
            **(info or {}),
            "raw_columns": list(names),
            "n_rows": len(y),
            **split_info(idx),
        },
    )


def split_info(idx: SplitIndices) -> dict[str, int]:
    """Row counts of each split, for ``Dataset.info``."""
    return {
        "n_train": len(idx.train),
        "n_val": len(idx.val),
        "n_test": 0 if idx.test is None else len(idx.test),
    }


# -- images ----------------------------------------------------------------------------------------
#: How a source's raw images are laid out: N×C×H×W, N×H×W×C, or N×H×W (one channel).
ImageLayout = Literal["NCHW", "NHWC", "NHW"]

#: Rows converted per step when computing channel statistics, so float64 temporaries stay small
#: however large the training split is.
_STATS_CHUNK = 1024


def to_nchw(X: np.ndarray, layout: ImageLayout, scale: float = 1.0) -> np.ndarray:
    """Raw images in ``layout`` as float32 N×C×H×W, multiplied by ``scale`` (1/255 for uint8)."""
    X = np.asarray(X)
    expected = 3 if layout == "NHW" else 4
    if X.ndim != expected:
        raise ValueError(f"{layout} images need {expected} dimensions, got shape {X.shape}")
    if layout == "NHW":
        X = X[:, None]
    elif layout == "NHWC":
        X = X.transpose(0, 3, 1, 2)
    # One copy: the cast (and transpose) and the scaling happen in the same new array.
    out = np.array(X, dtype=np.float32, order="C")
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def channel_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (over N, H, W) of N×C×H×W images, in float64.

    Two passes over row chunks accumulated in float64: exact enough for millions of pixels without
    a float64 copy of the whole array. A constant channel gets a std of 1 (like
    :class:`~sklearn.preprocessing.StandardScaler`), so it maps to zeros instead of dividing by 0.
    """
    n, c = X.shape[:2]
    count = n * int(np.prod(X.shape[2:]))
    total = np.zeros(c)
    for start in range(0, n, _STATS_CHUNK):
        total += X[start : start + _STATS_CHUNK].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    squares = np.zeros(c)
    for start in range(0, n, _STATS_CHUNK):
        centred = X[start : start + _STATS_CHUNK].astype(np.float64) - mean[None, :, None, None]
        squares += np.square(centred).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / count)
    std[std < 1e-12] = 1.0
    return mean, std


@dataclass(frozen=True, eq=False)
class ImageNormaliser:
    """Maps raw images to model input: to N×C×H×W, times ``scale``, minus ``mean``, over ``std``.

    The ``preprocessor`` of image data sets, so a served model can take images as the source read
    them (``layout``; uint8 pixels when ``scale`` is 1/255). ``mean`` and ``std`` hold one value per
    channel, computed on the training split after scaling.
    """

    mean: np.ndarray
    std: np.ndarray
    layout: ImageLayout = "NCHW"
    scale: float = 1.0

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Normalised float32 N×C×H×W images from raw ones (scikit-learn's transformer method)."""
        return self.normalise(to_nchw(X, self.layout, self.scale))

    __call__ = transform

    def normalise(self, X: np.ndarray) -> np.ndarray:
        """Standardise float32 N×C×H×W images that are already scaled, in place; returns ``X``."""
        X -= self.mean.astype(np.float32)[None, :, None, None]
        X /= self.std.astype(np.float32)[None, :, None, None]
        return X


def normalised_image_dataset(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    split: SplitOptions,
    *,
    layout: ImageLayout = "NCHW",
    scale: float = 1.0,
    info: dict[str, Any] | None = None,
    where: str = "data",
    augmentation: Augmentation | None = None,
) -> Dataset:
    """Split raw images ``X`` (in ``layout``) / ``y`` stratified and normalise them per channel.

    Pixels are multiplied by ``scale`` (1/255 for uint8), then standardised per channel with the
    mean and std of the *training* split only; validation and test images use the same statistics.
    The fitted :class:`ImageNormaliser` is the dataset's ``preprocessor``; the statistics are also
    in ``info["channel_mean"]`` / ``info["channel_std"]`` (lists, one value per channel).
    """
    idx = split_indices(y, split, classes=classes, where=where)
    # Only the selected rows are converted, so the set never exists twice in float32 at once.
    X_train = to_nchw(X[idx.train], layout, scale)
    mean, std = channel_stats(X_train)
    normaliser = ImageNormaliser(mean=mean, std=std, layout=layout, scale=scale)
    X_train = normaliser.normalise(X_train)

    def part(rows: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        if rows is None:
            return None, None
        return normaliser.transform(X[rows]), as_labels(y[rows])

    X_val, y_val = part(idx.val)
    X_test, y_test = part(idx.test)
    assert X_val is not None and y_val is not None
    return Dataset(
        name=name,
        X_train=X_train,
        y_train=as_labels(y[idx.train]),
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        classes=classes,
        feature_names=None,
        preprocessor=normaliser,
        augmentation=augmentation,
        info={
            **(info or {}),
            "raw_layout": layout,
            "pixel_scale": scale,
            "image_shape": [int(d) for d in X_train.shape[1:]],
            "channel_mean": [float(v) for v in mean],
            "channel_std": [float(v) for v in std],
            "n_rows": len(y),
            **split_info(idx),
        },
    )
