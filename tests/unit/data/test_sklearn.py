"""The ``sklearn`` source: the bundled sets, and a helpful message for a mistyped name."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hpo.data import load_dataset
from hpo.data.base import SplitOptions
from hpo.data.sklearn import SklearnOptions, SklearnSource
from hpo.errors import DataError


@pytest.mark.parametrize(
    ("name", "rows", "features", "classes"),
    [
        ("iris", 150, 4, ["setosa", "versicolor", "virginica"]),
        ("wine", 178, 13, ["class_0", "class_1", "class_2"]),
        ("breast_cancer", 569, 30, ["malignant", "benign"]),
        ("digits", 1797, 64, [str(d) for d in range(10)]),
    ],
)
def test_bundled_sets_load_split_and_scaled(
    name: str, rows: int, features: int, classes: list[str]
) -> None:
    data = load_dataset("sklearn", {"name": name}, SplitOptions(val_fraction=0.2))
    assert data.name == name
    assert data.classes == classes
    assert data.input_shape == (features,)
    assert len(data.y_train) + len(data.y_val) == rows
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.feature_names is not None and len(data.feature_names) == features
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0.0, atol=1e-4)


def test_digits_are_flattened_and_the_default() -> None:
    data = load_dataset("sklearn", {}, SplitOptions())
    assert data.name == "digits" and data.X_train.shape[1:] == (64,)


def test_stratified_split_keeps_iris_balanced() -> None:
    data = load_dataset("sklearn", {"name": "iris"}, SplitOptions(val_fraction=0.2))
    assert np.bincount(data.y_val).tolist() == [10, 10, 10]


def test_a_mistyped_name_fails_validation_with_a_suggestion() -> None:
    with pytest.raises(ValidationError) as err:
        SklearnOptions.model_validate({"name": "digts"})
    assert (
        "unknown sklearn data set 'digts' (did you mean 'digits'?); "
        "known: breast_cancer, digits, iris, wine"
    ) in str(err.value)


def test_a_mistyped_name_that_skipped_validation_is_a_data_error() -> None:
    options = SklearnOptions.model_construct(name="digts")
    with pytest.raises(DataError, match=r"data\.name: unknown sklearn data set 'digts' \(did you"):
        SklearnSource().load(options, SplitOptions())
