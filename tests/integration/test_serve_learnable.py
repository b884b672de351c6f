"""Founding experiment 6 end to end: the learnable-activation study's champion, served, answers raw rows.

The study file (studies/learnable_activation.yaml) runs for 2 trials, shrunk as in
test_founding_studies.py (the learnable and the ReLU network at lr 0.01); ``hpo serve`` then
serves the better of the two, and a request of raw Gapminder rows (year as a number, population
and GDP unscaled, the way the CSV holds them) gets one continent per row back.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hpo.cli import main
from tests.integration.test_serve import hpo_serve, post

STUDY = Path(__file__).parents[2] / "studies" / "learnable_activation.yaml"
DATA = STUDY.parent / "data" / "gapminder_continents.csv"
NAME = "learnable-activation"
CONTINENTS = ["Africa", "Americas", "Asia", "Europe", "Oceania"]


@pytest.mark.slow
def test_the_served_learnable_activation_champion_answers_raw_rows(workdir: Path) -> None:
    import optuna
    import torch

    from hpo.data import load_dataset
    from hpo.data.base import SplitOptions
    from hpo.tracking.models import load_pytorch_model

    storage, tracking = f"sqlite:///{workdir}/hpo.db", f"sqlite:///{workdir}/mlflow.db"
    out = CliRunner().invoke(
        main,
        ["study", "start", str(STUDY), "--n-trials", "2", "--storage", storage,
         "--tracking-uri", tracking, "-q"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"models:/{NAME}@champion" in out.output
    study = optuna.load_study(study_name=NAME, storage=storage)
    best = study.best_trial
    assert best.number in (0, 1) and best.params["activation"] in ("learnable", "relu")

    with hpo_serve(NAME, workdir, tracking) as base:
        with urllib.request.urlopen(f"{base}/metadata", timeout=5) as r:
            meta = json.loads(r.read())
        assert meta["input"]["columns"] == ["year", "lifeExp", "pop", "gdpPercap"]
        assert meta["classes"] == CONTINENTS
        # the served version is the study's best trial
        assert meta["lineage"]["hpo.trial"] == str(best.number)
        assert meta["lineage"]["hpo.metric"] == "val_f1"

        # raw rows as the CSV holds them, a few of each continent
        table = pd.read_csv(DATA)
        rows = table.groupby("continent").head(4).reset_index(drop=True)
        raw = rows.drop(columns=["country", "continent"])
        records = json.loads(raw.to_json(orient="records"))
        code, answer = post(f"{base}/invocations", {"dataframe_records": records})
        assert code == 200, answer
        assert answer["classes"] == CONTINENTS
        assert len(answer["predictions"]) == len(raw) == 20
        assert set(answer["predictions"]) <= set(CONTINENTS)
        proba = np.array(answer["probabilities"])
        assert proba.shape == (20, 5)
        assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-4)
        assert answer["predictions"] == [CONTINENTS[i] for i in proba.argmax(axis=1)]

        # the same answer as the study's own pipeline: the source's fitted preprocessing + the model
        data = load_dataset(
            "csv",
            {"path": "data/gapminder_continents.csv", "target": "continent",
             "drop": ["country"], "categorical": ["year"]},
            SplitOptions(val_fraction=0.2, test_fraction=0.2, seed=0),
            base_dir=STUDY.parent,
        )  # fmt: skip
        model = load_pytorch_model(f"models:/{NAME}@champion", tracking_uri=tracking)
        with torch.no_grad():
            logits = model(torch.from_numpy(data.preprocessor.transform(raw).astype(np.float32)))
        assert answer["predictions"] == [data.classes[i] for i in logits.argmax(dim=1).tolist()]
