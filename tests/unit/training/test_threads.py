"""Each trial process takes its share of the CPU cores, never more."""

from __future__ import annotations

import os

import pytest
import torch

from hpo.training.threads import configure_threads, default_threads


def test_workers_share_the_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_threads() == cores
    assert default_threads(workers=cores) == 1
    assert default_threads(workers=10 * cores) == 1  # never zero


def test_configure_sets_torch_threads_and_an_explicit_value_wins() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert configure_threads(None, workers=1) == default_threads()
        assert torch.get_num_threads() == default_threads()
    finally:
        torch.set_num_threads(before)


def test_hpo_threads_sets_it_for_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("HPO_THREADS", "1")
        assert configure_threads(None) == 1
        assert configure_threads(2) == 2  # the study file's value still wins
        monkeypatch.setenv("HPO_THREADS", "lots")
        assert configure_threads(None) == default_threads()  # nonsense is ignored
    finally:
        torch.set_num_threads(before)
