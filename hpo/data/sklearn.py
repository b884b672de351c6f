"""``sklearn``: the small classification sets bundled with scikit-learn (nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine

from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import scaled_dataset
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

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        # Checked here too (not only in load) so a study file with a typo fails when it is parsed.
        message = unknown_name_message(name)
        if message:
            raise ValueError(message)
        return name


@SOURCES.register("sklearn")
class SklearnSource(DataSource):
    """A set bundled with scikit-learn: ``iris``, ``wine``, ``breast_cancer`` or ``digits``."""

    Options = SklearnOptions
    description = "scikit-learn's bundled sets: iris, wine, breast_cancer, digits (8x8, flattened)"

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Load the set, then split and scale it."""
        o = SklearnOptions.model_validate(options)
        message = unknown_name_message(o.name)
        if message:  # only reachable with options built without validation
            raise DataError(f"data.name: {message}")
        bunch = LOADERS[o.name]()
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
