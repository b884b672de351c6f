"""Keep Python's cyclic garbage collector off what a long-running process keeps for life.

A worker holds about 650,000 objects the collector tracks once torch, MLflow, SQLAlchemy, Optuna
and pandas are imported and a first trial has run: modules, classes, functions, the data. A full
(oldest-generation) collection walks every one of them: 270-380 ms on 2 shared cores, set off by
what the trials leave behind once every few dozen reference trials (``benchmarks/overhead.py``'s,
0.25-0.3 s of training each). None of those objects is ever garbage.

:func:`freeze_long_lived` moves everything alive at that moment to the collector's permanent
generation (:func:`gc.freeze`): collections then walk only what came later (11,000 tracked
objects after 60 more trials, against 652,000). Measured over a worker's first 61 reference
trials: 2 full collections, 716 ms, without it; 1 (in the first trial, before the freeze),
272 ms, with it. Cycles that were already garbage then are kept for good; the
young generations are collected first, so that is at most what older ones still held, once.
"""

from __future__ import annotations

import gc

#: Whether this process has frozen its long-lived objects (see :func:`freeze_long_lived`).
_frozen = False


def freeze_long_lived() -> bool:
    """Collect the young generations, then move every object alive now out of the collector's
    reach for good (see the module docstring); True if that was done now.

    Once per process: the first call, after a process has imported and loaded what it keeps
    (a worker after its first trial, the background sender after its first run); later calls do
    nothing, so that the garbage of later trials is never frozen with it (a program that runs
    studies one after the other, a test session, would otherwise keep some of each).
    """
    global _frozen
    if _frozen:
        return False
    _frozen = True
    gc.collect(1)
    gc.freeze()
    return True
