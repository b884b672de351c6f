"""The preprocessing a model was trained with, as plain JSON that travels inside the model.

A trial's model maps *preprocessed* features to logits; users send raw rows (a CSV's columns with
their text categories and gaps) or raw images. The data sources fit scikit-learn transformers
(and :class:`~hpo.data.split.ImageNormaliser`) on the training split; :func:`describe` turns the
fitted one into numbers and lists (no pickle: loading a model must never run stored code, see
:mod:`hpo.tracking.models`), stored in the model's ``MLmodel`` metadata, and
:class:`Preprocessing` applies them again at serving time with NumPy and pandas. The tests check
that both give the same features as the fitted transformer on held-out rows.

Kinds: ``none`` (features are used as given), ``standard`` (a ``StandardScaler``), ``columns``
(the CSV source's imputer + one-hot encoder + scaler) and ``image`` (per-channel normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from hpo.data.base import Dataset

#: The version of the JSON layout; a reader refuses layouts it does not know.
FORMAT = "hpo.preprocessing/1"


class PreprocessingError(ValueError):
    """Rows that cannot be turned into model input (a missing column, a non-number …)."""


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def describe(data: Dataset) -> dict[str, Any]:
    """The JSON description of ``data``'s fitted preprocessing, with its classes and input."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    from hpo.data.split import ImageNormaliser

    pre = data.preprocessor
    out: dict[str, Any] = {
        "format": FORMAT,
        "classes": [str(c) for c in data.classes],
        "input_shape": list(data.input_shape),
    }
    if pre is None:
        out.update(kind="none", columns=list(data.feature_names or []))
    elif isinstance(pre, StandardScaler):
        columns = data.info.get("raw_columns") or data.feature_names or []
        out.update(
            kind="standard",
            columns=list(columns),
            mean=_floats(pre.mean_),
            scale=_floats(pre.scale_),
        )
    elif isinstance(pre, ColumnTransformer):
        out.update(kind="columns", **_describe_columns(pre))
        out["columns"] = list(data.info.get("raw_columns", []))
    elif isinstance(pre, ImageNormaliser):
        out.update(
            kind="image",
            layout=pre.layout,
            scale=float(pre.scale),
            mean=_floats(pre.mean),
            std=_floats(pre.std),
        )
    else:
        raise TypeError(f"cannot describe a {type(pre).__name__} preprocessor")
    return out


def _describe_columns(pre: Any) -> dict[str, Any]:
    """The CSV source's ``ColumnTransformer`` (see :func:`hpo.data.csv.build_preprocessor`)."""
    numeric: list[dict[str, Any]] = []
    categorical: list[dict[str, Any]] = []
    for name, pipe, columns in pre.transformers_:
        if name == "num":
            impute, scale = pipe.named_steps["impute"], pipe.named_steps["scale"]
            for i, column in enumerate(columns):
                fill = float(impute.statistics_[i])
                numeric.append(
                    {
                        "name": str(column),
                        # keep_empty_features: a column empty in the training rows is filled with 0
                        "fill": fill if math.isfinite(fill) else 0.0,
                        "mean": float(scale.mean_[i]),
                        "scale": float(scale.scale_[i]),
                    }
                )
        elif name == "cat":
            impute, onehot = pipe.named_steps["impute"], pipe.named_steps["onehot"]
            for i, column in enumerate(columns):
                categorical.append(
                    {
                        "name": str(column),
                        "fill": str(impute.statistics_[i]),
                        "categories": [str(c) for c in onehot.categories_[i]],
                    }
                )
        elif name != "remainder":
            raise TypeError(f"unknown column transformer part '{name}'")
    return {"numeric": numeric, "categorical": categorical}


@dataclass(frozen=True)
class Preprocessing:
    """Applies a :func:`describe` description to raw input; see the module docstring."""

    spec: Mapping[str, Any]

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Preprocessing:
        """Check the layout version and kind; ``spec`` is what :func:`describe` returned."""
        if spec.get("format") != FORMAT:
            raise ValueError(f"unknown preprocessing format {spec.get('format')!r}; need {FORMAT}")
        if spec.get("kind") not in ("none", "standard", "columns", "image"):
            raise ValueError(f"unknown preprocessing kind {spec.get('kind')!r}")
        return cls(dict(spec))

    @property
    def kind(self) -> str:
        """``none``, ``standard``, ``columns`` or ``image``."""
        return str(self.spec["kind"])

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the model's outputs."""
        return list(self.spec["classes"])

    @property
    def columns(self) -> list[str]:
        """The raw input columns of a table (empty for images)."""
        return list(self.spec.get("columns") or [])

    def transform(self, rows: Any) -> np.ndarray:
        """Model input (float32) from raw input.

        Tables take a :class:`pandas.DataFrame` with the raw columns (extra columns are ignored),
        a list of dicts, or a list of rows with the values in :attr:`columns` order. Images take an
        array in the layout the source read (``N×H×W``, ``N×H×W×C`` or ``N×C×H×W``).
        """
        if self.kind == "image":
            return self._images(rows)
        frame = self._frame(rows)
        if self.kind == "columns":
            return self._columns(frame)
        X = self._numbers(frame, self.columns or list(frame.columns))
        if self.kind == "standard":
            X = (X - np.asarray(self.spec["mean"])) / np.asarray(self.spec["scale"])
        return self._check_width(X.astype(np.float32))

    # -- tables ---------------------------------------------------------------------------------
    def _frame(self, rows: Any) -> pd.DataFrame:
        columns = self.columns
        if isinstance(rows, pd.DataFrame):
            frame = rows
        elif isinstance(rows, Sequence) and rows and isinstance(rows[0], Mapping):
            frame = pd.DataFrame(list(rows))
        else:
            array = np.asarray(rows, dtype=object)
            if array.ndim == 1:
                array = array[None, :]
            if array.ndim != 2:
                raise PreprocessingError(f"expected rows of values, got shape {array.shape}")
            if columns and array.shape[1] != len(columns):
                raise PreprocessingError(
                    f"each row needs {len(columns)} values ({', '.join(columns)}), "
                    f"got {array.shape[1]}"
                )
            frame = pd.DataFrame(array, columns=columns or None)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise PreprocessingError(
                f"missing column(s) {', '.join(repr(c) for c in missing)}; "
                f"the model takes {', '.join(columns)}"
            )
        return frame

    @staticmethod
    def _numbers(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
        out = np.empty((len(frame), len(columns)), dtype=np.float64)
        for j, column in enumerate(columns):
            try:
                out[:, j] = pd.to_numeric(frame[column], errors="raise")
            except (ValueError, TypeError) as exc:
                raise PreprocessingError(f"column '{column}': not a number ({exc})") from None
        return out

    def _columns(self, frame: pd.DataFrame) -> np.ndarray:
        from hpo.data.csv import as_categories

        parts: list[np.ndarray] = []
        numeric = self.spec["numeric"]
        if numeric:
            X = self._numbers(frame, [c["name"] for c in numeric])
            fill = np.array([c["fill"] for c in numeric])
            X = np.where(np.isnan(X), fill, X)
            X = (X - np.array([c["mean"] for c in numeric])) / np.array(
                [c["scale"] for c in numeric]
            )
            parts.append(X)
        for column in self.spec["categorical"]:
            values = as_categories(frame[[column["name"]]])[:, 0]
            values = np.where(pd.isna(values), column["fill"], values)
            categories = np.asarray(column["categories"], dtype=object)
            # Unknown categories are all zeros, as the encoder's handle_unknown="ignore".
            parts.append((values[:, None] == categories[None, :]).astype(np.float64))
        X = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        return self._check_width(X.astype(np.float32))

    def _check_width(self, X: np.ndarray) -> np.ndarray:
        width = int(np.prod(self.spec["input_shape"]))
        if X.shape[1] != width:
            raise PreprocessingError(f"rows give {X.shape[1]} features; the model takes {width}")
        return np.ascontiguousarray(X)

    # -- images ---------------------------------------------------------------------------------
    def _images(self, images: Any) -> np.ndarray:
        from hpo.data.split import ImageNormaliser

        X = np.asarray(images)
        if X.dtype == object or not (
            np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.bool_)
        ):
            raise PreprocessingError("images must be arrays of numbers")
        shape = tuple(self.spec["input_shape"])
        layout = self.spec["layout"]
        # A single image (one fewer dimension than a batch of the layout) is a batch of one.
        batch_ndim = {"NCHW": 4, "NHWC": 4, "NHW": 3}[layout]
        if X.ndim == batch_ndim - 1:
            X = X[None]
        if X.ndim != batch_ndim:
            raise PreprocessingError(
                f"expected images in {layout} layout ({batch_ndim} dimensions for a batch), "
                f"got shape {X.shape}"
            )
        normaliser = ImageNormaliser(
            mean=np.asarray(self.spec["mean"]),
            std=np.asarray(self.spec["std"]),
            layout=layout,
            scale=float(self.spec["scale"]),
        )
        out = normaliser.transform(X)
        if tuple(out.shape[1:]) != shape:
            raise PreprocessingError(
                f"images give shape {tuple(out.shape[1:])} (C, H, W); the model takes {shape}"
            )
        return out
