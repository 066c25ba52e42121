"""Where a suite's teacher comes from: a checkpoint, a timm pretrained name, or the suite's recipe.

Owns loading (and for a recipe, training and caching) the suite's frozen teacher; what the
teacher is (its architecture, how its checkpoints load) is the registered teacher builder's
business, and what names it is :mod:`benchbase.methods`' (:meth:`~benchbase.methods.Methods.recipe_key`).

The recipe trains the teacher on the suite's distillation data (MAE pre-training, then supervised
fine-tuning, as the methods expect a MIM-pretrained teacher; or SAM's promptable training) and
caches it under ``<home>/teachers/<key>/`` by its recipe key, the hash of everything that
determines it (the recipe's methods with their params and code included); every method of the
suite then distils from that same teacher. Both recipe stages resume from their checkpoints. A
stage's weights are the network's state dict, or the checkpoint its method makes of them
(:meth:`~benchbase.components.Method.recipe_checkpoint`: SAM's training stores a full SAM), read
back by the architecture's ``checkpoint_loader``.
Under torchrun both stages train data-parallel; every rank ends with the same weights and rank 0
writes the cache.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchbase import distributed
from benchbase.components import DataBundle, Student, Teacher, VitModel
from benchbase.engine import train
from benchbase.errors import BenchbaseError
from benchbase.locks import building
from benchbase.methods import Methods, recipe_stage
from benchbase.models import load_weights, save_weights, set_drop_path

TEACHER_FILE = "teacher.pt"
PRETRAINED_FILE = "teacher-pretrain.pt"
"""The recipe teacher's weights after its pre-training stage (``method.teacher_stage=pretrain``)."""

STAGE_FILES = {"pretrain": PRETRAINED_FILE, "finetune": TEACHER_FILE}
"""The file of a recipe teacher's weights after each recipe stage."""


def teacher_source(methods: Methods, cfg: Any, data: DataBundle, stage: str | None = "finetune") -> str:
    """Where :func:`load_teacher` takes the weights from: the checkpoint path, ``timm:<name>`` or
    ``recipe:<recipe key>`` (the teacher's ``source``), with ``/pretrain`` for the recipe's
    pre-trained weights (``stage``, see :func:`benchbase.methods.teacher_stage`)."""
    tcfg = cfg.teacher
    if tcfg.source == "checkpoint":
        return str(tcfg.checkpoint)
    if tcfg.source == "timm":
        return f"timm:{tcfg.model}"
    stage = recipe_stage(tcfg.recipe, stage or "finetune")
    return f"recipe:{methods.recipe_key(cfg, data)}" + ("/pretrain" if stage == "pretrain" else "")


def build_teacher(methods: Methods, tcfg: Any, data: DataBundle, **kwargs: Any) -> VitModel:
    """The network of teacher ``tcfg.arch`` with fresh weights, as its registered builder makes it,
    reading the channels that ``tcfg.input`` names.

    A builder returns a model wrapper (a :class:`~benchbase.components.Student` of its
    architecture), as student builders do; a bare ``nn.Module`` is still taken, wrapped as a timm
    ViT, with a deprecation warning."""
    model = methods.bb.registry.get("teachers", tcfg.arch)(tcfg, data, **kwargs)
    if not isinstance(model, VitModel):
        warnings.warn(f"teacher builder {tcfg.arch!r} returned a bare {type(model).__name__}; return a "
                      "benchbase.api.Student wrapper (as student builders do)", DeprecationWarning, stacklevel=2)
        model = Student(model)
    model.input_slice = data.channels(tcfg.get("input"))
    return model


def load_teacher(methods: Methods, cfg: Any, data: DataBundle, home: Path, stage: str | None = "finetune") -> Teacher:
    """The suite's frozen teacher, built by ``teacher.arch`` and filled by ``teacher.source``; of a
    recipe teacher, the weights after recipe stage ``stage`` (``finetune``: the whole recipe)."""
    tcfg = cfg.teacher
    if tcfg.source == "checkpoint":
        if not tcfg.checkpoint:
            raise BenchbaseError("teacher.source=checkpoint needs teacher.checkpoint=PATH")
        model = build_teacher(methods, tcfg, data)
        load_into(model, tcfg.checkpoint)
        return frozen(model, tcfg, teacher_source(methods, cfg, data))
    if tcfg.source == "timm":
        try:
            model = build_teacher(methods, tcfg, data, pretrained=True)
        except BenchbaseError:
            raise
        except Exception as exc:  # no hub access, unknown tag, ...
            raise BenchbaseError(
                f"could not load timm pretrained weights for {tcfg.model!r} ({type(exc).__name__}); "
                "check the name and your connection, or use teacher.source=checkpoint"
            ) from None
        return frozen(model, tcfg, teacher_source(methods, cfg, data))
    if tcfg.source == "recipe":
        return _recipe_teacher(methods, cfg, data, home, stage or "finetune")
    raise BenchbaseError(f"teacher.source={tcfg.source!r}; use recipe, checkpoint or timm")


def load_into(model: VitModel, path: str | Path, what: str = "teacher") -> None:
    """Fill ``model``'s network (a ``what``) from the file ``path``: by the architecture's own
    checkpoint format (``checkpoint_loader``, e.g. a full SAM checkpoint), else as a state dict of
    the network."""
    if model.checkpoint_loader is not None:
        model.checkpoint_loader(model.model, str(path))
    else:
        load_weights(model.model, path, what=what)


def teacher_checkpoint(methods: Methods, cfg: Any, data: DataBundle, home: Path) -> Path | None:
    """The file that holds the suite's teacher as a whole: ``teacher.checkpoint``, or a recipe
    teacher's cached ``teacher.pt`` (``teacher-pretrain.pt`` of a recipe without fine-tuning; trained
    or not yet); None for a timm teacher. A full SAM
    checkpoint there (a real one, or a recipe trained by ``sam``) also holds the prompt encoder and
    mask decoder that the ``sam_everything`` evaluator reads."""
    if cfg.teacher.source == "checkpoint":
        return Path(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else None
    if cfg.teacher.source == "recipe":
        return home / "teachers" / methods.recipe_key(cfg, data) / STAGE_FILES[recipe_stage(cfg.teacher.recipe, "finetune")]
    return None


def frozen(model: VitModel, tcfg: Any, source: str) -> Teacher:
    """``model`` as a frozen teacher (:meth:`~benchbase.components.VitModel.as_teacher`), with
    ``tcfg.distill_drop_path`` stochastic depth in every block while it teaches."""
    rate = tcfg.get("distill_drop_path") or 0.0
    if rate and not model.has_drop_path:
        raise BenchbaseError("teacher.distill_drop_path needs a timm ViT teacher (SAM blocks have no drop path); "
                             "set it to 0")
    if model.has_drop_path:  # exactly this rate while teaching, whatever drop path the model was trained with
        set_drop_path(model.model, rate)
    return model.as_teacher(source)


def _recipe_teacher(methods: Methods, cfg: Any, data: DataBundle, home: Path, stage: str) -> Teacher:
    """The recipe teacher after recipe stage ``stage``, trained (up to that stage) unless cached."""
    folder = home / "teachers" / methods.recipe_key(cfg, data)
    recipe = cfg.teacher.recipe
    stage = recipe_stage(recipe, stage)
    plan = methods.recipe_plan(recipe, data)
    if stage not in [name for name, *_ in plan]:
        raise BenchbaseError(f"the teacher recipe has no {stage} stage (teacher.recipe.{stage}_method="
                             f"{recipe.get(f'{stage}_method')}); set method.teacher_stage=finetune")
    files = {name: folder / file for name, file in STAGE_FILES.items()}
    source = teacher_source(methods, cfg, data, stage)
    torch.manual_seed(0)  # the recipe teacher's initial weights are part of what the key names
    model = build_teacher(methods, cfg.teacher, data)
    with building(folder):  # a job training this teacher now: wait for it, then load its result
        if distributed.broadcast_from_main(files[stage].exists()):  # every rank takes rank 0's branch
            load_into(model, files[stage])
            return frozen(model, cfg.teacher, source)
        trainer = OmegaConf.merge(cfg.trainer, {"lr": recipe.lr, "batch_size": recipe.batch_size})
        split = data.split(cfg.suite.distill.split)
        for done, name, params, epochs, protocol in plan:  # a finished stage resumes from its checkpoint at once
            method = methods.method_class(name)(**params)
            train(model, None, method, split, OmegaConf.merge(trainer, protocol, {"epochs": epochs}), folder / done,
                  seed=0, desc=f"teacher: {done}")
            if distributed.is_main():  # DDP kept every rank's copy identical: no rank needs to reload it
                checkpoint = method.recipe_checkpoint(model)
                if checkpoint is None:
                    save_weights(model.model, files[done])
                else:
                    _save_atomically(checkpoint, files[done])
            if done == stage:
                break
    return frozen(model, cfg.teacher, source)


def _save_atomically(payload: dict, path: Path) -> None:
    """``torch.save`` ``payload`` to ``path`` through a temporary file and a rename, as
    :func:`~benchbase.models.save_weights` writes (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
