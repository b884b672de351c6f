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


# -- digits as images -----------------------------------------------------------------------------
def test_digits_as_images_are_one_channel_8x8_normalised_on_train() -> None:
    data = load_dataset("sklearn", {"name": "digits", "images": True}, SplitOptions())
    assert data.X_train.shape[1:] == (1, 8, 8) and data.input_shape == (1, 8, 8)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.classes == [str(d) for d in range(10)]
    assert data.feature_names is None and data.info["images"] is True
    np.testing.assert_allclose(data.X_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std(), 1.0, atol=1e-4)
    assert len(data.info["channel_mean"]) == 1 and data.info["channel_std"][0] > 0
    assert data.augmentation is None


def test_digits_as_images_split_the_same_rows_as_the_flat_digits() -> None:
    split = SplitOptions(val_fraction=0.2, test_fraction=0.1, seed=7)
    flat = load_dataset("sklearn", {"name": "digits"}, split)
    images = load_dataset("sklearn", {"name": "digits", "images": True}, split)
    np.testing.assert_array_equal(images.y_train, flat.y_train)
    np.testing.assert_array_equal(images.y_val, flat.y_val)
    assert images.y_test is not None and flat.y_test is not None
    np.testing.assert_array_equal(images.y_test, flat.y_test)
    # The same images too: undoing each preprocessing gives the same raw pixels (0..16).
    norm = images.preprocessor
    raw_images = images.X_val * norm.std[0] + norm.mean[0]
    raw_flat = flat.preprocessor.inverse_transform(flat.X_val)
    np.testing.assert_allclose(raw_images.reshape(len(raw_images), 64), raw_flat, atol=1e-4)


def test_the_flat_digits_are_unchanged_by_the_images_option() -> None:
    default = load_dataset("sklearn", {"name": "digits"}, SplitOptions())
    explicit = load_dataset("sklearn", {"name": "digits", "images": False}, SplitOptions())
    np.testing.assert_array_equal(default.X_train, explicit.X_train)
    assert (
        default.input_shape == (64,) and default.preprocessor.__class__.__name__ == "StandardScaler"
    )


def test_digits_images_take_an_augment_block() -> None:
    from hpo.data.augment import Augmentation

    data = load_dataset(
        "sklearn", {"images": True, "augment": {"crop_padding": 1, "hflip": True}}, SplitOptions()
    )
    assert data.augmentation == Augmentation(crop_padding=1, hflip=True)


def test_images_is_only_for_digits() -> None:
    with pytest.raises(ValidationError) as err:
        SklearnOptions.model_validate({"name": "iris", "images": True})
    (error,) = err.value.errors()
    assert error["loc"] == ("images",)
    assert "only the 'digits' set has images, got name 'iris'" in error["msg"]
    options = SklearnOptions.model_construct(name="wine", images=True, augment=None)
    with pytest.raises(DataError, match=r"data\.images: only the 'digits' set has images.*'wine'"):
        SklearnSource().load(options, SplitOptions())


def test_augment_needs_images() -> None:
    with pytest.raises(ValidationError) as err:
        SklearnOptions.model_validate({"name": "iris", "augment": {"hflip": True}})
    (error,) = err.value.errors()
    assert error["loc"] == ("augment",) and "needs image data" in error["msg"]
    from hpo.data.augment import AugmentOptions

    options = SklearnOptions.model_construct(
        name="iris", images=False, augment=AugmentOptions(hflip=True)
    )
    with pytest.raises(DataError, match=r"data\.augment: .*needs image data; sklearn 'iris'"):
        SklearnSource().load(options, SplitOptions())
