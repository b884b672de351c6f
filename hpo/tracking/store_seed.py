"""New SQLite tracking stores made from a template of their tables.

MLflow makes a new store's tables by running its schema migrations one after another: 1.1-1.4 s
of CPU per new ``mlflow.db`` on this project's 2-core machines (three stores in a row, after the
imports), paid by every study directory's first command and by every test that opens a store.
The tables are the same for every store of one MLflow version. hpo makes them once, into a
template database in its cache directory (``$HPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpo``, else
``~/.cache/hpo``), and a new store starts as a copy of that file: MLflow then opens it as a store
it made itself and adds its ``Default`` experiment, which the template leaves out (its artifact
location is the store's own).

Anything that goes wrong here (no writable cache, a full disk, another MLflow) leaves the store
to MLflow, as before: :func:`seed` never fails a command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

#: Where hpo keeps what it can make again (the template); ``$XDG_CACHE_HOME/hpo`` by default.
CACHE_ENV = "HPO_CACHE_DIR"


def cache_dir() -> Path:
    """``$HPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpo``, else ``~/.cache/hpo``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hpo"


def seed(path: Path) -> bool:
    """Make the new SQLite store ``path`` a copy of the template; False (nothing done) if
    ``path`` exists or the template cannot be had. Call it under the store's lock
    (:func:`hpo.tracking.runs.open_client` does): a store made meanwhile is never replaced."""
    if path.exists():
        return False
    try:
        template = _template()
        copy = path.with_name(f".{path.name}.{uuid.uuid4().hex}.seed")
        try:
            shutil.copyfile(template, copy)
            os.link(copy, path)  # fails if a store appeared meanwhile: that one stays
        finally:
            with contextlib.suppress(OSError):
                copy.unlink()
    except Exception:  # a failure here is MLflow's to meet (and say) as it makes the store
        return False
    return True


def _template() -> Path:
    """The template for this MLflow version, made if missing (by whoever comes first: each
    maker writes its own file and renames it into place)."""
    import mlflow

    directory = cache_dir()
    template = directory / f"mlflow-{mlflow.__version__}-sqlite-tables.db"
    if template.is_file():
        return template
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    directory.mkdir(parents=True, exist_ok=True)
    making = directory / f".{template.name}.{uuid.uuid4().hex}"
    try:
        engine = sqlalchemy.create_engine(f"sqlite:///{making}")
        try:
            # What MLflow's SqlAlchemyStore runs for a database without its tables.
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(making, template)
    finally:
        with contextlib.suppress(OSError):
            making.unlink()
    return template
