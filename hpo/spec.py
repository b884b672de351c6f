"""The study file: :class:`StudySpec` and :func:`load_spec`.

A study file is YAML (read with the safe loader) validated in two passes:

1. structure, by pydantic models that forbid unknown fields (with "did you mean");
2. meaning, against the registries: the data source's own options, the model family and the names
   and values of searched and fixed hyperparameters, metrics, sampler/pruner compatibility.

Every problem becomes one :class:`~hpo.errors.SpecError` line: ``file: field: rule (got value)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hpo.errors import SpecError
from hpo.registry import did_you_mean
from hpo.space import Param, grid_search_space, suggestion_order

Direction = Literal["maximize", "minimize"]

#: Hyperparameters that choose *which* family a trial builds (searched in architecture studies).
FAMILY_PARAM = "family"


class StrictModel(BaseModel):
    """A model that refuses unknown fields and suggests the closest known one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    hint = did_you_mean(str(key), known)
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field '{key}'{hint}; allowed: {allowed}",
                        {"key": key, "hint": hint, "allowed": ", ".join(known)},
                    )
        return data


class DataSpec(BaseModel):
    """``data:`` the source plus split fields; the source's own fields are checked in pass 2."""

    model_config = ConfigDict(extra="allow")

    source: str = "sklearn"
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        # A bare ``data: {}`` (or no block) means the digits set, so a three-line file works.
        if isinstance(data, dict) and data.get("source", "sklearn") == "sklearn":
            data = {"name": "digits", **data}
        return data

    @model_validator(mode="after")
    def _fractions(self) -> DataSpec:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The source's own fields (everything but ``source`` and the split fields)."""
        return dict(self.model_extra or {})

    def split_dict(self) -> dict[str, Any]:
        return {
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }


class ModelSpec(StrictModel):
    """``model:`` the architecture family (each has its own searchable hyperparameters)."""

    family: str = "mlp"


class TrainSpec(StrictModel):
    """``train:`` settings that are not searched."""

    epochs: int = Field(10, ge=1, le=10_000)
    device: str = "auto"
    seed: int = 0
    #: CPU threads per process for torch; unset: see :func:`hpo.training.threads.default_threads`.
    threads: int | None = Field(None, ge=1, le=512)


class SamplerSpec(StrictModel):
    """``sampler:`` which Optuna sampler proposes trials."""

    name: Literal["tpe", "random", "grid", "cmaes", "gp", "nsga2"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(None, ge=0)
    population_size: int | None = Field(None, ge=2)


class PrunerSpec(StrictModel):
    """``pruner:`` which Optuna pruner stops unpromising trials early (per epoch)."""

    name: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    warmup_epochs: int = Field(0, ge=0)
    startup_trials: int = Field(5, ge=0)
    min_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class HeartbeatSpec(StrictModel):
    """``heartbeat:`` how a trial whose worker died is noticed and re-run (RDB storages only).

    Every ``interval`` seconds a running trial's worker writes a heartbeat to the storage. A trial
    without one for ``grace`` seconds is failed by the next worker that looks (before it starts a
    trial, or while it waits for the last ones), its MLflow run is closed as FAILED, and it is
    queued again with the same parameters, at most ``max_retries`` times. The journal storage has
    no heartbeat: there a dead worker's trial stays RUNNING.
    """

    interval: int = Field(10, ge=1, le=3600)
    grace: int = Field(30, ge=2, le=86_400)
    max_retries: int = Field(2, ge=0, le=100)

    @model_validator(mode="after")
    def _grace_spans_beats(self) -> HeartbeatSpec:
        if self.grace <= self.interval:
            raise ValueError(
                f"'grace' must be longer than 'interval' (a live trial would be failed between "
                f"two heartbeats), got grace {self.grace} <= interval {self.interval}"
            )
        return self


class StudySpec(StrictModel):
    """A whole study file."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    metric: str | None = None
    direction: Direction | None = None
    metrics: list[str] | None = Field(None, min_length=1)
    directions: list[Direction] | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: dict[str, Param] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec | None = None
    trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    storage: str | None = None
    tracking_uri: str | None = None
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec)

    @model_validator(mode="after")
    def _objectives(self) -> StudySpec:
        if self.metrics is not None and (self.metric is not None or self.direction is not None):
            raise ValueError("use either 'metric'/'direction' or 'metrics'/'directions', not both")
        if self.directions is not None and self.metrics is None:
            raise ValueError("'directions' needs 'metrics'")
        if (
            self.metrics is not None
            and self.directions is not None
            and len(self.directions) != len(self.metrics)
        ):
            raise ValueError(
                f"'directions' must have one entry per metric: {len(self.metrics)} metrics, "
                f"got {len(self.directions)} directions"
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", self.name):
            raise ValueError(
                f"'name' may hold letters, digits, '_', '.', '-' and must start with a letter "
                f"or digit, got {self.name!r}"
            )
        overlap = sorted(set(self.search) & set(self.fixed))
        if overlap:
            raise ValueError(f"{overlap[0]!r} is both searched and fixed: keep one")
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def objective_metrics(self) -> list[str]:
        """The metric(s) optimised, in order."""
        return list(self.metrics) if self.metrics else [self.metric or "val_accuracy"]

    @property
    def objective_directions(self) -> list[Direction]:
        """The direction of each objective metric (from the file, else the metric's natural one)."""
        from hpo.training.metrics import OBJECTIVE_METRICS

        if self.directions:
            return list(self.directions)
        if self.direction:
            return [self.direction]
        return [OBJECTIVE_METRICS.get(m, "maximize") for m in self.objective_metrics]  # type: ignore[misc]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_metrics) > 1

    @property
    def pruner_spec(self) -> PrunerSpec:
        """The pruner: median by default, none for multi-objective studies (Optuna cannot prune them)."""
        if self.pruner is not None:
            return self.pruner
        return PrunerSpec(name="none" if self.multi_objective else "median")

    def identity(self) -> dict[str, Any]:
        """What defines the study's results: changing any of it makes old and new trials incomparable.

        Budget, timeout, sampler, pruner and locations may change between runs of one study.
        """
        dump = self.model_dump(mode="json")
        return {
            "metrics": self.objective_metrics,
            "directions": self.objective_directions,
            "data": dump["data"],
            "model": dump["model"],
            # where and how fast it runs does not change what a trial means
            "train": {k: v for k, v in dump["train"].items() if k not in ("device", "threads")},
            "search": dump["search"],
            "fixed": dump["fixed"],
        }

    def identity_hash(self) -> str:
        """A short, stable hash of :meth:`identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_identity(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two :meth:`StudySpec.identity` dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub} added ({json.dumps(new[key])})")
            elif key not in new:
                out.append(f"{sub} removed (was {json.dumps(old[key])})")
            else:
                out.extend(diff_identity(old[key], new[key], sub))
        return out
    if old != new:
        return [f"{path}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


# -- error rendering -----------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's discriminator tags ('float', 'int', …) so the path is the one in the file.
    parts = [str(p) for p in loc if p not in ("float", "int", "categorical", "function-after")]
    return ".".join(parts)


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """Render pydantic errors as ``source: field: message (got value)`` lines."""
    lines = []
    for e in err.errors(include_url=False):
        loc = _loc(tuple(e["loc"]))
        where = ".".join(p for p in (prefix, loc) if p)
        msg = e["msg"].removeprefix("Value error, ")
        got = ""
        if e["type"] not in ("unknown_field", "missing") and "input" in e:
            shown = e["input"]
            if not isinstance(shown, dict | list) or len(json.dumps(shown, default=str)) < 80:
                got = f" (got {json.dumps(shown, default=str)})"
        lines.append(one_line(f"{source}: {where + ': ' if where else ''}{msg}{got}"))
    return "\n".join(lines)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``).

    A field name or value from the file may hold them; the CLI shows one line per mistake.
    """
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


# -- loading ---------------------------------------------------------------------------------
class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reporting a value it cannot build as a YAML error at its line.

    The safe constructors raise a bare ``ValueError`` for a date that does not exist
    (``2001-13-45``) or a tag whose text does not fit (``!!int many``), which would otherwise
    reach the user as a traceback.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            shown = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value{shown}: {exc}", node.start_mark
            ) from None


def _self_reference(value: Any) -> str | None:
    """The path of a list or mapping that contains itself, or None.

    YAML allows it (an alias inside its own anchor: ``a: &x [*x]``); validation and hashing
    would fail on it with a bare ``ValueError``. Shared aliases (the same list under two keys)
    are fine: only the ancestors of a value count.
    """
    done: set[int] = set()

    def walk(item: Any, path: tuple[str, ...], ancestors: frozenset[int]) -> str | None:
        if not isinstance(item, dict | list) or id(item) in done:
            return None
        if id(item) in ancestors:
            return ".".join(path)
        inner = ancestors | {id(item)}
        children = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in children:
            found = walk(child, (*path, str(key)), inner)
            if found is not None:
                return found
        done.add(id(item))  # no cycle below: never walk it again (aliases may share it)
        return None

    return walk(value, (), frozenset())


def load_spec(path: str | Path) -> StudySpec:
    """Read, parse and fully validate a study file; raise :class:`SpecError` on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: study file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read study file: {exc}") from None
    return parse_spec(text, source=str(path), default_name=path.stem, base_dir=path.parent)


def parse_spec(
    text: str,
    *,
    source: str = "<spec>",
    default_name: str | None = None,
    base_dir: Path | None = None,
) -> StudySpec:
    """Parse and validate study-file text (see :func:`load_spec`)."""
    try:
        # Safe: _SafeLoader is yaml.SafeLoader (plain data, never Python objects) plus messages.
        raw = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(one_line(f"{source}: invalid YAML: {where}{problem}")) from None
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested too deeply") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source}: a study file must be a mapping of fields, got {type(raw).__name__}"
        )
    cycle = _self_reference(raw)
    if cycle is not None:
        raise SpecError(
            one_line(
                f"{source}: {cycle}: a YAML alias inside its own anchor makes this value contain "
                "itself"
            )
        )
    if default_name and "name" not in raw:
        raw["name"] = re.sub(r"[^A-Za-z0-9_.\-]", "-", default_name)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    check_semantics(spec, source, base_dir=base_dir)
    spec._base_dir = base_dir  # type: ignore[attr-defined]  # where relative data paths resolve
    return spec


def spec_base_dir(spec: StudySpec) -> Path | None:
    """The directory relative paths in ``spec`` resolve against (the study file's)."""
    return getattr(spec, "_base_dir", None)


def study_families(spec: StudySpec) -> list[str]:
    """The model families a study's trials may build: the fixed one or the searched choices."""
    if FAMILY_PARAM in spec.search and spec.search[FAMILY_PARAM].type == "categorical":
        return [str(c) for c in spec.search[FAMILY_PARAM].choices]  # type: ignore[union-attr]
    if FAMILY_PARAM in spec.fixed:
        return [str(spec.fixed[FAMILY_PARAM])]
    return [spec.model.family]


def data_options(spec: StudySpec) -> dict[str, Any]:
    """The data source's options as loaded: digits come as 1×8×8 images when a family needs them.

    A study that mixes flat and convolutional families loads images; the MLP flattens them.
    """
    from hpo.models import FAMILIES

    options = spec.data.options
    if spec.data.source == "sklearn" and "images" not in options:
        kinds = {
            getattr(FAMILIES.get(f), "input_kind", "flat")
            for f in study_families(spec)
            if f in FAMILIES
        }
        if "image" in kinds and options.get("name", "digits") == "digits":
            options = {**options, "images": True}
    return options


def hyperparameter_models(family: str) -> dict[str, Any]:
    """Every hyperparameter name usable with ``family`` → the field's pydantic type adapter."""
    from hpo.models import FAMILIES
    from hpo.training.config import TrainParams

    fields: dict[str, Any] = {}
    for model in (TrainParams, FAMILIES.get(family).Params):
        for name, info in model.model_fields.items():
            fields[name] = (model, name, info)
    return fields


def _check_value(model: type[BaseModel], name: str, value: Any) -> str | None:
    """Validate one hyperparameter value against its family's field; return the error or None."""
    if isinstance(value, float) and not math.isfinite(value):
        # The models accept infinity where only a lower bound is set (lr, weight_decay); no
        # hyperparameter means anything at infinity.
        return "must be a finite number"
    try:
        # Validate through the whole model (every other field has a default) so the field's
        # constraints and validators apply exactly as they will when a trial is built.
        model.model_validate({name: value})
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
    return None


def check_semantics(spec: StudySpec, source: str, base_dir: Path | None = None) -> None:
    """Pass 2: check the spec against the registries; raise :class:`SpecError`."""
    from hpo.data import options_model
    from hpo.models import FAMILIES
    from hpo.training.metrics import OBJECTIVE_METRICS

    def fail(field: str, message: str) -> None:
        raise SpecError(one_line(f"{source}: {field}: {message}"))

    # data: the source's own options
    try:
        opts_model = options_model(spec.data.source)
    except KeyError as exc:
        fail("data.source", exc.args[0])
        raise
    try:
        opts_model.model_validate(data_options(spec))
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source, prefix="data")) from None

    # metrics
    for i, metric in enumerate(spec.objective_metrics):
        if metric not in OBJECTIVE_METRICS:
            field = "metric" if spec.metric or not spec.metrics else f"metrics.{i}"
            hint = did_you_mean(metric, list(OBJECTIVE_METRICS))
            fail(field, f"unknown metric '{metric}'{hint}; known: {', '.join(OBJECTIVE_METRICS)}")

    # families: the fixed one, or every choice of a searched ``family``
    if FAMILY_PARAM in spec.search and spec.search[FAMILY_PARAM].type != "categorical":
        fail(f"search.{FAMILY_PARAM}", "must be categorical (a list of family names)")
    families = study_families(spec)
    for fam in families:
        if fam not in FAMILIES:
            where = "model.family" if families == [spec.model.family] else f"search.{FAMILY_PARAM}"
            fail(where, FAMILIES.unknown_message(fam))

    # hyperparameter names and values, per family they may apply to
    known: dict[str, Any] = {}
    for fam in families:
        known.update(hyperparameter_models(fam))

    def check_name(block: str, name: str) -> None:
        if name == FAMILY_PARAM or name in known:
            return
        hint = did_you_mean(name, list(known))
        fail(
            f"{block}.{name}",
            f"unknown hyperparameter '{name}'{hint}; for {'/'.join(families)} the known ones are: "
            f"{', '.join(sorted(known))}",
        )

    for name, param in spec.search.items():
        check_name("search", name)
        if name == FAMILY_PARAM:
            continue
        model, field, _ = known[name]
        for bound, value in zip(_bound_names(param), param.bounds(), strict=True):
            problem = _check_value(model, field, value)
            if problem:
                fail(f"search.{name}.{bound}", f"{problem} (got {json.dumps(value)})")
        for dep in param.when or {}:
            if dep not in spec.search and dep not in spec.fixed and dep != FAMILY_PARAM:
                hint = did_you_mean(dep, list(spec.search))
                fail(
                    f"search.{name}.when",
                    f"condition names '{dep}', which is neither searched nor fixed{hint}",
                )
    for name, value in spec.fixed.items():
        check_name("fixed", name)
        if name != FAMILY_PARAM:
            model, field, _ = known[name]
            problem = _check_value(model, field, value)
            if problem:
                fail(f"fixed.{name}", f"{problem} (got {json.dumps(value, default=str)})")
    try:
        suggestion_order(spec.search)
    except ValueError as exc:
        fail("search", str(exc))
    for i, params in enumerate(spec.enqueue):
        for name in params:
            if name not in spec.search:
                fail(f"enqueue.{i}.{name}", f"'{name}' is not a searched parameter")

    # sampler / pruner / objectives
    if spec.sampler.name == "grid":
        if not spec.search:
            fail("sampler.name", "the grid sampler needs a 'search' block")
        try:
            grid_search_space(spec.search)
        except ValueError as exc:
            raise SpecError(one_line(f"{source}: {exc}")) from None
    if spec.multi_objective:
        if spec.pruner is not None and spec.pruner.name != "none":
            fail(
                "pruner.name",
                f"Optuna cannot prune multi-objective studies; use 'none' (got '{spec.pruner.name}')",
            )
        if spec.sampler.name in ("cmaes", "gp"):
            fail(
                "sampler.name",
                f"'{spec.sampler.name}' is single-objective; use tpe, nsga2, random or grid",
            )


def _bound_names(param: Any) -> list[str]:
    if param.type == "categorical":
        return [f"choices.{i}" for i in range(len(param.choices))]
    return ["low", "high"]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file (for editor completion)."""
    schema = StudySpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hpo study file"
    return schema
