"""An architecture study: the family itself is searched, every family runs, and they are compared."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from hpo.cli import main

SPEC = """\
name: arch-it
data: {source: sklearn, name: digits}
train: {epochs: 1, seed: 0}
search:
  family:       {type: categorical, choices: [cnn, vgg, resnet]}
  depth:        {type: int, low: 2, high: 3, when: {family: cnn}}
  vgg_config:   {type: categorical, choices: [vgg11, vgg13], when: {family: vgg}}
  resnet_depth: {type: categorical, choices: [8, 14], when: {family: resnet}}
  width:        {type: categorical, choices: [8, 16]}
  lr:           {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
fixed: {batch_size: 128}
enqueue: [{family: cnn}, {family: vgg}, {family: resnet}]
sampler: {name: random, seed: 0}
pruner: {name: none}
trials: 3
"""


def test_every_family_runs_with_only_its_knobs_and_is_compared(tmp_path: Path) -> None:
    spec = tmp_path / "arch.yaml"
    spec.write_text(SPEC)
    storage, tracking = f"sqlite:///{tmp_path}/hpo.db", f"sqlite:///{tmp_path}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(
            main,
            ["study", "start", str(spec), "--storage", storage, "--tracking-uri", tracking, "-q"],
        )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output

    study = optuna.load_study(study_name="arch-it", storage=storage)
    assert [t.params["family"] for t in study.trials] == ["cnn", "vgg", "resnet"]
    knobs = {"cnn": "depth", "vgg": "vgg_config", "resnet": "resnet_depth"}
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        # the sampler never saw another family's knob
        for family, knob in knobs.items():
            assert (knob in t.params) == (t.params["family"] == family)
    # the table is printed at the end …
    assert "model families" in result.output
    for family in knobs:
        assert family in result.output

    # … and logged to the parent run, whose child runs carry the device
    client = MlflowClient(tracking)
    parent = study.user_attrs["mlflow_parent_run_id"]
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"family_comparison.csv", "family_comparison.html"} <= names
    csv = Path(
        client.download_artifacts(parent, "family_comparison.csv", str(tmp_path))
    ).read_text()
    assert csv.splitlines()[0].startswith(
        "family,trials,complete,best_trial,val_accuracy,val_f1,n_params"
    )
    assert len(csv.splitlines()) == 4
    child = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert child.data.tags["hpo.device"] == "cpu"

    compare = CliRunner().invoke(
        main, ["study", "compare", "arch-it", "--storage", storage, "--no-log"]
    )
    assert compare.exit_code == 0, compare.output
    assert "resnet" in compare.output and "n_params" in compare.output
