"""The live view: a bar and a table of recent trials on a terminal, one line per trial in logs."""

from __future__ import annotations

import io

import optuna
import pytest
from rich.console import Console

from hpo.progress import RECENT_TRIALS, StudyProgress
from hpo.spec import parse_spec

SPEC = "name: live\ndata: {source: sklearn, name: iris}\ntrials: 12\n"


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 3:
        raise optuna.TrialPruned()
    return x


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))


def test_terminal_shows_the_recent_trials_with_best_so_far(study: optuna.Study) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    spec = parse_spec(SPEC, source="t.yaml")
    with StudyProgress(spec, console=console) as progress:
        progress.start(study, 12)
        study.optimize(objective, n_trials=12, callbacks=[progress.on_trial])
        rows = list(progress.recent)
        text = io.StringIO()
        Console(file=text, width=120).print(progress.table())
    assert [r.number for r in rows] == list(range(12 - RECENT_TRIALS, 12))
    # "best so far" is the best at the time each trial finished, and never gets worse.
    bests = [float(r.best) for r in rows]
    assert bests == sorted(bests)
    assert bests[-1] == pytest.approx(study.best_value, abs=1e-4)
    table = text.getvalue()
    assert "val_accuracy" in table and "best so far" in table and "duration" in table
    assert f"{study.trials[11].value:.4g}" in table
    assert "live" in out.getvalue()  # the bar was drawn


def test_logs_get_one_line_per_trial_and_quiet_nothing(study: optuna.Study) -> None:
    spec = parse_spec(SPEC, source="t.yaml")
    out = io.StringIO()
    with StudyProgress(spec, console=Console(file=out, force_terminal=False)) as progress:
        progress.start(study, 5)
        study.optimize(objective, n_trials=5, callbacks=[progress.on_trial])
    lines = out.getvalue().splitlines()
    assert lines[0] == "live: running 5 trials"
    assert len(lines) == 6
    assert "pruned" in lines[4] and lines[4].split()[1] == "3"
    assert all(line.rstrip().endswith("s") for line in lines[1:])  # each with its duration

    quiet = io.StringIO()
    with StudyProgress(spec, enabled=False, console=Console(file=quiet)) as progress:
        progress.start(study, 2)
        study.optimize(objective, n_trials=2, callbacks=[progress.on_trial])
    assert quiet.getvalue() == ""


def test_polling_picks_up_trials_finished_elsewhere(study: optuna.Study) -> None:
    spec = parse_spec(SPEC, source="t.yaml")
    study.optimize(objective, n_trials=2)  # before this run: not news
    progress = StudyProgress(spec, console=Console(file=io.StringIO(), force_terminal=False))
    progress.start(study, 3)
    study.optimize(objective, n_trials=3)  # another process's trials
    progress.update(study)
    assert [r.number for r in progress.recent] == [2, 3, 4]
