"""Method stages: a cached chain of training runs before a method's final run.

Owns planning the stages of a method config (their configs and cache keys) and training them.

A method config may list ``stages`` (see :class:`benchbase.config.StageConfig`). Each stage trains
a student with the method's loss, its params being ``method.params`` updated with the stage's own,
or with another registered loss (``method: NAME``) and only the stage's params; it then hands its result to the next stage (the last one to the final
run) as its ``then`` says:

- ``continue``: the next student starts from this stage's student weights and the next loss from
  this stage's loss state (SMKD's phase 1 -> phase 2: EMA teacher, heads and centre carry over);
- ``init``: the next student starts from this stage's student weights, the loss starts afresh;
- ``teach``: this stage's student, frozen, becomes the next stage's teacher and the next student
  starts from its seed (TinyMIM's sequential B -> S -> T distillation).

Every stage is cached under ``<home>/stages/<cache key>/`` by the hash of everything that determines
it: its config and params, what made it besides its config (its teacher's weights and the code of
its loss, student and data, see :mod:`benchbase.provenance`) and its predecessors' cache keys; it
resumes from its checkpoints; runs that share a prefix of stages
(an ablation of the final stage's params) train that prefix once. A stage's folder holds its
resolved ``config.yaml``, ``steps.jsonl``, the exported ``student.pt`` and the loss state
``loss.pt``; ``stage.json`` is written last and marks it complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from benchbase import distributed
from benchbase.components import DataBundle, LabeledImages, Method, Student, Teacher
from benchbase.config import config_hash
from benchbase.engine import train
from benchbase.errors import BenchbaseError
from benchbase.locks import building
from benchbase.methods import KIND, Methods, run_identity
from benchbase.models import load_weights, save_weights
from benchbase.provenance import TEACHER, code_versions
from benchbase.teachers import frozen, load_into

if TYPE_CHECKING:
    from benchbase.plugin_manager import Benchbase

THEN = ("continue", "init", "teach")
STAGE_FILE = "stage.json"
LOSS_FILE = "loss.pt"
STUDENT_FILE = "student.pt"


@dataclass
class Stage:
    """One planned stage: its ``method`` (the registered name it trains), composed config, params,
    ``key`` (the hash of its config and its predecessors', part of the run's config hash) and
    ``cache`` (the name of its cache folder: ``key`` plus what made it)."""

    name: str
    method: str
    cfg: DictConfig
    params: dict[str, Any]
    then: str
    key: str
    cache: str


@dataclass
class Handover:
    """What the stages hand to the run after them: the student weights and loss state to start
    from (paths, or None) and the teacher to use."""

    student: Path | None
    loss_state: Path | None
    teacher: Teacher | None


def plan(methods: Methods, cfg: DictConfig, seed: int, teacher_source: str = "") -> list[Stage]:
    """The stages of method ``cfg.method.name``, each with its config, checked params and chained
    hashes (empty without stages).

    A stage's ``key`` hashes the stage's :func:`~benchbase.methods.run_identity` (role ``stage``,
    ``seed``) and its predecessors'; its ``cache`` also covers what makes it besides its config:
    ``teacher_source`` (the suite's teacher weights) and the code of its method, student and data.
    """
    stages, previous, previous_cache = [], None, None
    for index, spec in enumerate(cfg.method.get("stages") or []):
        if spec.then not in THEN:
            raise BenchbaseError(f"method.stages[{index}].then={spec.then!r}; use one of {', '.join(THEN)}")
        method = spec.method or cfg.method.name
        stage_cfg = _stage_config(cfg, spec, method, index)
        if stage_cfg.trainer.epochs < 1:  # it would hand over its untrained start
            raise BenchbaseError(f"method.stages[{index}] ({spec.name}) trains {stage_cfg.trainer.epochs} epochs "
                                 f"(its length follows trainer.epochs unless set): give it its own, "
                                 f"method.stages.{index}.trainer.epochs=N")
        params = methods.params(stage_cfg)
        named = methods.identity_params(method, params)
        key = config_hash({"stage": run_identity(stage_cfg, "stage", method, named, seed), "previous": previous})
        components = [(KIND, method), ("students", stage_cfg.student.arch), ("datasets", stage_cfg.suite.distill.dataset)]
        made_by = {TEACHER: teacher_source, **code_versions(methods.bb, components)}
        cache = config_hash({"stage": key, "made_by": made_by, "previous": previous_cache})
        stages.append(Stage(spec.name or f"stage{index}", method, stage_cfg, params, spec.then, key, cache))
        previous, previous_cache = [key, spec.then], [cache, spec.then]
    return stages


def _stage_config(cfg: DictConfig, spec: DictConfig, method: str, index: int) -> DictConfig:
    spec = OmegaConf.create(OmegaConf.to_container(spec, resolve=True))  # `${trainer.epochs}` means the run's
    stage_cfg = cfg.copy()
    try:
        stage_cfg.trainer = OmegaConf.merge(cfg.trainer, spec.trainer)
        stage_cfg.student = OmegaConf.merge(cfg.student, spec.student)
    except Exception as exc:  # an unknown key or a wrong type in the stage's overrides
        first = str(exc).splitlines()[0]
        raise BenchbaseError(f"method.stages[{index}] ({spec.name}): {first}; "
                             "stage trainer/student keys are those of the trainer and student groups") from None
    base = cfg.method.params if method == cfg.method.name else {}  # another method: its own params only
    stage_cfg.method.name, stage_cfg.method.stages = method, []
    stage_cfg.method.params = OmegaConf.merge(base, spec.params)
    return stage_cfg


def run_stages(stages: list[Stage], methods: Methods, home: Path, data: DataBundle, teacher: Teacher | None,
               seed: int) -> Handover:
    """Train (or find cached) every stage in order; returns what the final run starts from."""
    handover = Handover(None, None, teacher)
    for stage in stages:
        folder = home / "stages" / stage.cache
        with building(folder):  # another job training this stage now: wait, then use its result
            if not distributed.broadcast_from_main((folder / STAGE_FILE).exists()):
                _train_stage(stage, methods, folder, data, handover, seed)
        distributed.barrier()  # rank 0 has written the stage's files
        if stage.then == "teach":
            torch.manual_seed(seed)
            model = build_student(methods.bb, stage.cfg, data)
            load_weights(model.model, folder / STUDENT_FILE, what="stage student")
            handover = Handover(None, None, frozen(model, stage.cfg.student, f"stage:{stage.cache}"))
        else:
            state = folder / LOSS_FILE if stage.then == "continue" else None
            handover = Handover(folder / STUDENT_FILE, state, handover.teacher)
    return handover


def build_student(bb: Benchbase, cfg: DictConfig, data: DataBundle) -> Student:
    """The student of ``cfg`` as ``student.arch``'s builder makes it, its ``student.checkpoint``
    loaded (if any) in the architecture's checkpoint format (a SAM student reads a full SAM
    checkpoint's image encoder, e.g. a SAM recipe teacher's ``teacher.pt``)."""
    student = bb.registry.get("students", cfg.student.arch)(cfg.student, data)
    if cfg.student.checkpoint:
        load_into(student, cfg.student.checkpoint, what="student")
    return student


def start_student(student: Student, handover: Handover) -> None:
    """Load the previous stage's student weights into ``student`` (if the stages hand any over)."""
    if handover.student is not None:
        load_weights(student.model, handover.student, what="student (from the previous stage)")


def loss_state(handover: Handover) -> dict | None:
    """The previous stage's loss state to start from, or None."""
    if handover.loss_state is None:
        return None
    return torch.load(handover.loss_state, map_location="cpu", weights_only=True)


def training_split(data: DataBundle, name: str, loss: Method) -> LabeledImages:
    """The split ``name`` that ``loss`` trains on: at its source size for a method that cuts its own
    crops from the sources (:attr:`~benchbase.components.Method.reads_sources`), else at the models'
    input size."""
    return data.source_split(name) if loss.reads_sources else data.split(name)


def _train_stage(stage: Stage, methods: Methods, folder: Path, data: DataBundle, handover: Handover,
                 seed: int) -> None:
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(stage.cfg, folder / "config.yaml", resolve=True)
    torch.manual_seed(seed)
    student = build_student(methods.bb, stage.cfg, data)
    start_student(student, handover)
    loss = methods.build(stage.method, stage.params, data)
    split = training_split(data, stage.cfg.suite.distill.split, loss)
    train(student, handover.teacher if loss.uses_teacher else None, loss, split, stage.cfg.trainer, folder, seed,
          desc=f"{stage.method} {stage.name} seed {seed}", loss_state=loss_state(handover))
    if distributed.is_main():
        torch.save(loss.state_dict(), folder / LOSS_FILE)
        save_weights(student.export(), folder / STUDENT_FILE)
        (folder / STAGE_FILE).write_text(json.dumps({"name": stage.name, "method": stage.method,
                                                     "params": stage.params, "then": stage.then}, indent=2))


def describe(stages: list[Stage], home: Path) -> list[dict[str, str]]:
    """Name, loss, handover and folder of each stage (written next to the final run)."""
    return [{"name": s.name, "method": s.method, "then": s.then, "folder": str(home / "stages" / s.cache)}
            for s in stages]
