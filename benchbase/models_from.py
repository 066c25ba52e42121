"""The models ``benchbase eval`` scores without training, and where each came from.

MODEL is one of:

- a stored run: its folder (``<home>/runs/<suite>/<method>-seed<N>-<hash>``), the ``student.pt``
  inside it, or its config hash (or a unique prefix of 6+ characters) in the results database; the
  run's own config gives the architecture, and by default the suite, data and seed;
- a checkpoint file: a ``student.pt`` elsewhere (it records each block's head count) or any state
  dict, built with the ``student`` config (``student=vit_tiny``, ``student.embed_dim=...``; a SAM
  encoder with ``student.arch=sam``, whose checkpoint may be SAM's own);
- ``timm:NAME`` with ``--weights FILE``: timm's architecture NAME with weights read from FILE and
  adapted as timm adapts pretrained weights (:func:`load_timm_weights`); nothing is downloaded;
- ``sam:PRESET`` with ``--weights FILE``: SAM's image encoder (``vit_b``, ``vit_l``, ``vit_h``)
  from a SAM checkpoint;
- ``pixels``: the image itself as the features (the ``pixels`` floor of :mod:`benchbase.floors`),
  of the channels the ``student`` config reads.

Weights are identified by the SHA-256 of their file, so the same weights under another path reuse
stored results.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from timm.models import adapt_input_conv
from torch import nn

from benchbase.components import DataBundle, Student
from benchbase.config import ModelConfig
from benchbase.errors import BenchbaseError
from benchbase.models import load_state, load_weights, read_state_dict
from benchbase.plugin_manager import Benchbase
from benchbase.results import ResultsDB
from benchbase.sam import load_sam_checkpoint
from benchbase.untrained import UNTRAINED_FILE

RUN_FILES = ("config.yaml", "student.pt")
PREFIXES = {"timm": "vit", "sam": "sam"}
"""``KIND:NAME`` models and the student architecture each is built as."""
_HASH = re.compile(r"[0-9a-f]{6,16}")
PIXELS = "pixels"
_USAGE = ("a run folder, a checkpoint file, a stored run's config hash, timm:NAME, sam:PRESET or pixels "
          "(see `benchbase eval --help`)")


@dataclass
class ModelSpec:
    """A MODEL argument, resolved: its kind, its weights file and, for a stored run, the run.

    ``architecture`` is the ``student`` config a ``KIND:NAME`` model is built with (None: the
    composed ``student`` config, or a stored run's own).
    """

    kind: str  # run | checkpoint | timm | sam | pixels
    label: str
    weights: Path | None = None
    run: DictConfig | None = None
    run_hash: str = ""
    architecture: dict[str, Any] | None = None
    sha256: str = field(default="", init=False)

    def provenance(self) -> dict[str, Any]:
        """What a record stores about the model: kind, weights file and its SHA-256, the run."""
        found = self.identity()
        if self.weights is not None:
            found["weights"] = str(self.weights)
        if self.run is not None:
            found["run"] = {"config_hash": self.run_hash, "run_dir": str(self.weights.parent),
                            "suite": self.run.suite.name, "method": (self.run.get("method") or {}).get("name", ""),
                            "seed": self.run.seed}
        return found

    def identity(self) -> dict[str, Any]:
        """The parts of :meth:`provenance` that decide the model (no paths)."""
        found: dict[str, Any] = {"kind": self.kind}
        if self.weights is not None:
            found["sha256"] = self.file_hash()
        if self.run_hash:
            found["run"] = self.run_hash
        return found

    def untrained(self) -> list[str]:
        """A stored run's parameters that its training never reached (its ``untrained.json``), so
        that frozen-feature tasks read the model as the run itself did; none for other models."""
        found = self.weights.parent / UNTRAINED_FILE if self.run is not None and self.weights is not None else None
        return json.loads(found.read_text()) if found is not None and found.is_file() else []

    def file_hash(self) -> str:
        """The SHA-256 of the weights file (read once)."""
        if not self.sha256:
            digest = hashlib.sha256()
            with open(self.weights, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self.sha256 = digest.hexdigest()
        return self.sha256


def _run_spec(folder: Path) -> ModelSpec:
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise BenchbaseError(f"{folder} is not a benchbase run folder (no {', '.join(missing)}); MODEL is {_USAGE}")
    run = OmegaConf.load(folder / "config.yaml")
    suffix = folder.name.rsplit("-", 1)[-1]
    method = (run.get("method") or {}).get("name", "run")
    return ModelSpec("run", f"{method}@{suffix[:8]}", folder / "student.pt", run,
                     suffix if _HASH.fullmatch(suffix) else "")


def _stored_run(prefix: str, db: ResultsDB) -> ModelSpec:
    found = {r.run_dir for r in db.records() if r.config_hash.startswith(prefix) and r.run_dir}
    if len(found) != 1:
        problem = "no stored run" if not found else f"{len(found)} stored runs"
        raise BenchbaseError(f"{problem} in {db.path} with a config hash starting {prefix!r}; MODEL is {_USAGE}")
    return _run_spec(Path(found.pop()))


def resolve_model(text: str, weights: str | None, db: ResultsDB) -> ModelSpec:
    """The model named by ``text`` (module docstring); ``weights`` is ``--weights``; ``db`` finds
    stored runs by config hash. Anything else is a one-line error saying what MODEL may be."""
    if text == PIXELS:
        if weights is not None:
            raise BenchbaseError("the pixels model has no weights; drop --weights")
        return ModelSpec(PIXELS, PIXELS)
    kind, _, name = text.partition(":")
    if kind in PREFIXES and name:
        if weights is None:
            raise BenchbaseError(f"{text} needs --weights FILE (benchbase eval never downloads weights)")
        path = Path(weights)
        if not path.is_file():
            raise BenchbaseError(f"--weights {path} is not a file; pass the weights of {name}")
        return ModelSpec(kind, text, path, architecture={"arch": PREFIXES[kind], "model": name})
    if weights is not None:
        raise BenchbaseError(f"--weights is for timm:NAME and sam:PRESET models; {text} names its own weights")
    path = Path(text)
    if path.is_dir():
        return _run_spec(path)
    if path.is_file():
        if all((path.parent / name).is_file() for name in RUN_FILES) and path.name == "student.pt":
            return _run_spec(path.parent)
        return ModelSpec("checkpoint", f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem, path)
    if _HASH.fullmatch(text):
        return _stored_run(text, db)
    raise BenchbaseError(f"MODEL {text!r} is not a file or folder here; MODEL is {_USAGE}")


def load_timm_weights(model: nn.Module, path: Path) -> None:
    """The weights of ``path`` in the timm model ``model``, adapted as timm adapts its pretrained
    weights: the model family's ``checkpoint_filter_fn`` (other checkpoint layouts, the position
    embedding resampled to the image size) and the first convolution's input channels
    (``adapt_input_conv``). A classifier for another number of classes is left out (no evaluator
    reads it); any other key missing, unexpected or of another shape is a one-line error."""
    state = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # a layout the filter cannot convert
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchbaseError(f"checkpoint {path} is not a {type(model).__name__} checkpoint timm can read "
                                 f"({first})") from None
    own, config = model.state_dict(), getattr(model, "pretrained_cfg", {}) or {}
    conv = f"{config.get('first_conv')}.weight"
    if conv in state and conv in own and state[conv].shape[1] != own[conv].shape[1]:
        state[conv] = adapt_input_conv(own[conv].shape[1], state[conv])
    head = [f"{config.get('classifier')}.{p}" for p in ("weight", "bias")]
    state = {k: v for k, v in state.items() if k not in head or v.shape == own[k].shape}
    load_state(model, state, path, f"timm {type(model).__name__}", optional=tuple(head))


def build_model(spec: ModelSpec, cfg: DictConfig, bb: Benchbase, data: DataBundle) -> Student:
    """The model, built by the ``cfg.student`` architecture for ``data``'s images and loaded from
    ``spec``'s weights; a checkpoint of another architecture is a one-line error naming the keys."""
    arch = cfg.student.arch
    model = bb.registry.get("students", arch)(cfg.student, data)
    if spec.kind == "timm":
        load_timm_weights(model.model, spec.weights)
    elif spec.kind in ("checkpoint", "sam") and arch == "sam":  # SAM's own checkpoints (image_encoder.*, larger images)
        load_sam_checkpoint(model.model, spec.weights)
    else:
        load_weights(model.model, spec.weights, what=f"{arch} model ({spec.label})")
    return model


def architecture_node(spec: ModelSpec) -> dict[str, Any] | None:
    """The ``student`` config a ``KIND:NAME`` model starts from (the schema's defaults plus its
    architecture), or None for the other kinds."""
    if spec.architecture is None:
        return None
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ModelConfig), spec.architecture))
