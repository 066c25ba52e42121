"""Where a suite's teacher comes from: a checkpoint, a timm pretrained name, or the suite's recipe.

The recipe trains the teacher on the suite's distillation data (MAE pre-training, then supervised
fine-tuning, as the methods expect a MIM-pretrained teacher) and caches it under
``<home>/teachers/<key>/`` by :func:`recipe_key`, the hash of everything that determines it (the
recipe's losses with their params and code included); every method of the suite then distils
from that same teacher. Both recipe stages resume from their checkpoints.
Under torchrun both stages train data-parallel; every rank ends with the same weights and rank 0
writes the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from segment_anything.modeling.image_encoder import ImageEncoderViT
from torch import nn

from benchbase import distributed
from benchbase.components import DataBundle, Student, Teacher, VitModel
from benchbase.config import RUN_ONLY_TRAINER_KEYS, config_hash
from benchbase.engine import train
from benchbase.errors import BenchbaseError
from benchbase.locks import building
from benchbase.models import load_weights, save_weights, set_drop_path
from benchbase.plugins import Benchbase
from benchbase.provenance import code_versions
from benchbase.sam import SamStudent, SamTeacher, load_sam_checkpoint

TEACHER_FILE = "teacher.pt"


RECIPE_TRAINER_KEYS = ("lr", "batch_size", "epochs")
"""Trainer keys the recipe sets itself (``teacher.recipe.*``); the others come from ``trainer``."""


def recipe_identity(cfg: Any) -> str:
    """The recipe teacher as run config hashes name it: its config, the distillation data and the
    main trainer settings. Kept as it was so that stored runs keep their hashes; what else made the
    teacher is in :func:`recipe_key`, which a run records and checks (see :mod:`benchbase.provenance`).

    ``teacher.distill_drop_path`` is left out: it changes how the trained teacher teaches, not
    the teacher itself."""
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    teacher.pop("distill_drop_path", None)
    return config_hash({
        "teacher": teacher,
        "distill": OmegaConf.to_container(cfg.suite.distill, resolve=True),
        "data": OmegaConf.to_container(cfg.data.get(cfg.suite.distill.dataset, {}), resolve=True),
        "trainer": {k: cfg.trainer[k] for k in ("min_lr", "weight_decay", "betas", "warmup_epochs", "clip_grad")},
    })


def recipe_key(cfg: Any, bb: Benchbase, data: DataBundle, method_params: Callable[[str], dict]) -> str:
    """The cache key of a recipe teacher: everything that determines its weights.

    That is :func:`recipe_identity`, every trainer setting the recipe uses (``precision``
    included; not the run-only ones), each recipe stage's loss with the params it is built with
    (``method/<pretrain_method>.yaml``'s, e.g. MAE's mask ratio, decoder and ``norm_pix``), and
    the code of those losses, of the teacher builder and of the distillation dataset."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    stages = _recipe_plan(cfg.teacher.recipe, data, method_params)
    components = [("losses", name) for _, name, _, _ in stages]
    components += [("teachers", cfg.teacher.arch), ("datasets", cfg.suite.distill.dataset)]
    return config_hash({
        "recipe": recipe_identity(cfg),
        "trainer": {k: v for k, v in trainer.items() if k not in (*RUN_ONLY_TRAINER_KEYS, *RECIPE_TRAINER_KEYS)},
        "stages": [[stage, name, params, epochs] for stage, name, params, epochs in stages],
        "code": code_versions(bb, components),
    })


def teacher_source(cfg: Any, bb: Benchbase, data: DataBundle, method_params: Callable[[str], dict]) -> str:
    """Where :func:`load_teacher` takes the weights from: the checkpoint path, ``timm:<name>`` or
    ``recipe:<recipe_key>`` (the teacher's ``source``)."""
    tcfg = cfg.teacher
    if tcfg.source == "checkpoint":
        return str(tcfg.checkpoint)
    if tcfg.source == "timm":
        return f"timm:{tcfg.model}"
    return f"recipe:{recipe_key(cfg, bb, data, method_params)}"


def load_teacher(
    cfg: Any,
    bb: Benchbase,
    data: DataBundle,
    home: Path,
    method_params: Callable[[str], dict],
) -> Teacher:
    """The suite's frozen teacher, built by ``teacher.arch`` and filled by ``teacher.source``."""
    tcfg = cfg.teacher
    build = bb.registry.get("teachers", tcfg.arch)
    if tcfg.source == "checkpoint":
        if not tcfg.checkpoint:
            raise BenchbaseError("teacher.source=checkpoint needs teacher.checkpoint=PATH")
        model = build(tcfg, data)
        if isinstance(model, ImageEncoderViT):  # a full SAM checkpoint: its image_encoder.* weights
            load_sam_checkpoint(model, tcfg.checkpoint)
        else:
            load_weights(model, tcfg.checkpoint, what="teacher")
        return frozen(model, tcfg, data, teacher_source(cfg, bb, data, method_params))
    if tcfg.source == "timm":
        try:
            model = build(tcfg, data, pretrained=True)
        except BenchbaseError:
            raise
        except Exception as exc:  # no hub access, unknown tag, ...
            raise BenchbaseError(
                f"could not load timm pretrained weights for {tcfg.model!r} ({type(exc).__name__}); "
                "check the name and your connection, or use teacher.source=checkpoint"
            ) from None
        return frozen(model, tcfg, data, teacher_source(cfg, bb, data, method_params))
    if tcfg.source == "recipe":
        return _recipe_teacher(cfg, bb, build, data, home, method_params)
    raise BenchbaseError(f"teacher.source={tcfg.source!r}; use recipe, checkpoint or timm")


def _view(wrapper: type, model: nn.Module, tcfg: Any, data: DataBundle, *args) -> VitModel:
    """``model`` wrapped for its architecture (SAM or timm), reading its own modality's channels."""
    if isinstance(model, ImageEncoderViT):
        wrapper = {Teacher: SamTeacher, Student: SamStudent}[wrapper]
    view = wrapper(model, *args)
    view.input_slice = data.channels(tcfg.get("input"))
    return view


def frozen(model: nn.Module, tcfg: Any, data: DataBundle, source: str) -> Teacher:
    """``model`` as a frozen teacher that reads the modality named by ``tcfg.input``, with
    ``tcfg.distill_drop_path`` stochastic depth in every block while it teaches."""
    rate = tcfg.get("distill_drop_path") or 0.0
    timm_vit = hasattr(model, "blocks") and not isinstance(model, ImageEncoderViT)
    if rate and not timm_vit:
        raise BenchbaseError("teacher.distill_drop_path needs a timm ViT teacher (SAM blocks have no drop path); "
                             "set it to 0")
    if timm_vit:  # exactly this rate while teaching, whatever drop path the model was trained with
        set_drop_path(model, rate)
    return _view(Teacher, model, tcfg, data, source)


def _recipe_plan(recipe: Any, data: DataBundle, method_params) -> list[tuple[str, str, dict, int]]:
    """(stage, loss name, loss params, epochs) of the recipe: the pre-training method (unless
    ``none``), then fine-tuning."""
    stages = []
    if recipe.pretrain_method != "none" and recipe.pretrain_epochs > 0:
        name = recipe.pretrain_method
        stages.append(("pretrain", name, method_params(name), recipe.pretrain_epochs))
    if recipe.finetune_method == "supervised":
        finetune: dict = {}
    elif recipe.finetune_method == "supervised_segmentation":
        ignore = -100 if data.ignore_index is None else data.ignore_index
        finetune = {"num_classes": data.num_classes, "ignore_index": ignore}
    else:
        raise BenchbaseError(
            f"teacher.recipe.finetune_method={recipe.finetune_method!r}; use supervised or supervised_segmentation"
        )
    stages.append(("finetune", recipe.finetune_method, finetune, recipe.finetune_epochs))
    return stages


def _recipe_teacher(cfg: Any, bb: Benchbase, build, data: DataBundle, home: Path, method_params) -> Teacher:
    key = recipe_key(cfg, bb, data, method_params)
    folder = home / "teachers" / key
    path = folder / TEACHER_FILE
    torch.manual_seed(0)  # the recipe teacher's initial weights are part of what the key names
    model = build(cfg.teacher, data)
    with building(folder):  # a job training this teacher now: wait for it, then load its result
        if distributed.broadcast_from_main(path.exists()):  # every rank takes rank 0's branch
            load_weights(model, path, what="teacher")
            return frozen(model, cfg.teacher, data, f"recipe:{key}")
        recipe = cfg.teacher.recipe
        trainer = OmegaConf.merge(cfg.trainer, {"lr": recipe.lr, "batch_size": recipe.batch_size})
        split = data.split(cfg.suite.distill.split)
        net = _view(Student, model, cfg.teacher, data)
        for stage, name, params, epochs in _recipe_plan(recipe, data, method_params):
            loss = bb.registry.get("losses", name)(**params)
            train(net, None, loss, split, OmegaConf.merge(trainer, {"epochs": epochs}), folder / stage, seed=0,
                  desc=f"teacher: {stage}")
        if distributed.is_main():  # DDP kept every rank's copy identical: no rank needs to reload it
            save_weights(model, path)
    return frozen(model, cfg.teacher, data, f"recipe:{key}")
