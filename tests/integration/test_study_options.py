"""Study options that change how a study runs: samplers, pruners, divergence, Postgres, budgets."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo.spec import parse_spec
from hpo.study import StudyResult, run_study

BASE = """\
name: {name}
data: {{source: sklearn, name: iris}}
train: {{epochs: 3, seed: 0}}
search:
  lr:    {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
  width: {{type: int, low: 8, high: 32, step: 8}}
  batch_norm: {{type: categorical, choices: [true, false]}}
fixed: {{batch_size: 32}}
trials: {trials}
"""


def spec_text(name: str, extra: str = "", trials: int = 3) -> str:
    return BASE.format(name=name, trials=trials) + extra


def run(tmp_path: Path, text: str, storage: str | None = None, **kwargs: object) -> StudyResult:
    spec = parse_spec(text)
    return run_study(
        spec,
        source="test.yaml",
        storage_url=storage or f"sqlite:///{tmp_path}/hpo.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "sampler",
    [
        "{name: tpe, seed: 1, n_startup_trials: 1}",
        "{name: random, seed: 1}",
        "{name: cmaes, seed: 1}",
        "{name: gp, seed: 1, n_startup_trials: 1}",
        "{name: nsga2, seed: 1, population_size: 2}",
    ],
)
def test_every_sampler_runs_a_study(tmp_path: Path, sampler: str) -> None:
    result = run(tmp_path, spec_text("s", f"sampler: {sampler}\npruner: {{name: none}}\n"))
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.COMPLETE] * 3


def test_grid_sampler_enumerates_the_grid(tmp_path: Path) -> None:
    text = spec_text("g", "sampler: {name: grid}\npruner: {name: none}\n", trials=8)
    text = text.replace("low: 1.0e-3, high: 1.0e-1, log: true", "low: 0.01, high: 0.02, step: 0.01")
    result = run(tmp_path, text)
    combos = {
        (t.params["lr"], t.params["width"], t.params["batch_norm"]) for t in result.study.trials
    }
    assert len(combos) == 8  # 8 trials, 8 different points of the 2 x 4 x 2 grid
    assert len(result.study.trials) == 8


@pytest.mark.parametrize(
    "pruner",
    [
        "{name: median, startup_trials: 1}",
        "{name: successive_halving, min_epochs: 1}",
        "{name: hyperband, min_epochs: 1}",
        "{name: none}",
    ],
)
def test_every_pruner_runs_and_gets_epoch_reports(tmp_path: Path, pruner: str) -> None:
    result = run(
        tmp_path,
        spec_text("p", f"pruner: {pruner}\nsampler: {{name: random, seed: 2}}\n", trials=4),
    )
    trials = result.study.trials
    assert len(trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if "none" not in pruner:
        # the epochs were reported as intermediate values, which is what pruners decide on
        assert all(t.intermediate_values for t in trials)
        assert max(len(t.intermediate_values) for t in trials) == 3


def test_diverging_learning_rate_is_pruned_with_the_reason_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    text = spec_text(
        "nan", "pruner: {name: none}\nenqueue: [{lr: 1.0e+10, batch_norm: false}]\n", trials=2
    ).replace("fixed: {batch_size: 32}", "fixed: {batch_size: 32, optimizer: sgd}")
    text = text.replace("high: 1.0e-1", "high: 1.0e+10")
    result = run(tmp_path, text)
    first, second = result.study.trials
    assert first.state == TrialState.PRUNED
    assert "loss became" in first.user_attrs["pruned_reason"]
    assert second.state == TrialState.COMPLETE  # the study went on
    run_info = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(
        first.user_attrs["mlflow_run_id"]
    )
    assert run_info.info.status == "KILLED"
    assert run_info.data.tags["hpo.state"] == "PRUNED"


def test_failing_trials_stop_the_study_with_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpo.objective

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hpo.objective, "train", broken)
    result = run(tmp_path, spec_text("fail", "pruner: {name: none}\n", trials=10))
    assert len(result.study.trials) == 3  # stopped after 3 failures in a row, not 10
    assert all(t.state == TrialState.FAIL for t in result.study.trials)
    assert result.stopped_reason is not None and "disk on fire" in result.stopped_reason
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for t in result.study.trials:
        r = client.get_run(t.user_attrs["mlflow_run_id"])
        assert r.info.status == "FAILED"
        assert "disk on fire" in r.data.tags["hpo.error"]


def test_multi_objective_study(tmp_path: Path) -> None:
    text = spec_text("mo", "metrics: [val_accuracy, n_params]\nsampler: {name: nsga2, seed: 0}\n")
    result = run(tmp_path, text)
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 for t in result.study.trials)
    assert result.study.best_trials


def test_timeout_stops_starting_trials(tmp_path: Path) -> None:
    result = run(tmp_path, spec_text("t", "pruner: {name: none}\n", trials=1000), timeout=3)
    assert 1 <= len(result.study.trials) < 1000


def test_learnable_activation_logs_its_coefficients(tmp_path: Path) -> None:
    text = spec_text("la", "pruner: {name: none}\n", trials=1).replace(
        "fixed: {batch_size: 32}", "fixed: {batch_size: 32, activation: learnable, depth: 2}"
    )
    result = run(tmp_path, text)
    trial = result.study.trials[0]
    metrics = (
        MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        .get_run(trial.user_attrs["mlflow_run_id"])
        .data.metrics
    )
    assert {"act1_k0", "act1_k1", "act2_k0", "act2_k1"} <= set(metrics)


@pytest.mark.postgres
def test_study_on_postgres_resumes(tmp_path: Path, postgres_url: str) -> None:
    text = spec_text("pg", "pruner: {name: none}\nsampler: {name: random, seed: 0}\n", trials=2)
    first = run(tmp_path, text, storage=postgres_url)
    assert first.ran == 2
    again = run(tmp_path, text, storage=postgres_url, n_trials=1)
    assert again.ran == 1
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 3
    assert len({t.user_attrs["mlflow_run_id"] for t in study.trials}) == 3
    assert study.user_attrs["mlflow_parent_run_id"] == first.parent_run_id == again.parent_run_id


def test_random_labels_are_called_chance(tmp_path: Path) -> None:
    # The "MLP on random noise" experiment: nothing can be learned, and hpo must say so.
    text = (
        "name: noise\n"
        "data: {source: synthetic, kind: random, n_samples: 1000, n_features: 100, n_classes: 10}\n"
        "train: {epochs: 2}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
        "pruner: {name: none}\ntrials: 3\n"
    )
    result = run(tmp_path, text)
    assert result.chance is not None and result.chance.within_noise
    parent = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.parent_run_id)
    assert parent.data.tags["hpo.chance_level"] == "chance"
