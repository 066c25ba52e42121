"""Where a suite's teacher comes from: a checkpoint, a timm pretrained name, or the suite's recipe.

The recipe trains the teacher on the suite's distillation data (MAE pre-training, then supervised
fine-tuning, as the methods expect a MIM-pretrained teacher) and caches it under
``<home>/teachers/<hash>/`` by the hash of everything that determines it; every method of the
suite then distils from that same teacher. Both recipe stages resume from their checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchbase.components import DataBundle, Student, Teacher
from benchbase.config import config_hash
from benchbase.engine import train
from benchbase.errors import BenchbaseError
from benchbase.models import load_weights, save_weights
from benchbase.plugins import Benchbase

TEACHER_FILE = "teacher.pt"


def recipe_key(cfg: Any) -> str:
    """Hash of what determines a recipe teacher: its config, the distillation data and trainer."""
    return config_hash({
        "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        "distill": OmegaConf.to_container(cfg.suite.distill, resolve=True),
        "data": OmegaConf.to_container(cfg.data.get(cfg.suite.distill.dataset, {}), resolve=True),
        "trainer": {k: cfg.trainer[k] for k in ("min_lr", "weight_decay", "betas", "warmup_epochs", "clip_grad")},
    })


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
        load_weights(model, tcfg.checkpoint, what="teacher")
        return Teacher(model, source=str(tcfg.checkpoint))
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
        return Teacher(model, source=f"timm:{tcfg.model}")
    if tcfg.source == "recipe":
        pretrain_cls = bb.registry.get("losses", tcfg.recipe.pretrain_method)
        return _recipe_teacher(cfg, build, pretrain_cls, data, home, method_params)
    raise BenchbaseError(f"teacher.source={tcfg.source!r}; use recipe, checkpoint or timm")


def _recipe_teacher(cfg: Any, build, pretrain_cls, data: DataBundle, home: Path, method_params) -> Teacher:
    from benchbase.builtins import Supervised

    key = recipe_key(cfg)
    folder = home / "teachers" / key
    path = folder / TEACHER_FILE
    torch.manual_seed(0)  # the recipe teacher's initial weights are part of what the key names
    model = build(cfg.teacher, data)
    if path.exists():
        load_weights(model, path, what="teacher")
        return Teacher(model, source=f"recipe:{key}")
    recipe = cfg.teacher.recipe
    trainer = OmegaConf.merge(cfg.trainer, {"lr": recipe.lr, "batch_size": recipe.batch_size})
    split = data.split(cfg.suite.distill.split)
    net = Student(model)
    pretrain = pretrain_cls(**method_params(recipe.pretrain_method))
    train(net, None, pretrain, split, OmegaConf.merge(trainer, {"epochs": recipe.pretrain_epochs}),
          folder / "pretrain", seed=0, desc="teacher: pre-train")
    train(net, None, Supervised(), split, OmegaConf.merge(trainer, {"epochs": recipe.finetune_epochs}),
          folder / "finetune", seed=0, desc="teacher: fine-tune")
    save_weights(model, path)
    return Teacher(model, source=f"recipe:{key}")

