"""The JSON preprocessing gives the model the same features as the fitted transformer did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo.data import load_dataset
from hpo.data.base import SplitOptions
from hpo.serving.preprocessing import Preprocessing, PreprocessingError, describe


def roundtrip(data) -> Preprocessing:  # type: ignore[no-untyped-def]
    # Through JSON text, as it is stored in the model's MLmodel file.
    return Preprocessing.from_dict(json.loads(json.dumps(describe(data))))


def raw_frame(n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    income = rng.normal(50_000, 15_000, n).round()
    income[rng.choice(n, n // 5, replace=False)] = np.nan
    city = rng.choice(["paris", "rome", "oslo"], n).astype(object)
    city[rng.choice(n, n // 8, replace=False)] = None
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": income,
            "city": city,
            "rooms": rng.choice([1, 2, 3], n),
            "member": rng.choice([True, False], n),
            "label": rng.choice(["churn", "stay"], n),
        }
    )


def test_csv_rows_with_gaps_and_unseen_categories(tmp_path: Path) -> None:
    frame = raw_frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = load_dataset(
        "csv",
        {"path": "d.csv", "target": "label", "categorical": ["rooms"]},
        SplitOptions(val_fraction=0.25, seed=0),
        base_dir=tmp_path,
    )
    pre = roundtrip(data)
    assert pre.kind == "columns" and pre.classes == ["churn", "stay"]
    assert pre.columns == ["age", "income", "city", "rooms", "member"]
    rows = frame.drop(columns="label")
    rows.loc[0, "city"] = "lima"  # never seen in training: all zeros, like the encoder
    rows.loc[1, "income"] = np.nan
    expected = data.preprocessor.transform(rows)
    np.testing.assert_allclose(pre.transform(rows), expected, rtol=1e-6, atol=1e-6)
    # The same rows as JSON would send them: records (with None for gaps) or plain value lists.
    records = json.loads(rows.to_json(orient="records"))
    np.testing.assert_allclose(pre.transform(records), expected, rtol=1e-6, atol=1e-6)
    values = json.loads(rows.to_json(orient="values"))
    np.testing.assert_allclose(pre.transform(values), expected, rtol=1e-6, atol=1e-6)


def test_bad_rows_name_the_column(tmp_path: Path) -> None:
    frame = raw_frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = load_dataset(
        "csv", {"path": "d.csv", "target": "label"}, SplitOptions(), base_dir=tmp_path
    )
    pre = roundtrip(data)
    rows = frame.drop(columns=["label", "income"])
    with pytest.raises(PreprocessingError, match=r"missing column.*'income'"):
        pre.transform(rows)
    bad = frame.drop(columns="label").astype(object)
    bad.loc[2, "age"] = "old"
    with pytest.raises(PreprocessingError, match="column 'age': not a number"):
        pre.transform(bad)
    with pytest.raises(PreprocessingError, match="each row needs 5 values"):
        pre.transform([[1, 2]])


def test_scaled_tables_take_raw_feature_rows() -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_dataset("sklearn", {"name": "breast_cancer"}, SplitOptions(seed=3))
    pre = roundtrip(data)
    assert pre.kind == "standard" and len(pre.columns) == 30
    raw = load_breast_cancer().data[:7]
    np.testing.assert_allclose(
        pre.transform(raw.tolist()), data.preprocessor.transform(raw), rtol=1e-6, atol=1e-6
    )


def test_images_in_the_layout_the_source_read() -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("sklearn", {"name": "digits", "images": True}, SplitOptions(seed=0))
    pre = roundtrip(data)
    assert pre.kind == "image" and pre.spec["input_shape"] == [1, 8, 8]
    raw = load_digits().images[:4]
    expected = data.preprocessor.transform(raw)
    np.testing.assert_allclose(pre.transform(raw.tolist()), expected, rtol=1e-6)
    # One image alone is a batch of one.
    np.testing.assert_allclose(pre.transform(raw[0]), expected[:1], rtol=1e-6)
    with pytest.raises(PreprocessingError, match="the model takes"):
        pre.transform(np.zeros((2, 7, 7)))


def test_unknown_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing format"):
        Preprocessing.from_dict({"format": "hpo.preprocessing/9", "kind": "none"})
