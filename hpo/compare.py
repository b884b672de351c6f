"""Compare model families within one study: the best trial of each, side by side.

Architecture studies search ``family`` (e.g. cnn vs vgg vs resnet); this table is what the user
wants at the end: per family, the best trial's validation accuracy and macro F1, its parameter
count and training time, and how many trials the family got.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import pandas as pd

COLUMNS = [
    "family",
    "trials",
    "complete",
    "best_trial",
    "val_accuracy",
    "val_f1",
    "n_params",
    "train_seconds",
]


def family_table(study: optuna.Study) -> pd.DataFrame:
    """One row per family tried, best first (by the study's objective of its best trial)."""
    import pandas as pd
    from optuna.trial import TrialState

    maximize = study.directions[0].name == "MAXIMIZE"
    rows: dict[str, dict[str, object]] = {}
    for t in study.get_trials(deepcopy=False):
        family = t.user_attrs.get("family") or t.params.get("family")
        if family is None:
            continue
        row = rows.setdefault(str(family), {"family": str(family), "trials": 0, "complete": 0})
        row["trials"] = int(row["trials"]) + 1  # type: ignore[call-overload]
        if t.state != TrialState.COMPLETE or t.values is None:
            continue
        row["complete"] = int(row["complete"]) + 1  # type: ignore[call-overload]
        value = t.values[0]
        best = row.get("_value")
        if best is None or (value > best if maximize else value < best):
            row.update(
                _value=value,
                best_trial=t.number,
                val_accuracy=t.user_attrs.get("val_accuracy", math.nan),
                val_f1=t.user_attrs.get("val_f1", math.nan),
                n_params=t.user_attrs.get("n_params", math.nan),
                train_seconds=t.user_attrs.get("train_seconds", math.nan),
            )
    frame = pd.DataFrame(list(rows.values()))
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = frame.sort_values("_value", ascending=not maximize, na_position="last")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = math.nan
    frame = frame[COLUMNS].reset_index(drop=True)
    frame["best_trial"] = frame["best_trial"].astype("Int64")
    return frame


def table_html(frame: pd.DataFrame, title: str) -> str:
    """A small self-contained HTML page with the table (for the parent run's artifacts)."""
    from html import escape

    table = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
        "th:first-child,td:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{style}</style></head><body><h2>{escape(title)}</h2>{table}</body></html>"
    )
