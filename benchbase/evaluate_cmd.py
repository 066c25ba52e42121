"""``benchbase eval MODEL [TASK ...] [KEY=VALUE ...]``: score a model on suite tasks without training.

The config is composed as for ``benchbase run``, starting from the model's defaults: a stored
run's own suite (tasks, data), teacher, seed and architecture, a ``KIND:NAME`` model's
architecture, or the default suite and ``student`` config for a checkpoint and for ``pixels``.
Hydra overrides change anything (``suite=omniglot``, ``data.omniglot.root=DIR``, ``seed=1``,
``student=vit_tiny``). TASK names tasks of the suite (default: all of them); a task given inline
is ``suite.tasks.NAME.evaluator=E suite.tasks.NAME.dataset=D`` plus ``+suite.tasks.NAME.params.K=V``.
A task whose evaluator does not apply to the model (fine-tuning ``pixels``) gives no metrics.

Each seed of ``suite.seeds`` gives one record with role ``eval``: the selected tasks' metrics,
the full config, and under ``provenance`` the model's kind, weights file, its SHA-256 and, for a
stored run, the run. A record whose config hash is stored is reused (``force`` recomputes it); a
reused record takes a new ``name`` and becomes a row with ``row``, and stays one.
``row`` records are shown as a row of their suite's table (see
:func:`benchbase.eval_rows.shown_eval_rows`); the others stay out of every suite table.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from benchbase.components import DataBundle, VitModel
from benchbase.config import DatasetConfig, compose_config, config_hash
from benchbase.errors import BenchbaseError
from benchbase.floors import PixelModel
from benchbase.leaderboard import build_table, format_table
from benchbase.models_from import PIXELS, ModelSpec, architecture_node, build_model, resolve_model
from benchbase.plugin_manager import Benchbase
from benchbase.results import ResultsDB, RunRecord
from benchbase.provenance import code_versions, suite_components
from benchbase.suite import SuiteContext, _record, _stored, check_tasks, evaluate_task, suite_context, teacher_name

MODEL_OPTION = "_eval_model"
"""The ``student`` and ``suite`` options holding a model's own defaults (ConfigStore)."""
INLINE_GROUP = "_eval_tasks"
"""The config group whose one option adds the skeletons of tasks given inline."""


def _parsed(overrides: Sequence[str]) -> list[Any]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise BenchbaseError(f"bad override: {str(exc).splitlines()[0]}") from None


def _model_defaults(spec: ModelSpec, overrides: Sequence[str]) -> list[str]:
    """Store the model's own ``student`` (and a stored run's ``suite``) option; the overrides that select them.

    A group the command line selects itself keeps its choice (``suite=omniglot`` on a stored run);
    another architecture for a run or a ``KIND:NAME`` model is an error.
    """
    chosen = {o.key_or_group for o in _parsed(overrides) if not o.is_delete()}
    store, selected = ConfigStore.instance(), []
    student = OmegaConf.to_container(spec.run.student) if spec.run is not None else architecture_node(spec)
    if student is not None:
        if "student" in chosen:
            raise BenchbaseError(f"{spec.label} brings its own architecture; drop the student=... override "
                                 "(student.KEY=VALUE still changes one key)")
        store.store(group="student", name=MODEL_OPTION, node=student)
        selected.append(f"student={MODEL_OPTION}")
    if spec.run is not None and "suite" not in chosen:
        node = {key: OmegaConf.to_container(spec.run[key]) for key in ("suite", "data", "teacher", "eval")}
        node["suite"]["seeds"] = ["${seed}"]  # the run's seed, which seed=N changes
        store.store(group="suite", name=MODEL_OPTION, node={**node, "seed": spec.run.seed}, package="_global_")
        selected.append(f"suite={MODEL_OPTION}")
    return selected


def _inline_tasks(overrides: Sequence[str]) -> list[str]:
    """Skeletons for the tasks the overrides give inline (both ``evaluator`` and ``dataset``), so
    that the overrides apply to them; the override that adds them (none without inline tasks)."""
    parts: dict[str, dict[str, Any]] = {}
    for override in _parsed(overrides):
        path = override.key_or_group.split(".")
        if len(path) == 4 and path[:2] == ["suite", "tasks"] and path[3] in ("evaluator", "dataset"):
            parts.setdefault(path[2], {})[path[3]] = override.value()
    tasks = {name: task for name, task in parts.items() if len(task) == 2}
    if not tasks:
        return []
    ConfigStore.instance().store(group=INLINE_GROUP, name="inline", node={"suite": {"tasks": tasks}},
                                 package="_global_")
    return [f"+{INLINE_GROUP}=inline"]


def _select_tasks(ctx: SuiteContext, names: Sequence[str]) -> None:
    """Keep only the tasks ``names`` of the composed suite (all of them when none is named)."""
    tasks = ctx.cfg.suite.tasks
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise BenchbaseError(
            f"suite {ctx.cfg.suite.name!r} has no task {unknown[0]!r}; its tasks: {', '.join(tasks) or 'none'} "
            "(a task inline: suite.tasks.NAME.evaluator=E suite.tasks.NAME.dataset=D)"
        )
    if not tasks:
        raise BenchbaseError(f"suite {ctx.cfg.suite.name!r} has no tasks; name one inline")
    ctx.cfg.suite.tasks = {name: tasks[name] for name in (names or list(tasks))}


def _sizing_data(ctx: SuiteContext, spec: ModelSpec) -> DataBundle:
    """The data the model is built for (image size, channels, classes): a stored run's own
    distillation data, otherwise the suite's."""
    if spec.run is None:
        return ctx.dataset(ctx.cfg.suite.distill.dataset)
    name = spec.run.suite.distill.dataset
    own = spec.run.data.get(name) or OmegaConf.structured(DatasetConfig)
    if ctx.cfg.data.get(name) == own:
        return ctx.dataset(name)
    return ctx.bb.registry.get("datasets", name)(own)


def eval_identity(spec: ModelSpec, cfg: Any, seed: int) -> dict[str, Any]:
    """What an eval record's config hash covers: the model (weights by SHA-256, architecture), the
    tasks and their data, the evaluation batch size and the seed; paths and devices are left out."""
    container = OmegaConf.to_container(cfg, resolve=True)
    datasets = {cfg.suite.distill.dataset} | {task.dataset for task in cfg.suite.tasks.values()}
    return {
        "role": "eval", "model": spec.identity(), "student": container["student"], "tasks": container["suite"]["tasks"],
        "data": {k: v for k, v in container["data"].items() if k in datasets}, "eval": container["eval"],
        "seed": seed,
    }


def _scorer(ctx: SuiteContext, spec: ModelSpec) -> Callable[[DataBundle], VitModel]:
    """The model a task's data is scored with: the model, built once, or the pixels of that data
    (of the channels the ``student`` config reads)."""
    if spec.kind == PIXELS:
        return lambda data: PixelModel.reading(data, data.channels(ctx.cfg.student.get("input")))
    model = build_model(spec, ctx.cfg, ctx.bb, _sizing_data(ctx, spec)).to(ctx.device)
    return lambda data: model


def _evaluated(ctx: SuiteContext, spec: ModelSpec, model_for: Callable[[DataBundle], VitModel], label: str,
               seed: int, h: str, made: dict[str, str], row: bool) -> RunRecord:
    started = time.perf_counter()
    untrained = spec.untrained()
    metrics = [metric for name, task in ctx.cfg.suite.tasks.items()
               for metric in evaluate_task(ctx, name, task, model_for(ctx.dataset(task.dataset)), seed, untrained)]
    record = _record(ctx, ctx.cfg, "eval", label, seed, h, made, status="done", metrics=metrics,
                     wall_time=time.perf_counter() - started)
    # a stored run's teacher as its own record names it (which of a recipe's stages taught it)
    return dataclasses.replace(record, teacher=teacher_name(spec.run, ctx.methods) if spec.run is not None else "",
                               config={**record.config, "provenance": spec.provenance(), "row": row})


def run_eval(bb: Benchbase, model: str, items: Sequence[str], weights: str | None = None, name: str | None = None,
             row: bool = False, force: bool = False, echo: Callable[..., None] = print) -> list[RunRecord]:
    """Score ``model`` on the tasks among ``items`` (the rest are Hydra overrides), store one eval
    record per seed (reusing stored ones unless ``force``), print their table; returns the records.

    Args:
        model: MODEL (see :mod:`benchbase.models_from`); ``weights``: its ``--weights``.
        items: TASK names and Hydra overrides (``KEY=VALUE``, ``~KEY``), in any order.
        name: the row label (default: the run's method and hash, the file, or ``KIND:NAME``).
        row: show the records as a row of their suite's table where the protocols match.
        force: evaluate again, replacing stored records (their label and row flag included).
    """
    overrides = [item for item in items if "=" in item or item.startswith("~")]  # ~KEY deletes without a value
    tasks = [item for item in items if item not in overrides]
    location = [o for o in overrides if o.split("=", 1)[0] in ("home", "db")]
    spec = resolve_model(model, weights, ResultsDB(compose_config(location, bb.config_dirs()).db))
    overrides = [*_model_defaults(spec, overrides), *_inline_tasks(overrides), *overrides]
    ctx = suite_context(bb, overrides, force, echo=echo)
    _select_tasks(ctx, tasks)
    check_tasks(ctx)
    made = code_versions(ctx.bb, suite_components(ctx.cfg))  # the evaluators', datasets' and builders' code
    label = name or spec.label
    echo(f"eval {label} on suite {ctx.cfg.suite.name}: tasks {', '.join(ctx.cfg.suite.tasks)}; "
         f"seeds {list(ctx.cfg.suite.seeds)}")
    model_for: Callable[[DataBundle], VitModel] | None = None
    records = []
    for seed in ctx.cfg.suite.seeds:
        h = config_hash(eval_identity(spec, ctx.cfg, seed))
        found = _stored(ctx, h, made, f"seed {seed}")  # reused unless forced or its code changed (it says which)
        if found is not None:
            if (row and not found.config.get("row")) or (name and found.method != name):
                found = dataclasses.replace(found, method=name or found.method,
                                            config={**found.config, "row": row or found.config.get("row", False)})
                ctx.db.save(found)
            records.append(found)
            continue
        model_for = model_for or _scorer(ctx, spec)
        record = _evaluated(ctx, spec, model_for, label, seed, h, made, row)
        ctx.db.save(record)
        echo(f"  seed {seed}: evaluated, stored as {h}")
        records.append(record)
    echo(format_table(build_table(records)))
    return records
