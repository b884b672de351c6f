"""The chance-level check: random labels are called chance, a real model is not."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.insights import (
    CHANCE_TAG,
    chance_check,
    log_chance_check,
    study_chance_check,
    tag_value,
)


def _balanced(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Labels as a stratified split gives them: as balanced as ``n`` allows, shuffled."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(n) % k)


def test_random_labels_are_within_noise() -> None:
    # The `synthetic: random` study: 1,000 rows, 10 classes, 250 validation rows drawn
    # uniformly; the best of 20 trials reaches ~0.12.
    y_val = np.random.default_rng(0).integers(0, 10, size=250)
    check = chance_check(0.12, y_val, 10, n_trials=20)
    assert check.within_noise
    assert tag_value(check) == "chance"
    assert check.n_val == 250
    assert 0.10 <= check.majority_rate <= 0.14
    assert check.majority_rate < check.upper_95 < 0.25
    text = check.message()
    assert "within noise of chance" in text and "nothing here beats guessing" in text
    assert "250 samples" in text and "best of 20 trials" in text
    assert "0.1200" in text


def test_digits_best_is_above_chance() -> None:
    # Digits: 450 stratified validation rows, ~10 % per class; the MLP's best is ~0.97.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    _, y_val = train_test_split(y, test_size=0.25, stratify=y, random_state=0)
    assert len(y_val) == 450
    check = chance_check(0.97, y_val, 10, n_trials=20)
    assert not check.within_noise
    assert tag_value(check) == "above_chance"
    assert check.majority_rate == pytest.approx(0.10, abs=0.01)
    assert check.upper_95 < 0.2
    assert check.message().startswith("best val_accuracy 0.9700 is above chance (")


def test_false_alarm_rate_of_many_chance_studies_is_at_most_alpha() -> None:
    # 300 simulated studies of 20 trials, each trial a classifier that guesses: "above chance"
    # must come up in at most ~5 % of them (the Bonferroni bound is conservative: ~never).
    rng = np.random.default_rng(1)
    n_val, k, trials = 250, 10, 20
    false_alarms = 0
    for _ in range(300):
        y_val = rng.integers(0, k, size=n_val)
        guesses = rng.integers(0, k, size=(trials, n_val))
        best = float((guesses == y_val).mean(axis=1).max())
        false_alarms += not chance_check(best, y_val, k, n_trials=trials).within_noise
    assert false_alarms <= 15


def test_more_trials_raise_the_bound() -> None:
    y_val = _balanced(200, 4)
    one = chance_check(0.3, y_val, 4, n_trials=1)
    many = chance_check(0.3, y_val, 4, n_trials=100)
    assert one.upper_95 < many.upper_95
    assert "best of" not in one.message()


def test_binary_balanced() -> None:
    y_val = _balanced(100, 2)
    # One model: the 95th percentile of Binomial(100, 0.5) is 58.
    assert chance_check(0.58, y_val, 2).within_noise
    assert chance_check(0.58, y_val, 2).upper_95 == pytest.approx(0.58)
    assert not chance_check(0.60, y_val, 2).within_noise


def test_imbalanced_majority_rate_is_the_chance_level() -> None:
    # 90 % of one class: "0.90 accuracy" is what always predicting it gives.
    y_val = np.array([0] * 180 + [1] * 20)
    check = chance_check(0.90, y_val, 2, n_trials=10)
    assert check.majority_rate == pytest.approx(0.9)
    assert check.within_noise
    assert not chance_check(0.99, y_val, 2, n_trials=10).within_noise


def test_tiny_validation_set_cannot_tell() -> None:
    check = chance_check(1.0, np.array([0, 1, 1, 0, 1]), 2, n_trials=5)
    assert check.upper_95 == pytest.approx(1.0)
    assert check.too_small and check.within_noise
    assert "too small" in check.message()


def test_single_class_and_missing_classes() -> None:
    # Every validation label the same: chance is 1.0 (predict it), nothing can beat it.
    check = chance_check(1.0, np.zeros(30, dtype=np.int64), 3)
    assert check.majority_rate == 1.0 and check.upper_95 == 1.0 and check.within_noise


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        chance_check(0.5, np.array([], dtype=np.int64), 2)
    with pytest.raises(ValueError, match="labels"):
        chance_check(0.5, np.array([0, 3]), 2)
    # NaN (a broken metric) is never reported as beating chance.
    assert chance_check(float("nan"), _balanced(100, 2), 2).within_noise


def _study_with_accuracies(accuracies: list[float | None]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for i, acc in enumerate(accuracies):
        attrs = {} if acc is None else {"val_accuracy": acc}
        study.add_trial(
            create_trial(
                params={"lr": 0.01 * (i + 1)},
                distributions={"lr": FloatDistribution(1e-3, 1.0)},
                value=1.0 - (acc or 0.0),
                user_attrs=attrs,
            )
        )
    study.add_trial(create_trial(state=TrialState.PRUNED))
    return study


def test_study_chance_check_uses_best_accuracy_and_trial_count() -> None:
    study = _study_with_accuracies([0.11, 0.13, None, 0.12])
    check = study_chance_check(study, _balanced(250, 10), 10)
    assert check is not None
    assert check.best_accuracy == pytest.approx(0.13)
    assert check.n_trials == 3  # complete trials that recorded an accuracy
    assert check.within_noise
    assert study_chance_check(_study_with_accuracies([None]), _balanced(10, 2), 2) is None


def test_log_chance_check_puts_tag_and_metrics_on_parent() -> None:
    logged: dict[str, Any] = {}

    class Tracker:
        def log_parent(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
            logged.update(metrics=metrics, tags=tags)

    check = chance_check(0.97, _balanced(450, 10), 10, n_trials=20)
    log_chance_check(check, Tracker())
    assert logged["tags"] == {CHANCE_TAG: "above_chance", "hpo.chance_message": check.message()}
    assert set(logged["metrics"]) == {"chance_majority_rate", "chance_upper_95"}
