"""Run hpo's benchmarks and write ``benchmarks/results.json`` and the table in docs/benchmarks.md.

    .venv/bin/python -m benchmarks.run [--quick] [--only KEY] [--out benchmarks/results.json]

Each module's ``measure(quick)`` returns its keys; a benchmark that fails is recorded with its
error and the run goes on. A missed goal is reported, never an exit status: ``make bench`` always
finishes. ``--only`` runs the module that produces KEY (or a module name) and merges its keys into
an existing results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

#: module → the keys it produces (the order of the report).
MODULES: dict[str, list[str]] = {
    "cli_speed": ["help_seconds", "show_10k_seconds"],
    "loop": ["loop_throughput_ratio", "fused_step_speedup"],
    "overhead": ["overhead_ratio_local", "overhead_ratio_http"],
    "model_logging": ["model_logging_speedup"],
    "search": ["time_to_target_speedup"],
    "parallel": ["parallel_speedup_2w", "raw_parallel_speedup_2p"],
    "memory": ["worker_peak_rss_mib", "demo_peak_rss_mib"],
}
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import mlflow
    import optuna

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "mlflow": mlflow.__version__,
        "platform": platform.platform(),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    rows = ["| key | value | goal | pass | command |", "|---|---|---|---|---|"]
    for keys in MODULES.values():
        for key in keys:
            r = results.get(key)
            if r is None:
                continue
            if "error" in r:
                rows.append(f"| `{key}` | error: {r['error'][:80]} | | | |")
                continue
            verdict = "" if "pass" not in r else ("pass" if r["pass"] else "**FAIL**")
            rows.append(
                f"| `{key}` | {_fmt(r['value'])} | {r.get('goal', '(recorded)')} | {verdict} "
                f"| `{r['command']}` |"
            )
    return "\n".join(rows)


def breakdown_table(results: dict[str, Any]) -> str:
    """Per-trial seconds of the reference trial, by part, for each store and sender."""
    columns: dict[str, dict[str, Any]] = {}
    for key in ("overhead_ratio_local", "overhead_ratio_http"):
        raw = results.get(key, {}).get("raw")
        if not raw or "critical_path_breakdown_seconds" not in raw:
            continue
        side = key.rsplit("_", 1)[-1]
        columns[f"{side} ({raw['sender']})"] = raw
        for other in ("inline", "background"):
            if f"with_{other}_sender" in raw:
                columns[f"{side} ({other})"] = raw[f"with_{other}_sender"]
    if not columns:
        return ""
    names = list(columns)
    rows = [
        "| part (s per trial) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| **per trial, until its run is sent** | "
        + " | ".join(f"**{c['trial_median_seconds']:.3f}**" for c in columns.values())
        + " |",
        "| trial loop alone (critical path) | "
        + " | ".join(
            f"{median(c['critical_path_seconds_per_block']):.3f}" for c in columns.values()
        )
        + " |",
    ]
    first = columns[names[0]]
    for part in first["critical_path_breakdown_seconds"]:
        cells = [
            f"{c['critical_path_breakdown_seconds'].get(part, 0.0):.4f}" for c in columns.values()
        ]
        rows.append(f"| &nbsp;&nbsp;{part} | " + " | ".join(cells) + " |")
    rows.append(
        "| sending one run (measured in the worker's process) | "
        + " | ".join(
            f"{c['sender_breakdown_seconds_per_run'].get('send', 0.0):.3f}"
            for c in columns.values()
        )
        + " |"
    )
    for part in first["sender_breakdown_seconds_per_run"]:
        if part == "send":
            continue
        cells = [
            f"{c['sender_breakdown_seconds_per_run'].get(part, 0.0):.4f}" for c in columns.values()
        ]
        rows.append(f"| &nbsp;&nbsp;{part} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write_doc(results: dict[str, Any], meta: dict[str, Any]) -> None:
    m = meta["machine"]
    block = "\n".join(
        [
            BEGIN,
            f"Measured {meta['date']} on {m['cpu']}, {m['cores']} cores, {m['memory']} "
            f"(shared with other users; load average at start {meta['load_start']}), "
            f"Python {m['python']}, torch {m['torch']}, optuna {m['optuna']}, mlflow {m['mlflow']}.",
            f"Command: `{meta['command']}` ({meta['mode']} mode, {meta['seconds']:.0f} s).",
            "",
            table(results),
            "",
            "Where the reference trial's time goes (see `overhead.py`): the trial loop in the "
            "worker's process, and sending one run (plots, model, end of the run):",
            "",
            breakdown_table(results),
            END,
        ]
    )
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (make bench)")
    parser.add_argument("--only", action="append", help="a key or module name (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    modules = list(MODULES)
    if args.only:
        wanted = set(args.only)
        unknown = wanted - set(MODULES) - {k for v in MODULES.values() for k in v}
        if unknown:
            parser.error(
                f"unknown key(s) {sorted(unknown)}; known: {sorted(MODULES)} and their keys"
            )
        modules = [m for m, keys in MODULES.items() if m in wanted or wanted & set(keys)]

    results: dict[str, Any] = {}
    if args.only and args.out.exists():
        results = json.loads(args.out.read_text(encoding="utf-8")).get("results", {})
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    for name in modules:
        t0 = time.perf_counter()
        print(f"[bench] {name} …", flush=True)
        try:
            got = importlib.import_module(f"benchmarks.{name}").measure(args.quick)
        except Exception as exc:  # report and go on: make bench never fails on a benchmark
            traceback.print_exc()
            got = {k: {"error": f"{type(exc).__name__}: {exc}"} for k in MODULES[name]}
        for key, value in got.items():
            if isinstance(value, dict):
                value["seconds_to_measure"] = round(time.perf_counter() - t0, 1)
            results[key] = value
            shown = value.get("value", value.get("error"))
            verdict = "" if "pass" not in value else ("pass" if value["pass"] else "FAIL")
            print(
                f"[bench]   {key} = {shown} (goal {value.get('goal', '-')}) {verdict}", flush=True
            )
    seconds = time.perf_counter() - started
    cmd = (
        "make bench"
        if args.quick and not args.only
        else " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])])
    )
    meta = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "command": cmd,
        "seconds": round(seconds, 1),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8"
    )
    if not args.no_doc:
        write_doc(results, meta)
    print(table(results))
    print(f"[bench] {seconds:.0f} s; wrote {args.out}" + ("" if args.no_doc else f" and {DOC}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
