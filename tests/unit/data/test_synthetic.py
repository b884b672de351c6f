"""The ``synthetic`` source, and what every source shares: lookup, options, the per-process cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from hpo.data import (
    SOURCES,
    clear_cache,
    load_dataset,
    load_dataset_cached,
    options_model,
)
from hpo.data.base import SplitOptions
from hpo.errors import DataError


def synthetic(split: SplitOptions | None = None, **options: Any):
    return load_dataset("synthetic", options, split or SplitOptions())


@pytest.mark.parametrize(
    ("kind", "n_features"),
    [("random", 20), ("classification", 20), ("moons", 2), ("blobs", 20)],
)
def test_every_kind_gives_split_float32_features_and_int64_labels(
    kind: str, n_features: int
) -> None:
    data = synthetic(SplitOptions(test_fraction=0.2), kind=kind, n_samples=200)
    assert data.X_train.shape == (110, n_features)
    assert data.X_val.shape == (50, n_features)
    assert data.X_test is not None and data.X_test.shape == (40, n_features)
    for X in (data.X_train, data.X_val, data.X_test):
        assert X.dtype == np.float32 and X.flags.c_contiguous
    assert data.y_train.dtype == np.int64
    assert data.classes == ["0", "1"] and data.n_classes == 2
    assert data.input_shape == (n_features,)
    assert data.info["kind"] == kind


def test_random_noise_experiment_shape() -> None:
    # The "MLP on random noise" experiment: 1,000 rows, 100 uniform features, 10 random labels.
    data = synthetic(kind="random", n_samples=1000, n_features=100, n_classes=10)
    assert data.n_features == 100 and data.n_classes == 10
    assert len(data.y_train) + len(data.y_val) == 1000
    raw = data.preprocessor.inverse_transform(data.X_train.astype(np.float64))
    assert raw.min() >= -1e-6 and raw.max() < 1 + 1e-6
    assert set(np.unique(data.y_train)) == set(range(10))


def test_random_state_makes_the_data_and_is_separate_from_the_split_seed() -> None:
    a = synthetic(kind="classification", random_state=1)
    b = synthetic(kind="classification", random_state=1)
    c = synthetic(kind="classification", random_state=2)
    d = synthetic(SplitOptions(seed=5), kind="classification", random_state=1)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, c.X_train)
    # Same generated rows, split differently: the same labels overall, other validation rows.
    all_a = np.sort(np.concatenate([a.y_train, a.y_val]))
    np.testing.assert_array_equal(all_a, np.sort(np.concatenate([d.y_train, d.y_val])))
    assert not np.allclose(a.X_val, d.X_val)


def test_classification_with_many_classes_chooses_enough_informative_features() -> None:
    data = synthetic(kind="classification", n_classes=10, n_features=8, n_samples=500)
    assert data.n_classes == 10 and data.n_features == 8


def test_blobs_use_n_classes_centers_and_n_features() -> None:
    data = synthetic(kind="blobs", n_classes=4, n_features=3)
    assert data.n_classes == 4 and data.n_features == 3
    assert set(np.unique(data.y_train)) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "moons", "n_classes": 3}, r"data\.n_classes: moons .* got 3"),
        ({"kind": "moons", "n_features": 5}, r"data\.n_features: moons .* got 5"),
        ({"kind": "classification", "n_classes": 10, "n_features": 3}, r"data\.n_features: .* 3"),
        ({"kind": "classification", "n_informative": 30}, r"data\.n_informative: .* got 30"),
        (
            {"kind": "classification", "n_classes": 5, "n_informative": 2},
            r"data\.n_informative: 5 classes .* got 2",
        ),
    ],
)
def test_impossible_combinations_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        synthetic(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_samples": 5}, "greater than or equal to 10"),
        ({"kind": "spirals"}, "'random', 'classification', 'moons' or 'blobs'"),
        ({"n_sampels": 100}, "unknown field 'n_sampels' (did you mean 'n_samples'?)"),
    ],
)
def test_invalid_options_raise_pydantic_errors_for_the_spec_layer(
    options: dict, message: str
) -> None:
    with pytest.raises(ValidationError) as err:
        synthetic(**options)
    assert message in str(err.value)


def test_unknown_source_suggests_the_closest() -> None:
    with pytest.raises(
        DataError, match=r"data\.source: unknown data source 'synthtic'.*'synthetic'"
    ):
        load_dataset("synthtic", {}, SplitOptions())


def test_every_source_is_registered_with_a_description_and_an_options_model() -> None:
    assert {"synthetic", "sklearn", "csv"} <= set(SOURCES.names())
    for name in SOURCES.names():
        src = SOURCES.get(name)
        assert src.description and "\n" not in src.description
        assert options_model(name) is src.Options
    with pytest.raises(KeyError, match="unknown data source 'nope'"):
        options_model("nope")


def test_the_cache_returns_the_same_object_for_the_same_data() -> None:
    clear_cache()
    split = SplitOptions(seed=3)
    a = load_dataset_cached("synthetic", {"n_samples": 100}, split)
    # The key is the validated options: a default written out is the same data set.
    b = load_dataset_cached("synthetic", {"kind": "classification", "n_samples": 100}, split)
    assert a is b
    assert load_dataset_cached("synthetic", {"n_samples": 100}, SplitOptions(seed=4)) is not a
    assert load_dataset_cached("synthetic", {"n_samples": 101}, split) is not a
    clear_cache()
    assert load_dataset_cached("synthetic", {"n_samples": 100}, split) is not a
