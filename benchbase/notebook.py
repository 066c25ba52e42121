"""benchbase from Python (a notebook, a script): run suites, and load results and tables as pandas.

::

    import benchbase.notebook as bb

    board = bb.run("trainer.epochs=3", methods="feature")   # the default suite, one method
    board                     # the table as `benchbase run` prints it (HTML in Jupyter)
    board.frame               # numeric: <column>, <column>_ci95, _rank, _below_floor, seeds, status
    df = bb.results("glyphs")                                # tidy: one row per run x metric
    df[df.shown].pivot_table(index="method", columns="key", values="value")

:func:`run` goes through :func:`benchbase.suite.run_suite` exactly as ``benchbase run`` does: the same
Hydra composition and validation (a bad override raises :class:`~benchbase.errors.BenchbaseError`
with the one line the command line prints), storage, reuse of stored runs, loggers, local table and
(with ``publish=True``) publishing. :func:`table` and :func:`results` read this machine's results
database, or with ``leaderboard_dir=`` the committed records of a leaderboard folder
(``leaderboards/results/*.jsonl``: what the published tables show).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from benchbase.config import compose_config
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import (
    ABLATION_PREFIX,
    RESULTS_DIR,
    _formatted,
    format_table,
    local_dir,
    metric_key,
    record_ids,
    shown_records,
    table_frame,
)
from benchbase.plugin_manager import load
from benchbase.results import ResultsDB, RunRecord, read_jsonl, records_frame
from benchbase.suite import run_suite, suite_context

PathLike = str | os.PathLike[str]


@dataclass(repr=False)
class Table:
    """One leaderboard: its ``name`` (the suite, or ``ablation-<name>``), the numeric ``frame``
    (:func:`benchbase.leaderboard.build_table`'s columns and ``attrs``: floors, comparisons,
    protocols, roles) and the ``records`` it was built from. Shown as the command line prints it."""

    name: str
    frame: pd.DataFrame
    records: list[RunRecord]

    @property
    def text(self) -> str:
        """The table as ``benchbase run`` prints it."""
        return format_table(self.frame)

    def formatted(self) -> pd.DataFrame:
        """The table with one text cell per metric, as the pages show it: ``83.2 ± 0.4 (#1)``, ``▼``
        where the cell does not lie above the best floor."""
        return _formatted(self.frame)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return self.formatted().to_html(index=False)


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def config(*overrides: str, plugins_dir: PathLike | None = None) -> DictConfig:
    """The config that ``overrides`` compose, as ``benchbase run --cfg job`` prints it."""
    return compose_config(list(overrides), load(plugins_dir).config_dirs())


def run(*overrides: str, plugins: str | Sequence[str] | None = None, methods: str | Sequence[str] | None = None,
        force: bool = False, publish: bool = False, plugins_dir: PathLike | None = None,
        echo: Callable[[str], object] = print) -> Table:
    """Run a suite as ``benchbase run [--methods P] [--publish] OVERRIDES`` does and return its table.

    Args:
        overrides: Hydra overrides, e.g. ``"suite=cifar"``, ``"trainer.epochs=3"``,
            ``"logger=[tensorboard]"``.
        plugins: the method plugins to run (default: every installed one).
        methods: registered methods to run instead of the plugins' methods (e.g. ``"feature"``).
        force: rerun runs whose config is already stored.
        publish: also merge the runs into the committed records of ``leaderboard_dir``.
        plugins_dir: also load plugins from the ``.py`` files of this folder.
        echo: where progress lines go (``print``; ``lambda line: None`` silences them).

    Returns:
        The table ``benchbase run`` prints: the suite's runs of its current setting in the results
        database (its ``records`` are those runs, as exported to the local table).
    """
    bb = load(plugins_dir)
    run_suite(bb, list(overrides), _names(plugins), force=force, echo=echo, publish_runs=publish,
              methods=_names(methods))
    cfg = suite_context(bb, list(overrides)).cfg
    return table(cfg.suite.name, leaderboard_dir=local_dir(cfg.db))


def table(suite: str, *, db: PathLike | None = None, leaderboard_dir: PathLike | None = None) -> Table:
    """The table of ``suite`` (a suite, or ``ablation-<name>`` from a leaderboard folder).

    Args:
        suite: the suite's name.
        db: the results database to read (default: the configured one, ``$BENCHBASE_HOME/results.db``);
            the table shows the suite's runs of the setting of its latest run.
        leaderboard_dir: read the records ``<leaderboard_dir>/results/<suite>.jsonl`` instead, e.g.
            ``"leaderboards"`` for the committed table.
    """
    if leaderboard_dir is None and suite.startswith(ABLATION_PREFIX):
        raise BenchbaseError(f"{suite}'s table is built from its exported records (written by `benchbase ablate`); "
                             "pass leaderboard_dir=")
    records = _records(suite, db, leaderboard_dir)
    return Table(suite, table_frame(records), records)


def results(suite: str | None = None, *, db: PathLike | None = None,
            leaderboard_dir: PathLike | None = None) -> pd.DataFrame:
    """Every metric of every run as a tidy frame: one row per run x metric.

    Columns: the run's fields (``suite``, ``role``, ``method``, ``seed``, ``status``, ``teacher``,
    ``student``, ``dataset``, ``config_hash``, ``created_at``, ...), ``shown`` (whether the suite's
    table counts the run: its current setting, the latest run of its row's seed), then ``key`` (the
    table column, ``<task>/<metric>``), ``metric``, ``task``, ``value``, ``n``, ``ci95`` (the
    metric's own 95% CI half-width, NaN where it has none), ``protocol`` and ``extras`` (per-sample
    outcomes among them). Sources as in :func:`table`; ``suite`` None reads every suite.
    """
    records = _records(suite, db, leaderboard_dir)
    by_suite: dict[str, list[RunRecord]] = {}
    for record in records:
        by_suite.setdefault(record.suite, []).append(record)
    shown = set().union(*(record_ids(shown_records(group)) for group in by_suite.values()))
    frame = records_frame(records)
    at = frame.columns.get_loc("metric")
    frame.insert(at, "key", [metric_key(m) for r in records for m in r.metrics])
    frame.insert(at, "shown", [(r.config_hash, r.created_at) in shown for r in records for _ in r.metrics])
    return frame


def _records(suite: str | None, db: PathLike | None, leaderboard_dir: PathLike | None) -> list[RunRecord]:
    """The records of ``suite`` (every suite when None) from the database or a leaderboard folder."""
    if leaderboard_dir is None:
        path = Path(compose_config().db if db is None else db)
        if not path.is_file():
            raise BenchbaseError(f"no results database at {path}; run a suite first, or read the committed "
                                 "records with leaderboard_dir='leaderboards'")
        return ResultsDB(path).records(suite)
    if db is not None:
        raise BenchbaseError("pass db= or leaderboard_dir=, not both")
    folder = Path(leaderboard_dir) / RESULTS_DIR
    files = [folder / f"{suite}.jsonl"] if suite is not None else sorted(folder.glob("*.jsonl"))
    if not files or not files[0].is_file():
        raise BenchbaseError(f"no records {'of ' + suite + ' ' if suite else ''}in {folder}; "
                             "run or publish the suite first, or read the results database (no leaderboard_dir=)")
    return [record for path in files for record in read_jsonl(path)]
