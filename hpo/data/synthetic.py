"""``synthetic``: generated data sets (random noise, ``make_classification``, moons, blobs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator
from sklearn.datasets import make_blobs, make_classification, make_moons

from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import scaled_dataset
from hpo.errors import DataError


class SyntheticOptions(SourceOptions):
    """Options of the ``synthetic`` source."""

    kind: Literal["random", "classification", "moons", "blobs"] = Field(
        "classification",
        description="random: uniform features, random labels; classification: make_classification",
    )
    n_samples: int = Field(1000, ge=10, description="rows generated")
    n_features: int = Field(20, ge=1, description="features (moons are always 2-D)")
    n_classes: int = Field(2, ge=2, description="classes (moons: 2 only)")
    noise: float = Field(0.1, ge=0.0, description="moons: standard deviation of the noise")
    random_state: int = Field(0, description="generation seed (the split has its own seed)")
    n_informative: int | None = Field(
        None, ge=1, description="classification: informative features (default: half, enough)"
    )

    @model_validator(mode="after")
    def _moons_are_2d(self) -> SyntheticOptions:
        # Unset, n_features means 2 for moons: the validated options then say what is generated,
        # and they validate again as they are (the data cache re-reads them from their dump).
        # An explicit other value is refused when the data is generated (see ``load``).
        if self.kind == "moons" and "n_features" not in self.model_fields_set:
            self.n_features = 2
        return self


def _classification(o: SyntheticOptions) -> tuple[np.ndarray, np.ndarray]:
    """``make_classification`` with parameters it accepts, or a :class:`DataError` saying why not."""
    # make_classification places 2 ** n_informative hypercube vertices and needs one per cluster.
    needed = max(1, math.ceil(math.log2(o.n_classes)))
    if o.n_informative is None:
        # Half the features (a learnable but not trivial problem), at least what the classes need.
        informative = min(o.n_features, max(needed, o.n_features // 2, 2))
        if informative < needed:
            raise DataError(
                f"data.n_features: {o.n_classes} classes need at least {needed} informative "
                f"features, but n_features is {o.n_features}"
            )
    else:
        informative = o.n_informative
        if informative > o.n_features:
            raise DataError(
                f"data.n_informative: must be at most n_features ({o.n_features}), "
                f"got {informative}"
            )
        if o.n_classes > 2**informative:
            raise DataError(
                f"data.n_informative: {o.n_classes} classes need at least {needed} informative "
                f"features (n_classes ≤ 2**n_informative), got {informative}"
            )
    # Two clusters per class (scikit-learn's default) when they fit in the hypercube, else one.
    clusters = 2 if o.n_classes * 2 <= 2**informative else 1
    redundant = min(2, o.n_features - informative)
    try:
        X, y = make_classification(
            n_samples=o.n_samples,
            n_features=o.n_features,
            n_informative=informative,
            n_redundant=redundant,
            n_repeated=0,
            n_classes=o.n_classes,
            n_clusters_per_class=clusters,
            random_state=o.random_state,
        )
    except ValueError as exc:  # a combination the checks above missed
        raise DataError(f"data: make_classification refuses these options: {exc}") from None
    return X, y


@SOURCES.register("synthetic")
class SyntheticSource(DataSource):
    """Generated data: ``random`` noise, ``classification``, ``moons`` or ``blobs``."""

    Options = SyntheticOptions
    description = "generated data: random noise, make_classification, moons or blobs"

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Generate the rows with ``random_state``, then split and scale them."""
        o = SyntheticOptions.model_validate(options)
        n_features = o.n_features
        if o.kind == "random":
            # Uniform features with labels drawn independently of them: nothing to learn, so a
            # model can only memorise (the "MLP on random noise" experiment).
            rng = np.random.default_rng(o.random_state)
            X = rng.random((o.n_samples, o.n_features))
            y = rng.integers(0, o.n_classes, size=o.n_samples)
        elif o.kind == "classification":
            X, y = _classification(o)
        elif o.kind == "moons":
            if o.n_classes != 2:
                raise DataError(f"data.n_classes: moons has exactly 2 classes, got {o.n_classes}")
            if o.n_features != 2:
                raise DataError(f"data.n_features: moons are always 2-D, got {o.n_features}")
            n_features = 2
            X, y = make_moons(n_samples=o.n_samples, noise=o.noise, random_state=o.random_state)
        else:
            X, y = make_blobs(
                n_samples=o.n_samples,
                n_features=o.n_features,
                centers=o.n_classes,
                random_state=o.random_state,
            )
        return scaled_dataset(
            f"synthetic-{o.kind}",
            X,
            y,
            [str(c) for c in range(o.n_classes)],
            split,
            feature_names=[f"x{i}" for i in range(n_features)],
            info={"source": "synthetic", **o.model_dump()},
        )
