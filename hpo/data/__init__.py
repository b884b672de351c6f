"""Data sources: each turns the study file's ``data`` block into a split, preprocessed dataset.

Importing this package registers every source in :data:`SOURCES`: every module of the package is
imported, so adding a source is one file with one decorator (``@SOURCES.register("name")``).
Use :func:`load_dataset` (or :func:`load_dataset_cached`, which every trial of a process shares)
and :func:`options_model` (the spec layer validates a source's own fields with it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hpo.data.base import SOURCES, Dataset, DataSource, SourceOptions, SplitOptions
from hpo.errors import DataError
from hpo.registry import import_submodules

# Each source module registers itself in SOURCES when imported.
import_submodules(__name__, __path__)

__all__ = [
    "SOURCES",
    "DataSource",
    "Dataset",
    "SourceOptions",
    "SplitOptions",
    "clear_cache",
    "load_dataset",
    "load_dataset_cached",
    "options_model",
]


def options_model(source: str) -> type[BaseModel]:
    """The ``Options`` model of ``source``; :class:`KeyError` (with the known names) if unknown."""
    return SOURCES.get(source).Options


def _source(source: str) -> type[DataSource]:
    if source not in SOURCES:
        raise DataError(f"data.source: {SOURCES.unknown_message(source)}")
    return SOURCES.get(source)


def load_dataset(
    source: str,
    options: dict[str, Any],
    split: SplitOptions,
    *,
    base_dir: Path | None = None,
) -> Dataset:
    """Load ``source`` with its own ``options`` and split it.

    ``base_dir`` is where relative file paths resolve (the study file's directory). Raises
    :class:`DataError` for an unknown source or unusable data, and pydantic's ``ValidationError``
    unchanged for invalid options (the spec layer renders those itself).
    """
    cls = _source(source)
    return cls().load(cls.Options.model_validate(options), split, base_dir=base_dir)


@functools.lru_cache(maxsize=8)
def _load_cached(source: str, options_json: str, split_json: str, base_dir: str) -> Dataset:
    return load_dataset(
        source,
        json.loads(options_json),
        SplitOptions.model_validate_json(split_json),
        base_dir=Path(base_dir),
    )


def load_dataset_cached(
    source: str,
    options: dict[str, Any],
    split: SplitOptions,
    *,
    base_dir: Path | None = None,
) -> Dataset:
    """:func:`load_dataset`, but each distinct data set is loaded once per process.

    Every trial of a study reuses the same :class:`Dataset` object (do not modify its arrays). The
    key is the source, its validated options and the split as canonical JSON, and the directory
    relative paths resolve against, so equal blocks share an entry however they were written.
    """
    cls = _source(source)
    validated = cls.Options.model_validate(options)
    options_json = json.dumps(validated.model_dump(mode="json"), sort_keys=True)
    split_json = split.model_dump_json()
    # Resolved now, so a later change of the working directory cannot return a stale entry.
    where = str((base_dir or Path.cwd()).resolve())
    return _load_cached(source, options_json, split_json, where)


def clear_cache() -> None:
    """Forget every cached data set (tests; a long-lived process whose files changed)."""
    _load_cached.cache_clear()
