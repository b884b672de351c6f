"""The ``npz`` source: every layout, uint8 and float pixels, class names, normalisation, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from hpo.data import load_dataset
from hpo.data.augment import Augmentation
from hpo.data.base import Dataset, SplitOptions
from hpo.data.split import ImageNormaliser, split_indices
from hpo.errors import DataError

N, C, H, W = 60, 3, 5, 7


def images(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×C×H×W images whose channels have clearly different means, and 3 balanced labels."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 100, size=(n, C, H, W)) + np.array([0, 60, 150])[None, :, None, None]
    y = np.arange(n) % 3
    return X.astype(np.uint8), y


def save(tmp_path: Path, name: str = "d.npz", **arrays: Any) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def load(path: Path, split: SplitOptions | None = None, **options: Any) -> Dataset:
    return load_dataset("npz", {"path": str(path), **options}, split or SplitOptions())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("given", ["auto", "explicit"])
def test_four_dimensional_layouts_give_the_same_data(
    tmp_path: Path, layout: str, given: str
) -> None:
    X, y = images()
    stored = X if layout == "NCHW" else X.transpose(0, 2, 3, 1)
    path = save(tmp_path, X=stored, y=y)
    data = load(path, **({} if given == "auto" else {"layout": layout}))
    assert data.input_shape == (C, H, W)
    assert data.info["layout"] == layout and data.info["layout_guessed"] == (given == "auto")
    reference = load(save(tmp_path, "ref.npz", X=X, y=y), layout="NCHW")
    np.testing.assert_array_equal(data.X_train, reference.X_train)
    np.testing.assert_array_equal(data.y_val, reference.y_val)


def test_three_dimensional_images_have_one_channel(tmp_path: Path) -> None:
    X, y = images()
    data = load(save(tmp_path, X=X[:, 0], y=y))
    assert data.input_shape == (1, H, W)
    assert data.info["layout"] == "NHW"
    assert data.X_train.dtype == np.float32 and data.X_train.flags.c_contiguous


def test_uint8_is_scaled_to_unit_range_and_float_is_taken_as_is(tmp_path: Path) -> None:
    X, y = images()
    as_uint8 = load(save(tmp_path, "a.npz", X=X, y=y))
    as_float = load(save(tmp_path, "b.npz", X=X.astype(np.float32) / 255, y=y))
    assert as_uint8.info["pixel_scale"] == pytest.approx(1 / 255)
    assert as_float.info["pixel_scale"] == 1.0
    np.testing.assert_allclose(as_uint8.info["channel_mean"], as_float.info["channel_mean"])
    np.testing.assert_allclose(as_uint8.X_train, as_float.X_train, atol=1e-5)
    # The channel means are of the [0, 1] pixels: ~0.19, ~0.43, ~0.78.
    assert 0 < as_uint8.info["channel_mean"][0] < as_uint8.info["channel_mean"][2] < 1


def test_normalisation_uses_the_training_split_only(tmp_path: Path) -> None:
    X, y = images()
    split = SplitOptions(val_fraction=0.25, test_fraction=0.2, seed=4)
    data = load(save(tmp_path, X=X, y=y), split)
    train = split_indices(y, split).train
    pixels = X[train].astype(np.float64) / 255
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    # Pixels are scaled in float32, so the statistics match to float32 precision.
    np.testing.assert_allclose(data.info["channel_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(data.info["channel_std"], std, rtol=1e-6)
    np.testing.assert_allclose(data.X_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert not np.allclose(mean, X.astype(np.float64).mean(axis=(0, 2, 3)) / 255)
    # Validation and test images use the training statistics.
    val = split_indices(y, split).val
    expected = (X[val] / 255 - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(data.X_val, expected, atol=1e-5)
    assert data.X_test is not None and data.y_test is not None and len(data.y_test) == 12


def test_the_preprocessor_maps_raw_images_like_the_split(tmp_path: Path) -> None:
    X, y = images()
    data = load(save(tmp_path, X=X.transpose(0, 2, 3, 1), y=y))
    assert isinstance(data.preprocessor, ImageNormaliser)
    assert data.preprocessor.layout == "NHWC"
    val = split_indices(y, SplitOptions()).val
    raw = X.transpose(0, 2, 3, 1)[val]  # as stored in the file: uint8, channels last
    np.testing.assert_allclose(data.preprocessor.transform(raw), data.X_val, atol=1e-6)


def test_class_names_from_the_file_or_from_the_labels(tmp_path: Path) -> None:
    X, y = images()
    named = load(save(tmp_path, "a.npz", X=X, y=y, classes=np.array(["cat", "dog", "owl"])))
    assert named.classes == ["cat", "dog", "owl"] and named.info["classes_from"] == "file"
    # Labels need not be 0..k-1: the sorted distinct labels are the classes, in order.
    unnamed = load(save(tmp_path, "b.npz", X=X, y=(y + 1) * 10))
    assert unnamed.classes == ["10", "20", "30"] and unnamed.info["classes_from"] == "labels"
    assert set(unnamed.y_train.tolist()) == {0, 1, 2}
    text = load(save(tmp_path, "c.npz", X=X, y=np.array(["b", "a", "c"])[y]))
    assert text.classes == ["a", "b", "c"]
    other_keys = load(
        save(tmp_path, "d.npz", images=X, labels=y, names=np.array(["x", "y", "z"])),
        x_key="images",
        y_key="labels",
        classes_key="names",
    )
    assert other_keys.classes == ["x", "y", "z"]


def test_augment_option_builds_the_augmentation(tmp_path: Path) -> None:
    X, y = images()
    path = save(tmp_path, X=X, y=y)
    assert load(path).augmentation is None
    data = load(path, augment={"crop_padding": 2, "hflip": True})
    assert data.augmentation == Augmentation(crop_padding=2, hflip=True)
    batch = torch.from_numpy(data.X_train[:8])
    assert data.augmentation(batch, torch.Generator().manual_seed(0)).shape == batch.shape
    with pytest.raises(ValidationError, match="unknown field 'flip'"):
        load(path, augment={"flip": True})


# -- errors -------------------------------------------------------------------------------------
def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: file not found: .*nope\.npz"):
        load(tmp_path / "nope.npz")


def test_a_file_that_is_not_an_npz_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_text("hello")
    with pytest.raises(DataError, match=r"data\.path: cannot read .*bad\.npz as an \.npz archive"):
        load(bad)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(DataError, match=r"data\.path: .*single\.npy is a single \.npy array"):
        load(npy)


def test_a_missing_key_lists_the_arrays(tmp_path: Path) -> None:
    X, y = images()
    path = save(tmp_path, x=X, y=y)
    with pytest.raises(
        DataError,
        match=r"data\.x_key: no array 'X' in .*d\.npz \(did you mean 'x'\?\); arrays: 'x', 'y'",
    ):
        load(path)
    with pytest.raises(DataError, match=r"data\.y_key: no array 'label' in .*; arrays: 'x', 'y'"):
        load(path, x_key="x", y_key="label")
    # The default classes key is optional, one named by the user is not.
    with pytest.raises(DataError, match=r"data\.classes_key: no array 'names' in"):
        load(path, x_key="x", classes_key="names")


def test_x_and_y_lengths_must_match(tmp_path: Path) -> None:
    X, _ = images(100)
    with pytest.raises(DataError, match=r"data\.path: .*d\.npz: X has 100 rows but y has 90"):
        load(save(tmp_path, X=X, y=np.arange(90) % 3))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((60, 75), r"data\.path: X in .* has shape 60×75 \(2-D\); images must be"),
        ((60, 1, 3, 5, 7), r"data\.path: X in .* has shape 60×1×3×5×7 \(5-D\)"),
    ],
)
def test_impossible_shapes_are_refused(
    tmp_path: Path, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load(save(tmp_path, X=np.zeros(shape, np.float32), y=np.arange(60) % 3))


def test_a_layout_that_does_not_fit_or_cannot_be_guessed(tmp_path: Path) -> None:
    X, y = images()
    with pytest.raises(DataError, match=r"data\.layout: NHW needs a 3-D X, but X in .* 60×3×5×7"):
        load(save(tmp_path, X=X, y=y), layout="NHW")
    with pytest.raises(DataError, match=r"data\.layout: cannot tell the channel axis .*60×8×8×8"):
        load(save(tmp_path, "b.npz", X=np.zeros((60, 8, 8, 8)), y=y))


def test_labels_must_be_one_dimensional(tmp_path: Path) -> None:
    X, y = images()
    with pytest.raises(DataError, match=r"data\.path: y in .* has shape 60×1; labels must be 1-D"):
        load(save(tmp_path, X=X, y=y[:, None]))


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    X, _ = images()
    with pytest.raises(DataError, match=r"data\.path: y in .* has a single class '7'"):
        load(save(tmp_path, X=X, y=np.full(N, 7)))


def test_class_names_must_match_the_labels(tmp_path: Path) -> None:
    X, y = images()
    path = save(tmp_path, X=X, y=y, classes=np.array(["a", "b"]))
    with pytest.raises(
        DataError,
        match=r"data\.classes_key: 'classes' in .* names 2 classes but y has 3 distinct labels "
        r"\(0, 1, 2\)",
    ):
        load(path)


def test_non_finite_and_non_numeric_pixels_are_refused(tmp_path: Path) -> None:
    X, y = images()
    Xf = X.astype(np.float32)
    Xf[0, 0, 0, :2] = np.nan
    with pytest.raises(DataError, match=r"data\.path: X in .* has 2 NaN or infinite value"):
        load(save(tmp_path, X=Xf, y=y))
    with pytest.raises(DataError, match=r"data\.path: X in .* has dtype <U1"):
        load(save(tmp_path, "s.npz", X=np.full((N, 2, 2), "a"), y=y))


def test_a_split_too_small_names_the_file(tmp_path: Path) -> None:
    X, _ = images()
    y = np.zeros(N, dtype=int)
    y[0] = 1  # one image of class 1: cannot be stratified
    with pytest.raises(DataError, match=r"data\.path: y in .*d\.npz: class '1' has only 1 row"):
        load(save(tmp_path, X=X, y=y))
