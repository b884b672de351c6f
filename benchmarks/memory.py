"""Peak memory (max RSS, ``/usr/bin/time -f %M``) of a worker and of the quickstart demo.

* ``worker_peak_rss_mib``: ``hpo study start`` on the reference study (MLP on random 1,000 × 100
  data, full logging to a local SQLite store), 3 trials, in a temporary directory.
* ``demo_peak_rss_mib``: what ``make demo`` runs, ``hpo study start studies/quickstart.yaml``
  (20 trials on digits), in a temporary directory with fresh stores (not a fresh venv).
GNU time reports the largest resident set of the process or any child it waited for.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import HPO, ROOT, load, quiet_env, reference_spec_yaml, run_timed, temp_dir

TIME = "/usr/bin/time"


def peak_rss(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(max RSS in MiB, wall seconds) of ``cmd`` run under GNU time."""
    wall, proc = run_timed([TIME, "-f", "MAXRSS_KB=%M", *cmd], cwd=cwd, env=quiet_env())
    lines = [x for x in proc.stderr.splitlines() if x.startswith("MAXRSS_KB=")]
    return int(lines[-1].split("=")[1]) / 1024, wall


def measure(quick: bool) -> dict[str, Any]:
    if not Path(TIME).exists():
        return {"memory": {"skipped": f"{TIME} not found"}}
    before = load()
    out: dict[str, Any] = {}
    with temp_dir("hpo-bench-memory-") as tmp:
        work = tmp / "worker"
        work.mkdir()
        (work / "study.yaml").write_text(reference_spec_yaml("memory-worker", trials=3))
        rss, wall = peak_rss([HPO, "study", "start", "study.yaml", "-q"], work)
        out["worker_peak_rss_mib"] = {
            "value": round(rss, 1),
            "command": "/usr/bin/time -f %M hpo study start <reference study, 3 trials> -q",
            "raw": {"wall_seconds": round(wall, 2)},
        }
        demo = tmp / "demo"
        demo.mkdir()
        shutil.copy(ROOT / "studies" / "quickstart.yaml", demo / "quickstart.yaml")
        rss, wall = peak_rss([HPO, "study", "start", "quickstart.yaml", "-q"], demo)
        out["demo_peak_rss_mib"] = {
            "value": round(rss, 1),
            "command": "/usr/bin/time -f %M hpo study start studies/quickstart.yaml -q "
            "(make demo, in a temp dir)",
            "raw": {"wall_seconds": round(wall, 2), "load_before_after": [before, load()]},
        }
    return out
