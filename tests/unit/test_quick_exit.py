"""hpo.quick_exit: a process ends at once, yet does everything a normal exit must.

Each case runs in its own interpreter: ``exit_now`` ends the process it is called in.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_results_in_a_sqlite_wal_database_are_folded_into_the_db_file(tmp_path: Path) -> None:
    """The pooled connection (left open, as Optuna's and MLflow's stores leave theirs) is
    closed: the WAL is checkpointed into the .db file and removed, so copying the .db file alone
    takes every result; buffered output and atexit handlers are not lost."""
    done = _run(
        """
        import atexit, sys
        import sqlalchemy
        from hpo.sqlite_tuning import tune_sqlite_engine
        from hpo.quick_exit import exit_now

        engine = sqlalchemy.create_engine("sqlite:///results.db")
        tune_sqlite_engine(engine)
        with engine.begin() as c:
            c.exec_driver_sql("create table t (x integer)")
            c.exec_driver_sql("insert into t values (42)")
        checked_out = engine.connect()  # one more, still in use at exit
        checked_out.exec_driver_sql("select count(*) from t").scalar()
        atexit.register(lambda: open("atexit-ran", "w").close())
        sys.stdout.write("no newline, still buffered")
        exit_now(3)
        """,
        tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline, still buffered"
    assert (tmp_path / "atexit-ran").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atexit-ran", "results.db"]
    import sqlite3

    with sqlite3.connect(tmp_path / "results.db") as db:
        assert db.execute("select x from t").fetchall() == [(42,)]


def test_a_running_non_daemon_thread_is_waited_for(tmp_path: Path) -> None:
    """As a normal exit does: the thread finishes its work first."""
    done = _run(
        """
        import threading, time
        from hpo.quick_exit import exit_now

        def work():
            time.sleep(0.5)
            open("thread-finished", "w").close()

        threading.Thread(target=work).start()
        exit_now(4)
        """,
        tmp_path,
    )
    assert done.returncode == 4, done.stderr
    assert (tmp_path / "thread-finished").exists()


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [("None", 0, ""), ("0", 0, ""), ("130", 130, ""), ("'bad input'", 1, "bad input\n")],
)
def test_the_status_is_systemexits(tmp_path: Path, code: str, status: int, stderr: str) -> None:
    done = _run(f"from hpo.quick_exit import exit_now; exit_now({code})", tmp_path)
    assert (done.returncode, done.stderr) == (status, stderr)


def test_the_hpo_command_ends_with_it(tmp_path: Path) -> None:
    """``python -m hpo`` (as the ``hpo`` script) exits through exit_now with click's status."""
    done = _run(
        """
        import sys
        import hpo.quick_exit

        def spy(code=0):
            print(f"exit_now({code!r})", file=sys.stderr)
            raise SystemExit(code)

        hpo.quick_exit.exit_now = spy
        sys.argv = ["hpo", "study", "show", "missing.yaml"]
        import runpy
        runpy.run_module("hpo", run_name="__main__")
        """,
        tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "exit_now(2)"
