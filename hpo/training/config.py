"""Training hyperparameters shared by every model family (a study may search or fix each one)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpo.training.optim import OPTIMIZERS


class TrainParams(BaseModel):
    """Batch size, optimizer and its settings.

    ``batch_size: full`` means full-batch gradient descent: the whole training split per step.
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: Annotated[int, Field(ge=1)] | Literal["full"] = 64
    #: Name of an optimizer in :data:`hpo.training.optim.OPTIMIZERS`.
    optimizer: str = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    #: Used by ``sgd`` and ``rmsprop``; ignored by ``adam`` and ``adamw``.
    momentum: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(OPTIMIZERS.unknown_message(value))
        return value

    def resolved_batch_size(self, n_samples: int) -> int:
        """The number of samples per step for a training split of ``n_samples`` rows."""
        if self.batch_size == "full":
            return max(1, n_samples)
        return min(self.batch_size, max(1, n_samples))
