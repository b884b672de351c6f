"""Create (or check) the study of a study file in $HPO_STORAGE, without running trials.

Uses hpo's own `open_study`, the same call `hpo study start` makes, so the study gets the
sampler's directions, the spec hash that later refuses a drifted file, and its `enqueue` trials,
exactly once. `optuna create-study` would make a bare study without these.
"""

from __future__ import annotations

import sys

from hpo.errors import HpoError
from hpo.spec import load_spec
from hpo.storage import mask_url, resolve_storage_url
from hpo.study import open_study


def main(path: str) -> int:
    try:
        spec = load_spec(path)
        url = resolve_storage_url(None, spec.storage)
        study = open_study(spec, url, source=path)
    except HpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"study '{study.study_name}' ready in {mask_url(url)} ({len(study.trials)} trials so far)"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: init_study.py STUDY_FILE")
    sys.exit(main(sys.argv[1]))
