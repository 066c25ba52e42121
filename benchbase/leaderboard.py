"""Leaderboards built from run records alone: Markdown and CSV, never edited by hand.

One row per (role, method): the teacher first, then reference rows (e.g. from-scratch training),
then the methods by name. One column per metric, keyed ``<task>/<metric name>``; a cell is the
mean over seeds with its 95% interval. A column never mixes protocols: metrics with the same key
but different protocols go to separate columns (``key [2]``, ...), each protocol listed under the
table.

Two kinds of tables. The *committed* tables in the repository's leaderboard folder are generated
from its committed records ``results/<name>.jsonl`` alone; those records change only on an
explicit :func:`publish`, a union (records are added, or replaced by a newer record of the same
config hash) that never drops one, and :func:`prune` alone removes records, naming each. The
*local* tables, next to the results database (:func:`local_dir`: in the run home by default), show
the committed records merged with this machine's runs, each row marked by its ``origin``; running
a suite writes only those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from tabulate import tabulate

from benchbase.components import Metric, mean_ci95
from benchbase.config import suite_setting, trainer_identity, without_later_recipe_keys
from benchbase.errors import BenchbaseError
from benchbase.eval_rows import ROLE as EVAL_ROLE
from benchbase.eval_rows import shown_eval_rows
from benchbase.outcomes import Outcomes, outcomes_of, task_metrics
from benchbase.results import ROLES, ResultsDB, RunRecord, read_jsonl, write_jsonl, write_text_atomic
from benchbase.significance import METHOD, Comparison, bootstrap_ci95, compare_rows, ranks

CI_SUFFIX = "_ci95"
RANK_SUFFIX = "_rank"
"""A metric column's paired rank (:mod:`benchbase.significance`) is ``<column>_rank``."""
BELOW_SUFFIX = "_below_floor"
"""``<column>_below_floor`` is True where a learned row's cell does not lie above the best floor."""
BELOW_MARK = "▼"
LEARNED_ROLES = tuple(r for r in ROLES if r != "floor")
ERROR_WIDTH = 60
"""Characters of the first error shown in a row's status."""

_MISSING = "—"
RESULTS_DIR = "results"
"""Sub-folder of the leaderboard folder holding the exported run records (JSON lines)."""
LOCAL_DIR = "leaderboards"
"""Folder next to the results database (in the run home by default) holding the local tables, and
in their ``results/`` this machine's records of each."""
ORIGIN = "origin"
"""Column of a local table: whether a row's runs are committed records, local ones, or both."""
HIDDEN = "hidden"
"""The :func:`prune` selector for the records a table does not show (other settings, superseded seeds)."""
ABLATION_PREFIX = "ablation-"
"""Tables (and suites in the results database) of an ablation are named ``ablation-<name>``."""
FIGURES_DIR = "figures"
"""Sub-folder of the leaderboard folder with figures that other tools draw for a table, e.g.
EventSAM's token-importance heat maps: ``figures/<name>/*.png`` is embedded in ``<name>.md``
below the table's own plots."""


def page_figures(drawn: Sequence[Path], out: Path, name: str, figures_from: str | os.PathLike[str] | None
                 ) -> list[Path]:
    """The figures page ``<out>/<name>.md`` embeds, relative to ``out``: the plots ``drawn`` into
    ``out``, then the PNGs of ``<figures_from>/figures/<name>/`` (``figures_from`` default ``out``)."""
    root = Path(figures_from or out)
    attached = sorted(p.relative_to(root) for p in (root / FIGURES_DIR / name).glob("*.png"))
    return [p.relative_to(out) for p in drawn] + attached


def metric_key(metric: Metric) -> str:
    """The column key of a metric: ``<task>/<metric name>``, or the bare name without a task."""
    task = metric.extras.get("task")
    return f"{task}/{metric.name}" if task else metric.name


def latest_per_seed(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per seed, the most recent; sorted by seed."""
    latest: dict[int, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.created_at):
        latest[record.seed] = record
    return [latest[seed] for seed in sorted(latest)]


def _params(record: RunRecord) -> dict:
    method = record.config.get("method") or {}
    return dict(method.get("params") or {})


def _row_labels(records: Sequence[RunRecord]) -> dict[int, str]:
    """A row label per record: the method name, plus the params that differ between its variants.

    A sweep over ``method.params.beta=1.0,2.0`` gives two rows, ``feature (beta=1.0)`` and
    ``feature (beta=2.0)``; a method run with one setting keeps its bare name.
    """
    by_method: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_method[record.method].append(record)
    labels: dict[int, str] = {}
    for method, group in by_method.items():
        keys = sorted({k for r in group for k in _params(r)})
        varying = [k for k in keys if len({json.dumps(_params(r).get(k), sort_keys=True) for r in group}) > 1]
        for record in group:
            params = _params(record)
            suffix = ", ".join(f"{k}={params.get(k)}" for k in varying)
            labels[id(record)] = f"{method} ({suffix})" if suffix else method
    return labels


def _group_rows(records: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Records by (role, row label) in table order, each group reduced to its latest run per seed."""
    labels = _row_labels(records)
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.role, labels[id(record)])].append(record)
    order = sorted(groups, key=lambda key: (ROLES.index(key[0]), _floor_order(key)))
    return {key: latest_per_seed(groups[key]) for key in order}


def _floor_order(key: tuple[str, str]) -> tuple[int, str]:
    """Floors in :data:`benchbase.floors.FLOORS` order, other rows by label."""
    from benchbase.floors import FLOORS

    return (FLOORS.index(key[1]), "") if key[0] == "floor" and key[1] in FLOORS else (len(FLOORS), key[1])


def setting_key(record: RunRecord) -> str:
    """What makes runs comparable in one table: suite tasks, data, student, teacher and trainer.

    Method, method params and seed are left out (they are the rows); so are paths, devices and the
    suite's name (a run reused from another suite's record, e.g. an ablation's, belongs here too).
    """
    cfg = record.config
    trainer, student = suite_setting(cfg, "trainer"), suite_setting(cfg, "student")
    suite = {k: v for k, v in (cfg.get("suite") or {}).items() if k in ("distill", "tasks")}
    teacher = without_later_recipe_keys(cfg.get("teacher"))
    blob = json.dumps([suite, cfg.get("data"), student, teacher, trainer_identity(trainer)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def current_records(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The records that share the setting of the most recent run (older settings are left out),
    then the eval records shown as rows (:func:`benchbase.eval_rows.shown_eval_rows`)."""
    runs = [r for r in records if r.role != EVAL_ROLE]
    if not runs:
        return []
    newest = max(runs, key=lambda r: r.created_at)
    return [r for r in runs if setting_key(r) == setting_key(newest)] + shown_eval_rows(records, newest)


RUN_SEED = "the run's seed"


def protocol_of(metric: Metric, record: RunRecord) -> str:
    """The metric's protocol with the run's own seed written as :data:`RUN_SEED`.

    Evaluators draw their episodes, splits or probe initialisations from the run's seed and name
    it (``seed 3``); runs of other seeds then follow the same protocol and share a column. A seed
    that a task fixes (and that differs from the run's) stays a number, hence another protocol.
    """
    return re.sub(rf"\bseed {record.seed}\b", f"seed = {RUN_SEED}", metric.protocol)


def _assign_columns(rows: Mapping[Hashable, Sequence[RunRecord]]) -> dict[tuple[str, str], str]:
    """A column label for each (metric key, protocol) pair, in order of first appearance.

    The first protocol seen for a key keeps the bare key, later ones get `` [2]``, `` [3]``, ...
    In a table with runs, eval records add no columns: their metrics fill the runs' columns of
    the same protocol (a table of eval records alone has their columns).
    """
    protocols: dict[str, list[str]] = {}
    with_runs = any(record.role != EVAL_ROLE for group in rows.values() for record in group)
    for group in rows.values():
        for record in group:
            for metric in record.metrics if not (with_runs and record.role == EVAL_ROLE) else ():
                seen = protocols.setdefault(metric_key(metric), [])
                if protocol_of(metric, record) not in seen:
                    seen.append(protocol_of(metric, record))
    return {
        (key, protocol): key if i == 0 else f"{key} [{i + 1}]"
        for key, seen in protocols.items()
        for i, protocol in enumerate(seen)
    }


def _status(group: Sequence[RunRecord]) -> str:
    failed = [r for r in group if r.status == "failed"]
    if not failed:
        return "ok"
    error = " ".join(failed[0].error.split()) or "no error message"
    if len(error) > ERROR_WIDTH:
        error = error[: ERROR_WIDTH - 1] + "…"
    return f"failed ({len(failed)}/{len(group)}): {error}"


def _mean_ci(metrics: Sequence[Metric], outcomes: Sequence[Outcomes | None] = ()) -> tuple[float, float]:
    """Mean over seeds and its 95% CI; with one seed, the metric's own CI, or else a bootstrap CI from its
    stored ``outcomes`` (mIoU, pixel accuracy, segment metrics), NaN when it has neither."""
    if not metrics:
        return math.nan, math.nan
    if len(metrics) == 1:
        ci95, outcomes = metrics[0].ci95, (outcomes[0] if outcomes else None)
        if ci95 is None and outcomes is not None:
            ci95 = bootstrap_ci95(outcomes)
        return metrics[0].value, math.nan if ci95 is None else ci95
    return mean_ci95([m.value for m in metrics])


def build_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """The leaderboard of ``records`` (normally one suite's) with numeric cells.

    Columns: ``role``, ``method``, then per metric column ``<col>`` (mean over done seeds) and
    ``<col>_ci95`` (95% CI half-width: 1.96·std/sqrt(n_seeds) with two or more seeds, the metric's
    own ``ci95`` with one or a bootstrap over its stored outcomes, NaN otherwise), then ``seeds`` (done seeds) and ``status`` (``ok`` or
    ``failed (k/n): <first error>``). Where a (role, method) has several runs for one seed (its
    config changed), the latest counts. ``df.attrs["protocols"]`` maps each metric column to its
    protocol.
    """
    return metric_frame(_group_rows(records), ["role", "method"], lambda key: dict(zip(("role", "method"), key)))


def metric_frame(rows: Mapping[Hashable, Sequence[RunRecord]], lead_columns: Sequence[str],
                 lead: Callable[[Hashable], dict[str, object]], only: Sequence[str] = ()) -> pd.DataFrame:
    """One table row per ``rows`` entry (its runs, one per seed): the ``lead(key)`` cells (the
    ``lead_columns``), then
    each metric's mean and ``_ci95`` over the done seeds, ``seeds`` and ``status`` (see
    :func:`build_table`). ``only`` keeps just these metric keys (``<task>/<name>``), in its order.

    Where runs stored per-sample outcomes, each metric column also gets ``<col>_rank`` (paired
    rank, :mod:`benchbase.significance`) and ``<col>_below_floor`` (a learned row whose cell's 95%
    interval does not lie above the best floor row of the column). ``df.attrs`` holds
    ``protocols`` (column -> protocol), ``roles`` (each row's role), ``comparisons`` (column -> the
    tested pairs, by row name) and ``floors`` (column -> (best floor row name, its value)).
    """
    columns = _assign_columns(rows)
    if only:
        order = {key: i for i, key in enumerate(only)}
        columns = dict(sorted(((k, v) for k, v in columns.items() if k[0] in order), key=lambda kv: order[kv[0][0]]))
    table = []
    outcomes: dict[str, dict[Hashable, dict[int, Outcomes]]] = defaultdict(dict)
    for key, group in rows.items():
        done = [r for r in group if r.status == "done"]
        by_column: dict[str, list[Metric]] = defaultdict(list)
        column_outcomes: dict[str, list[Outcomes | None]] = defaultdict(list)
        for record in done:
            for label, metric in {columns.get((metric_key(m), protocol_of(m, record))): m
                                  for m in record.metrics}.items():
                if label is not None:
                    stored = outcomes_of(metric.extras, task_metrics(record.metrics, metric.extras.get("task")))
                    by_column[label].append(metric)
                    column_outcomes[label].append(stored)
                    if stored is not None:
                        outcomes[label].setdefault(key, {})[record.seed] = stored
        row = dict(lead(key))
        for label in columns.values():
            row[label], row[label + CI_SUFFIX] = _mean_ci(by_column[label], column_outcomes[label])
        row["seeds"] = len(done)
        row["status"] = _status(group)
        table.append(row)
    metric_columns = [c for label in columns.values() for c in (label, label + CI_SUFFIX)]
    df = pd.DataFrame(table, columns=[*lead_columns, *metric_columns, "seeds", "status"])
    df.attrs["protocols"] = _Shared({label: protocol for (_, protocol), label in columns.items()})
    names = [_row_name(lead(key), lead_columns) for key in rows]
    roles = [group[0].role if group else "" for group in rows.values()]
    df.attrs["roles"] = tuple(roles)
    _add_significance(df, list(rows), names, outcomes)
    _add_floor_marks(df, names, roles, list(columns.values()))
    return df


class _Shared(dict):
    """A ``df.attrs`` value that derived frames share instead of copying: pandas deep-copies
    ``attrs`` into every frame an operation returns, which for a table's comparisons cost more than
    the tests themselves. Written while the table is built, read-only after."""

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _row_name(cells: Mapping[str, object], lead_columns: Sequence[str]) -> str:
    """A row's name in texts: its method (suite tables) or its descriptive cells (ablations)."""
    if "method" in cells:
        return str(cells["method"])
    return ", ".join(f"{c}={cells[c]}" for c in lead_columns if cells.get(c) not in ("", None)) or "row"


def _add_significance(df: pd.DataFrame, keys: list[Hashable], names: list[str],
                      outcomes: Mapping[str, Mapping[Hashable, Mapping[int, Outcomes]]]) -> None:
    """``<col>_rank`` columns and ``df.attrs["comparisons"]`` for the columns with outcomes."""
    df.attrs["comparisons"] = _Shared()
    name_of = dict(zip(keys, names))
    for label, by_row in outcomes.items():
        comparisons = compare_rows(by_row)
        if not comparisons:
            continue
        rank_of = ranks(by_row, comparisons)
        df[label + RANK_SUFFIX] = [rank_of.get(key, math.nan) for key in keys]
        df.attrs["comparisons"][label] = [
            Comparison(name_of[c.a], name_of[c.b], c.delta, c.p, c.p_holm) for c in comparisons
        ]


def _add_floor_marks(df: pd.DataFrame, names: list[str], roles: list[str], labels: list[str]) -> None:
    """``<col>_below_floor`` columns and ``df.attrs["floors"]`` for the columns a floor row measured."""
    df.attrs["floors"] = _Shared()
    floor_rows = [i for i, role in enumerate(roles) if role == "floor"]
    for label in labels:
        values = [(float(df.at[i, label]), names[i]) for i in floor_rows if math.isfinite(float(df.at[i, label]))]
        if not values:
            continue
        best, name = max(values)
        df.attrs["floors"][label] = (name, best)
        lower = df[label].astype(float) - df[label + CI_SUFFIX].astype(float).fillna(0.0)
        df[label + BELOW_SUFFIX] = [role in LEARNED_ROLES and math.isfinite(low) and low <= best
                                    for role, low in zip(roles, lower)]


def _decimals(values: pd.Series) -> int:
    """Decimals that show a column's largest value with three significant digits (at least 0)."""
    finite = values.abs()[values.map(math.isfinite)]
    if finite.empty or finite.max() == 0:
        return 2
    return max(0, 2 - math.floor(math.log10(finite.max())))


def _formatted(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each metric column, its CI, paired rank and below-floor mark merged into one
    ``"83.2 ± 0.4 (#1)"`` string column (``▼`` appended below the floor)."""
    metric_columns = [c for c in df.columns if c + CI_SUFFIX in df.columns]
    extra = [c + suffix for c in metric_columns for suffix in (CI_SUFFIX, RANK_SUFFIX, BELOW_SUFFIX)]
    out = df.drop(columns=[c for c in extra if c in df.columns])
    for column in metric_columns:
        d = _decimals(df[column].astype(float))
        rank = df[column + RANK_SUFFIX] if column + RANK_SUFFIX in df else pd.Series(math.nan, index=df.index)
        below = df[column + BELOW_SUFFIX] if column + BELOW_SUFFIX in df else pd.Series(False, index=df.index)
        cells = []
        for mean, ci, place, low in zip(df[column].astype(float), df[column + CI_SUFFIX].astype(float), rank, below):
            cell = _MISSING if math.isnan(mean) else f"{mean:.{d}f}" if math.isnan(ci) else f"{mean:.{d}f} ± {ci:.{d}f}"
            if not math.isnan(mean) and math.isfinite(place):
                cell += f" (#{int(place)})"
            cells.append(f"{cell} {BELOW_MARK}" if bool(low) else cell)
        out[column] = cells
    return out


def format_table(df: pd.DataFrame) -> str:
    """A :func:`build_table` frame as plain text for the terminal."""
    return tabulate(_formatted(df), headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)


def _markdown_table(df: pd.DataFrame) -> str:
    formatted = _formatted(df).apply(lambda col: col.astype(str).str.replace("|", "\\|", regex=False))
    headers = [str(c).replace("|", "\\|") for c in formatted.columns]
    return tabulate(formatted, headers=headers, tablefmt="github", showindex=False, disable_numparse=True)


def _distinct(values: Iterable[object]) -> str:
    found = sorted({str(v) for v in values if v not in ("", None)})
    return ", ".join(found) if found else "unknown"


def _teachers(records: Sequence[RunRecord]) -> str:
    """The teacher of the records; where rows have different teachers (e.g. a recipe teacher's
    pre-trained weights for TinyMIM), each with the rows that use it."""
    users: dict[str, dict[str, None]] = {}
    for record in records:
        if record.teacher and record.role not in ("floor", "reference"):
            users.setdefault(record.teacher, {})[record.method] = None
    methods = [m for names in users.values() for m in names]
    if len(users) < 2 or len(methods) != len(set(methods)):  # one teacher, or rows of a method differ (stages)
        return _distinct(r.teacher for r in records)
    return "; ".join(f"{teacher} ({', '.join(methods)})" for teacher, methods in sorted(users.items()))


def _epochs(record: RunRecord) -> object:
    """The run's epochs; with method stages, each stage's and the final run's (``20+10``)."""
    trainer = record.config.get("trainer")
    if not isinstance(trainer, dict):
        return None
    stages = (record.config.get("method") or {}).get("stages") or []
    if not stages:
        return trainer.get("epochs")
    per_stage = [(stage.get("trainer") or {}).get("epochs", trainer.get("epochs")) for stage in stages]
    return "+".join(str(e) for e in [*per_stage, trainer.get("epochs")])


def markdown_page(head: Sequence[str], records: Sequence[RunRecord], df: pd.DataFrame, figures: Sequence[Path],
                  generator: str, notes: Sequence[str] = ()) -> str:
    """``head`` lines, the table of ``df``, its ``figures`` (paths relative to the page), then how it
    was measured (protocols, data, teacher, student, epochs, device, dates), ``notes`` lines and
    the command that generated it."""
    lines = [*head, *floor_summary(df), *unserved_tasks(records), _markdown_table(df), ""]
    lines += [f"![{figure.stem}]({figure.as_posix()})" for figure in figures]
    if figures:
        lines.append("")
    lines.append("Cells: mean ± 95% CI over seeds (1.96·std/√n); with one seed, the metric's own 95% CI (for mIoU and "
                 "pixel accuracy a percentile bootstrap over the test images).")
    if df.attrs.get("comparisons"):
        lines.append(f"(#k): paired rank in its column, 1 + the rows significantly above it ({METHOD}); rows "
                     "that no test separates from those above them share a rank.")
        unranked = [label for label in df.attrs.get("floors") or {} if label not in df.attrs["comparisons"]]
        if unranked:
            lines.append("Unranked (their evaluator stores no per-sample outcomes yet, so no paired test): "
                         + ", ".join(f"`{label}`" for label in unranked) + ".")
    else:
        lines.append("No paired ranks: no row of this table stored per-sample outcomes (its records predate them).")
    if df.attrs.get("floors"):
        lines.append(f"{BELOW_MARK}: the cell's 95% interval does not lie above the column's best floor (pixels = the "
                     "image itself as the features, random_init = the student at initialisation, same evaluators).")
    else:
        lines.append("No floor rows: this table's records predate them (running the suite adds them).")
    lines.append(f"{_MISSING}: not measured (e.g. fine-tuning does not apply to the pixels floor).")
    lines.append("")
    lines += _comparison_details(df)
    if df.attrs["protocols"]:
        lines.append("Protocols:")
        lines += [f"- `{column}`: {protocol}" for column, protocol in df.attrs["protocols"].items()]
        lines.append("")
    lines += read_points(records)
    lines += scaled_down(records)
    lines += method_protocols(records)
    lines.append(f"- Dataset: {_distinct(r.dataset for r in records)}")
    lines.append(f"- Teacher: {_teachers(records)}")
    lines.append(f"- Student: {_distinct(r.student for r in records)}")
    epochs = [e for e in map(_epochs, records) if e is not None]
    if epochs:
        lines.append(f"- Epochs: {_distinct(epochs)}")
    lines.append(f"- Device: {_distinct(r.device for r in records)}")
    if records:
        dates = sorted(r.created_at[:10] for r in records)
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines.append(f"- Runs: {span} (UTC)")
    lines.append("")
    lines += [*notes, *([""] if notes else [])]
    lines.append(f"Generated by {generator} from {len(records)} stored runs; do not edit.")
    return "\n".join(lines) + "\n"


def read_points(records: Sequence[RunRecord]) -> list[str]:
    """Page lines naming the rows whose frozen-feature metrics were read before blocks that training
    never reached (``extras["read_point"]``, see :mod:`benchbase.untrained`); none when no row was."""
    found: dict[str, dict[str, None]] = {}
    for record in records:
        for metric in record.metrics:
            if metric.extras.get("read_point"):
                found.setdefault(record.method, {})[metric.extras["read_point"]] = None
    if not found:
        return []
    return ["Read points (frozen-feature columns):",
            *(f"- `{method}`: {'; '.join(points)}" for method, points in found.items()), ""]


SUITE_CHANGE_HEADINGS = {
    "protocols": "The methods' protocols at this suite's scale (`suite.protocols`, over their method files):",
    "deviations": "Suite deviations from the methods' protocols (`suite.deviations`, to fit the machine):",
}
"""The page heading of each suite key that changes a method's config (:data:`benchbase.methods.SUITE_CHANGES`)."""


def _newest_suite_value(records: Sequence[RunRecord], key: str) -> Any:
    """``suite.<key>`` as the newest record that sets it (non-empty) says; None when none does."""
    for record in sorted(records, key=lambda r: r.created_at, reverse=True):
        value = (record.config.get("suite") or {}).get(key)
        if value:
            return value
    return None


def scaled_down(records: Sequence[RunRecord]) -> list[str]:
    """Page lines listing what the suite scales down from the papers' protocols (``suite.scaled``),
    as the newest record that names any says; none when no record does."""
    scaled = _newest_suite_value(records, "scaled")
    if not scaled:
        return []
    return ["Scaled down from the papers' protocols to fit the machine (`suite.scaled`):",
            *(f"- {line}" for line in scaled), ""]


def unserved_tasks(records: Sequence[RunRecord]) -> list[str]:
    """Page lines naming the tasks the suite's teacher cannot serve and why (``suite.unserved``: its
    score is not 10 points above both floors), as the newest record that names any says."""
    unserved = _newest_suite_value(records, "unserved")
    if not unserved:
        return []
    return ["Tasks this suite's teacher cannot serve (`suite.unserved`: not 10 points above both floors, so "
            "their columns cannot tell methods apart here):",
            *(f"- `{task}`: {why}" for task, why in unserved.items()), ""]


def method_protocols(records: Sequence[RunRecord]) -> list[str]:
    """Page lines naming what each method's protocol sets over the suite's trainer and student
    (``method.trainer`` / ``method.student``), what the suite sets of that protocol at its scale
    (``suite.protocols``) and what it changed of it (``suite.deviations``); none when no row has any."""
    settings: dict[str, str] = {}
    changes: dict[str, dict[str, str]] = {key: {} for key in SUITE_CHANGE_HEADINGS}
    for record in records:
        method = record.config.get("method") or {}
        changed = [f"{group}.{k}={v}" for group in ("trainer", "student") for k, v in (method.get(group) or {}).items()]
        if changed:
            settings[record.method] = ", ".join(changed)
        for key, found in changes.items():
            change = ((record.config.get("suite") or {}).get(key) or {}).get(record.method)
            if change:
                found[record.method] = ", ".join(f"{k}={v}" for k, v in _flat(change))
    lines = []
    if settings:
        lines += ["Method protocols (each method's own settings over the suite's trainer and student):",
                  *(f"- `{method}`: {text}" for method, text in sorted(settings.items())), ""]
    for key, found in changes.items():
        if found:
            lines += [SUITE_CHANGE_HEADINGS[key], *(f"- `{method}`: {text}" for method, text in sorted(found.items())),
                      ""]
    return lines


def _flat(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``{"trainer": {"lr": 1}}`` -> ``[("trainer.lr", 1)]``."""
    items: list[tuple[str, object]] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def floor_summary(df: pd.DataFrame) -> list[str]:
    """Lines saying, per column with floors, whether the teacher row clears the best floor."""
    floors = df.attrs.get("floors") or {}
    roles = df.attrs.get("roles") or []
    if not floors or "teacher" not in roles:
        return []
    i = df.index[roles.index("teacher")]
    lines = ["Does the teacher clear the floors (its 95% interval above the best floor)?", ""]
    for label, (name, best) in floors.items():
        mean, ci = float(df.at[i, label]), float(df.at[i, label + CI_SUFFIX])
        if math.isnan(mean):
            continue
        low = mean if math.isnan(ci) else mean - ci
        verdict = "yes" if low > best else "**no: this column does not measure what the teacher knows**"
        lines.append(f"- `{label}`: {verdict} (teacher {mean:.1f}, best floor {name} {best:.1f})")
    return [*lines, ""] if len(lines) > 2 else []


def _comparison_details(df: pd.DataFrame) -> list[str]:
    """A collapsed list of each column's significant pairs (and how many pairs were tested)."""
    comparisons: dict[str, list[Comparison]] = df.attrs.get("comparisons") or {}
    if not comparisons:
        return []
    lines = ["<details><summary>Paired tests: significantly different pairs per column</summary>", ""]
    for label, tested in comparisons.items():
        found = sorted((c for c in tested if c.significant), key=lambda c: -c.delta)
        lines.append(f"- `{label}` ({len(found)} of {len(tested)} pairs): " + (
            "; ".join(f"{c.a} > {c.b} (Δ {c.delta:.2f}, p_Holm {c.p_holm:.2g})" for c in found) or "none"))
    return [*lines, "", "</details>", ""]


class Page(NamedTuple):
    """What one table page shows: its frame, the records it was built from, its title lines, its
    plots (written into the table's folder), its notes and the command that generates it."""

    df: pd.DataFrame
    records: Sequence[RunRecord]
    head: list[str]
    figures: list[Path]
    notes: list[str]
    generator: str


def write_table(records: Sequence[RunRecord], out_dir: str | os.PathLike[str], name: str,
                figures_from: str | os.PathLike[str] | None = None,
                committed: Collection[tuple[str, str]] | None = None) -> list[Path]:
    """Write ``<name>.md`` and ``<name>.csv`` (numeric) of ``records`` into ``out_dir``, each
    atomically, plus the PNG plots embedded in the Markdown (returned after md and csv): an
    ablation's table in its spec's layout (:func:`ablation_page`), a suite's leaderboard otherwise
    (:func:`suite_page`). The page also embeds the :data:`FIGURES_DIR` figures of ``figures_from``
    (default ``out_dir``). With ``committed`` (the :func:`record_ids` of the committed records) it
    is a local table: an :data:`ORIGIN` column tells the rows of committed records from local ones."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise BenchbaseError(f"leaderboard name {name!r} must be a plain file name (it names <name>.md)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = (ablation_page if is_ablation(records) else suite_page)(records, out, name, committed)
    md, csv = out / f"{name}.md", out / f"{name}.csv"
    embedded = page_figures(page.figures, out, name, figures_from)
    write_text_atomic(md, markdown_page(page.head, page.records, page.df, embedded, page.generator, page.notes))
    write_text_atomic(csv, page.df.to_csv(index=False))
    return [md, csv, *page.figures]


write_leaderboard = write_table
"""The former name of :func:`write_table`."""


def suite_page(records: Sequence[RunRecord], out: Path, name: str,
               committed: Collection[tuple[str, str]] | None) -> Page:
    """A suite's leaderboard: the records of the current setting (:func:`current_records`), its
    cost and sweep plots of :mod:`benchbase.plots`; the page counts the records it does not show."""
    from benchbase.plots import PARAMS, cost_plot, sweep_plots

    shown = current_records(records)
    df = build_table(shown)
    head = [f"# {name}", ""]
    if committed is not None:
        origins = {key: origin(group, committed) for key, group in _group_rows(shown).items()}
        df[ORIGIN] = [origins.get((role, method), "") for role, method in zip(df["role"], df["method"])]
        head += local_note(name)
    costs = [cost_plot(df, out / f"{name}.png", name), cost_plot(df, out / f"{name}-params.png", name, PARAMS)]
    figures = [p for p in costs if p] + sweep_plots(df, out, name)
    notes = hidden_note(len(records) - len(shown_records(records)))
    return Page(df, shown, head, figures, notes, "`benchbase leaderboard`")


def ablation_page(records: Sequence[RunRecord], out: Path, name: str,
                  committed: Collection[tuple[str, str]] | None) -> Page:
    """An ablation's table in its spec's layout (:func:`build_ablation_table`), with the curve of its
    ``plot`` column and a note per row on what ran and the overrides that make it."""
    from benchbase.plots import curve_plot, metric_columns

    place = ablation_layout(records)
    rows = ablation_rows(records)
    df = build_ablation_table(records)
    if committed is not None:
        df[ORIGIN] = [origin(group, committed) for group in rows.values()]
    figures = []
    plot, metrics = place.get("plot"), metric_columns(df)
    if plot and metrics:
        points = sweep_points(df, plot, place["columns"])
        if len(points) >= 2:
            title = f"{place['title'] or place['name']}: metric vs {plot} (95% band)"
            figures.append(curve_plot(points, metrics, plot, title, out / f"{name}.png"))
    head = [f"# {place['title'] or place['name']}", "", *(local_note(name) if committed is not None else [])]
    if place["paper"]:
        head += [f"Ablation `{place['name']}`, in the layout of {place['paper']}. Measured here; "
                 "the paper's own numbers are in reported.md, never in this table.", ""]
    first = {r.config["ablation"]["variant"]: r for r in reversed(records)}
    notes = ["Rows, top to bottom: what ran, and the overrides that make the row:", ""]
    for row, i in enumerate(rows, 1):
        overrides = " ".join(first[i].config["ablation"]["overrides"])
        notes.append(f"{row}. {first[i].method} ({first[i].role}): " + (f"`{overrides}`" if overrides else "as configured"))
    hidden = len(records) - sum(len(group) for group in rows.values())
    notes += ["", *hidden_note(hidden)] if hidden else []
    return Page(df, records, head, figures, notes, f"`benchbase ablate {place['name']}`")


def is_ablation(records: Sequence[RunRecord]) -> bool:
    """Whether ``records`` are an ablation's exported records (each knows its row under
    ``config["ablation"]``, see :mod:`benchbase.ablation`)."""
    return bool(records) and all("ablation" in r.config for r in records)


def ablation_layout(records: Sequence[RunRecord]) -> dict[str, Any]:
    """The spec an ablation table is laid out by (title, columns, metrics, plot): the newest
    record's, so that a spec changed since older records were published lays out the table."""
    return max(records, key=lambda r: r.created_at).config["ablation"]


def ablation_rows(records: Sequence[RunRecord]) -> dict[int, list[RunRecord]]:
    """The rows of an ablation table: variant index -> its latest run per seed; the teacher's rows
    first, then the floors (negative indices), then the spec's order."""
    by_variant: dict[int, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_variant[record.config["ablation"]["variant"]].append(record)
    order = sorted(by_variant, key=lambda i: (by_variant[i][0].role != "teacher", i))
    return {index: latest_per_seed(by_variant[index]) for index in order}


def build_ablation_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """The ablation table (a :func:`metric_frame`): one row per variant in the spec's order, its
    descriptive cells, then the chosen metrics as mean and 95% CI over seeds."""
    place = ablation_layout(records)
    rows = ablation_rows(records)
    values = {index: group[0].config["ablation"]["values"] for index, group in rows.items()}
    columns = place["columns"]
    return metric_frame(rows, columns, lambda index: {c: values[index].get(c, "") for c in columns},
                        place["metrics"])


def sweep_points(df: pd.DataFrame, plot: str, columns: Sequence[str]) -> list[tuple[float, pd.Series]]:
    """The curve of column ``plot``: (value, row) of the rows with a numeric ``plot`` value that agree
    on every other column of ``columns``, the largest such set (the first on a tie). Rows
    that change something else besides (e.g. EventSAM's other choices at the default β) are not on it."""
    others = [c for c in columns if c != plot]
    groups: dict[tuple, list[tuple[float, pd.Series]]] = {}
    for _, row in df.iterrows():
        if _number(row[plot]):
            groups.setdefault(tuple(str(row[c]) for c in others), []).append((float(row[plot]), row))
    return max(groups.values(), key=len, default=[])


def _number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def record_ids(records: Iterable[RunRecord]) -> set[tuple[str, str]]:
    """Each record's (config hash, creation time): what tells one stored record from another."""
    return {(r.config_hash, r.created_at) for r in records}


def origin(group: Iterable[RunRecord], committed: Collection[tuple[str, str]]) -> str:
    """A row's :data:`ORIGIN`: ``committed``, ``local``, or ``<n> local, <m> committed``."""
    ids = [(r.config_hash, r.created_at) in committed for r in group]
    if all(ids):
        return "committed"
    if not any(ids):
        return "local"
    return f"{ids.count(False)} local, {ids.count(True)} committed"


def hidden_note(hidden: int) -> list[str]:
    """The page's note on the ``hidden`` records its table does not show (none without any)."""
    if not hidden:
        return []
    return [f"{hidden} more records are not shown (another setting, or an older run of a row's seed)."]


def local_note(name: str) -> list[str]:
    """The lines under a local table's title: what it shows and how to publish it."""
    return [f"Local table: the committed records of `results/{name}.jsonl` merged with this machine's runs "
            f"(column `{ORIGIN}`). The committed tables change only on `--publish`.", ""]


def record_key(record: RunRecord) -> tuple[str, Any]:
    """What a published table holds one record of: the config hash, and in an ablation the variant
    too (one run may fill two variants)."""
    return record.config_hash, (record.config.get("ablation") or {}).get("variant")


class Merge(NamedTuple):
    """The union of committed records with new ones: the merged records and what changed."""

    records: list[RunRecord]
    added: int
    replaced: int


def merge_records(committed: Sequence[RunRecord], new: Iterable[RunRecord]) -> Merge:
    """``committed`` in their order, each replaced by the record of ``new`` with the same
    :func:`record_key` unless the committed one is newer, then the other records of ``new`` in
    their order. Nothing committed is dropped; merging the same records again changes nothing."""
    merged = list(committed)
    where = {record_key(r): i for i, r in enumerate(merged)}
    added = replaced = 0
    for record in new:
        i = where.get(record_key(record))
        if i is None:
            where[record_key(record)] = len(merged)
            merged.append(record)
            added += 1
        elif merged[i] != record and merged[i].created_at <= record.created_at:
            merged[i] = record
            replaced += 1
    return Merge(merged, added, replaced)


def _read_records(folder: str | os.PathLike[str], name: str) -> list[RunRecord]:
    """The records ``<folder>/results/<name>.jsonl`` (none if it does not exist)."""
    path = Path(folder) / RESULTS_DIR / f"{name}.jsonl"
    return read_jsonl(path) if path.exists() else []


def table_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """The numeric frame of the table :func:`write_table` writes for ``records`` (no origin column):
    an ablation's, or a suite's of its current setting."""
    return build_ablation_table(records) if is_ablation(records) else build_table(current_records(records))


class Published(NamedTuple):
    """What :func:`publish` wrote and changed."""

    paths: list[Path]
    added: int
    replaced: int
    hidden: int

    def summary(self, name: str) -> str:
        """One line on what changed in table ``name`` (a second one when records are hidden)."""
        line = (f"published {name}: {self.added} records added, {self.replaced} replaced by newer runs; "
                f"written: {', '.join(str(p) for p in self.paths)}")
        if self.hidden:
            line += f"\n{hidden_note(self.hidden)[0]} `benchbase leaderboard --prune {name} {HIDDEN}` removes them."
        return line


def publish(records: Sequence[RunRecord], out_dir: str | os.PathLike[str], name: str) -> Published:
    """Merge ``records`` into the committed records ``<out_dir>/results/<name>.jsonl`` (a union,
    see :func:`merge_records`) and rewrite table ``name`` from all of them. ``hidden`` counts the
    records the table does not show (other settings, superseded seeds)."""
    out = Path(out_dir)
    path = out / RESULTS_DIR / f"{name}.jsonl"
    merge = merge_records(_read_records(out, name), records)
    write_jsonl(path, merge.records)
    hidden = len(merge.records) - len(shown_records(merge.records))
    return Published([path, *write_table(merge.records, out, name)], merge.added, merge.replaced, hidden)


def write_local(records: Sequence[RunRecord], committed_dir: str | os.PathLike[str], local: str | os.PathLike[str],
                name: str) -> list[Path]:
    """The local table ``<local>/<name>.*``: the committed records of ``<committed_dir>/results/<name>.jsonl``
    merged with this machine's ``records`` (each row marked by its origin); ``records`` alone are
    exported to ``<local>/results/<name>.jsonl`` (what :func:`publish` would add). The committed
    folder is only read."""
    committed = _read_records(committed_dir, name)
    path = Path(local) / RESULTS_DIR / f"{name}.jsonl"
    write_jsonl(path, records)
    return [path, *write_table(merge_records(committed, records).records, local, name, None, record_ids(committed))]


def local_dir(db_path: str | os.PathLike[str]) -> Path:
    """The folder of the local tables of the results database at ``db_path``: ``leaderboards/``
    next to it (``$BENCHBASE_HOME/leaderboards/`` by default)."""
    return Path(db_path).parent / LOCAL_DIR


def shown_records(records: Sequence[RunRecord]) -> list[RunRecord]:
    """The records a table of ``records`` shows: an ablation's latest run per variant and seed; a
    suite's latest run per row and seed, of the current setting."""
    rows = ablation_rows(records) if is_ablation(records) else _group_rows(current_records(records))
    return [record for group in rows.values() for record in group]


def prune(out_dir: str | os.PathLike[str], name: str, selectors: Sequence[str]) -> tuple[list[RunRecord], list[Path]]:
    """Remove records from the committed ``<out_dir>/results/<name>.jsonl`` and rewrite its table.

    A selector is a config hash (every record of it goes) or :data:`HIDDEN` (the records the table
    does not show). Returns the removed records and the files written; a selector that matches
    nothing is a one-line error and nothing is removed."""
    out = Path(out_dir)
    records = _read_records(out, name)
    if not records:
        raise BenchbaseError(f"no committed records in {out / RESULTS_DIR / name}.jsonl; "
                             f"name a table of {out / RESULTS_DIR} to prune")
    shown = {id(r) for r in shown_records(records)}
    doomed: set[int] = set()
    for selector in selectors:
        if selector == HIDDEN:
            doomed |= {id(r) for r in records if id(r) not in shown}
            continue
        matched = {id(r) for r in records if r.config_hash == selector}
        if not matched:
            raise BenchbaseError(f"no record of config hash {selector!r} in results/{name}.jsonl; "
                                 f"pass config hashes of that file or {HIDDEN!r}")
        doomed |= matched
    removed = [r for r in records if id(r) in doomed]
    kept = [r for r in records if id(r) not in doomed]
    if not kept:
        raise BenchbaseError(f"pruning would remove every record of results/{name}.jsonl; "
                             "delete the file and its table by hand if that is meant")
    write_jsonl(out / RESULTS_DIR / f"{name}.jsonl", kept)
    return removed, write_table(kept, out, name)


def local_records(db: ResultsDB, local: str | os.PathLike[str]) -> dict[str, list[RunRecord]]:
    """This machine's current records of each suite in ``db`` (the setting of its latest run).

    A suite keeps the rows its last local export borrowed from another suite's runs (a run reused
    from an ablation's record is stored under the ablation), as long as ``db`` still holds them.
    Ablation suites are left out: ``benchbase ablate NAME`` exports them in their spec's layout.
    """
    stored = db.records()
    by_hash = {r.config_hash: r for r in stored}
    by_suite: dict[str, list[RunRecord]] = defaultdict(list)
    for record in stored:
        by_suite[record.suite].append(record)
    found = {}
    for suite in sorted(s for s in by_suite if not s.startswith(ABLATION_PREFIX)):
        before = _read_records(local, suite)
        borrowed = [dataclasses.replace(by_hash[r.config_hash], suite=suite) for r in before
                    if r.config_hash in by_hash and by_hash[r.config_hash].suite != suite]
        current = current_records(by_suite[suite] + borrowed)
        if current:  # a suite of eval records alone has no table
            found[suite] = current
    return found


def regenerate_from_records(out_dir: str | os.PathLike[str], tables_dir: str | os.PathLike[str] | None = None
                            ) -> list[Path]:
    """Rewrite every table from the committed records ``<out_dir>/results/*.jsonl`` alone."""
    out = Path(out_dir)
    files = sorted((out / RESULTS_DIR).glob("*.jsonl"))
    if not files:
        raise BenchbaseError(f"no records in {out / RESULTS_DIR}; publish some with `benchbase run --publish` "
                             "or `benchbase leaderboard --publish`")
    tables = Path(tables_dir) if tables_dir is not None else out
    written = []
    for f in files:
        written += write_table(read_jsonl(f), tables, f.stem, out)
    return written + write_reported(out, tables)


REPORTED_DIR = "reported"
"""Sub-folder of the leaderboard folder with numbers that papers report (CSV, one row per number,
each with its paper and table): source data for the "reported in the paper" tables, which are
generated from it and never mixed with measured rows."""


def write_reported(out_dir: str | os.PathLike[str], tables_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """``reported.md``: the papers' numbers from ``<out_dir>/reported/*.csv``, one table per suite."""
    out = Path(out_dir)
    files = sorted((out / REPORTED_DIR).glob("*.csv"))
    if not files:
        return []
    rows = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True)
    lines = ["# Reported in the papers", "",
             "Numbers as the papers (or their official READMEs) report them, for the protocol of the suite of the "
             "same name. They are not benchbase measurements and never enter the measured tables.", ""]
    for suite, group in rows.groupby("suite", sort=True):
        lines += [f"## {suite}", ""]
        wide = group.pivot_table(index=["paper", "where", "method", "student", "teacher"], columns="metric",
                                 values="value", aggfunc="first").reset_index()
        wide = wide.fillna("—").rename_axis(columns=None)
        lines += [tabulate(wide, headers="keys", tablefmt="github", showindex=False, disable_numparse=True), ""]
    path = (Path(tables_dir) if tables_dir is not None else out) / "reported.md"
    write_text_atomic(path, "\n".join(lines))
    return [path]


def check(out_dir: str | os.PathLike[str]) -> list[str]:
    """Names of committed tables that differ from what their records produce (empty when in sync)."""
    import tempfile

    from benchbase.plots import paths_only

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp, paths_only():  # PNG bytes vary with matplotlib builds: not drawn
        fresh = regenerate_from_records(out, tmp)
        tables = [p for p in fresh if p.suffix in (".md", ".csv")]
        return [p.name for p in tables if not (out / p.name).exists() or (out / p.name).read_text() != p.read_text()]
