"""``parallel_speedup_2w``: trials per minute with 2 local workers / 1 worker, same study file.

The study is the reference trial (MLP on random 1,000 × 100 data, 20 epochs, full logging to a
local SQLite MLflow store) with ``dropout`` and ``lr`` searched by the random sampler, no pruner,
``train.threads: 1``, on a SQLite Optuna storage. One side runs ``hpo study start FILE`` (one
process), the other ``hpo study start FILE --workers 2`` (two ``hpo worker`` processes sharing the
budget, forked from the command: :mod:`hpo.forked`); each round uses fresh storages, and the order
alternates between rounds. A third side, recorded beside the key, runs the same with
``HPO_WORKER_START=spawn`` (new interpreters, the default until 2026-12-01's fifth session).

Trials per minute: finished trials / (end of the last trial's MLflow run − start of the first
trial), from the stores' own timestamps: process start-up (imports, ~3 s) and the study's end
(report) are left out, the sending of the runs after their trials is in. The wall time of the
whole command is kept in the raw figures too. On 2 cores the one worker sends its runs from a
background process (a core is spare) and the two workers send theirs themselves
(:func:`hpo.tracking.finisher.background_default`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import (
    HPO,
    load,
    median,
    quiet_env,
    reference_spec_yaml,
    result,
    rounded,
    run_timed,
    temp_dir,
)

COMMAND = "hpo study start FILE -q  vs  hpo study start FILE -q --workers 2  (SQLite storage)"
SEARCH = """\
  dropout: {type: float, low: 0.0, high: 0.5}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def run_once(
    tmp: Path, workers: int, trials: int, tag: str, start: str = "fork"
) -> dict[str, float]:
    import optuna

    work = tmp / tag
    work.mkdir()
    name = f"parallel-{tag}"
    spec = work / "study.yaml"
    spec.write_text(
        reference_spec_yaml(name, trials=trials, search=SEARCH, pruner="none"), encoding="utf-8"
    )
    storage = f"sqlite:///{work / 'optuna.db'}"
    cmd = [HPO, "study", "start", str(spec), "-q", "--storage", storage]
    cmd += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    wall, _ = run_timed(cmd, cwd=work, env=quiet_env(HPO_WORKER_START=start))
    done = [
        t
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        if t.state.is_finished() and t.datetime_start and t.datetime_complete
    ]
    # Until the last trial's run is in the store: a worker sends runs after their trials
    # (hpo.tracking.finisher), and a study is not done before its runs are.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    children = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    ]
    first = min(t.datetime_start for t in done).timestamp()  # type: ignore[type-var]
    last = max(r.info.end_time for r in children) / 1000
    span = last - first
    # The same rate once every worker is past its first trial (its one-off imports and first
    # model trace): trials started after the last worker's first trial ended.
    firsts: dict[str, float] = {}
    for t in sorted(done, key=lambda t: t.datetime_start):  # type: ignore[arg-type, return-value]
        firsts.setdefault(str(t.user_attrs.get("worker")), t.datetime_complete.timestamp())  # type: ignore[union-attr]
    warm = max(firsts.values())
    later = [t for t in done if t.datetime_start.timestamp() >= warm]  # type: ignore[union-attr]
    return {
        "trials": len(done),
        "span_seconds": span,
        "trials_per_minute": 60 * len(done) / span,
        "trials_after_first_trials": len(later),
        "trials_per_minute_after_first_trials": 60 * len(later) / (last - warm),
        "wall_seconds": wall,
        "wall_trials_per_minute": 60 * len(done) / wall,
    }


#: A process of :func:`raw_ceiling`: warm up, wait for "go" on stdin, train, print the span.
_RAW_PROCESS = """
import sys, time, torch
torch.set_num_threads(1)
from benchmarks.loop import raw_train, reference_data
data = reference_data()
raw_train(data, evaluate=True)
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
for _ in range(int(sys.argv[1])):
    raw_train(data, evaluate=True)
print(start, time.time(), flush=True)
"""


def raw_rate(processes: int, trainings: int) -> float:
    """Reference trainings per minute of ``processes`` processes each running ``trainings`` raw
    loops (:func:`benchmarks.loop.raw_train`, 1 torch thread) at the same time, from the first
    start to the last end; start-up and a warm-up training left out."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RAW_PROCESS, str(trainings)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = []
        for p in procs:
            assert p.stdout is not None
            start, end = (float(x) for x in p.stdout.readline().split())
            spans.append((start, end))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return 60 * processes * trainings / span


def measure(quick: bool) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A worker's first trial pays one-off costs (imports, the first model trace): too few
    # trials measure those rather than the rate of a study; one round measures the host's mood.
    rounds = 2 if quick else 3
    trials = 16 if quick else 24
    before = load()
    # The key is the default (workers forked from the command: hpo.forked); new interpreters
    # (HPO_WORKER_START=spawn) are measured in the same rounds and recorded beside it.
    sides = [("1_worker", 1, "fork"), ("2_workers", 2, "fork"), ("2_workers_spawned", 2, "spawn")]
    figures: dict[str, list[dict[str, float]]] = {key: [] for key, _, _ in sides}
    # The ceiling on this host: the raw loop alone in 2 processes against 1, in the same rounds.
    raw: dict[str, list[float]] = {"1_process": [], "2_processes": []}
    raw_trainings = trials // 2
    with temp_dir("hpo-bench-parallel-") as tmp:
        for i in range(rounds):
            for key, workers, start in sides if i % 2 == 0 else sides[::-1]:
                figures[key].append(run_once(tmp, workers, trials, f"{key}-{i}", start))
            for processes in (1, 2) if i % 2 == 0 else (2, 1):
                name = "1_process" if processes == 1 else "2_processes"
                raw[name].append(raw_rate(processes, raw_trainings))
    raw_rate_median = {k: median(v) for k, v in raw.items()}
    ceiling = raw_rate_median["2_processes"] / raw_rate_median["1_process"]
    rate = {k: median([r["trials_per_minute"] for r in v]) for k, v in figures.items()}
    warm = {
        k: median([r["trials_per_minute_after_first_trials"] for r in v])
        for k, v in figures.items()
    }
    wall = {k: median([r["wall_trials_per_minute"] for r in v]) for k, v in figures.items()}
    return {
        "parallel_speedup_2w": result(
            rate["2_workers"] / rate["1_worker"],
            ">= 1.8",
            COMMAND,
            {
                "trials_per_study": trials,
                "runs": figures,
                "trials_per_minute": rate,
                "speedup_including_startup": wall["2_workers"] / wall["1_worker"],
                "speedup_after_each_workers_first_trial": warm["2_workers"] / warm["1_worker"],
                "spawned_speedup": rate["2_workers_spawned"] / rate["1_worker"],
                "spawned_speedup_including_startup": wall["2_workers_spawned"] / wall["1_worker"],
                "spawned_speedup_after_each_workers_first_trial": warm["2_workers_spawned"]
                / warm["1_worker"],
                "load_before_after": [before, load()],
            },
            note="trials/min from the first trial's start to the last run's end (start-up and "
            "study report excluded), medians of rounds; 2 cores shared with other users: see "
            "load_before_after",
        ),
        "raw_parallel_speedup_2p": {
            "value": round(ceiling, 3),
            "command": COMMAND,
            "note": "reference trainings per minute of the raw torch loop (1 thread) in 2 "
            "processes at once / in 1, the same rounds as parallel_speedup_2w: what this host "
            "gives 2 processes with nothing but training, the ceiling of the key",
            "raw": {
                "trainings_per_process": raw_trainings,
                "trainings_per_minute": rounded(raw),
                "parallel_speedup_2w_of_the_ceiling": round(
                    rate["2_workers"] / rate["1_worker"] / ceiling, 3
                ),
            },
        },
    }
