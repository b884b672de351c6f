"""How many CPU threads torch uses in a trial process.

Measured on 2 cores (5 epochs on digits, medians of 3 interleaved runs): on an idle machine two
threads are as fast or faster than one (MLP 1.02x-0.77x the time, small CNN 0.72x). When the cores are
oversubscribed -- more busy processes than cores, e.g. several workers on one machine -- torch's
spinning intra-op threads collapse: the same MLP training took 19.8 s with 2 threads against 1.3 s
with 1. So each process takes its share of the cores, never more.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """This process's share of the machine's cores when ``workers`` trial processes share it."""
    return max(1, available_cores() // max(1, workers))


def spare_cores(workers: int = 1) -> int:
    """Cores that training leaves idle when ``workers`` trial processes each use as many
    threads as this one (torch's current setting): room for a background sender."""
    import torch

    return max(0, available_cores() - max(1, workers) * torch.get_num_threads())


#: Environment variable that sets the threads of every trial process, for containers: a container
#: without a CPU limit sees all of the host's cores, so N replicas would each take all of them.
ENV_THREADS = "HPO_THREADS"


def configure_threads(threads: int | None = None, workers: int = 1) -> int:
    """Set torch's intra-op thread count; return it.

    First of: ``threads`` (the study file's ``train.threads``), ``$HPO_THREADS``, the default share.
    """
    import torch

    env = os.environ.get(ENV_THREADS, "").strip()
    n = threads or (int(env) if env.isdigit() and int(env) > 0 else 0) or default_threads(workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
