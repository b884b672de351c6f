"""``sklearn``: the small classification sets bundled with scikit-learn (nothing is downloaded).

``digits`` is tabular by default (64 pixel features, standard-scaled); with ``images: true`` it is
N×1×8×8 images normalised per channel, for the convolutional families.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine

from hpo.data.augment import AugmentOptions, augmentation_from, tabular_augment_error
from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import normalised_image_dataset, scaled_dataset
from hpo.errors import DataError
from hpo.registry import did_you_mean

#: The bundled sets: each loader reads files shipped inside scikit-learn.
LOADERS: dict[str, Callable[[], Any]] = {
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
    "iris": load_iris,
    "wine": load_wine,
}


def unknown_name_message(name: str) -> str | None:
    """The message for a name that is not a bundled set, or ``None`` for a known one."""
    if name in LOADERS:
        return None
    known = sorted(LOADERS)
    return (
        f"unknown sklearn data set '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
    )


class SklearnOptions(SourceOptions):
    """Options of the ``sklearn`` source."""

    name: str = Field("digits", description="iris | wine | breast_cancer | digits")
    images: bool = Field(
        False,
        description="digits only: N×1×8×8 images (for convolutional families), not 64 features",
    )
    augment: AugmentOptions | None = Field(
        None, description="with images: random crop / flip of training batches"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        # Checked here too (not only in load) so a study file with a typo fails when it is parsed.
        message = unknown_name_message(name)
        if message:
            raise ValueError(message)
        return name

    # Fields are validated in order, so ``name`` (and ``images``) are in info.data when valid.
    @field_validator("images")
    @classmethod
    def _images_only_for_digits(cls, images: bool, info: ValidationInfo) -> bool:
        message = images_message(info.data.get("name"), images)
        if message:
            raise ValueError(message)
        return images

    @field_validator("augment")
    @classmethod
    def _augment_needs_images(
        cls, augment: AugmentOptions | None, info: ValidationInfo
    ) -> AugmentOptions | None:
        if augment is not None and not info.data.get("images", False):
            raise ValueError(
                "augmentation (random crop / flip) needs image data: set images: true "
                "(name: digits)"
            )
        return augment


def images_message(name: str | None, images: bool) -> str | None:
    """Why ``images`` cannot be set for ``name``, or ``None`` if it can."""
    if images and name is not None and name != "digits":
        return f"only the 'digits' set has images, got name '{name}'"
    return None


@SOURCES.register("sklearn")
class SklearnSource(DataSource):
    """A set bundled with scikit-learn: ``iris``, ``wine``, ``breast_cancer`` or ``digits``."""

    Options = SklearnOptions
    description = (
        "scikit-learn's bundled sets: iris, wine, breast_cancer, digits (8x8, flattened or images)"
    )

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Load the set, then split and scale it."""
        o = SklearnOptions.model_validate(options)
        message = unknown_name_message(o.name)
        if message:  # only reachable with options built without validation
            raise DataError(f"data.name: {message}")
        message = images_message(o.name, o.images)
        if message:  # likewise
            raise DataError(f"data.images: {message}")
        if o.augment is not None and not o.images:
            raise tabular_augment_error(f"sklearn '{o.name}' without images: true")
        bunch = LOADERS[o.name]()
        if o.images:
            images = np.asarray(bunch.images, dtype=np.float64)  # N×8×8, pixel values 0..16
            return normalised_image_dataset(
                o.name,
                images,
                np.asarray(bunch.target),
                [str(c) for c in bunch.target_names],
                split,
                layout="NHW",
                info={"source": "sklearn", "name": o.name, "images": True},
                augmentation=augmentation_from(o.augment, (1, *images.shape[1:])),
            )
        # digits' data is already the 8x8 images flattened to 64 pixel features.
        X = np.asarray(bunch.data, dtype=np.float64).reshape(len(bunch.target), -1)
        names = getattr(bunch, "feature_names", None)
        feature_names = (
            [str(n) for n in names]
            if names is not None and len(names) == X.shape[1]
            else [f"x{i}" for i in range(X.shape[1])]
        )
        return scaled_dataset(
            o.name,
            X,
            np.asarray(bunch.target),
            [str(c) for c in bunch.target_names],
            split,
            feature_names=feature_names,
            info={"source": "sklearn", "name": o.name},
        )
