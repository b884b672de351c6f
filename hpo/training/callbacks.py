"""Hooks the training loop calls; pruning and tracking are implemented as callbacks elsewhere.

The loop knows nothing of Optuna or MLflow: a callback may raise any exception to stop training
(the Optuna pruning callback raises ``optuna.TrialPruned``), and it propagates unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping


class Callback:
    """Base class: override what you need; every hook is a no-op by default."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Called after each epoch (``epoch`` counts from 1) with ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``."""
