"""The ``images`` source: a folder of class sub-folders, read with Pillow, resized, normalised."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hpo.data import load_dataset
from hpo.data.augment import Augmentation
from hpo.data.base import Dataset, SplitOptions
from hpo.data.images import ImagesOptions
from hpo.data.split import ImageNormaliser, split_indices
from hpo.errors import DataError

CLASSES = ["bird", "cat", "dog"]


def write_image(path: Path, mode: str, value: int, size: tuple[int, int] = (12, 10)) -> None:
    """A 12 (wide) × 10 (tall) image of noise around ``value``, in ``mode`` (RGB or L)."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = np.clip(rng.normal(value, 20, shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)  # L for 2-D uint8, RGB for H×W×3
    assert image.mode == mode
    image.save(path)


def make_folder(root: Path, *, gray_only: bool = False, per_class: int = 6) -> Path:
    """3 classes × ``per_class`` images; the cats are RGB (unless ``gray_only``), the rest gray."""
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            mode = "RGB" if name == "cat" and not gray_only else "L"
            ext = {0: ".bmp", 1: ".jpg"}.get(i, ".png")
            write_image(folder / f"{i}{ext}", mode, 60 + 60 * c)
    return root


def load(root: Path, split: SplitOptions | None = None, **options: Any) -> Dataset:
    return load_dataset(
        "images", {"path": str(root), "size": 8, **options}, split or SplitOptions()
    )


def test_mixed_folder_loads_as_rgb_images(tmp_path: Path) -> None:
    data = load(make_folder(tmp_path / "pets"))
    assert data.name == "pets"
    assert data.classes == CLASSES
    assert data.input_shape == (3, 8, 8)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert len(data.y_train) + len(data.y_val) == 18
    assert data.info["color"] == "rgb" and data.info["files"] == 18
    assert data.info["raw_layout"] == "NHWC"
    assert data.feature_names is None and data.augmentation is None
    # Gray images of a mixed folder repeat their one channel as R, G and B.
    norm = data.preprocessor
    raw = data.X_train * norm.std[None, :, None, None] + norm.mean[None, :, None, None]
    gray = raw[data.y_train != CLASSES.index("cat")]
    np.testing.assert_allclose(gray[:, 0], gray[:, 1], atol=1e-5)
    np.testing.assert_allclose(gray[:, 1], gray[:, 2], atol=1e-5)
    colour = raw[data.y_train == CLASSES.index("cat")]
    assert not np.allclose(colour[:, 0], colour[:, 1], atol=1e-3)


def test_all_gray_folder_loads_as_one_channel(tmp_path: Path) -> None:
    data = load(make_folder(tmp_path / "pets", gray_only=True))
    assert data.input_shape == (1, 8, 8)
    assert data.info["color"] == "grayscale" and data.info["raw_layout"] == "NHW"


@pytest.mark.parametrize(("color", "channels"), [("rgb", 3), ("grayscale", 1)])
def test_color_can_be_forced(tmp_path: Path, color: str, channels: int) -> None:
    root = make_folder(tmp_path / "pets", gray_only=color == "rgb")
    assert load(root, color=color).input_shape == (channels, 8, 8)


def test_size_can_be_height_and_width(tmp_path: Path) -> None:
    data = load(make_folder(tmp_path / "pets"), size=[6, 9])
    assert data.input_shape == (3, 6, 9)


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", per_class=8)
    split = SplitOptions(val_fraction=0.25, seed=5)
    data = load(root, split)
    assert np.bincount(data.y_val).tolist() == [2, 2, 2]
    assert np.bincount(data.y_train).tolist() == [6, 6, 6]
    y = np.repeat(np.arange(3), 8)  # files are read class by class, sorted
    np.testing.assert_array_equal(data.y_val, y[split_indices(y, split).val])
    np.testing.assert_array_equal(load(root, split).X_val, data.X_val)


def test_normalisation_is_per_channel_from_the_training_split(tmp_path: Path) -> None:
    data = load(make_folder(tmp_path / "pets"), SplitOptions(val_fraction=0.3))
    np.testing.assert_allclose(data.X_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    assert len(data.info["channel_mean"]) == 3
    assert all(0 < m < 1 for m in data.info["channel_mean"])  # of pixels scaled to [0, 1]
    assert isinstance(data.preprocessor, ImageNormaliser)
    assert data.preprocessor.scale == pytest.approx(1 / 255)
    # The validation images were not part of the statistics.
    assert np.abs(data.X_val.mean(axis=(0, 2, 3))).max() > 1e-3


def test_the_preprocessor_takes_resized_8_bit_pixels(tmp_path: Path) -> None:
    root = tmp_path / "two"
    for name, value in (("a", 50), ("b", 200)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            write_image(root / name / f"{i}.png", "RGB", value, size=(8, 8))  # no resize needed
    data = load(root, SplitOptions(val_fraction=0.5))
    raw = np.stack([np.asarray(Image.open(root / "a" / f"{i}.png")) for i in range(4)])
    out = data.preprocessor.transform(raw)
    assert out.shape == (4, 3, 8, 8)
    # The class-a validation images are among these four.
    for x in data.X_val[data.y_val == 0]:
        assert any(np.allclose(x, o, atol=1e-5) for o in out)


def test_hidden_and_other_files_are_skipped_and_extensions_configurable(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / ".hidden").mkdir()
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("loose files at the top are ignored")
    assert load(root).info["files"] == 18
    # Only the .bmp files (one per class) when only BMP is asked for: too few to split.
    with pytest.raises(DataError, match="has only 1 row"):
        load(root, extensions=["BMP"])
    assert ImagesOptions(path=root, extensions=["PNG", ".Jpg"]).extensions == [".png", ".jpg"]


def test_augment_option_builds_the_augmentation(tmp_path: Path) -> None:
    data = load(make_folder(tmp_path / "pets"), augment={"hflip": True})
    assert data.augmentation == Augmentation(hflip=True)
    with pytest.raises(DataError, match=r"data\.augment\.crop_padding: .*\(8×8\), got 8"):
        load(make_folder(tmp_path / "more"), augment={"crop_padding": 8})


# -- errors -------------------------------------------------------------------------------------
def test_a_missing_folder_and_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: folder not found: .*nope"):
        load(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"data\.path: not a folder: .*file\.png"):
        load(tmp_path / "file.png")


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data\.path: folder .*empty is empty"):
        load(tmp_path / "empty")


def test_images_without_class_folders_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    write_image(root / "a.png", "L", 10)
    with pytest.raises(
        DataError, match=r"data\.path: .*flat has no class sub-folders \(1 image\(s\) lie directly"
    ):
        load(root)


def test_a_class_folder_without_images_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / "eel").mkdir()
    (root / "eel" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"data\.path: class folder .*eel has no images"):
        load(root)


def test_a_single_class_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    for i in range(4):
        write_image(root / "only" / f"{i}.png", "L", 10)
    with pytest.raises(DataError, match=r"data\.path: .*one has a single class folder 'only'"):
        load(root)


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"data\.path: cannot read image .*dog/broken\.png"):
        load(root)


def test_bad_options_fail_validation(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="size"):
        ImagesOptions(path=tmp_path, size=0)
    with pytest.raises(ValidationError, match="color"):
        ImagesOptions.model_validate({"path": str(tmp_path), "color": "cmyk"})
    with pytest.raises(ValidationError, match="extension must not be empty"):
        ImagesOptions(path=tmp_path, extensions=["."])
