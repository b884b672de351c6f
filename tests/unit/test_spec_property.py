"""The study-file loader on generated input: it accepts a file or raises :class:`SpecError`.

Whatever a study file holds — unknown fields, wrong types, odd numbers (NaN, infinity, huge
integers), empty or nested blocks, conditions on missing parameters, YAML that refers to itself,
dates, tags — :func:`hpo.spec.parse_spec` must either return a usable spec or raise the
project's own error, whose every line names the file. Anything else reaches the user as a
traceback (issue 5, "bad input").
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpo.data import SOURCES
from hpo.data.sklearn import LOADERS
from hpo.errors import SpecError
from hpo.models import FAMILIES
from hpo.models.activations import ACTIVATIONS
from hpo.spec import StudySpec, hyperparameter_models, parse_spec
from hpo.training.metrics import OBJECTIVE_METRICS
from hpo.training.optim import OPTIMIZERS

SOURCE = "generated.yaml"

#: Every name a study file may use, so generated files often get past the first checks.
HYPERPARAMETERS = sorted({n for f in FAMILIES.names() for n in hyperparameter_models(f)})
NAMES = sorted(
    {
        *FAMILIES.names(),
        *OPTIMIZERS.names(),
        *ACTIVATIONS.names(),
        *SOURCES.names(),
        *LOADERS,
        *OBJECTIVE_METRICS,
        *HYPERPARAMETERS,
        "tpe", "random", "grid", "cmaes", "gp", "nsga2",
        "none", "median", "successive_halving", "hyperband",
        "maximize", "minimize", "full", "auto", "cpu", "cuda",
        "float", "int", "categorical",
    }
)  # fmt: skip

names = st.sampled_from(NAMES) | st.text(max_size=12)
numbers = (
    st.integers(min_value=-5, max_value=300)
    | st.integers()
    | st.floats(min_value=-2.0, max_value=2.0)
    | st.floats()  # NaN, ±infinity, huge, tiny
)
scalars = st.none() | st.booleans() | numbers | names
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=10,
)


def block(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A mapping with any of ``fields`` (valid-ish values), sometimes a stray field, or junk."""
    known = st.fixed_dictionaries({}, optional=fields)
    stray = st.dictionaries(names, values, max_size=1)
    return st.builds(lambda a, b: {**a, **b}, known, stray) | known | known | values


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``, sometimes any value at all."""
    return strategy | strategy | values


hp_names = st.sampled_from(HYPERPARAMETERS) | st.just("family") | names
choices = st.lists(scalars, max_size=5)
when = st.dictionaries(hp_names, scalars | choices, max_size=2)
param = block(
    {
        "type": maybe(st.sampled_from(["float", "int", "categorical"])),
        "low": maybe(numbers),
        "high": maybe(numbers),
        "log": maybe(st.booleans()),
        "step": maybe(numbers),
        "choices": maybe(choices),
        "when": maybe(when),
    }
)
specs = block(
    {
        "name": maybe(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)),
        "description": values,
        "metric": maybe(st.sampled_from(list(OBJECTIVE_METRICS))),
        "direction": maybe(st.sampled_from(["maximize", "minimize"])),
        "metrics": maybe(st.lists(st.sampled_from(list(OBJECTIVE_METRICS)), max_size=3)),
        "directions": maybe(st.lists(st.sampled_from(["maximize", "minimize"]), max_size=3)),
        "data": block(
            {
                "source": maybe(st.sampled_from(SOURCES.names())),
                "name": maybe(st.sampled_from(sorted(LOADERS))),
                "images": maybe(st.booleans()),
                "val_fraction": maybe(numbers),
                "test_fraction": maybe(numbers),
                "seed": maybe(numbers),
                "path": maybe(names),
                "target": maybe(names),
                "n_samples": maybe(numbers),
                "n_classes": maybe(numbers),
                "augment": values,
            }
        ),
        "model": block({"family": maybe(st.sampled_from(FAMILIES.names()))}),
        "train": block(
            {
                "epochs": maybe(numbers),
                "device": maybe(names),
                "seed": maybe(numbers),
                "threads": maybe(numbers),
            }
        ),
        "search": maybe(st.dictionaries(hp_names, param, max_size=4)),
        "fixed": maybe(st.dictionaries(hp_names, scalars, max_size=3)),
        "enqueue": maybe(st.lists(st.dictionaries(hp_names, scalars, max_size=2), max_size=2)),
        "sampler": block(
            {
                "name": maybe(st.sampled_from(["tpe", "random", "grid", "cmaes", "gp", "nsga2"])),
                "seed": maybe(numbers),
                "n_startup_trials": maybe(numbers),
                "population_size": maybe(numbers),
            }
        ),
        "pruner": block(
            {
                "name": maybe(st.sampled_from(["none", "median", "hyperband"])),
                "warmup_epochs": maybe(numbers),
                "min_epochs": maybe(numbers),
                "reduction_factor": maybe(numbers),
            }
        ),
        "trials": maybe(numbers),
        "timeout": maybe(numbers),
        "heartbeat": block({"interval": numbers, "grace": numbers, "max_retries": numbers}),
    }
)


@st.composite
def plausible_param(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed search parameter (its values may still not suit the hyperparameter)."""
    kind = draw(st.sampled_from(["float", "int", "categorical"]))
    if kind == "float":
        low = draw(st.floats(1e-6, 1.0))
        return {
            "type": kind,
            "low": low,
            "high": draw(st.floats(low, 1.0)),
            "log": draw(st.booleans()),
        }
    if kind == "int":
        low = draw(st.integers(1, 64))
        return {
            "type": kind,
            "low": low,
            "high": draw(st.integers(low, 128)),
            "step": draw(st.integers(1, 4)),
        }
    options = st.sampled_from(NAMES) | st.integers(1, 256) | st.booleans()
    return {
        "type": kind,
        "choices": draw(st.lists(options, min_size=1, max_size=4, unique_by=repr)),
    }


#: Study files mostly right, so that accepted specs are generated often too.
plausible_specs = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        "data": st.sampled_from(
            [{"source": "sklearn", "name": n} for n in sorted(LOADERS)] + [{"source": "synthetic"}]
        ),
    },
    optional={
        "model": st.fixed_dictionaries({"family": st.sampled_from(FAMILIES.names())}),
        "train": st.fixed_dictionaries({"epochs": st.integers(1, 50), "seed": st.integers(0, 9)}),
        "search": st.dictionaries(st.sampled_from(HYPERPARAMETERS), plausible_param(), max_size=4),
        "fixed": st.dictionaries(
            st.sampled_from(HYPERPARAMETERS),
            st.integers(1, 128) | st.floats(0.0, 0.9) | st.sampled_from(NAMES) | st.booleans(),
            max_size=2,
        ),
        "metric": st.sampled_from(list(OBJECTIVE_METRICS)),
        "sampler": st.fixed_dictionaries({"name": st.sampled_from(["tpe", "random", "cmaes"])}),
        "pruner": st.fixed_dictionaries({"name": st.sampled_from(["none", "median"])}),
        "trials": st.integers(1, 100),
    },
)


def check_loader(text: str) -> None:
    """``parse_spec(text)`` returns a usable spec or raises a SpecError naming the file."""
    try:
        spec = parse_spec(text, source=SOURCE)
    except SpecError as exc:
        message = str(exc)
        assert message, "an empty error message"
        for line in message.splitlines():
            assert line.startswith(f"{SOURCE}: "), message
        return
    assert isinstance(spec, StudySpec)
    # What a study does first with an accepted file must work too.
    spec.identity_hash()
    assert spec.objective_directions and spec.pruner_spec.name


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=specs | plausible_specs)
@example(raw={"name": "x", "a\nb\x85\u2028": 1})  # line breaks in a field name: still one line
def test_generated_study_files_are_accepted_or_refused_with_a_spec_error(raw: Any) -> None:
    check_loader(yaml.safe_dump(raw, allow_unicode=True))


# Hand-written YAML that no dict dumps to: aliases that contain themselves, values the YAML
# constructors cannot build, nesting deeper than the parser's recursion.
YAML_TEXTS = [
    "name: x\nfixed: {dropout: &a [*a]}\n",
    "name: x\nfixed: &a {dropout: *a}\n",
    "name: x\ndescription: &a [*a]\n",
    "name: x\nsearch: {lr: &a {type: categorical, choices: [*a]}}\n",
    "name: x\nsearch: {lr: {type: float, low: 0.001, high: 0.1}}\nenqueue: [{lr: &a [*a]}]\n",
    "name: x\ntrials: 2001-13-45\n",
    "name: x\ntrials: !!int many\n",
    "name: x\nfixed: {lr: !!float fast}\n",
    "name: x\ndescription: !!binary '%%%'\n",
    "name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n",
    "name: x\nfixed: {lr: .inf}\n",
    "name: x\nsearch: {lr: {type: float, low: 0.1, high: .inf}}\n",
    "name: x\nsampler: {name: grid}\nsearch: {lr: {type: float, low: 1e-300, high: 1e308, step: 1e-300}}\n",
    "name: x\nsampler: {name: grid}\nsearch: {width: {type: int, low: 1, high: 100000000000}}\n",
    "name: x\nsampler: {name: grid}\nsearch:\n"
    + "".join(f"  {n}: {{type: int, low: 1, high: 1000}}\n" for n in ("width", "depth"))
    + "  lr: {type: float, low: 0.001, high: 1, step: 0.001}\n",
]


@pytest.mark.parametrize("text", YAML_TEXTS, ids=range(len(YAML_TEXTS)))
def test_odd_yaml_is_accepted_or_refused_with_a_spec_error(text: str) -> None:
    check_loader(text)


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#,.0123456789 \n\t")), max_size=60)
)
@example("a: !!timestamp 2001-02-30")
def test_random_text_is_accepted_or_refused_with_a_spec_error(text: str) -> None:
    check_loader("name: x\n" + text)
