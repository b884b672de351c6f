"""Honest results: does the best trial beat a classifier that learned nothing?

A search over many trials always finds *some* best validation accuracy, and on data without any
signal (random labels, a broken feature pipeline, a target column that leaked away) that best can
look like progress: 0.12 on ten classes reads like "a bit better than 0.10". This module compares
the study's best validation accuracy with what chance alone reaches on the same validation set,
and says so plainly when the best is within that noise.

The chance model
----------------
A classifier whose predictions carry no information about the label scores, in expectation,
``sum_k q_k p_k`` where ``p_k`` are the class frequencies and ``q_k`` how often it predicts class
``k``. That is at most ``max_k p_k``, the *majority-class rate* (always predicting the largest
class); uniform guessing (``1 / n_classes``) never does better. On ``n_val`` validation samples its
number of correct answers is then (at most, stochastically) Binomial(``n_val``, majority rate).

The bound
---------
The study reports the *maximum* over its trials, not one trial's accuracy, and a maximum of noisy
scores drifts upwards with the number of trials. We take the one-sided ``1 - alpha / n_trials``
quantile of that binomial (Bonferroni over the trials, ``alpha`` = 0.05): the probability that
*any* of ``n_trials`` chance-level trials exceeds it is at most ``alpha``, whatever the correlation
between the trials. That is conservative (trials trained on the same data are correlated, so the
true maximum spreads less), which is the side to err on before claiming "better than chance".
The validation set's own majority rate is used (not the training set's): a model that predicts the
training majority scores at most the validation majority rate, so this is again the upper case.

Measured with hpo's own data sources and 20 trials: random labels (``synthetic: random``, 1,000
× 100 uniform features, 10 classes, 250 validation rows) have a majority rate of 0.112 and a bound
of 0.172, above the ~0.12 such a study finds; digits (450 validation rows, majority 0.102, bound
0.144) reach ~0.97. In 300 simulated 20-trial studies of guessing classifiers, none was called
above chance (``tests/unit/test_insights.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import optuna

#: Family-wise error rate of the chance bound: how often a chance-level study is called "above
#: chance" at most.
ALPHA = 0.05
#: Parent-run tag holding :func:`tag_value`.
CHANCE_TAG = "hpo.chance_level"
#: Parent-run tag holding :meth:`ChanceCheck.message`.
CHANCE_MESSAGE_TAG = "hpo.chance_message"
#: Float slack when comparing an accuracy (k / n as a float) with the bound (k' / n).
_EPS = 1e-9


@dataclass(frozen=True)
class ChanceCheck:
    """The best validation accuracy next to what a classifier without information reaches."""

    #: The study's best validation accuracy.
    best_accuracy: float
    #: Share of the largest class in the validation labels.
    majority_rate: float
    #: Number of validation samples.
    n_val: int
    #: Upper bound on the best accuracy of ``n_trials`` chance-level trials (see the module doc).
    upper_95: float
    #: Number of trials the best was taken over (the Bonferroni factor).
    n_trials: int
    #: True when ``best_accuracy <= upper_95``: nothing distinguishes the best from chance.
    within_noise: bool
    #: The family-wise error rate the bound was computed for.
    alpha: float = ALPHA

    @property
    def too_small(self) -> bool:
        """True when even a perfect score is within the chance bound: the validation set cannot
        tell a model from guessing at all."""
        return self.upper_95 >= 1.0 - _EPS

    def message(self) -> str:
        """One sentence for the console and the parent run, e.g. ``best val_accuracy 0.1183 is
        within noise of chance (…): nothing here beats guessing``."""
        level = f"{1 - self.alpha:.0%}"
        trials = f", best of {self.n_trials} trials" if self.n_trials > 1 else ""
        detail = (
            f"majority class {self.majority_rate:.3f}, {level} chance bound {self.upper_95:.3f} "
            f"on {self.n_val} samples{trials}"
        )
        if not self.within_noise:
            return f"best val_accuracy {self.best_accuracy:.4f} is above chance ({detail})"
        text = (
            f"best val_accuracy {self.best_accuracy:.4f} is within noise of chance ({detail}): "
            "nothing here beats guessing"
        )
        if self.too_small:
            text += "; the validation set is too small to tell any model from guessing"
        return text


def chance_check(
    best_accuracy: float,
    y_val: np.ndarray,
    n_classes: int,
    *,
    n_trials: int = 1,
    alpha: float = ALPHA,
) -> ChanceCheck:
    """Compare ``best_accuracy`` with the chance level of the validation labels ``y_val``.

    ``n_trials``: how many trials the best was chosen from (1: a single model); the bound is the
    ``1 - alpha / n_trials`` quantile of Binomial(``len(y_val)``, majority rate) / ``len(y_val)``.
    Raises :class:`ValueError` for an empty validation set or labels outside ``[0, n_classes)``.
    """
    from scipy.stats import binom

    labels = np.asarray(y_val).ravel()
    n_val = int(labels.size)
    if n_val == 0:
        raise ValueError("the validation set is empty: there is no chance level to compare with")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= max(n_classes, 1):
        raise ValueError(f"labels must be in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=n_classes)
    majority = float(counts.max() / n_val)
    trials = max(int(n_trials), 1)
    quantile = 1.0 - alpha / trials
    # ppf: the smallest k with P(X <= k) >= quantile, so P(X > k) <= alpha / n_trials.
    upper = float(binom.ppf(quantile, n_val, majority)) / n_val
    if math.isnan(upper):  # majority == 1.0 (one class only): scipy gives nan at p = 1 for some k
        upper = 1.0
    best = float(best_accuracy)
    return ChanceCheck(
        best_accuracy=best,
        majority_rate=majority,
        n_val=n_val,
        upper_95=min(upper, 1.0),
        n_trials=trials,
        within_noise=bool(best <= upper + _EPS) or math.isnan(best),
        alpha=alpha,
    )


def tag_value(check: ChanceCheck) -> str:
    """The value of the parent run's ``hpo.chance_level`` tag: ``chance`` or ``above_chance``."""
    return "chance" if check.within_noise else "above_chance"


def study_chance_check(
    study: optuna.Study, y_val: np.ndarray, n_classes: int, *, alpha: float = ALPHA
) -> ChanceCheck | None:
    """:func:`chance_check` for a study: the best ``val_accuracy`` user attribute over its
    complete trials, Bonferroni-corrected for their number; None when no complete trial has one.

    The accuracy is read from the trials (every trial records it, whatever the objective), so a
    study that optimises ``val_loss`` or ``val_f1`` is checked too.
    """
    from optuna.trial import TrialState

    accuracies = [
        float(t.user_attrs["val_accuracy"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if _is_number(t.user_attrs.get("val_accuracy"))
    ]
    if not accuracies:
        return None
    return chance_check(max(accuracies), y_val, n_classes, n_trials=len(accuracies), alpha=alpha)


def log_chance_check(check: ChanceCheck, tracker: Any) -> None:
    """Put the check on the study's parent run: the ``hpo.chance_level`` and
    ``hpo.chance_message`` tags, and ``chance_majority_rate`` / ``chance_upper_95`` metrics.

    ``tracker``: a :class:`hpo.tracking.runs.StudyTracker` whose parent run is set.
    """
    tracker.log_parent(
        metrics={"chance_majority_rate": check.majority_rate, "chance_upper_95": check.upper_95},
        tags={CHANCE_TAG: tag_value(check), CHANCE_MESSAGE_TAG: check.message()},
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
