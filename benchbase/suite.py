"""Running a suite: one teacher, every selected method over every seed, every task, one table.

Each (method, seed) is one run with its own folder (resolved config, step log, checkpoints) and
one record in the results database. A stored run with the same config hash is reused unless
``force`` or unless what made it changed (its code or teacher, see :mod:`benchbase.provenance`);
either way one line says so. A method that fails is stored as failed and the others go on.

Under torchrun every rank runs the same suite (training is data-parallel, see
:mod:`benchbase.engine`) and evaluates its identical copy of each student; only rank 0 opens the
database, writes run folders, records and leaderboards, and prints. Rank 0 decides whether a run
is reused and tells the others.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from benchbase import __version__, distributed
from benchbase.components import DataBundle, Metric, Teacher, VitModel
from benchbase.config import DatasetConfig, compose_config, config_hash
from benchbase.cost import cost_metrics
from benchbase.engine import CHECKPOINT, check_trainer, resolve_device, train
from benchbase.errors import BenchbaseError, MethodFailed, NotApplicable
from benchbase.floors import FLOORS, PixelModel
from benchbase.leaderboard import (
    build_table,
    current_records,
    format_table,
    local_dir,
    metric_key,
    publish,
    write_local,
)
from benchbase.locks import building
from benchbase.loggers import RunInfo, RunLoggers
from benchbase.methods import KIND, Methods, asked_teacher_stage, run_identity, teacher_stage, without_method_overrides
from benchbase.models import save_weights
from benchbase.plugin_manager import Benchbase
from benchbase.provenance import TEACHER, changed, code_summary, code_versions, suite_components
from benchbase.results import ResultsDB, RunRecord
from benchbase.stages import (
    Stage,
    build_student,
    describe,
    loss_state,
    plan,
    run_stages,
    start_student,
    training_split,
)
from benchbase.tasks import TasksFailed, check_task, evaluation_state, evaluator_params, run_isolated
from benchbase.teachers import load_teacher, teacher_checkpoint, teacher_source
from benchbase.untrained import UNTRAINED_FILE, frozen_view



@dataclass
class SuiteContext:
    """Everything the runs of one suite share (``db`` is None on ranks other than 0)."""

    bb: Benchbase
    cfg: DictConfig
    overrides: list[str]
    db: ResultsDB | None
    home: Path
    force: bool
    device: torch.device
    datasets: dict[str, DataBundle] = field(default_factory=dict)
    echo: Callable[[str], Any] = print
    methods: Methods = field(init=False)
    """The registered methods as this suite's overrides configure them."""
    _teachers: dict[str | None, Teacher] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.methods = Methods(self.bb, self.overrides)

    def dataset(self, name: str) -> DataBundle:
        """The dataset ``name`` as ``data.<name>`` configures it, loaded once per configuration."""
        dcfg = self.cfg.data.get(name) or OmegaConf.structured(DatasetConfig)
        key = f"{name}:{config_hash(dcfg)}"
        if key not in self.datasets:
            self.datasets[key] = self.bb.registry.get("datasets", name)(dcfg)
        return self.datasets[key]

    def teacher_source(self, stage: str | None = "finetune") -> str:
        """Where the suite's teacher weights come from (for a recipe teacher, its cache key and
        ``stage``, see :func:`benchbase.methods.teacher_stage`)."""
        return teacher_source(self.methods, self.cfg, self.dataset(self.cfg.suite.distill.dataset), stage)

    def teacher_checkpoint(self) -> str | None:
        """The file of the suite's whole teacher (:func:`~benchbase.teachers.teacher_checkpoint`), as a string."""
        path = teacher_checkpoint(self.methods, self.cfg, self.dataset(self.cfg.suite.distill.dataset), self.home)
        return None if path is None else str(path)

    def teacher(self, stage: str | None = "finetune") -> Teacher:
        """The suite's frozen teacher (a recipe teacher's weights after ``stage``), loaded once."""
        if stage not in self._teachers:
            data = self.dataset(self.cfg.suite.distill.dataset)
            self._teachers[stage] = load_teacher(self.methods, self.cfg, data, self.home, stage)
        return self._teachers[stage]


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_name(device: torch.device) -> str:
    """The device of one process, and the number of processes under torchrun."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    world = distributed.world_size()
    return f"{name} x {world} processes" if world > 1 else name


def evaluate(ctx: SuiteContext, model: VitModel, seed: int, untrained: Sequence[str] = ()) -> list[Metric]:
    """Every task of the suite on ``model``; each metric is tagged with its task name. ``untrained``
    names parameters of ``model.model`` that training never reached: frozen-feature tasks then read
    the view of :func:`~benchbase.untrained.frozen_view` (see :func:`evaluate_task`).

    Raises:
        TasksFailed: after every task ran, when any evaluator raised (:mod:`benchbase.tasks`).
    """
    return run_isolated({name: partial(evaluate_task, ctx, name, task, model, seed, untrained)
                         for name, task in ctx.cfg.suite.tasks.items()})


def evaluate_task(ctx: SuiteContext, task_name: str, task: DictConfig, model: VitModel, seed: int,
                  untrained: Sequence[str] = ()) -> list[Metric]:
    """One task of the suite on ``model``, its metrics tagged with ``task_name``; none when the task's
    evaluator does not apply to the model (:class:`~benchbase.errors.NotApplicable`).

    An evaluator that takes a ``seed`` (episodes, probe initialisation) gets the run's seed unless
    the task sets one: every method of a seed is scored on the same episodes, and other seeds
    draw other episodes. One that takes a ``teacher_checkpoint`` gets the suite teacher's file
    (``sam_everything``: the teacher's prompt encoder and mask decoder) unless the task sets one.
    The model is in the state :func:`~benchbase.tasks.evaluation_state` sets.
    An evaluator that reads frozen features gets the model cut before its first block with an
    ``untrained`` parameter; its metrics say where they read in ``extras["read_point"]`` (the page
    lists it under the protocols) and list the names in ``extras["untrained"]``.
    """
    ev_cls = ctx.bb.registry.get("evaluators", task.evaluator)
    evaluator = ev_cls(**evaluator_params(ev_cls, task, ctx.cfg.eval.batch_size, seed, ctx.teacher_checkpoint))
    scored, cut = frozen_view(model, untrained) if evaluator.reads_frozen_features else (model, "")
    try:
        with evaluation_state(scored, ctx.device):
            metrics = evaluator.evaluate(scored, ctx.dataset(task.dataset), ctx.device)
    except NotApplicable:
        return []
    for metric in metrics:
        metric.extras["task"] = task_name
        if cut:  # the protocol stays the column's; the page lists read points per row (leaderboard.read_points)
            metric.extras.update(read_point=cut, untrained=sorted(untrained))
    return metrics


def _record(ctx: SuiteContext, cfg: DictConfig, role: str, method: str, seed: int, h: str, made: dict[str, str],
            **kw) -> RunRecord:
    versions = {"benchbase": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    versions.update({f"plugin:{k}": v for k, v in ctx.bb.plugin_versions().items()})
    versions.update(made)
    return RunRecord(
        config_hash=h, suite=cfg.suite.name, method=method, teacher=teacher_name(cfg, ctx.methods),
        student=_model_name(cfg.student), dataset=cfg.suite.distill.dataset, seed=seed,
        config=OmegaConf.to_container(cfg, resolve=True), git_rev=_git_revision(), versions=versions,
        device=_device_name(ctx.device), role=role, **kw,
    )


def _model_name(mcfg: DictConfig) -> str:
    sizes = ",".join(f"{k}={mcfg[k]}" for k in ("embed_dim", "depth", "num_heads", "patch_size") if mcfg.get(k))
    return f"{mcfg.model}({sizes})" if sizes else mcfg.model


NO_TEACHER = "none"
"""The teacher name of a run whose method distils from no teacher (MAE, SMKD's own EMA, supervised)."""


def teacher_name(cfg: DictConfig, methods: Methods | None = None) -> str:
    """The teacher as tables name it; a recipe teacher says which of its stages' weights teach.
    With ``methods``, a run of a method that uses no teacher (and no stage that makes one) names
    :data:`NO_TEACHER`."""
    method = cfg.get("method")
    if methods is not None and method is not None and method.name in methods.bb.registry.names(KIND):
        teaches = any(stage.get("then") == "teach" for stage in method.get("stages") or [])
        if not methods.method_class(method.name).uses_teacher and not teaches:
            return NO_TEACHER
    source, stage = cfg.teacher.source, teacher_stage(cfg)
    if stage == "pretrain":
        source = f"recipe after {cfg.teacher.recipe.pretrain_method} pre-training only"
    elif stage == "finetune" and asked_teacher_stage(cfg) == "pretrain":
        source = "recipe, fine-tuned: the recipe has no pre-training stage for method.teacher_stage=pretrain"
    return f"{_model_name(cfg.teacher)} [{source}]"


def _made(ctx: SuiteContext, cfg: DictConfig, teacher: Teacher, methods: list[str]) -> dict[str, str]:
    """What makes a run of ``cfg`` besides its config: the teacher's weights and the code of the
    suite's components and of ``methods`` (see :mod:`benchbase.provenance`)."""
    components = [*suite_components(cfg), *((KIND, name) for name in methods)]
    return {TEACHER: teacher.source, **code_versions(ctx.bb, components)}


def _stored(ctx: SuiteContext, h: str, made: dict[str, str], label: str) -> RunRecord | None:
    """The stored done run with config hash ``h`` to reuse, as rank 0 finds it: None with
    ``force``, or when what made it differs from ``made`` (one line says why it runs again)."""
    found = ctx.db.find(h) if ctx.db is not None and not ctx.force else None
    if found is not None:
        when = f"{found.created_at[:16].replace('T', ' ')} UTC"
        if reason := changed(found.versions, made):
            ctx.echo(f"  {label}: running again, the stored run of {when} is stale: {reason}")
            found = None
        else:
            git = f", git {found.git_rev}" if found.git_rev else ""
            ctx.echo(f"  {label}: reusing the run stored {when} (made by {code_summary(found.versions)}{git})")
    return distributed.broadcast_from_main(found)


def _save(ctx: SuiteContext, record: RunRecord) -> None:
    """Store ``record`` (rank 0 only)."""
    if ctx.db is not None:
        ctx.db.save(record)


def run_teacher_row(ctx: SuiteContext, teacher: VitModel) -> RunRecord:
    """The teacher's own metrics on the suite's tasks, stored as the table's reference row."""
    h = config_hash(run_identity(ctx.cfg, "teacher", "teacher", {}, 0))
    made = _made(ctx, ctx.cfg, teacher, [])
    if found := _stored(ctx, h, made, "teacher"):
        return found
    started = time.perf_counter()
    try:
        metrics = evaluate(ctx, teacher, seed=0) + cost_metrics(teacher, ctx.dataset(ctx.cfg.suite.distill.dataset))
        kw: dict[str, Any] = {"status": "done", "metrics": metrics}
    except TasksFailed as exc:
        kw = exc.record_fields()
    record = _record(ctx, ctx.cfg, "teacher", "teacher", 0, h, made, wall_time=time.perf_counter() - started, **kw)
    _save(ctx, record)
    return record


def run_floor(ctx: SuiteContext, name: str, seed: int) -> RunRecord:
    """The floor ``name`` (:mod:`benchbase.floors`) on every task for ``seed``, stored as a row of role
    ``floor``: the pixels themselves, or the student at its initialisation for the seed."""
    cfg = ctx.cfg
    if name not in FLOORS:
        raise BenchbaseError(f"unknown floor {name!r} in suite.floors; available: {', '.join(FLOORS)}")
    h = config_hash(run_identity(cfg, "floor", name, {}, seed))
    made = code_versions(ctx.bb, suite_components(cfg))  # no teacher: a floor never sees it
    if found := _stored(ctx, h, made, f"floor {name} seed {seed}"):
        return found
    started = time.perf_counter()
    try:
        torch.manual_seed(seed)  # the initial weights depend on the seed alone, as a trained student's do
        student = build_student(ctx.bb, cfg, ctx.dataset(cfg.suite.distill.dataset)).to(ctx.device)

        def model_for(task: DictConfig) -> VitModel:
            data = ctx.dataset(task.dataset)
            return student if name == "random_init" else PixelModel.reading(data, student.input_slice)

        metrics = run_isolated({task_name: partial(evaluate_task, ctx, task_name, task, model_for(task), seed)
                                for task_name, task in cfg.suite.tasks.items()})
        kw: dict[str, Any] = {"status": "done", "metrics": metrics}
    except TasksFailed as exc:
        kw = exc.record_fields()
    except Exception as exc:  # a floor that cannot be scored shows as a failed row
        kw = {"status": "failed", "metrics": [], "error": traceback.format_exception_only(type(exc), exc)[-1].strip()}
    record = _record(ctx, cfg, "floor", name, seed, h, made, wall_time=time.perf_counter() - started, **kw)
    _save(ctx, record)
    return record


def _plan(ctx: SuiteContext, cfg: DictConfig, seed: int) -> list[Stage]:
    """The stages of method config ``cfg`` (see :mod:`benchbase.stages`), each checked and hashed;
    a stage's cache key covers the suite's teacher weights (found only for a method with stages)."""
    return plan(ctx.methods, cfg, seed, ctx.teacher_source(teacher_stage(cfg)) if cfg.method.get("stages") else "")


def run_method(ctx: SuiteContext, role: str, name: str, seed: int) -> RunRecord:
    """Distil (or train) one student with method ``name`` for ``seed``, evaluate it, store the record.

    The method's stages, if it has any, run first (cached); the final run starts from what they
    hand over. The teacher is the suite's (of a recipe teacher, the stage ``method.teacher_stage``
    names). The method's :meth:`~benchbase.components.Method.evaluation_model` is what is scored
    and exported.
    """
    cfg = ctx.methods.config(name, role)
    cfg.seed = seed
    params = ctx.methods.params(cfg, name)
    stages = _plan(ctx, cfg, seed)
    teacher = ctx.teacher(teacher_stage(cfg))
    h = config_hash(run_identity(cfg, role, name, ctx.methods.identity_params(name, params), seed,
                                 [s.key for s in stages]))
    made = _made(ctx, cfg, teacher, [name, *(s.method for s in stages)])
    run_dir = ctx.home / "runs" / cfg.suite.name / f"{name}-seed{seed}-{h}"
    # another process making this same run: wait for it, then reuse its record (the lock file is
    # hidden, .<run folder>.lock, so that listings of the run folders do not show it)
    with building(run_dir.with_name(f".{run_dir.name}")):
        if found := _stored(ctx, h, made, f"{name} seed {seed}"):
            return found
        return _train_and_store(ctx, cfg, role, name, seed, params, stages, teacher, h, made, run_dir)


def _train_and_store(ctx: SuiteContext, cfg: DictConfig, role: str, name: str, seed: int, params: dict,
                     stages: list[Stage], teacher: Teacher, h: str, made: dict[str, str], run_dir: Path) -> RunRecord:
    """The body of :func:`run_method` once no stored record can be reused: train (resuming a
    checkpoint in ``run_dir``), evaluate, store and return the record."""
    if distributed.is_main():
        if ctx.force and run_dir.exists():
            shutil.rmtree(run_dir)
        _set_aside_if_made_otherwise(ctx, run_dir, made, f"{name} seed {seed}")
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        (run_dir / MADE_FILE).write_text(json.dumps(made, indent=1, sort_keys=True))
    distributed.barrier()  # no rank resumes from a checkpoint that --force just removed
    started = time.perf_counter()
    kw: dict[str, Any] = {"run_dir": str(run_dir)}
    loggers = RunLoggers(ctx.bb.logger_classes(cfg.logger), RunInfo(cfg.suite.name, f"{name}-seed{seed}", run_dir,
                                                                      OmegaConf.to_container(cfg, resolve=True)))
    try:
        data = ctx.dataset(cfg.suite.distill.dataset)
        handover = run_stages(stages, ctx.methods, ctx.home, data, teacher, seed)
        torch.manual_seed(seed)  # the student's initial weights depend on the seed alone
        student = build_student(ctx.bb, cfg, data)
        start_student(student, handover)
        loss = ctx.methods.build(name, params, data)
        result = train(student, handover.teacher if loss.uses_teacher else None, loss,
                       training_split(data, cfg.suite.distill.split, loss), cfg.trainer, run_dir, seed,
                       desc=f"{name} seed {seed}",
                       loss_state=loss_state(handover), loggers=loggers)
        scored = loss.evaluation_model(student)
        if distributed.is_main():
            save_weights(scored.export(), run_dir / "student.pt")
            if stages:
                (run_dir / "stages.json").write_text(json.dumps(describe(stages, ctx.home), indent=2))
        names = dict(scored.model.named_parameters())  # the scored model may be a view (an EMA teacher)
        untrained = sorted(name for name in result.untrained if name in names)
        if distributed.is_main() and untrained:
            (run_dir / UNTRAINED_FILE).write_text(json.dumps(untrained, indent=1))
        metrics = evaluate(ctx, scored, seed, untrained) + cost_metrics(scored, data)
        metrics += [dataclasses.replace(m, extras={**m.extras, "task": "train"}) for m in loss.training_summary()]
        if result.images_per_second:  # 0: resumed after its last step, nothing trained here to time
            metrics.append(Metric("images_per_second", result.images_per_second, result.steps,
                                  _throughput_protocol(ctx.device), extras={"task": "train"}))
        loggers.log_metrics({metric_key(m): m for m in metrics}, result.steps)
        kw.update(status="done", metrics=metrics)
    except TasksFailed as exc:
        kw.update(exc.record_fields())
    except MethodFailed as exc:
        kw.update(status="failed", metrics=[], error=str(exc), failed_step=exc.step)
    except Exception as exc:  # one failing method never takes down the suite
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        kw.update(status="failed", metrics=[], error=detail)
    finally:
        loggers.finish(kw.get("status", "stopped"))
    record = _record(ctx, cfg, role, name, seed, h, made, wall_time=time.perf_counter() - started, **kw)
    _save(ctx, record)
    return record


MADE_FILE = "made.json"
"""A run folder's record of what made its checkpoint (teacher weights, code versions: see
:mod:`benchbase.provenance`), written when its training starts."""


def _set_aside_if_made_otherwise(ctx: SuiteContext, run_dir: Path, made: dict[str, str], label: str) -> None:
    """Move ``run_dir`` aside (to ``<name>.set-aside-<n>``, kept) when it holds a checkpoint that other
    code or another teacher made, so that the run trains afresh instead of resuming it; a run folder
    is named by its config hash alone, which stays when only the code or the teacher changes."""
    if not (run_dir / CHECKPOINT).exists():
        return
    marker = run_dir / MADE_FILE
    recorded = json.loads(marker.read_text()) if marker.is_file() else {}
    why = changed(recorded, made) if recorded else "its folder does not record what made it"
    if not why:
        return
    n = 1 + sum(1 for _ in run_dir.parent.glob(f"{run_dir.name}.set-aside-*"))
    aside = run_dir.with_name(f"{run_dir.name}.set-aside-{n}")
    run_dir.rename(aside)
    ctx.echo(f"  {label}: training afresh, not resuming the checkpoint in its folder: {why}; the folder is kept as {aside}")


def _throughput_protocol(device: torch.device) -> str:
    """How ``images_per_second`` was measured: the device type and, under torchrun, the process count
    (the rate is then the global one, images of all processes per second)."""
    world = distributed.world_size()
    return f"training throughput on {device.type}" + (f" ({world} processes)" if world > 1 else "")


def suite_context(bb: Benchbase, overrides: list[str], force: bool = False,
                  datasets: dict[str, DataBundle] | None = None, echo: Callable[[str], Any] = print) -> SuiteContext:
    """The composed suite (``method.*`` overrides kept for the methods' own configs) and its
    database (rank 0 only). ``datasets`` may share already loaded datasets between suites; ``echo``
    prints progress (pass a silent one on ranks other than 0)."""
    cfg = compose_config(without_method_overrides(overrides), bb.config_dirs())
    bb.logger_classes(cfg.logger)  # an unknown logger is a one-line error before anything runs
    ctx = SuiteContext(bb, cfg, list(overrides), ResultsDB(cfg.db) if distributed.is_main() else None,
                       Path(cfg.home), force, resolve_device(cfg.trainer.device), echo=echo)
    if datasets is not None:
        ctx.datasets = datasets
    return ctx


def check_tasks(ctx: SuiteContext) -> None:
    """Check every task of the suite (:func:`~benchbase.tasks.check_task`) before anything runs."""
    for name, task in ctx.cfg.suite.tasks.items():
        check_task(ctx.bb.registry, name, task, ctx.cfg.eval.batch_size, ctx.cfg.seed)


def check_methods(ctx: SuiteContext, roles: list[tuple[str, list[str]]]) -> None:
    """Validate the suite's tasks and every (role, method) config, stages included, before anything trains."""
    check_tasks(ctx)
    for role, names in roles:
        for name in names:
            method_cfg = ctx.methods.config(name, role)
            ctx.methods.params(method_cfg, name)
            asked_teacher_stage(method_cfg)
            check_trainer(method_cfg.trainer)
            _plan(ctx, method_cfg, 0)


def suite_teacher(ctx: SuiteContext) -> Teacher:
    """Load the suite's datasets (distillation and tasks) and its teacher (training a recipe one)."""
    ctx.dataset(ctx.cfg.suite.distill.dataset)
    for task in ctx.cfg.suite.tasks.values():
        ctx.dataset(task.dataset)
    return ctx.teacher()


def run_suite(bb: Benchbase, overrides: list[str], plugins: list[str] | None, force: bool = False,
              echo=print, publish_runs: bool = False, methods: list[str] | None = None) -> list[RunRecord]:
    """Run the composed suite for the chosen method plugins (or the registered methods ``methods``,
    e.g. one method of a plugin); print its table and write the local one (committed records and
    this machine's runs); with ``publish_runs``, also merge the runs into the committed records of
    the leaderboard folder and rewrite its table.

    Under torchrun every rank calls this; only rank 0 stores, writes tables and echoes.
    """
    echo = distributed.main_echo(echo)
    ctx = suite_context(bb, overrides, force, echo=echo)
    cfg = ctx.cfg
    for name in methods or ():
        bb.registry.get(KIND, name)  # an unknown name is a one-line error listing the known ones
    methods, skipped = ctx.methods.compatible(bb.select_methods(plugins) if methods is None else list(methods),
                                              cfg.student.arch, explicit=plugins is not None or methods is not None)
    roles = [("reference", list(cfg.suite.references)), ("method", methods)]
    check_methods(ctx, roles)
    echo(f"suite {cfg.suite.name}: {cfg.suite.description}")
    for name, arch in skipped:
        echo(f"  skipping {name}: it needs student.arch={arch}, this suite's student is {cfg.student.arch}")
    echo(f"methods: {', '.join(methods) or 'none'}; seeds: {list(cfg.suite.seeds)}; device: {_device_name(ctx.device)}")
    teacher = suite_teacher(ctx)
    records = [run_teacher_row(ctx, teacher)]
    echo(f"  teacher: {describe_status(records[0])}")
    for name in cfg.suite.floors:
        for seed in cfg.suite.seeds:
            records.append(run_floor(ctx, name, seed))
            echo(f"  floor {name} seed {seed}: {describe_status(records[-1])}")
    for role, names in roles:
        for name in names:
            for seed in cfg.suite.seeds:
                record = run_method(ctx, role, name, seed)
                echo(f"  {name} seed {seed}: {describe_status(record)}")
                records.append(record)
    if ctx.db is not None:
        current = current_records(_with_borrowed(ctx.db.records(cfg.suite.name), records, cfg.suite.name))
        paths = write_local(current, cfg.leaderboard_dir, local_dir(cfg.db), cfg.suite.name)
        echo(format_table(build_table(current)))
        echo(f"local table (with the committed records of {cfg.leaderboard_dir}/): {paths[1]}")
        if publish_runs:
            echo(publish(current, cfg.leaderboard_dir, cfg.suite.name).summary(cfg.suite.name))
        else:
            echo(f"{cfg.leaderboard_dir}/ is unchanged; --publish merges these runs into its records and tables")
    return records


def _with_borrowed(stored: list[RunRecord], ran: list[RunRecord], suite: str) -> list[RunRecord]:
    """The suite's stored records plus the runs of this invocation that were reused from another
    suite's record (same config hash, e.g. an ablation's), relabelled as this suite's."""
    known = {(r.config_hash, r.created_at) for r in stored}
    return stored + [dataclasses.replace(r, suite=suite) for r in ran if (r.config_hash, r.created_at) not in known]


def describe_status(record: RunRecord) -> str:
    """``done``, or ``FAILED: <error>``."""
    return "done" if record.status == "done" else f"FAILED: {record.error}"

