"""Logging and loading trained models as MLflow logged models, in the safe ``pt2`` format only.

``pt2`` is ``torch.export``: a traced graph plus tensors, loaded back without running pickled
Python code. The pickle format (MLflow's other PyTorch format) executes arbitrary code on load,
so this module never writes it and refuses to read it, whatever ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``
says.

Two MLflow details shape :func:`log_pytorch_model`:

* ``mlflow.pytorch.log_model`` is a fluent API. It accepts a ``run_id`` (so no ``start_run`` is
  needed, whose exit would mark our run FINISHED), but it creates the LoggedModel in the *active*
  experiment, which without an active run is the "Default" one. We therefore create the
  LoggedModel ourselves, in the study's experiment and linked to the trial's run, and hand its
  ``model_id`` over.
* It talks to the store through the process-global tracking URI. The URI is switched for the
  duration of the call under a lock (:func:`global_tracking_uri`), so concurrent trials of
  different stores in one process do not see each other's URI, and restored afterwards.

Explicit ``pip_requirements`` matter: inferring them costs 4.4 s per model (design.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

#: File names ``mlflow.pytorch`` writes in the model's ``data`` directory.
PT2_FILE = "model.pt2"
PICKLE_FILE = "model.pth"
#: Rows kept from the input example (it is stored as JSON next to the model).
MAX_EXAMPLE_ROWS = 5

# Serialises the switch of MLflow's process-global tracking URI (see the module docstring).
_GLOBAL_URI_LOCK = threading.Lock()
_URI_ENV = "MLFLOW_TRACKING_URI"


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at ``uri`` for the block, then restore exactly
    what was there before: the global URI (set or not) and ``MLFLOW_TRACKING_URI`` in
    ``os.environ`` (its value, or its absence).

    For MLflow calls that reach the store only through the global URI (``log_model``, the SQL
    registry's run lookup). Holds a process-wide lock for the block: do not nest it. MLflow's own
    ``_use_tracking_uri`` restores with ``set_tracking_uri(previous)``, which, when no global URI
    was set, *deletes* ``MLFLOW_TRACKING_URI`` from the environment for the rest of the process
    (and for every subprocess it starts).
    """
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI_LOCK:
        previous = utils._tracking_uri
        env = os.environ.get(_URI_ENV)
        utils.set_tracking_uri(uri)
        try:
            yield
        finally:
            utils.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: "not set"
            if env is None:
                os.environ.pop(_URI_ENV, None)
            else:
                os.environ[_URI_ENV] = env


@functools.cache
def pip_requirements() -> list[str]:
    """What a serving environment needs to load the model (``mlflow`` is added by MLflow)."""
    # "2.13.0+cpu" is a local version label pip cannot resolve from PyPI: pin the release.
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]


def log_pytorch_model(
    client: MlflowClient,
    model: nn.Module,
    input_example: np.ndarray,
    *,
    experiment_id: str,
    run_id: str,
    name: str = "model",
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    link: bool = True,
    step_metrics: Sequence[Sequence[Any]] | None = None,
    location: str | None = None,
) -> str:
    """Log ``model`` (on the CPU) as a ``pt2`` LoggedModel of ``run_id``; return ``models:/m-…``.

    ``input_example`` is a few input rows; it is traced by ``torch.export`` and stored with the
    model. The exported batch dimension is dynamic, which ``torch.export`` only infers from a
    batch of at least two rows, so a single row is repeated. The model is exported in eval mode
    (dropout off, batch-norm running statistics): ``pt2`` freezes the mode it was traced in. Its
    train/eval mode is restored afterwards. ``step`` links the run's metrics at that step to the
    model, so the model page shows them. ``metadata`` (JSON-able) is stored in the model's
    ``MLmodel`` file: hpo keeps the preprocessing and classes there (:mod:`hpo.serving`).
    ``model_id``: a LoggedModel created for it already (else one is created here). ``link``:
    record the model as the run's output (MLflow refuses that link a second time; the model's
    own ``source_run_id`` names the run either way). ``step_metrics``: ``[key, value, step,
    timestamp_ms]`` rows of the run's metrics at ``step``, linked to the model as MLflow links
    them; None: MLflow reads every metric history of the run back to find them (one query per
    metric, ~30 ms of a 15-metric run on SQLite, one round trip each over HTTP). ``location``: the
    artifact location of the LoggedModel ``model_id``, if known (else it is read when needed).
    """
    from mlflow.models import Model, infer_signature

    from hpo.tracking.pt2_cache import CACHE, Pt2Flavor

    example = _example_rows(input_example)
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type != "cpu":
            raise ValueError(
                f"log_pytorch_model: move the model to the CPU first (found {tensor.device})"
            )

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        if model_id is None:
            model_id = client.create_logged_model(
                experiment_id=experiment_id,
                name=name,
                source_run_id=run_id,
                params=dict(params or {}),
                tags=dict(tags or {}),
            ).model_id
        linked_here = link and step_metrics is not None
        if linked_here:
            # What Model.log does for a run_id, in this order, from rows we have already.
            _link_model(client, run_id, model_id, step, step_metrics or ())
        flavor = Pt2Flavor(CACHE, run_id=run_id)
        save_args: dict[str, Any] = {
            "pytorch_model": model,
            "input_example": example,
            "signature": signature,
            "pip_requirements": pip_requirements(),
        }
        if linked_here:
            meta = dict(metadata) if metadata else None
            if not _save_in_place(client, model_id, flavor, meta, save_args, location):
                _save_and_upload(client, model_id, flavor, meta, save_args, location)
            return f"models:/{model_id}"
        with global_tracking_uri(client.tracking_uri):
            # What mlflow.pytorch.log_model does, with the pytorch flavor saved through hpo's
            # cache of traces (hpo.tracking.pt2_cache): one torch.export per architecture.
            info = Model.log(
                artifact_path=None,
                name=name,
                flavor=flavor,
                model_id=model_id,
                run_id=run_id if link and not linked_here else None,
                step=step,
                metadata=dict(metadata) if metadata else None,
                serialization_format="pt2",
                # The serving check re-loads the model through pyfunc: +22 ms per trial
                # (70 → 92 ms measured); loading back is covered by our tests instead.
                validate_serving_input=False,
                **save_args,
            )
    finally:
        model.train(was_training)
    return str(info.model_uri)


def _save_in_place(
    client: MlflowClient,
    model_id: str,
    flavor: Any,
    metadata: dict[str, Any] | None,
    save_args: dict[str, Any],
    location: str | None = None,
) -> bool:
    """What ``Model.log`` does for a LoggedModel that exists and is linked to its run already,
    on a SQLite or PostgreSQL store whose artifacts are local files: the model directory saved
    next to its place and moved there (one rename), and the model marked READY; False (nothing
    done) for any other store, where ``Model.log`` does it.

    ``Model.log`` reads the model back twice, saves into a temporary directory, copies that
    through an artifact repository it creates for the call, and finalizes through the ORM:
    12 of the 17 ms it took per reference model on 2 cores (``benchmarks/overhead.py``, the
    sender's ``model`` step), 0.5-1.5 ms of it the save itself. ``location``: the model's
    artifact location as its creation answered (kept with the spooled job); None: one query.
    """
    import shutil

    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    from hpo.tracking import sql_store

    store = client._tracking_client.store
    if not sql_store.supports(store):
        return False
    if location is None:  # not kept with the job (older jobs, a model the sender created)
        location = sql_store.logged_model_location(store, model_id)
    if location is None or not is_local_uri(location, is_tracking_or_registry_uri=False):
        return False
    target = Path(local_file_uri_to_path(location))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Saved under a name of its own next to the target (the flavor makes the directory), then
    # renamed: no temporary directory around it (a directory made and removed per model).
    saved = target.parent / f".saving-{uuid.uuid4().hex}"

    def finalize(status: LoggedModelStatus) -> None:
        sql_store.finalize_logged_model(store, model_id, status)

    with _finalized(model_id, location, metadata, finalize) as mlflow_model:
        try:
            flavor.save_model(path=str(saved), mlflow_model=mlflow_model, **save_args)
            if target.exists():  # an earlier attempt got this far: its files are replaced
                shutil.copytree(saved, target, dirs_exist_ok=True)
            else:
                saved.rename(target)
        finally:
            shutil.rmtree(saved, ignore_errors=True)
    return True


def _save_and_upload(
    client: MlflowClient,
    model_id: str,
    flavor: Any,
    metadata: dict[str, Any] | None,
    save_args: dict[str, Any],
    location: str | None,
) -> None:
    """What ``Model.log`` does for a LoggedModel that exists and is linked to its run already,
    on any other store (a tracking server, remote artifacts): the model directory saved in a
    temporary directory, uploaded to ``location`` (read from the store if None), and the model
    marked READY (FAILED if that fails, as ``Model.log`` does).

    ``Model.log`` reads the model back twice first, to learn its location: two requests to a
    tracking server per model, where the location came with the model's creation (the
    sender's ``model`` step over HTTP took 58 ms per reference run with them).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    if location is None:
        location = str(client.get_logged_model(model_id).artifact_location)

    def finalize(status: LoggedModelStatus) -> None:
        client.finalize_logged_model(model_id, status)

    with (
        _finalized(model_id, location, metadata, finalize) as mlflow_model,
        tempfile.TemporaryDirectory(prefix="hpo-model-") as tmp,
    ):
        saved = Path(tmp) / "model"
        flavor.save_model(path=str(saved), mlflow_model=mlflow_model, **save_args)
        uri = add_databricks_profile_info_to_artifact_uri(location, client.tracking_uri)
        repo = get_artifact_repository(uri, tracking_uri=client.tracking_uri)
        repo.log_artifacts(str(saved))


@contextlib.contextmanager
def _finalized(
    model_id: str,
    location: str,
    metadata: dict[str, Any] | None,
    finalize: Callable[[LoggedModelStatus], None],
) -> Iterator[Model]:
    """Around saving a linked LoggedModel's files (:func:`_save_in_place`,
    :func:`_save_and_upload`): yields the MLmodel that ``Model.log`` writes for it (no run: it
    is linked already and the flavor names it; the model's id and location), then marks the
    model READY, or FAILED if the block (or that) fails, as ``Model.log`` does."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    try:
        yield Model(
            artifact_path=location, model_uuid=model_id, metadata=metadata, model_id=model_id
        )
        finalize(LoggedModelStatus.READY)
    except Exception:
        with contextlib.suppress(Exception):
            finalize(LoggedModelStatus.FAILED)
        raise


def _link_model(
    client: MlflowClient,
    run_id: str,
    model_id: str,
    step: int,
    step_metrics: Iterable[Sequence[Any]],
) -> None:
    """The model as the run's output at ``step``, and the run's metrics at ``step`` as the
    model's (MLflow's ``Model.log`` with a ``run_id``, without reading the run back)."""
    from mlflow.entities import LoggedModelOutput

    from hpo.tracking import sql_store
    from hpo.tracking.spool import row_metrics

    store = client._tracking_client.store
    fast = sql_store.supports(store)  # one transaction per call (hpo.tracking.sql_store)
    if fast:
        sql_store.log_model_output(store, run_id, model_id, step)
    else:
        client.log_outputs(run_id=run_id, models=[LoggedModelOutput(model_id, step=step)])
    at_step = [row for row in step_metrics if int(row[2]) == step]
    metrics = row_metrics(at_step, run_id=run_id, model_id=model_id)
    if metrics:
        if fast:
            sql_store.log_batch(store, run_id, metrics=metrics)
        else:
            client.log_batch(run_id=run_id, metrics=metrics)


def load_pytorch_model(model_uri: str, tracking_uri: str | None = None) -> nn.Module:
    """Load a model logged by :func:`log_pytorch_model`; refuse anything that is not ``pt2``.

    ``model_uri`` is ``models:/m-…``, ``models:/NAME@alias``, ``runs:/<run_id>/model`` or a model
    directory; ``tracking_uri`` is the store that resolves the first ones (default: MLflow's
    current one). The result maps a float32 batch to logits; it is frozen in eval mode (see
    :class:`ExportedModel`).
    """
    return load_model_and_metadata(model_uri, tracking_uri)[0]


def load_model_and_metadata(
    model_uri: str, tracking_uri: str | None = None
) -> tuple[ExportedModel, dict[str, Any]]:
    """:func:`load_pytorch_model`, and the ``metadata`` the model was logged with."""
    import mlflow.artifacts
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    source = _artifact_location(model_uri, tracking_uri)
    if is_local_uri(source, is_tracking_or_registry_uri=False):
        # A local store's model is read in place: no copy, no download progress bar.
        return _load_pt2(Path(local_file_uri_to_path(source)), model_uri)
    with tempfile.TemporaryDirectory(prefix="hpo-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri
        )
        return _load_pt2(Path(local), model_uri)


class ExportedModel(nn.Module):
    """A loaded ``pt2`` model: the exported graph, frozen in the eval mode it was traced in.

    ``torch.export``'s module raises on ``eval()``; this wrapper accepts it (the usual habit
    before inference) and refuses ``train()``, which a frozen graph cannot honour.
    """

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a float32 batch."""
        out: torch.Tensor = self.graph(x)
        return out

    def train(self, mode: bool = True) -> ExportedModel:
        """``eval()`` is a no-op; ``train()`` is refused."""
        if mode:
            raise NotImplementedError("a pt2 model is frozen in eval mode and cannot be trained")
        return self


def _load_pt2(local: Path, model_uri: str) -> tuple[ExportedModel, dict[str, Any]]:
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    mlmodel = Model.load(str(local))
    flavors = mlmodel.flavors
    if "pytorch" not in flavors:
        raise MlflowException(f"{model_uri} is not a PyTorch model (flavors: {sorted(flavors)})")
    data = local / flavors["pytorch"]["model_data"]
    archive = data / PT2_FILE
    if (data / PICKLE_FILE).exists() or not archive.is_file():
        raise MlflowException(
            f"{model_uri} is not saved in the pt2 format; refusing to unpickle it"
        )
    # torch.export.load unpickles the archive's tensors with weights_only=False; MLflow's check
    # admits only JSON records and tensors. MLflow skips it when pickle is allowed by the
    # environment (MLFLOW_ALLOW_PICKLE_DESERIALIZATION): we run it always.
    mlflow.pytorch._validate_pt2_archive_is_pickle_free(str(archive))
    return ExportedModel(torch.export.load(str(archive)).module()), dict(mlmodel.metadata or {})


def _artifact_location(model_uri: str, tracking_uri: str | None) -> str:
    """``models:/m-…`` or ``models:/NAME@alias`` → the model's artifact location in ``tracking_uri``.

    MLflow 3.17 resolves ``models:/`` URIs with a client of the *global* tracking URI, even when
    ``download_artifacts`` is given another one; the logged model's own location does not have
    that problem (``mlflow-artifacts:`` locations are resolved against ``tracking_uri``).
    """
    prefix = "models:/"
    if tracking_uri is None or not model_uri.startswith(prefix):
        return model_uri
    from mlflow.tracking import MlflowClient

    from hpo.tracking.runs import registry_uri

    client = MlflowClient(tracking_uri, registry_uri=registry_uri(tracking_uri))
    ref = model_uri[len(prefix) :].strip("/")
    if "@" in ref and "/" not in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
        # The SQL registry keeps the version's source (``models:/m-…``) but not always its
        # model_id.
        ref = version.model_id or str(version.source).removeprefix(prefix).strip("/")
    if not ref.startswith("m-") or "/" in ref:
        return model_uri
    return str(client.get_logged_model(ref).artifact_location)


def _example_rows(input_example: Any) -> np.ndarray:
    example = np.ascontiguousarray(np.asarray(input_example)[:MAX_EXAMPLE_ROWS], dtype=np.float32)
    if example.ndim == 0 or example.shape[0] == 0:
        raise ValueError("log_pytorch_model: input_example needs at least one row")
    if example.shape[0] == 1:
        example = np.concatenate([example, example])
    return example
