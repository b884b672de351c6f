"""``npz``: images and labels saved with :func:`numpy.savez` (``X``, ``y``, optional ``classes``).

``X`` may be N×H×W (one channel), N×H×W×C or N×C×H×W; ``layout: auto`` tells the last two apart by
which axis looks like channels (1, 3 or 4 long). uint8 pixels are scaled to [0, 1]; other numbers
are taken as they are. Either way the images are then normalised per channel with statistics of
the training split (:func:`hpo.data.split.normalised_image_dataset`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from hpo.data.augment import AugmentOptions, augmentation_from
from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import ImageLayout, normalised_image_dataset
from hpo.errors import DataError
from hpo.registry import did_you_mean

#: Lengths of an axis that make it look like the channel axis (gray, RGB, RGBA).
CHANNEL_SIZES = (1, 3, 4)


class NpzOptions(SourceOptions):
    """Options of the ``npz`` source."""

    path: Path = Field(description="the .npz file (relative: to the study file's directory)")
    x_key: str = Field("X", min_length=1, description="the array of images")
    y_key: str = Field("y", min_length=1, description="the array of labels (one per image)")
    classes_key: str = Field(
        "classes",
        min_length=1,
        description="the array of class names, one per distinct label in sorted order (optional)",
    )
    layout: Literal["auto", "NHWC", "NCHW", "NHW"] = Field(
        "auto", description="axes of X; auto: NHW if 3-D, else NHWC if the last axis is 1, 3 or 4"
    )
    augment: AugmentOptions | None = Field(
        None, description="random crop / flip of training batches"
    )


def _shape(a: np.ndarray) -> str:
    return "×".join(str(d) for d in a.shape)


def detect_layout(
    X: np.ndarray, layout: Literal["auto", "NHWC", "NCHW", "NHW"], where: str
) -> tuple[ImageLayout, bool]:
    """The layout of ``X`` (asked for, or guessed with ``auto``) and whether it was guessed.

    ``where`` (e.g. ``"X in /data/a.npz"``) starts messages. Raises :class:`DataError` when the
    number of dimensions fits no image layout, or not the one asked for.
    """
    if X.ndim not in (3, 4):
        raise DataError(
            f"data.path: {where} has shape {_shape(X)} ({X.ndim}-D); images must be N×H×W, "
            "N×H×W×C or N×C×H×W"
        )
    if layout == "auto":
        if X.ndim == 3:
            return "NHW", True
        if X.shape[3] in CHANNEL_SIZES and X.shape[1] not in CHANNEL_SIZES:
            return "NHWC", True
        if X.shape[1] in CHANNEL_SIZES:
            return "NCHW", True
        # Neither axis looks like channels: guessing would silently train on scrambled images.
        raise DataError(
            f"data.layout: cannot tell the channel axis of {where} (shape {_shape(X)}): neither "
            "axis 1 nor axis 3 is 1, 3 or 4 long; set layout to NHWC or NCHW"
        )
    needed = 3 if layout == "NHW" else 4
    if X.ndim != needed:
        raise DataError(
            f"data.layout: {layout} needs a {needed}-D X, but {where} has shape {_shape(X)}"
        )
    return layout, False


def _key_hint(key: str, keys: list[str]) -> str:
    """A did-you-mean hint; ``X`` vs ``x`` counts (difflib alone is case-sensitive)."""
    same = [k for k in keys if k.lower() == key.lower()]
    return f" (did you mean '{same[0]}'?)" if same else did_you_mean(key, keys)


def _class_name(value: Any) -> str:
    # Labels saved as floats (3.0) are named like integers ("3"); bytes are decoded.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@SOURCES.register("npz")
class NpzSource(DataSource):
    """Images and labels in a NumPy ``.npz`` file; normalised per channel on the training split."""

    Options = NpzOptions
    description = "images in a NumPy .npz file: X (N×H×W[×C] or N×C×H×W), y, optional classes"

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Read and check the arrays, then split and normalise the images."""
        o = NpzOptions.model_validate(options)
        path = o.path.expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        X, y, names = _read(path, o)
        where = f"{o.x_key} in {path}"

        # -- images --------------------------------------------------------------------------
        layout, guessed = detect_layout(X, o.layout, where)
        if X.shape[0] == 0:
            raise DataError(f"data.path: {where} has no images (shape {_shape(X)})")
        if 0 in X.shape:
            raise DataError(f"data.path: {where} has an empty axis (shape {_shape(X)})")
        if X.dtype == np.uint8:
            scale = 1.0 / 255.0
        elif X.dtype == np.bool_ or np.issubdtype(X.dtype, np.integer):
            scale = 1.0
        elif np.issubdtype(X.dtype, np.floating):
            scale = 1.0
            bad = int(X.size - np.count_nonzero(np.isfinite(X)))
            if bad:
                raise DataError(f"data.path: {where} has {bad} NaN or infinite value(s)")
        else:
            raise DataError(
                f"data.path: {where} has dtype {X.dtype}; images must be numbers (uint8 or float)"
            )

        # -- labels --------------------------------------------------------------------------
        if y.ndim != 1:
            raise DataError(
                f"data.path: {o.y_key} in {path} has shape {_shape(y)}; labels must be 1-D "
                "(one per image)"
            )
        if len(y) != len(X):
            raise DataError(
                f"data.path: {path}: {o.x_key} has {len(X)} rows but {o.y_key} has {len(y)}"
            )
        try:
            uniques, codes = np.unique(y, return_inverse=True)
        except TypeError as exc:
            raise DataError(
                f"data.path: cannot sort the labels {o.y_key} in {path}: {exc}"
            ) from None
        if np.issubdtype(uniques.dtype, np.floating) and np.isnan(uniques).any():
            raise DataError(f"data.path: {o.y_key} in {path} has NaN labels")
        if len(uniques) < 2:
            raise DataError(
                f"data.path: {o.y_key} in {path} has a single class "
                f"'{_class_name(uniques[0].item())}'; classification needs at least 2"
            )
        if names is None:
            classes = [_class_name(v.item()) for v in uniques]
        else:
            if len(names) != len(uniques):
                shown = ", ".join(_class_name(v.item()) for v in uniques[:10])
                more = ", …" if len(uniques) > 10 else ""
                raise DataError(
                    f"data.classes_key: '{o.classes_key}' in {path} names {len(names)} classes "
                    f"but {o.y_key} has {len(uniques)} distinct labels ({shown}{more})"
                )
            if len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise DataError(
                    f"data.classes_key: '{o.classes_key}' in {path} repeats class name(s) "
                    f"{', '.join(repr(d) for d in dupes)}"
                )
            classes = names

        augmentation = augmentation_from(o.augment, _image_shape(X, layout))
        return normalised_image_dataset(
            path.stem,
            X,
            codes.reshape(-1),
            classes,
            split,
            layout=layout,
            scale=scale,
            info={
                "source": "npz",
                "path": str(path),
                "layout": layout,
                "layout_guessed": guessed,
                "dtype": str(X.dtype),
                "classes_from": "file" if names is not None else "labels",
            },
            where=f"data.path: {o.y_key} in {path}",
            augmentation=augmentation,
        )


def _image_shape(X: np.ndarray, layout: ImageLayout) -> tuple[int, int, int]:
    """C×H×W of one image of ``X`` in ``layout``."""
    if layout == "NHW":
        return 1, X.shape[1], X.shape[2]
    if layout == "NHWC":
        return X.shape[3], X.shape[1], X.shape[2]
    return X.shape[1], X.shape[2], X.shape[3]


def _read(path: Path, o: NpzOptions) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``X``, ``y`` and the class names (``None`` if absent); every failure a :class:`DataError`."""
    if not path.exists():
        raise DataError(f"data.path: file not found: {path}")
    if not path.is_file():
        raise DataError(f"data.path: not a file: {path}")
    try:
        # allow_pickle=False: an npz holding object arrays would run arbitrary code when loaded.
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"data.path: cannot read {path} as an .npz archive: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"data.path: {path} is a single .npy array, not an .npz archive; save X and y with "
            "numpy.savez(path, X=..., y=...)"
        )
    with archive:
        keys = list(archive.files)

        def get(key: str, field: str) -> np.ndarray:
            try:
                return np.asarray(archive[key])
            except ValueError as exc:  # object arrays, which need pickle
                raise DataError(f"data.{field}: cannot read '{key}' in {path}: {exc}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"data.path: {path} is damaged ('{key}'): {exc}") from None

        for key, field in ((o.x_key, "x_key"), (o.y_key, "y_key")):
            if key not in keys:
                raise DataError(
                    f"data.{field}: no array '{key}' in {path}{_key_hint(key, keys)}; "
                    f"arrays: {', '.join(repr(k) for k in keys) or '(none)'}"
                )
        X, y = get(o.x_key, "x_key"), get(o.y_key, "y_key")
        names: list[str] | None = None
        if o.classes_key in keys:
            raw = get(o.classes_key, "classes_key")
            if raw.ndim != 1:
                raise DataError(
                    f"data.classes_key: '{o.classes_key}' in {path} has shape {_shape(raw)}; "
                    "class names must be 1-D"
                )
            names = [_class_name(v.item()) for v in raw]
        elif o.classes_key != "classes":
            # The default key is optional; one the user named is expected to be there.
            raise DataError(
                f"data.classes_key: no array '{o.classes_key}' in {path}"
                f"{_key_hint(o.classes_key, keys)}; arrays: {', '.join(repr(k) for k in keys)}"
            )
    return X, y, names
