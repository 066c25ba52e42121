"""Named ablations: one command runs a paper's ablation table as variants of a suite and renders it.

An ablation spec is a YAML file ``ablation/<name>.yaml`` in any config dir (benchbase's own or a
plugin's, see the ``benchbase_config_dirs`` hook); :class:`AblationSpec` lists its keys. Each
variant is a set of Hydra overrides on the suite; ``benchbase ablate NAME`` runs every variant
for every seed of the suite, storing each run in the results database like ``benchbase run`` does
(a run whose config hash is stored is reused, so the shared default row trains once), and writes
``ablation-<name>.md`` / ``.csv`` (plus a PNG curve when ``plot`` names a numeric column) as a
local table, next to the results database like a suite's (see :mod:`benchbase.leaderboard`); with
``publish`` it merges the records into ``results/ablation-<name>.jsonl`` of the leaderboard folder
and rewrites the committed table.

Each exported record carries its place in the table under ``config["ablation"]`` (the spec's
title, paper, columns and metrics, and the variant's index, cells and overrides), so the table is
regenerated from the records alone (``benchbase leaderboard``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from benchbase import distributed
from benchbase.config import CONF_DIR
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import ABLATION_PREFIX, Published, local_dir, write_local
from benchbase.leaderboard import publish as publish_records
from benchbase.plugin_manager import Benchbase
from benchbase.results import ROLES, RunRecord
from benchbase.suite import (
    check_methods,
    describe_status,
    run_floor,
    run_method,
    run_teacher_row,
    suite_context,
    suite_teacher,
)

VARIANT_ROLES = tuple(role for role in ROLES if role not in ("floor", "eval"))
"""The roles a variant may have (the floors of the suite are rows of every ablation table)."""
PREFIX = ABLATION_PREFIX


@dataclass
class VariantSpec:
    """One row: its cells in the descriptive columns and the overrides that make it."""

    values: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    method: Optional[str] = None  # default: the spec's method
    role: str = "method"  # method | reference (e.g. from scratch) | teacher (the suite's teacher row)


@dataclass
class AblationSpec:
    """A named ablation table: variants of one suite, laid out like the paper's table."""

    name: str = MISSING
    title: str = ""
    paper: str = ""  # whose table layout this follows, e.g. "TinyMIM (CVPR 2023), Table 7"
    method: Optional[str] = None
    overrides: list[str] = field(default_factory=list)  # applied to every variant, before its own
    columns: list[str] = field(default_factory=list)  # descriptive columns, in order
    metrics: list[str] = field(default_factory=list)  # <task>/<metric> columns shown (empty: all)
    plot: Optional[str] = None  # a numeric column: each metric against it, over the rows differing only in it
    variants: list[VariantSpec] = field(default_factory=list)


def spec_paths(bb: Benchbase) -> dict[str, Path]:
    """Every ablation spec of benchbase and the installed plugins, by name."""
    found: dict[str, Path] = {}
    for folder in [CONF_DIR, *map(Path, bb.config_dirs())]:
        for path in sorted((folder / "ablation").glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def load_spec(path: Path) -> AblationSpec:
    """The spec in ``path``, checked; a bad key, value or variant is a one-line error."""
    try:
        raw = OmegaConf.load(path)
        spec: AblationSpec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AblationSpec), raw))
    except Exception as exc:  # unknown key, wrong type, YAML syntax
        first = str(exc).strip().splitlines()[0]
        raise BenchbaseError(f"ablation spec {path}: {first}; see the keys of benchbase.ablation.AblationSpec") from None
    problems = []
    if spec.name != path.stem:
        problems.append(f"name {spec.name!r} differs from the file name {path.stem!r}")
    if not spec.variants:
        problems.append("it has no variants")
    if spec.plot is not None and spec.plot not in spec.columns:
        problems.append(f"plot {spec.plot!r} is not one of its columns")
    for i, variant in enumerate(spec.variants):
        if variant.role not in VARIANT_ROLES:
            problems.append(f"variant {i}: role {variant.role!r} is not one of {', '.join(VARIANT_ROLES)}")
        if variant.role != "teacher" and not (variant.method or spec.method):
            problems.append(f"variant {i} names no method (set `method` in the spec or the variant)")
        if unknown := sorted(set(variant.values) - set(spec.columns)):
            problems.append(f"variant {i}: values {unknown} are not in columns")
    if problems:
        raise BenchbaseError(f"ablation spec {path}: {'; '.join(problems)}")
    return spec


def find_spec(bb: Benchbase, name: str) -> AblationSpec:
    """The spec called ``name``; an unknown name is a one-line error listing the known ones."""
    paths = spec_paths(bb)
    if name not in paths:
        raise BenchbaseError(f"unknown ablation {name!r}; available: {', '.join(sorted(paths)) or 'none'}")
    return load_spec(paths[name])


def run_ablation(bb: Benchbase, name: str, overrides: Sequence[str] = (), force: bool = False,
                 echo: Callable[[str], Any] = print, publish: bool = False
                 ) -> tuple[list[Path], Published | None, list[RunRecord]]:
    """Run every variant of ablation ``name`` (``overrides`` applied last, e.g. ``seed=1``) and
    write its local table; with ``publish``, also merge its records into the leaderboard folder.
    Returns the local files written, what was published (nothing on ranks other than 0) and the
    rows' records (failed ones included)."""
    spec = find_spec(bb, name)
    echo = distributed.main_echo(echo)
    datasets: dict = {}  # loaded once for variants that configure a dataset alike
    contexts = []
    for variant in spec.variants:  # every variant's config is checked before anything trains
        # stored under their own suite name, so that variants stay out of the suite's main table;
        # a run identical to one of the main suite's (same config hash) is still reused
        ctx = suite_context(bb, [*spec.overrides, *variant.overrides, *overrides, f"suite.name={PREFIX}{spec.name}"],
                            force, datasets, echo)
        method = variant.method or spec.method
        if variant.role != "teacher":
            ctx.methods.compatible([method], ctx.cfg.student.arch, explicit=True)
            check_methods(ctx, [(variant.role, [method])])
        contexts.append((ctx, method))
    echo(f"ablation {spec.name}: {spec.title} ({len(spec.variants)} variants, suite {contexts[0][0].cfg.suite.name})")
    # the floors of the suite the variants change (the spec's and the command's overrides only)
    base = suite_context(bb, [*spec.overrides, *overrides, f"suite.name={PREFIX}{spec.name}"], force, datasets)
    records: list[RunRecord] = []
    for index, floor in enumerate(base.cfg.suite.floors):
        for seed in base.cfg.suite.seeds:
            run = run_floor(base, floor, seed)
            echo(f"  [floor] {floor} seed {seed}: {describe_status(run)}")
            records.append(_annotated(run, spec, index - len(base.cfg.suite.floors)))
    for index, (variant, (ctx, method)) in enumerate(zip(spec.variants, contexts)):
        if variant.role == "teacher":
            runs = [run_teacher_row(ctx, suite_teacher(ctx))]
        else:
            runs = [run_method(ctx, variant.role, method, seed) for seed in ctx.cfg.suite.seeds]
        cells = ", ".join(f"{k}={v}" for k, v in variant.values.items())
        for run in runs:
            echo(f"  [{index + 1}/{len(spec.variants)}] {cells} seed {run.seed}: {describe_status(run)}")
        records += [_annotated(run, spec, index) for run in runs]
    if not distributed.is_main():
        return [], None, records
    cfg = contexts[0][0].cfg
    written = write_local(records, cfg.leaderboard_dir, local_dir(cfg.db), PREFIX + spec.name)
    return written, publish_records(records, cfg.leaderboard_dir, PREFIX + spec.name) if publish else None, records


def _annotated(record: RunRecord, spec: AblationSpec, index: int) -> RunRecord:
    """A copy of ``record`` that knows its row of the table (the stored record is left as it is)."""
    if index < 0:  # a floor row, first in the table: named in the first descriptive column
        values, overrides = ({spec.columns[0]: f"floor: {record.method}"} if spec.columns else {}), []
    else:
        values, overrides = spec.variants[index].values, spec.variants[index].overrides
    place = {
        "name": spec.name, "title": spec.title, "paper": spec.paper, "columns": list(spec.columns),
        "metrics": list(spec.metrics), "plot": spec.plot, "variant": index,
        "values": {k: str(v) for k, v in values.items()}, "overrides": list(overrides),
    }
    # a run first stored by another ablation or suite (reused by config hash) is exported as this one's
    return dataclasses.replace(record, suite=PREFIX + spec.name, config={**record.config, "ablation": place})
