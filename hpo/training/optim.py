"""Optimizers a study may name, each built from the same four training hyperparameters.

Each is built with torch's fastest implementation of its step for the parameters at hand: the
*fused* kernel (one kernel per step) where torch has one for every parameter's device and dtype,
else the *foreach* one (one kernel per operation over all parameters). torch only picks
foreach by itself on CUDA; on the CPU it loops over the parameters in Python, a dozen small
kernels each, which on the small models of a study is a large part of every step. Measured
with `benchmarks/loop.py`'s reference MLP on one CPU thread (see `docs/benchmarks.md`, sixth
session). The update is the same algorithm; the float rounding may differ in the last bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypedDict

import torch
from torch import nn

from hpo.registry import Registry


class OptimizerFactory(Protocol):
    """Builds an optimizer; ``momentum`` is ignored by optimizers that have none (Adam, AdamW)."""

    def __call__(
        self, params: Sequence[nn.Parameter], lr: float, weight_decay: float, momentum: float
    ) -> torch.optim.Optimizer: ...


OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


class Kernel(TypedDict, total=False):
    """The implementation options of a torch optimizer's step."""

    fused: bool
    foreach: bool


#: Devices whose fused steps hpo uses: those its tests run the optimizers on (torch lists more).
FUSED_DEVICES = frozenset({"cpu", "cuda"})


def fused_kernel(params: Sequence[nn.Parameter]) -> Kernel:
    """``{"fused": True}`` where every parameter is floating point on one device in
    :data:`FUSED_DEVICES`, else ``{"foreach": True}`` where all are on one device, else nothing
    (torch's own choice)."""
    devices = {p.device.type for p in params}
    if len(devices) != 1:
        return {}
    if devices <= FUSED_DEVICES and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def foreach_kernel(params: Sequence[nn.Parameter]) -> bool | None:
    """``foreach`` for an optimizer with no fused step: True where all parameters are on one
    device (where :func:`fused_kernel` chooses any step), else None (torch's own choice)."""
    return True if fused_kernel(params) else None


@OPTIMIZERS.register("adam")
def _adam(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused_kernel(params))


@OPTIMIZERS.register("adamw")
def _adamw(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused_kernel(params))


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=False,
        **fused_kernel(params),
    )


@OPTIMIZERS.register("rmsprop")
def _rmsprop(
    params: Sequence[nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, foreach=foreach_kernel(params)
    )


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``; :class:`KeyError` naming the known ones."""
    factory = OPTIMIZERS.get(name)
    # A list: the factories look at the parameters before the optimizer takes them.
    return factory(list(params), lr=lr, weight_decay=weight_decay, momentum=momentum)
