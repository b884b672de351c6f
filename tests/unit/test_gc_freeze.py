"""hpo.gc_freeze: a long-running process keeps the collector off its long-lived objects, once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpo import worker

from .test_worker import FakeObjective, new_study


def test_the_first_trial_of_a_loop_freezes_what_the_process_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran_before: list[int] = []

    class Counting(FakeObjective):
        def __call__(self, trial: object) -> float:
            ran_before.append(len(calls))
            return super().__call__(trial)  # type: ignore[arg-type]

    calls: list[int] = []

    def freeze() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(worker, "freeze_long_lived", freeze)
    study, url = new_study(tmp_path)
    worker.TrialLoop(study, Counting(), url, budget=3).run()
    # After each trial (the function itself does it once per process), never before the first.
    assert ran_before == [0, 1, 2]
    assert len(calls) == 3


def test_freezing_is_once_per_process_and_later_garbage_is_still_collected() -> None:
    # In a new interpreter: this test process's own collector is left as it is.
    code = textwrap.dedent(
        """
        import gc, weakref
        from hpo.gc_freeze import freeze_long_lived

        class Node:
            pass

        kept = Node(); kept.self = kept
        assert gc.get_freeze_count() == 0
        assert freeze_long_lived() is True
        frozen = gc.get_freeze_count()
        assert frozen > 1000, frozen
        # Frozen objects are out of the generations the collector walks.
        assert not any(o is kept for o in gc.get_objects())

        later = Node(); later.self = later  # a cycle made after the freeze
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None, "a cycle made after the freeze was not collected"

        assert freeze_long_lived() is False  # once per process
        assert gc.get_freeze_count() == frozen
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
