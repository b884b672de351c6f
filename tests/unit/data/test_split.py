"""The split every source shares: stratified, seeded, scaled on the training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.data.base import SplitOptions
from hpo.data.split import scaled_dataset, split_indices
from hpo.errors import DataError


def labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_splits_are_disjoint_cover_every_row_and_have_the_asked_sizes() -> None:
    y = labels([60, 30, 10])
    idx = split_indices(y, SplitOptions(val_fraction=0.25, test_fraction=0.2, seed=0))
    assert idx.test is not None
    assert (len(idx.train), len(idx.val), len(idx.test)) == (55, 25, 20)
    rows = np.concatenate([idx.train, idx.val, idx.test])
    assert sorted(rows.tolist()) == list(range(len(y)))


def test_no_test_split_by_default() -> None:
    idx = split_indices(labels([50, 50]), SplitOptions())
    assert idx.test is None
    assert (len(idx.train), len(idx.val)) == (75, 25)


def test_fraction_rounding_ignores_float_noise() -> None:
    # 0.1 * 30 is 3.0000000000000004 in floating point: still 3 rows, not 4.
    idx = split_indices(labels([15, 15]), SplitOptions(val_fraction=0.1))
    assert len(idx.val) == 3


def test_class_proportions_are_kept_in_every_split() -> None:
    y = labels([600, 300, 100])
    idx = split_indices(y, SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=3))
    assert idx.test is not None
    for rows in (idx.train, idx.val, idx.test):
        share = np.bincount(y[rows], minlength=3) / len(rows)
        np.testing.assert_allclose(share, [0.6, 0.3, 0.1], atol=0.01)


def test_same_seed_same_split_other_seed_other_split() -> None:
    y = labels([40, 40])
    a = split_indices(y, SplitOptions(seed=1))
    b = split_indices(y, SplitOptions(seed=1))
    c = split_indices(y, SplitOptions(seed=2))
    np.testing.assert_array_equal(a.val, b.val)
    assert not np.array_equal(a.val, c.val)


def test_fractions_must_leave_training_rows() -> None:
    with pytest.raises(DataError, match=r"data\.val_fraction \+ data\.test_fraction.*0\.5 \+ 0\.5"):
        split_indices(labels([50, 50]), SplitOptions(val_fraction=0.5, test_fraction=0.5))


def test_a_class_too_small_to_stratify_is_named() -> None:
    with pytest.raises(DataError, match=r"class 'rare' has only 1 row"):
        split_indices(labels([20, 1]), SplitOptions(), classes=["common", "rare"])


def test_a_class_needs_three_rows_with_a_test_split() -> None:
    with pytest.raises(DataError, match=r"class '1' has only 2 row.*at least 3"):
        split_indices(labels([20, 2]), SplitOptions(test_fraction=0.2))


def test_a_split_smaller_than_the_number_of_classes_is_refused() -> None:
    with pytest.raises(DataError, match=r"data\.val_fraction: the validation split would have 2"):
        split_indices(labels([10, 10, 10]), SplitOptions(val_fraction=0.05))


def test_a_single_class_is_refused() -> None:
    with pytest.raises(DataError, match="single class"):
        split_indices(labels([10]), SplitOptions(), where="data.target: x.csv")


def test_scaled_dataset_fits_the_scaler_on_train_only() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(400, 4))
    y = labels([200, 200])
    data = scaled_dataset("t", X, y, ["a", "b"], SplitOptions(test_fraction=0.2))
    assert data.X_train.dtype == np.float32 and data.X_train.flags.c_contiguous
    assert data.y_train.dtype == np.int64
    assert data.X_test is not None and data.X_test.dtype == np.float32
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std(axis=0), 1.0, atol=1e-4)
    # Validation rows are transformed with the training statistics, not standardised themselves.
    assert np.abs(data.X_val.mean(axis=0)).max() > 1e-3
    # The scaler's statistics are the raw training rows', not the whole set's.
    train = split_indices(y, SplitOptions(test_fraction=0.2)).train
    np.testing.assert_allclose(
        data.X_train, (X[train] - X[train].mean(0)) / X[train].std(0), atol=1e-5
    )
    np.testing.assert_allclose(data.preprocessor.mean_, X[train].mean(axis=0))
    assert not np.allclose(data.preprocessor.mean_, X.mean(axis=0))
    assert data.info["n_train"] + data.info["n_val"] + data.info["n_test"] == 400
    assert data.feature_names == ["x0", "x1", "x2", "x3"]
