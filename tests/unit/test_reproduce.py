"""``hpo trial reproduce``: a trial retrained from its stored parameters gives its metrics again."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hpo.cli import main
from hpo.reproduce import reproduce_trial

SPEC = """\
name: repro
data: {source: sklearn, name: iris, seed: 0}
train: {epochs: 3, seed: 3}
search:
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.0, high: 0.9, when: {optimizer: sgd}}
  dropout: {type: float, low: 0.0, high: 0.5}
sampler: {name: random, seed: 1}
pruner: {name: none}
trials: 3
"""


def test_a_reproduced_trial_matches_the_original(workdir: Path) -> None:
    (workdir / "s.yaml").write_text(SPEC)
    runner = CliRunner()
    started = runner.invoke(main, ["study", "start", "s.yaml", "--quiet"])
    assert started.exit_code == 0, started.output
    storage = f"sqlite:///{workdir / 'hpo.db'}"

    import optuna

    study = optuna.load_study(study_name="repro", storage=storage)
    for trial in study.trials:
        rep = reproduce_trial("repro", trial.number, storage)
        # Every stored parameter, conditional ones included, is used again.
        assert {k: rep.params[k] for k in trial.params} == trial.params
        original, again = rep.metrics["val_accuracy"]
        assert original == trial.value
        assert again == trial.value
        assert rep.metrics["val_loss"][0] == trial.user_attrs["val_loss"]
        assert rep.max_abs_difference() == 0.0

    out = runner.invoke(main, ["trial", "reproduce", "repro", "2"])
    assert out.exit_code == 0, out.output
    assert "reproduced exactly" in out.output
    assert f"{study.trials[2].value:.4g}" in out.output


def test_unknown_trial_or_study_is_one_clear_line(workdir: Path) -> None:
    (workdir / "s.yaml").write_text(SPEC.replace("trials: 3", "trials: 1"))
    runner = CliRunner()
    assert runner.invoke(main, ["study", "start", "s.yaml", "--quiet"]).exit_code == 0
    out = runner.invoke(main, ["trial", "reproduce", "repro", "7"])
    assert out.exit_code == 2
    assert out.output.strip().count("\n") == 0
    assert "trial 7" in out.output and "trials 0 to 0" in out.output
    out = runner.invoke(main, ["trial", "reproduce", "repr", "0"])
    assert out.exit_code == 2 and "'repro'" in out.output and "Traceback" not in out.output
