"""``help_seconds`` and ``show_10k_seconds``: how fast the command line answers.

* ``hpo --help`` as a subprocess, one warm-up then the median of 5 (10 in full mode).
* ``hpo study show NAME`` on a SQLite study holding 10,000 finished trials (built directly with
  ``optuna.trial.create_trial`` + ``study.add_trials``: 9 parameters of the quickstart's kinds,
  a value, intermediate values and user attributes each; 200 made that way, then copied in SQL
  to 10,000, since ``add_trials`` takes ~14 ms a trial), as a subprocess, median of 3 (5 in full mode).
For scale, ``python -c pass`` with the same interpreter is timed interleaved with ``--help``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import HPO, interleave, load, median, quiet_env, result, run_timed, temp_dir

HELP_COMMAND = ".venv/bin/hpo --help  (subprocess, median of 5)"
SHOW_COMMAND = ".venv/bin/hpo study show bench-10k --storage sqlite:///<tmp>/10k.db"
N_TRIALS = 10_000
#: Trials made by Optuna itself; the rest are SQL copies of them (see :func:`_replicate`).
SEED_TRIALS = 200


def build_study(path: Path, name: str, n: int = N_TRIALS) -> float:
    """A SQLite study with ``n`` finished trials; returns the seconds it took to build."""
    import datetime as dt
    import random

    import optuna
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    rng = random.Random(0)
    dists = {
        "dropout": FloatDistribution(0.0, 0.6),
        "batch_size": CategoricalDistribution([32, 64, 128]),
        "optimizer": CategoricalDistribution(["adam", "adamw", "sgd", "rmsprop"]),
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "depth": IntDistribution(1, 4),
        "width": IntDistribution(32, 256, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        "activation": CategoricalDistribution(["relu", "gelu", "tanh"]),
        "batch_norm": CategoricalDistribution([True, False]),
    }
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}", direction="maximize")
    start = dt.datetime(2026, 1, 1)
    trials = []
    for i in range(n):
        params: dict[str, Any] = {}
        for key, dist in dists.items():
            if isinstance(dist, CategoricalDistribution):
                params[key] = rng.choice(dist.choices)
            elif isinstance(dist, IntDistribution):
                params[key] = rng.randint(dist.low, dist.high)
            else:
                params[key] = rng.uniform(dist.low, dist.high)
        pruned = rng.random() < 0.3
        begin = start + dt.timedelta(seconds=2 * i)
        trials.append(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.PRUNED
                if pruned
                else optuna.trial.TrialState.COMPLETE,
                value=None if pruned else rng.uniform(0.5, 0.99),
                params=params,
                distributions=dists,
                user_attrs={"val_accuracy": rng.uniform(0.5, 0.99), "mlflow_run_id": f"{i:032x}"},
                intermediate_values={e: rng.random() for e in range(1, 4)},
            )
        )
        trials[-1].datetime_start = begin
        trials[-1].datetime_complete = begin + dt.timedelta(seconds=1.5)
    study.add_trials(trials[:SEED_TRIALS])
    _replicate(path, SEED_TRIALS, n)
    return time.perf_counter() - started


def _replicate(path: Path, seed: int, n: int) -> None:
    """Copy the first ``seed`` trials (rows of every table with a ``trial_id``) until the study
    holds ``n``: Optuna's ``add_trials`` costs ~14 ms a trial on SQLite, 10,000 would take minutes."""
    import sqlite3

    con = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if any(c[1] == "trial_id" for c in con.execute(f"PRAGMA table_info({r[0]})"))
        ]
        (first_id,) = con.execute("SELECT MIN(trial_id) FROM trials").fetchone()
        for copy in range(1, n // seed):
            offset = copy * seed
            for table in tables:
                cols = list(con.execute(f"PRAGMA table_info({table})"))
                keep = [c[1] for c in cols if table == "trials" or not c[5]]
                exprs = [f"{c} + {offset}" if c in ("trial_id", "number") else c for c in keep]
                con.execute(
                    f"INSERT INTO {table} ({', '.join(keep)}) SELECT {', '.join(exprs)} "
                    f"FROM {table} WHERE trial_id < {first_id + seed}"
                )
        con.commit()
    finally:
        con.close()


def measure(quick: bool) -> dict[str, Any]:
    env = quiet_env()
    help_runs = 5 if quick else 10
    run_timed([HPO, "--help"], env=env)  # warm-up: page cache, .pyc files
    before = load()
    figures = interleave(
        help_runs,
        {
            "hpo_help": lambda: run_timed([HPO, "--help"], env=env)[0],
            "python_startup": lambda: run_timed([sys.executable, "-c", "pass"], env=env)[0],
        },
    )
    out: dict[str, Any] = {
        "help_seconds": result(
            median(figures["hpo_help"]),
            "<= 0.5",
            HELP_COMMAND,
            {
                "seconds": figures["hpo_help"],
                "python_startup_seconds": figures["python_startup"],
                "load_before_after": [before, load()],
            },
        )
    }
    with temp_dir("hpo-bench-cli-") as tmp:
        db = tmp / "10k.db"
        build_seconds = build_study(db, "bench-10k")
        cmd = [HPO, "study", "show", "bench-10k", "--storage", f"sqlite:///{db}"]
        seconds, proc = run_timed(cmd, env=env)  # warm-up; also checks it works
        shows = [run_timed(cmd, env=env)[0] for _ in range(3 if quick else 5)]
        shows_all = [run_timed([*cmd, "--limit", "0"], env=env)[0] for _ in range(1)]
    out["show_10k_seconds"] = result(
        median(shows),
        "<= 2",
        SHOW_COMMAND,
        {
            "seconds": shows,
            "first_call_seconds": seconds,
            "limit_0_all_rows_seconds": shows_all,
            "build_study_seconds": build_seconds,
            "output_lines": len(proc.stdout.splitlines()),
            "load_before_after": [before, load()],
        },
        note="default --limit 50 (the last 50 rows of 10,000 trials); --limit 0 kept in raw",
    )
    return out
