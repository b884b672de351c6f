"""``images``: a folder of image files, one sub-folder per class (``pets/cat/1.png``, ``pets/dog/…``).

Files are read with Pillow, resized (bilinear) to ``size`` and kept as 8-bit pixels (N×H×W×C, or
N×H×W when grayscale), then scaled to [0, 1] and normalised per channel with statistics of the
training split (:func:`hpo.data.split.normalised_image_dataset`). The class names are the
sub-folder names, sorted; hidden files and folders (``.DS_Store``) and files with other extensions
are skipped. The images of a class are the files directly inside its folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from hpo.data.augment import AugmentOptions, augmentation_from
from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import normalised_image_dataset
from hpo.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp"]

#: Pillow modes that hold one gray value per pixel (alpha, if any, is dropped).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

#: Decoding threads: Pillow releases the GIL while it decodes and resizes.
_MAX_WORKERS = 8

Side = Annotated[int, Field(ge=1, le=4096)]


class ImagesOptions(SourceOptions):
    """Options of the ``images`` source."""

    path: Path = Field(
        description="a folder with one sub-folder of images per class (relative: to the study file)"
    )
    size: Side | tuple[Side, Side] = Field(
        32, description="resize every image to size×size, or to [height, width]"
    )
    color: Literal["auto", "rgb", "grayscale"] = Field(
        "auto", description="auto: grayscale if every image is, else RGB"
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXTENSIONS),
        min_length=1,
        description="file extensions read as images (case-insensitive)",
    )
    augment: AugmentOptions | None = Field(
        None, description="random crop / flip of training batches"
    )

    @field_validator("extensions")
    @classmethod
    def _dotted_lower(cls, extensions: list[str]) -> list[str]:
        # "PNG", "png" and ".png" all mean the same files.
        out = []
        for ext in extensions:
            ext = ext.strip().lower()
            if ext.strip(".") == "":
                raise ValueError(f"an extension must not be empty, got {ext!r}")
            out.append(ext if ext.startswith(".") else f".{ext}")
        return out

    @property
    def height_width(self) -> tuple[int, int]:
        """The target (height, width)."""
        return (self.size, self.size) if isinstance(self.size, int) else self.size


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def find_images(root: Path, extensions: Sequence[str]) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names (sorted sub-folders), every image file, and each file's class index.

    Raises :class:`DataError` for a missing or empty folder, no class sub-folders, a class folder
    without images, or fewer than two classes.
    """
    if not root.exists():
        raise DataError(f"data.path: folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data.path: not a folder: {root} (one sub-folder of images per class)")
    entries = [p for p in root.iterdir() if _visible(p)]
    if not entries:
        raise DataError(f"data.path: folder {root} is empty; it needs one sub-folder per class")
    folders = sorted((p for p in entries if p.is_dir()), key=lambda p: p.name)
    if not folders:
        loose = sum(1 for p in entries if p.suffix.lower() in extensions)
        found = f" ({loose} image(s) lie directly in it)" if loose else ""
        raise DataError(
            f"data.path: {root} has no class sub-folders{found}; put the images of each class in "
            "a sub-folder named after it"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        images = sorted(
            p
            for p in folder.iterdir()
            if _visible(p) and p.suffix.lower() in extensions and p.is_file()
        )
        if not images:
            raise DataError(
                f"data.path: class folder {folder} has no images (extensions: "
                f"{', '.join(extensions)})"
            )
        files += images
        labels += [label] * len(images)
    if len(folders) < 2:
        raise DataError(
            f"data.path: {root} has a single class folder '{folders[0].name}'; classification "
            "needs at least 2"
        )
    return [f.name for f in folders], files, np.asarray(labels, dtype=np.int64)


def _to_8bit(img: Image.Image) -> Image.Image:
    """``img`` with 8 bits per channel (16-bit and float grayscale would be clipped by Pillow)."""
    from PIL import Image

    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit PNGs: keep the top 8 bits, which is what an 8-bit export of the image holds.
        return Image.fromarray(
            (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        )
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8))
    return img


def read_image(
    path: Path, size: tuple[int, int], color: Literal["auto", "rgb", "grayscale"]
) -> tuple[np.ndarray, bool]:
    """One image resized to ``size`` (height, width): uint8 H×W (gray) or H×W×3, and "was gray".

    With ``color="auto"`` each image keeps its own kind and the caller reconciles them. Raises
    :class:`DataError` naming the file when Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as opened:
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for big photos, and
            # the bilinear resize below still does the rest.
            opened.draft(opened.mode, (w, h))
            img = _to_8bit(opened)
            gray = img.mode in GRAY_MODES
            if not gray and img.mode in ("P", "PA") and color == "auto":
                # A palette image is gray when its palette is; check the pixels it produces.
                rgb = np.asarray(img.convert("RGB"))
                gray = bool(
                    (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
                )
            want_gray = color == "grayscale" or (color == "auto" and gray)
            img = img.convert("L" if want_gray else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), want_gray
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as exc:
        # SyntaxError: Pillow's parsers raise it for some malformed headers.
        raise DataError(f"data.path: cannot read image {path}: {exc}") from None


def read_images(
    files: Sequence[Path], size: tuple[int, int], color: Literal["auto", "rgb", "grayscale"]
) -> np.ndarray:
    """Every file read and resized: uint8 N×H×W (all grayscale) or N×H×W×3, in file order."""
    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # map keeps the order and re-raises the first failure (a DataError naming the file).
        decoded = list(pool.map(lambda p: read_image(p, size, color), files))
    if all(gray for _, gray in decoded):
        return np.stack([a for a, _ in decoded])
    # Mixed (auto) or rgb: gray images repeat their one channel as R, G and B.
    out = np.empty((len(decoded), *size, 3), dtype=np.uint8)
    for i, (a, gray) in enumerate(decoded):
        out[i] = a[..., None] if gray else a
    return out


@SOURCES.register("images")
class ImagesSource(DataSource):
    """A folder of PNG / JPEG / BMP images, one sub-folder per class, read with Pillow."""

    Options = ImagesOptions
    description = "a folder of images (PNG, JPEG, BMP), one sub-folder per class, resized"

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Find and read the images, then split and normalise them."""
        o = ImagesOptions.model_validate(options)
        root = o.path.expanduser()
        if not root.is_absolute():
            root = (base_dir or Path.cwd()) / root
        root = root.resolve()
        classes, files, y = find_images(root, o.extensions)
        size = o.height_width
        # Built (and checked) before reading the files: a bad augment block should fail at once.
        augmentation = augmentation_from(o.augment, size)
        X = read_images(files, size, o.color)
        gray = X.ndim == 3
        return normalised_image_dataset(
            root.name,
            X,
            y,
            classes,
            split,
            layout="NHW" if gray else "NHWC",
            scale=1.0 / 255.0,
            info={
                "source": "images",
                "path": str(root),
                "color": "grayscale" if gray else "rgb",
                "size": list(size),
                "files": len(files),
            },
            where=f"data.path: {root}",
            augmentation=augmentation,
        )
