"""One ``torch.export`` trace per architecture: later models of it reuse the trace with their own
weights.

Tracing is most of what logging a ``pt2`` model costs: 0.05-0.14 s of the reference trial's
0.1-0.2 s model logging (``benchmarks/overhead.py``, 1 thread on 2 shared cores), each time the
same graph, because the trials of a study mostly repeat a few architectures. What a trial tunes
besides the architecture (learning rate, batch size, optimizer, weight decay, dropout's rate)
changes the weights, not the eval-mode graph.

:class:`Pt2Flavor` is the flavor hpo hands to MLflow's ``Model.log``; its ``save_model`` writes
the directory ``mlflow.pytorch.save_model(serialization_format="pt2")`` writes:

* a model of a new :func:`template_key` (architecture, input example, signature,
  requirements) is saved by MLflow itself. From the second model of a key on, the exported
  program MLflow saved is read back and kept, with the directory's other files (input example,
  environment files) and its ``MLmodel`` flavors (not from the first: in a search whose
  architectures never repeat, reading traces back would only cost);
* a later model of that key gets the kept program with its own weights copied in, checked to give
  that model's outputs on the input example (bit for bit); its archive is the kept archive's
  records with the weights' records replaced by the model's tensors (each weight is a record of
  raw bytes there). That is ``torch.export.save`` without serializing the same graph again:
  1-2 ms instead of 15-45 ms for the reference MLP. An archive whose weights are stored any
  other way (pickled, offset, strided) is written by ``torch.export.save``. The other files are
  the kept ones, and ``MLmodel`` is the kept flavors, signature and example on the new model's
  own identity (id, run, time, size). A check that fails falls back to MLflow's save, whose
  result replaces the kept one.

Dropout's rate is set to 0 for the trace and restored after. The graph is traced in eval mode,
where Dropout is the identity whatever its rate, but ``torch.export`` writes the rate into the
graph: without this, each rate would be its own architecture, and a kept graph would carry the
rate of whichever trial came first.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature

#: Traces kept per process, and the weights they may hold in all (each keeps one model's copy):
#: the least recently used goes first.
MAX_TEMPLATES = 16
MAX_TEMPLATE_BYTES = 256 * 2**20
#: Keys remembered as seen once: a trace is kept from the second model of its key on, so a
#: search whose architectures never repeat pays nothing for reading traces back.
MAX_SEEN = 1024
#: The files of a model directory that belong to one model (the rest is shared by its key).
MLMODEL = "MLmodel"
DATA_DIR = "data"
PT2_FILE = "model.pt2"


def architecture(model: nn.Module) -> tuple[Any, ...]:
    """What decides a model's eval-mode graph: each submodule's class and settings (Dropout's
    rate aside, see the module docstring) and the names, shapes and dtypes of its state."""
    modules = tuple(
        (name, type(module).__module__, type(module).__qualname__)
        + (() if isinstance(module, nn.modules.dropout._DropoutNd) else (module.extra_repr(),))
        for name, module in model.named_modules()
    )
    state = tuple(
        (name, tuple(tensor.shape), str(tensor.dtype))
        for name, tensor in model.state_dict().items()
    )
    return modules, state


def template_key(
    model: nn.Module,
    example: np.ndarray,
    signature: ModelSignature,
    pip_requirements: Sequence[str],
) -> tuple[Any, ...]:
    """Models of one key share a trace and every file of their directory but the weights and
    ``MLmodel``."""
    return (
        architecture(model),
        example.shape,
        str(example.dtype),
        example.tobytes(),
        json.dumps(signature.to_dict(), sort_keys=True),
        tuple(pip_requirements),
    )


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Every Dropout's rate set to 0 for the block (see the module docstring), then restored."""
    saved = [
        (module, module.p)
        for module in model.modules()
        if isinstance(module, nn.modules.dropout._DropoutNd)
    ]
    for module, _ in saved:
        module.p = 0.0
    try:
        yield
    finally:
        for module, p in saved:
            module.p = p


@dataclass
class _Template:
    """A saved model directory's reusable parts."""

    program: torch.export.ExportedProgram
    graph: nn.Module  # program.module(): shares the program's tensors
    files: dict[str, bytes]  # relative path → content, MLmodel and the pt2 archive aside
    mlmodel: Model
    archive_bytes: int  # the size of its pt2 archive
    #: The archive's records in order, and which of them hold which weight (state dict name);
    #: None: the archive is written by torch.export.save.
    records: list[tuple[str, bytes]] | None = None
    weights: dict[str, str] | None = None

    @property
    def nbytes(self) -> int:
        """What keeping it costs: its weights, files and archive records."""
        tensors = sum(t.numel() * t.element_size() for t in self.program.state_dict.values())
        records = sum(len(data) for _, data in self.records or ())
        return tensors + records + sum(len(content) for content in self.files.values())


class Pt2Cache:
    """Kept traces (:class:`_Template`) by :func:`template_key`: the most recently used, up to
    ``size`` of them and ``max_bytes`` in all; thread-safe."""

    def __init__(self, size: int = MAX_TEMPLATES, max_bytes: int = MAX_TEMPLATE_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._templates: collections.OrderedDict[tuple[Any, ...], _Template] = (
            collections.OrderedDict()
        )
        self._seen: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()
        self._lock = threading.Lock()
        #: How many saves reused a trace, and how many traced (tests, benchmarks).
        self.hits = 0
        self.misses = 0

    def save_model(
        self,
        path: str,
        mlflow_model: Model,
        *,
        pytorch_model: nn.Module,
        input_example: np.ndarray,
        signature: ModelSignature,
        pip_requirements: Sequence[str],
        **kwargs: Any,
    ) -> None:
        """``mlflow.pytorch.save_model(path, mlflow_model=…, serialization_format="pt2", …)``,
        reusing the trace of an earlier model of the same :func:`template_key`. ``pytorch_model``
        is in eval mode; ``input_example`` is float32 rows."""
        key = template_key(pytorch_model, input_example, signature, pip_requirements)
        with self._lock:
            template = self._templates.get(key)
            if template is not None and self._reuse(
                template, path, mlflow_model, pytorch_model, input_example
            ):
                self._templates.move_to_end(key)
                self.hits += 1
                return
            self.misses += 1
            self._templates.pop(key, None)
            self._trace(
                path,
                mlflow_model,
                pytorch_model,
                input_example,
                signature,
                pip_requirements,
                **kwargs,
            )
            if key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > MAX_SEEN:
                    self._seen.popitem(last=False)
                return
            self._seen.move_to_end(key)
            template = self._keep(path, mlflow_model, pytorch_model)
            if template is not None:
                self._templates[key] = template
                while len(self._templates) > self.size or (
                    len(self._templates) > 1
                    and sum(t.nbytes for t in self._templates.values()) > self.max_bytes
                ):
                    self._templates.popitem(last=False)

    def clear(self) -> None:
        """Forget every kept trace and every key seen, and reset the counts: a fresh cache."""
        with self._lock:
            self._templates.clear()
            self._seen.clear()
            self.hits = self.misses = 0

    # -- the two ways ---------------------------------------------------------------------------
    @staticmethod
    def _trace(
        path: str,
        mlflow_model: Model,
        model: nn.Module,
        example: np.ndarray,
        signature: ModelSignature,
        pip_requirements: Sequence[str],
        **kwargs: Any,
    ) -> None:
        """MLflow's own save."""
        import mlflow.pytorch

        with dropout_off(model):
            mlflow.pytorch.save_model(
                model,
                path,
                mlflow_model=mlflow_model,
                input_example=example,
                signature=signature,
                pip_requirements=list(pip_requirements),
                serialization_format="pt2",
                **kwargs,
            )

    @staticmethod
    def _keep(path: str, mlflow_model: Model, model: nn.Module) -> _Template | None:
        """What :meth:`_trace` wrote, read back to be reused (None when it cannot be)."""
        root = Path(path)
        archive = root / DATA_DIR / PT2_FILE
        program = torch.export.load(str(archive))
        # Tensors the trace holds outside the state dict (constants) could differ from one
        # model to the next without the check below seeing it: such a trace is not kept.
        if program.constants or set(program.state_dict) != set(model.state_dict()):
            return None
        files = {
            str(file.relative_to(root)): file.read_bytes()
            for file in sorted(root.rglob("*"))
            if file.is_file() and file != archive and file.name != MLMODEL
        }
        records, weights = _archive_records(archive, model.state_dict())
        return _Template(
            program,
            program.module(),
            files,
            copy.deepcopy(mlflow_model),
            archive.stat().st_size,
            records,
            weights,
        )

    @staticmethod
    def _reuse(
        template: _Template,
        path: str,
        mlflow_model: Model,
        model: nn.Module,
        example: np.ndarray,
    ) -> bool:
        """The kept trace with ``model``'s weights, if it reproduces ``model`` on the example;
        False (nothing written) if not."""
        state = model.state_dict()
        inputs = torch.from_numpy(example)
        with torch.no_grad():
            for name, tensor in template.program.state_dict.items():
                tensor.copy_(state[name])
            if not torch.equal(template.graph(inputs), model(inputs)):
                return False
        root = Path(path)
        for name, content in template.files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        archive = root / DATA_DIR / PT2_FILE
        if template.records is not None and template.weights is not None:
            _write_archive(archive, template.records, template.weights, state)
        else:
            torch.export.save(template.program, str(archive))
        kept = template.mlmodel
        mlflow_model.flavors = copy.deepcopy(kept.flavors)
        mlflow_model.signature = kept.signature
        if kept.saved_input_example_info is not None:
            mlflow_model.saved_input_example_info = dict(kept.saved_input_example_info)
        if kept.model_size_bytes is not None:
            # MLflow counts the files written before MLmodel (not the environment files).
            mlflow_model.model_size_bytes = (
                kept.model_size_bytes - template.archive_bytes + archive.stat().st_size
            )
        save_mlmodel(mlflow_model, root / MLMODEL)
        return True


def save_mlmodel(model: Model, path: Path) -> None:
    """``model.save(path)``, with libyaml's emitter where PyYAML has it: the same text (what
    MLflow's ``Model.to_yaml`` writes: ``safe_dump``, block style) in 0.9 ms instead of 3.5 ms
    for the reference trial's ``MLmodel`` (its preprocessing metadata has a few hundred values).

    The ``metadata`` entry (218 of that file's 252 lines, the same for every trial of a study)
    is written from :func:`_metadata_entry`'s cache: the sender's whole ``MLmodel`` took 2.5 ms
    of its CPU per reference run before, most of it turning those values into YAML events.
    """
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    data = model.to_dict()
    text = None
    if "metadata" in data and len(data) > 1:
        rest = {k: v for k, v in data.items() if k != "metadata"}
        entry = _metadata_entry(data["metadata"], dumper)
        if entry is not None:
            text = _splice(yaml.dump(rest, Dumper=dumper, default_flow_style=False), entry)
    if text is None:  # no metadata, not cacheable, or anchors (numbered per document): whole
        text = yaml.dump(data, Dumper=dumper, default_flow_style=False)
    with open(path, "w") as out:
        out.write(text)


#: ``metadata`` values (as sorted JSON) → their YAML entry; a few studies' worth.
_METADATA_ENTRIES: collections.OrderedDict[str, str] = collections.OrderedDict()
_MAX_METADATA_ENTRIES = 8


def _metadata_entry(metadata: Any, dumper: Any) -> str | None:
    """``metadata: …`` as ``yaml.dump({"metadata": metadata})`` writes it, cached by value;
    None where the value has no exact JSON key (keys that are not strings, values JSON does
    not take) or where YAML would write anchors."""
    import yaml

    try:
        key = json.dumps(metadata, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return None
    if _not_json(metadata):  # {1: x} and {"1": x}: one JSON, two YAML texts
        return None
    entry = _METADATA_ENTRIES.get(key)
    if entry is None:
        entry = yaml.dump({"metadata": metadata}, Dumper=dumper, default_flow_style=False)
        if "&id" in entry:
            return None
        _METADATA_ENTRIES[key] = entry
        while len(_METADATA_ENTRIES) > _MAX_METADATA_ENTRIES:
            _METADATA_ENTRIES.popitem(last=False)
    else:
        _METADATA_ENTRIES.move_to_end(key)
    return entry


def _not_json(value: Any) -> bool:
    """Whether ``value`` holds what JSON writes as something else (keys that are not strings,
    tuples), so that its JSON does not name one YAML text."""
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _not_json(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_not_json(v) for v in value)
    return isinstance(value, tuple)


def _splice(text: str, entry: str, key: str = "metadata") -> str | None:
    """``entry`` (a top-level ``key: …`` block) put into ``text`` (a block-style mapping with
    sorted keys) where ``yaml.dump`` sorts it; None if ``text`` has anchors."""
    if "&id" in text:
        return None
    lines = text.splitlines(keepends=True)
    offset = 0
    for line in lines:
        # A top-level key: not indented, not a list item of the key above (PyYAML does not
        # indent those), not the continuation of a wrapped scalar (indented).
        if line[:1] not in (" ", "-", "") and line.split(":", 1)[0] > key:
            return text[:offset] + entry + text[offset:]
        offset += len(line)
    return text + entry


#: Records ``torch._C.PyTorchFileWriter`` writes itself when an archive is closed.
_WRITER_RECORDS = frozenset({".data/version", ".data/serialization_id"})
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"


def _archive_records(
    archive: Path, state: dict[str, torch.Tensor]
) -> tuple[list[tuple[str, bytes]] | None, dict[str, str] | None]:
    """The records of a ``pt2`` archive, and the records holding the weights by their state
    dict name; (None, None) unless every weight is a record of the tensor's raw bytes
    (contiguous, from offset 0), as ``torch.export.save`` writes CPU weights."""
    from torch.export.pt2_archive import PT2ArchiveReader

    reader = PT2ArchiveReader(str(archive))
    names = [n for n in reader.archive_file.get_all_records() if n not in _WRITER_RECORDS]
    records = [(name, reader.read_bytes(name)) for name in names]
    content = dict(records)
    if _WEIGHTS_CONFIG not in content:
        return None, None
    config = json.loads(content[_WEIGHTS_CONFIG]).get("config", {})
    weights: dict[str, str] = {}
    for fqn, entry in config.items():
        record = f"data/weights/{entry.get('path_name')}"
        tensor = state.get(fqn)
        meta = entry.get("tensor_meta") or {}
        offset = (meta.get("storage_offset") or {}).get("as_int")
        strides = [s.get("as_int") for s in meta.get("strides", [])]
        if (
            tensor is None
            or entry.get("use_pickle")
            or offset != 0
            or record not in content
            or not tensor.is_contiguous()
            or strides != list(tensor.stride())
            or len(content[record]) != tensor.numel() * tensor.element_size()
        ):
            return None, None
        weights[record] = fqn
    if set(weights.values()) != set(state):
        return None, None
    return records, weights


def _write_archive(
    archive: Path,
    records: list[tuple[str, bytes]],
    weights: dict[str, str],
    state: dict[str, torch.Tensor],
) -> None:
    """The kept archive's records, the weights' records holding ``state``'s tensors."""
    from torch.export.pt2_archive import PT2ArchiveWriter

    with PT2ArchiveWriter(str(archive)) as writer:
        for name, data in records:
            fqn = weights.get(name)
            if fqn is not None:
                tensor = state[fqn].detach().contiguous().cpu()
                data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            if not writer.has_record(name):
                writer.write_bytes(name, data)


class Pt2Flavor:
    """The ``flavor`` argument of MLflow's ``Model.log`` for :func:`hpo.tracking.models.
    log_pytorch_model`: MLflow's ``pytorch`` flavor, saved through a :class:`Pt2Cache`."""

    __name__ = "mlflow.pytorch"

    def __init__(self, cache: Pt2Cache, run_id: str | None = None) -> None:
        """``run_id``: the run the ``MLmodel`` file names (hpo links the model to its run
        itself and gives ``Model.log`` no run)."""
        self.cache = cache
        self.run_id = run_id

    def save_model(self, path: str, mlflow_model: Model, **kwargs: Any) -> None:
        """What ``Model.log`` calls to write the model directory."""
        if mlflow_model.run_id is None and self.run_id is not None:
            mlflow_model.run_id = self.run_id
        # Read by Model.log itself; the format is always pt2.
        kwargs.pop("serialization_format", None)
        kwargs.pop("validate_serving_input", None)
        self.cache.save_model(path, mlflow_model, **kwargs)


#: The process's cache (the sender of a worker logs its trials' models one after another).
CACHE = Pt2Cache()


def warm_up() -> None:
    """Import and run once what tracing, saving and reading back a ``pt2`` model needs, on a
    tiny model: the first ``torch.export`` of a process costs seconds of imports (3.5 s of a
    4.7 s first model on 2 shared cores, against 0.08 s for a later one). The background sender
    does this while it waits for its first job."""
    import io

    import mlflow.pytorch  # noqa: F401  # what the first model's save imports

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)).eval()
    program = torch.export.export(
        model, (torch.zeros(2, 2),), dynamic_shapes=[{0: torch.export.Dim.AUTO}]
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    torch.export.load(buffer).module()
