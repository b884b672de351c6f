"""The data contract: every source turns its options into a split, scaled :class:`Dataset`.

A source is a class registered in :data:`SOURCES` with a pydantic ``Options`` model (its own fields,
``extra="forbid"``; subclass :class:`SourceOptions`) and a ``load(options, split, base_dir=None) ->
Dataset`` method. The study file's ``data`` block is ``source`` + the split fields of
:class:`SplitOptions` + the source's own fields.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hpo.registry import Registry
from hpo.schema import StrictModel

if TYPE_CHECKING:
    # Only for the annotation: importing it for real would pull torch into every data import.
    from hpo.data.augment import Augmentation


class SplitOptions(BaseModel):
    """How every source splits its rows: stratified, seeded train / validation / optional test."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set, split and preprocessed, ready for training.

    Features are float32 arrays of shape ``(n, *input_shape)``: ``(n, n_features)`` for tables,
    ``(n, C, H, W)`` for images. Labels are int64 in ``[0, n_classes)``. Preprocessing (scaling,
    encoding, per-channel image normalisation) was fitted on the training split only.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    feature_names: list[str] | None = None
    #: A fitted scikit-learn transformer that maps raw input rows (``info["raw_columns"]``) to model
    #: features (a scaler; the CSV source's imputer + encoder + scaler), kept so a served model can
    #: take raw rows. ``None`` when features need no transformation. Image data sets hold an
    #: :class:`hpo.data.split.ImageNormaliser` (raw images in ``info["raw_layout"]`` → normalised).
    preprocessor: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    #: Random augmentation the training loop applies to each training mini-batch (on the device),
    #: ``data.augmentation(batch, generator)``; ``None``: none. Only image data sets have one.
    augmentation: Augmentation | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.X_train.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))


class SourceOptions(StrictModel):
    """Base of every source's ``Options``: unknown fields are refused with a did-you-mean hint,
    like the study file's other blocks."""


class DataSource(ABC):
    """A kind of data (``synthetic``, ``sklearn``, ``csv`` …)."""

    #: The source's own options (fields beside ``source`` and the split fields).
    Options: ClassVar[type[BaseModel]]
    #: One line for ``hpo datasets list``.
    description: ClassVar[str] = ""

    @abstractmethod
    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Load, split and preprocess. Raise :class:`hpo.errors.DataError` for unusable data.

        ``options`` is an instance of the source's ``Options``. ``base_dir`` is the directory that
        relative file paths in ``options`` resolve against (the study file's; ``None``: the current
        directory); sources that read no files ignore it.
        """


SOURCES: Registry[type[DataSource]] = Registry("data source")
