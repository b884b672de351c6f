"""The ``csv`` source: mixed columns, gaps, string targets, preprocessing without leakage, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hpo.data import load_dataset
from hpo.data.base import Dataset, SplitOptions
from hpo.errors import DataError


def mixed_frame(n: int = 60) -> pd.DataFrame:
    """Numeric and text columns with gaps, an id, an empty column and a string target."""
    rng = np.random.default_rng(0)
    income = rng.normal(50_000, 15_000, n).round()
    income[rng.choice(n, n // 6, replace=False)] = np.nan
    city = rng.choice(["paris", "rome", "oslo"], n).astype(object)
    city[rng.choice(n, n // 10, replace=False)] = None
    label = np.where(rng.random(n) < 0.4, "churn", "stay").astype(object)
    label[:3] = None  # three unlabelled rows
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "age": rng.integers(18, 80, n),
            "income": income,
            "city": city,
            "member": rng.choice([True, False], n),
            "notes": [None] * n,
            "label": label,
        }
    )


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def load(tmp_path: Path, split: SplitOptions | None = None, **options: Any) -> Dataset:
    options.setdefault("path", "data.csv")
    options.setdefault("target", "label")
    return load_dataset("csv", options, split or SplitOptions(), base_dir=tmp_path)


def test_mixed_csv_with_gaps_and_a_string_target_loads(tmp_path: Path) -> None:
    write(tmp_path, mixed_frame())
    data = load(tmp_path, SplitOptions(test_fraction=0.2), drop=["id"])
    assert data.classes == ["churn", "stay"]
    assert data.name == "data"
    assert data.feature_names is not None
    # one-hot columns for the text and boolean columns; numeric ones keep their names
    assert {"age", "income", "city_oslo", "city_paris", "city_rome", "member_True"} <= set(
        data.feature_names
    )
    assert data.input_shape == (len(data.feature_names),)
    for X in (data.X_train, data.X_val, data.X_test):
        assert X is not None and X.dtype == np.float32 and X.flags.c_contiguous
        assert not np.isnan(X).any()
    assert data.y_train.dtype == np.int64
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 57
    assert data.info["dropped_rows_missing_target"] == 3
    assert data.info["dropped_empty_columns"] == ["notes"]
    assert data.info["raw_columns"] == ["age", "income", "city", "member"]
    assert data.info["categorical_columns"] == ["city", "member"]


def test_the_preprocessor_takes_raw_rows_even_with_unseen_categories(tmp_path: Path) -> None:
    write(tmp_path, mixed_frame())
    data = load(tmp_path, drop=["id"])
    raw = pd.DataFrame(
        [{"age": 30, "income": None, "city": "lisbon", "member": True}],
        columns=data.info["raw_columns"],
    )
    row = data.preprocessor.transform(raw)
    assert row.shape == (1, data.n_features)
    names = data.feature_names or []
    # An unseen city is all zeros, not an error.
    assert all(row[0, names.index(c)] == 0 for c in ("city_oslo", "city_paris", "city_rome"))


def test_preprocessing_is_fitted_on_the_training_rows_only(tmp_path: Path) -> None:
    frame = mixed_frame(200)
    write(tmp_path, frame)
    # Keep "id" as a feature: unscaling it tells which rows were used for training.
    data = load(tmp_path)
    names = data.feature_names or []
    num = data.preprocessor.named_transformers_["num"]
    scaler = num.named_steps["scale"]
    i = names.index("id")
    train_ids = np.rint(data.X_train[:, i] * scaler.scale_[i] + scaler.mean_[i]).astype(int)
    assert len(set(train_ids)) == len(data.y_train)
    train = frame.set_index("id").loc[train_ids]
    labelled = frame[frame["label"].notna()]
    imputed = dict(
        zip(data.info["numeric_columns"], num.named_steps["impute"].statistics_, strict=True)
    )
    assert imputed["income"] == train["income"].median()
    assert imputed["income"] != labelled["income"].median()
    assert scaler.mean_[names.index("age")] == pytest.approx(train["age"].mean())
    # Standardised with the training statistics: train centred, validation not exactly.
    assert abs(data.X_train[:, names.index("age")].mean()) < 1e-5
    assert abs(data.X_val[:, names.index("age")].mean()) > 1e-4


def test_classes_keep_their_proportions(tmp_path: Path) -> None:
    labels = ["a"] * 80 + ["b"] * 40 + ["c"] * 20
    write(tmp_path, pd.DataFrame({"x": range(140), "label": labels}))
    data = load(tmp_path, SplitOptions(val_fraction=0.25))
    assert np.bincount(data.y_val).tolist() == [20, 10, 5]


def test_integer_target_with_gaps_gives_integer_class_names(tmp_path: Path) -> None:
    write(tmp_path, pd.DataFrame({"x": range(20), "label": [0, 1] * 9 + [None, 1]}))
    data = load(tmp_path)
    assert data.classes == ["0", "1"]
    assert data.info["dropped_rows_missing_target"] == 1


def test_categorical_option_one_hot_encodes_a_numeric_column(tmp_path: Path) -> None:
    write(tmp_path, pd.DataFrame({"zone": [1, 2, 3, 1] * 5, "x": range(20), "label": [0, 1] * 10}))
    data = load(tmp_path, categorical=["zone"])
    assert data.feature_names == ["x", "zone_1", "zone_2", "zone_3"]


def test_relative_path_resolves_against_base_dir_and_other_separators_work(
    tmp_path: Path,
) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.tsv").write_text("x\tlabel\n" + "".join(f"{i}\t{i % 2}\n" for i in range(10)))
    data = load(tmp_path, path="sub/d.tsv", sep="\t")
    assert data.info["path"] == str((sub / "d.tsv").resolve())
    absolute = load_dataset(
        "csv", {"path": str(sub / "d.tsv"), "target": "label", "sep": "\t"}, SplitOptions()
    )
    assert absolute.n_features == 1


def simple(tmp_path: Path, text: str) -> None:
    (tmp_path / "data.csv").write_text(text)


ROWS = "".join(f"{i},{i * 2},{'x' if i % 2 else 'y'}\n" for i in range(12))


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        (None, {}, r"^data\.path: file not found: .*missing\.csv$"),
        ("", {}, r"^data\.path: .*data\.csv is empty"),
        ("a,b,label\n", {}, r"^data\.path: .*data\.csv has a header but no data rows"),
        (
            "a,b,label\n" + ROWS,
            {"target": "lable"},
            r"^data\.target: column 'lable' not in .*data\.csv \(did you mean 'label'\?\); "
            r"columns: 'a', 'b', 'label'$",
        ),
        (
            "a;b;label\n" + ROWS.replace(",", ";"),
            {},
            r"^data\.target: column 'label' not in .*is sep ',' right\?",
        ),
        (
            "a,b,label\n" + ROWS,
            {"drop": ["b", "zz"]},
            r"^data\.drop: column\(s\) 'zz' not in .*data\.csv; columns: 'a', 'b', 'label'$",
        ),
        ("a,b,label\n" + ROWS, {"drop": ["label"]}, r"^data\.drop: 'label' is the target"),
        ("a,b,label\n" + ROWS, {"drop": ["a", "b"]}, r"^data\.drop: no feature columns left"),
        (
            "a,b,label\n" + ROWS,
            {"categorical": ["c"]},
            r"^data\.categorical: 'c' not among the feature columns",
        ),
        (
            "a,label\n" + "".join(f"{i},same\n" for i in range(10)),
            {},
            r"^data\.target: column 'label' in .*data\.csv has a single class 'same'",
        ),
        ("a,label\n1,\n2,\n", {}, r"^data\.target: column 'label' in .*data\.csv has no values$"),
        (
            "a,b,label\n" + "".join(f",,{'x' if i % 2 else 'y'}\n" for i in range(10)),
            {},
            r"^data: every feature column of .*data\.csv is empty: 'a', 'b'$",
        ),
        (
            "a,label\n" + "".join(f"{i},common\n" for i in range(10)) + "10,rare\n",
            {},
            r"^data\.target: .*data\.csv: class 'rare' has only 1 row",
        ),
        (
            'a,label\n1,"x\n',
            {},
            r"^data\.path: cannot parse .*data\.csv as CSV",
        ),
    ],
)
def test_unusable_files_raise_one_line_data_errors(
    tmp_path: Path, text: str | None, options: dict, message: str
) -> None:
    if text is None:
        options = {"path": "missing.csv"}
    else:
        simple(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        load(tmp_path, **options)
    assert "\n" not in str(err.value)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match=r"^data\.path: not a file: .*dir\.csv$"):
        load(tmp_path, path="dir.csv")


def test_a_file_that_is_not_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_bytes(b"a,label\n\xff\xfe\x00,x\n")
    with pytest.raises(DataError, match=r"^data\.path: .*data\.csv is not UTF-8 text$"):
        load(tmp_path)
