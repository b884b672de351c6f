"""Optimizers a study may name, each built from the same four training hyperparameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn

from hpo.registry import Registry


class OptimizerFactory(Protocol):
    """Builds an optimizer; ``momentum`` is ignored by optimizers that have none (Adam, AdamW)."""

    def __call__(
        self, params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
    ) -> torch.optim.Optimizer: ...


OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def _adam(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=False
    )


@OPTIMIZERS.register("rmsprop")
def _rmsprop(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``; :class:`KeyError` naming the known ones."""
    return OPTIMIZERS.get(name)(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
