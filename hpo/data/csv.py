"""``csv``: a table from a CSV file, one column the class label.

Missing values are imputed, numeric columns standard-scaled and categorical ones one-hot encoded, by
a scikit-learn ``ColumnTransformer`` fitted on the training rows only and kept as the dataset's
``preprocessor``, so a served model can take raw rows (``info["raw_columns"]``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.data.split import as_features, as_labels, split_indices, split_info
from hpo.errors import DataError
from hpo.registry import did_you_mean


class CsvOptions(SourceOptions):
    """Options of the ``csv`` source."""

    path: Path = Field(description="the CSV file (relative: to the study file's directory)")
    target: str = Field(description="the column holding the class label")
    drop: list[str] = Field(default_factory=list, description="columns to ignore (ids …)")
    categorical: list[str] | None = Field(
        None, description="columns to one-hot encode even if numeric (text columns always are)"
    )
    sep: str = Field(",", min_length=1, description="the field separator")


def _category_label(value: Any) -> str:
    # 3.0 and 3 are the same category whether or not the column had gaps (which make pandas read
    # integers as floats), and at serving time the value may arrive either way.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def as_categories(X: Any) -> np.ndarray:
    """Categorical columns as an object array of strings, missing values as ``np.nan``.

    The first step of the categorical pipeline, so raw rows of any dtype (numbers, booleans,
    pandas strings or categories) give the same categories when fitting and when serving.
    """
    arr = pd.DataFrame(X).to_numpy(dtype=object)
    missing = pd.isna(arr)
    out = np.empty(arr.shape, dtype=object)
    out[missing] = np.nan
    out[~missing] = [_category_label(v) for v in arr[~missing]]
    return out


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _columns_text(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns)


def build_preprocessor(numeric: list[str], categorical: list[str]) -> ColumnTransformer:
    """The unfitted transformer: impute + scale numeric columns, impute + one-hot categorical."""
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        # keep_empty_features: a column with no value in the training rows still gives one
        # feature, so the number of features never depends on the split.
        num = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        transformers.append(("num", num, numeric))
    if categorical:
        cat = Pipeline(
            [
                ("as_str", FunctionTransformer(as_categories, feature_names_out="one-to-one")),
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("cat", cat, categorical))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


@SOURCES.register("csv")
class CsvSource(DataSource):
    """A CSV file with a target column; text columns one-hot encoded, gaps imputed."""

    Options = CsvOptions
    description = "a CSV file: a target column, numeric and text features (imputed, encoded)"

    def load(
        self, options: BaseModel, split: SplitOptions, *, base_dir: Path | None = None
    ) -> Dataset:
        """Read the file, check it, split it, and fit the preprocessing on the training rows."""
        o = CsvOptions.model_validate(options)
        path = o.path.expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        df = _read(path, o.sep)
        columns = [str(c) for c in df.columns]
        df.columns = pd.Index(columns)
        info: dict[str, Any] = {"source": "csv", "path": str(path)}

        # -- which columns are what -------------------------------------------------------
        if o.target not in columns:
            hint = did_you_mean(o.target, columns)
            if (
                len(columns) == 1
                and o.sep not in columns[0]
                and any(s in columns[0] for s in ",;\t|")
            ):
                hint += f" (one column read: is sep {o.sep!r} right?)"
            raise DataError(
                f"data.target: column '{o.target}' not in {path}{hint}; "
                f"columns: {_columns_text(columns)}"
            )
        missing_drop = [c for c in o.drop if c not in columns]
        if missing_drop:
            hints = "".join(did_you_mean(c, columns) for c in missing_drop)
            raise DataError(
                f"data.drop: column(s) {_columns_text(missing_drop)} not in {path}{hints}; "
                f"columns: {_columns_text(columns)}"
            )
        if o.target in o.drop:
            raise DataError(f"data.drop: '{o.target}' is the target column; it cannot be dropped")
        features = [c for c in columns if c != o.target and c not in o.drop]
        forced = o.categorical or []
        bad_cat = [c for c in forced if c not in features]
        if bad_cat:
            raise DataError(
                f"data.categorical: {_columns_text(bad_cat)} not among the feature columns of "
                f"{path} (the target and dropped columns are not features); features: "
                f"{_columns_text(features)}"
            )

        # -- rows: the target must be known ----------------------------------------------
        known = df[o.target].notna()
        n_unlabelled = int((~known).sum())
        if n_unlabelled == len(df):
            raise DataError(f"data.target: column '{o.target}' in {path} has no values")
        if n_unlabelled:
            # The index keeps the file's row numbers (0-based data rows) for messages below;
            # everything after selects rows by position.
            df = df.loc[known]
        info["dropped_rows_missing_target"] = n_unlabelled
        classes, y = _encode_target(df[o.target])
        if len(classes) < 2:
            raise DataError(
                f"data.target: column '{o.target}' in {path} has a single class "
                f"'{classes[0]}'; classification needs at least 2"
            )

        # -- columns: drop the empty ones, sort the rest into numeric and categorical -----
        if not features:
            raise DataError(
                f"data.drop: no feature columns left in {path} (columns: "
                f"{_columns_text(columns)}; target '{o.target}', dropped {_columns_text(o.drop)})"
            )
        # An entirely empty column carries nothing and has no median to impute: drop it.
        empty = [c for c in features if df[c].isna().all()]
        if len(empty) == len(features):
            raise DataError(
                f"data: every feature column of {path} is empty: {_columns_text(empty)}"
            )
        features = [c for c in features if c not in empty]
        info["dropped_empty_columns"] = empty
        categorical = [c for c in features if c in forced or not _is_numeric(df[c])]
        numeric = [c for c in features if c not in categorical]
        _check_encodable(df, numeric, categorical, forced, path)

        # -- split, then fit on the training rows only -------------------------------------
        idx = split_indices(y, split, classes=classes, where=f"data.target: {path}")
        X_raw = df[features]
        preprocessor = build_preprocessor(numeric, categorical)
        X_train = preprocessor.fit_transform(X_raw.iloc[idx.train])
        feature_names = [str(n) for n in preprocessor.get_feature_names_out()]
        if len(set(feature_names)) != len(feature_names):
            # A numeric column named like a one-hot column ("city_paris"): prefix every name
            # with its transformer ("num__", "cat__") so they stay distinct.
            preprocessor.set_params(verbose_feature_names_out=True)
            feature_names = [str(n) for n in preprocessor.get_feature_names_out()]

        def transform(rows: np.ndarray | None) -> np.ndarray | None:
            if rows is None:
                return None
            with warnings.catch_warnings():
                # Categories first seen in validation/test rows are encoded as all zeros, by
                # design (handle_unknown="ignore"); no need to warn about each.
                warnings.filterwarnings("ignore", message="Found unknown categories")
                return as_features(preprocessor.transform(X_raw.iloc[rows]))

        X_val = transform(idx.val)
        assert X_val is not None
        info.update(
            raw_columns=features,
            numeric_columns=numeric,
            categorical_columns=categorical,
            n_rows=len(y),
            **split_info(idx),
        )
        return Dataset(
            name=path.stem,
            X_train=as_features(X_train),
            y_train=as_labels(y[idx.train]),
            X_val=X_val,
            y_val=as_labels(y[idx.val]),
            X_test=transform(idx.test),
            y_test=None if idx.test is None else as_labels(y[idx.test]),
            classes=classes,
            feature_names=feature_names,
            preprocessor=preprocessor,
            info=info,
        )


#: A categorical column with more distinct values than this is refused: one-hot encoding would
#: add that many dense features to every row (memory for rows × categories floats).
MAX_CATEGORIES = 1000
#: From this many rows on, a categorical column whose every value differs (an id, free text) is
#: refused: each row is its own category, so no validation row's value was seen in training.
ALL_DISTINCT_MIN_ROWS = 20


def _check_encodable(
    df: pd.DataFrame, numeric: list[str], categorical: list[str], forced: list[str], path: Path
) -> None:
    """Raise :class:`DataError` for a feature column the preprocessing cannot turn into numbers.

    Without these checks an infinite number fails deep inside scikit-learn's scaler with a
    traceback, and an id or free-text column is one-hot encoded into one useless feature per row.
    """
    for c in numeric:
        # pandas reads "inf" and overflowing numbers (1e400) as infinity; neither the imputer
        # nor the scaler takes it.
        bad = np.isinf(df[c].to_numpy(dtype=np.float64))
        if bad.any():
            first, more = int(np.argmax(bad)), int(bad.sum()) - 1
            also = f" and {more} more row(s)" if more else ""
            raise DataError(
                f"data.path: column {c!r} of {path} holds an infinite number in data row "
                f"{int(df.index[first]) + 1} ({df[c].iloc[first]}){also}; write a finite number, "
                "or leave the cell empty to have it imputed"
            )
    for c in categorical:
        values = df[c].dropna()
        distinct = int(values.nunique())
        every_row = distinct == len(values) and len(values) >= ALL_DISTINCT_MIN_ROWS
        if distinct > MAX_CATEGORIES or every_row:
            why = (
                "every row has its own value (an id or free text?), so no validation row's "
                "category would have been seen in training"
                if every_row
                else f"one-hot encoding allows at most {MAX_CATEGORIES}"
            )
            kind = "categorical column" if c in forced else "text column"
            raise DataError(
                f"data.path: {kind} {c!r} of {path} cannot be one-hot encoded: {distinct} "
                f"distinct values in {len(values)} rows (e.g. {str(values.iloc[0])!r}); {why}. "
                "List it in data.drop, or turn it into numbers"
            )


def _read(path: Path, sep: str) -> pd.DataFrame:
    """Read the file; every way it can fail is a one-line :class:`DataError`."""
    if not path.exists():
        raise DataError(f"data.path: file not found: {path}")
    if not path.is_file():
        raise DataError(f"data.path: not a file: {path}")
    try:
        df = pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        raise DataError(f"data.path: {path} is empty (no header row)") from None
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.path: cannot parse {path} as CSV (sep {sep!r}): {first}") from None
    except UnicodeDecodeError:
        raise DataError(f"data.path: {path} is not UTF-8 text") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: cannot read {path}: {exc}") from None
    if df.empty:
        raise DataError(f"data.path: {path} has a header but no data rows")
    return df


def _encode_target(column: pd.Series) -> tuple[list[str], np.ndarray]:
    """Class names (the sorted distinct values, as text) and each row's class index."""
    values = column.to_numpy()
    if _is_numeric(column):
        # Integral floats (an int column read as float because of gaps) are named "1", not "1.0".
        uniques, y = np.unique(values, return_inverse=True)
        return [_category_label(v.item()) for v in uniques], y
    # Mixed or text labels: sort by their text so the class order is stable.
    labels = np.array([_category_label(v) for v in values], dtype=object)
    uniques, y = np.unique(labels, return_inverse=True)
    return [str(v) for v in uniques], y
