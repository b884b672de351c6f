"""hpo commands in forked children (hpo.forked): what the child is, and the parent's side."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from hpo import __version__
from hpo.errors import DataError
from hpo.forked import (
    START_ENV,
    ForkedProcess,
    fork_hpo,
    fork_possible,
    fork_refused,
    single_threaded_torch,
)
from hpo.spec import load_spec

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def run_forked(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as o, err.open("wb") as e:
        child = fork_hpo(args, stdout=o.fileno(), stderr=e.fileno(), env=env)
    code = child.wait(timeout=120)
    return code, out.read_text(), err.read_text()


def test_a_forked_command_is_hpo_with_its_own_output(tmp_path: Path) -> None:
    code, out, err = run_forked(tmp_path, "--version")
    assert (code, err) == (0, "")
    assert __version__ in out


def test_a_forked_command_that_fails_says_so_with_its_status(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'none.db'}"
    code, _, err = run_forked(tmp_path, "study", "show", "nope", "--storage", storage)
    assert code == 2
    assert err.startswith("error: ") and "nope" in err
    assert "Traceback" not in err


def test_the_child_gets_the_added_environment_not_the_parents_exit_handlers(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "parent-exit-handler-ran"

    def parent_only() -> None:
        marker.write_text(str(os.getpid()))

    before = os.environ.get("HPO_STORAGE")
    atexit.register(parent_only)
    try:
        # An environment variable the command reads: the storage of `hpo worker`.
        code, _, err = run_forked(
            tmp_path,
            "worker",
            "--study",
            "x",
            env={"HPO_STORAGE": f"sqlite:///{tmp_path / 'from-env.db'}"},
        )
    finally:
        atexit.unregister(parent_only)
    assert code == 2, err
    assert "from-env.db" in err, err
    assert not marker.exists()
    assert os.environ.get("HPO_STORAGE") == before


def sleeper(seconds: float) -> ForkedProcess:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(seconds)
        os._exit(3)
    return ForkedProcess(pid, ["sleeper"])


def test_a_forked_process_answers_as_popen_does() -> None:
    child = sleeper(0.3)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.05)
    assert child.wait(timeout=10) == 3
    assert child.returncode == 3 and child.poll() == 3
    child.terminate()  # ended already: nothing to signal

    killed = sleeper(30)
    killed.terminate()
    assert killed.wait(timeout=10) == -signal.SIGTERM


def test_fork_is_refused_while_another_thread_runs() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="busy-thread")
    thread.start()
    try:
        reason = fork_refused()
        assert reason is not None and "busy-thread" in reason
    finally:
        release.set()
        thread.join()


def test_fork_is_possible_on_the_cpu_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(START_ENV, raising=False)
    assert fork_possible("cpu") is True
    # A CUDA-capable torch may initialise CUDA while the device is resolved: not forked then.
    assert fork_possible("auto") is (torch.version.cuda is None)
    monkeypatch.setenv(START_ENV, "spawn")
    assert fork_possible("cpu") is False


def test_single_threaded_torch_holds_one_thread_and_restores_on_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError), single_threaded_torch():
        assert torch.get_num_threads() == 1
        raise ValueError
    assert torch.get_num_threads() == before
    with single_threaded_torch(enabled=False):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_data_is_prepared_on_one_torch_thread_only_when_they_are_forked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """A parallel torch operation in the command before it forks leaves the workers a broken
    OpenMP pool (they hang at their first one): the data is prepared on one thread then."""
    import hpo.study

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: s\ndata: {source: sklearn, name: iris}\ntrain: {device: cpu}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\ntrials: 2\n"
    )
    seen = []

    def prepare(*args: object) -> None:
        seen.append(torch.get_num_threads())
        raise DataError("stop here")

    monkeypatch.setenv(START_ENV, start)
    monkeypatch.setattr(hpo.study, "prepare_data", prepare)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(DataError):
            hpo.study.run_local_workers(
                load_spec(spec_file),
                spec_file,
                2,
                storage_url=f"sqlite:///{tmp_path / 'o.db'}",
                tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            )
        assert seen == [1 if start == "fork" else 2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
