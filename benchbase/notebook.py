"""benchbase from Python (a notebook, a script): run suites, and load results and tables as pandas.

::

    import benchbase.notebook as bb

    board = bb.run("trainer.epochs=3", methods="feature")   # the default suite, one method
    board                     # the table as `benchbase run` prints it (HTML in Jupyter)
    board.frame               # numeric: <column>, <column>_ci95, _rank, _below_floor, seeds, status
    df = bb.results("default")                               # tidy: one row per run x metric
    df.pivot_table(index="method", columns="key", values="value")

:func:`run` goes through :func:`benchbase.suite.run_suite` exactly as ``benchbase run`` does: the same
Hydra composition and validation (a bad override raises :class:`~benchbase.errors.BenchbaseError`
with the one line the command line prints), storage, reuse of stored runs, loggers and published
tables. :func:`table` and :func:`results` read a leaderboard folder's exported records
(``leaderboards/results/<suite>.jsonl``: what the published tables show) or, with ``db=``, the
results database (every stored run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from benchbase.ablation import PREFIX, build_ablation_table, is_ablation
from benchbase.config import compose_config
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import RESULTS_DIR, _formatted, build_table, current_records, format_table, metric_key
from benchbase.plugins import load
from benchbase.results import ResultsDB, RunRecord, read_jsonl, records_frame
from benchbase.suite import run_suite, suite_context

PathLike = str | os.PathLike[str]


@dataclass(repr=False)
class Table:
    """One leaderboard: its ``name`` (the suite, or ``ablation-<name>``), the numeric ``frame``
    (:func:`benchbase.leaderboard.build_table`'s columns and ``attrs``: floors, comparisons,
    protocols, roles) and the ``records`` behind it. Shown as the command line prints it."""

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
        force: bool = False, plugins_dir: PathLike | None = None, echo: Callable[[str], object] = print) -> Table:
    """Run a suite as ``benchbase run [--plugins P] OVERRIDES`` does and return its table.

    Args:
        overrides: Hydra overrides, e.g. ``"suite=cpu-real"``, ``"trainer.epochs=3"``,
            ``"logger=[tensorboard]"``.
        plugins: the method plugins to run (default: every installed one).
        methods: registered losses to run instead of the plugins' methods (e.g. ``"feature"``).
        force: rerun runs whose config is already stored.
        plugins_dir: also load plugins from the ``.py`` files of this folder.
        echo: where progress lines go (``print``; ``lambda line: None`` silences them).

    Returns:
        The suite's table with every stored run of its current setting, as published to
        ``leaderboard_dir``.
    """
    bb = load(plugins_dir)
    run_suite(bb, list(overrides), _names(plugins), force=force, echo=echo, methods=_names(methods))
    cfg = suite_context(bb, list(overrides)).cfg
    return table(cfg.suite.name, leaderboard_dir=cfg.leaderboard_dir)


def table(suite: str, *, db: PathLike | bool | None = None, leaderboard_dir: PathLike | None = None) -> Table:
    """The leaderboard of ``suite`` (a suite or ``ablation-<name>``), as the published page shows it.

    Args:
        suite: the suite's name.
        db: read the results database at this path (True: the configured one,
            ``$BENCHBASE_HOME/results.db``) instead of the exported records; the table then shows
            the suite's current setting, as ``benchbase run`` does.
        leaderboard_dir: the leaderboard folder whose ``results/<suite>.jsonl`` to read (default:
            the configured ``leaderboard_dir``, ``leaderboards``).
    """
    if db is not None and suite.startswith(PREFIX):
        raise BenchbaseError(f"{suite}'s table is built from its exported records (written by `benchbase ablate`); "
                             "call table() without db=")
    records = _records(suite, db, leaderboard_dir)
    if is_ablation(records):
        return Table(suite, build_ablation_table(records), records)
    if db is not None:
        records = current_records(records)
    return Table(suite, build_table(records), records)


def results(suite: str | None = None, *, db: PathLike | bool | None = None,
            leaderboard_dir: PathLike | None = None) -> pd.DataFrame:
    """Every metric of every run as a tidy frame: one row per run x metric.

    Columns: the run's fields (``suite``, ``role``, ``method``, ``seed``, ``status``, ``teacher``,
    ``student``, ``dataset``, ``config_hash``, ``created_at``, ...), then ``key`` (the table column,
    ``<task>/<metric>``), ``metric``, ``task``, ``value``, ``n``, ``ci95`` (the metric's own 95% CI
    half-width, NaN where it has none), ``protocol`` and ``extras`` (per-sample outcomes among them).
    Sources as in :func:`table`; ``suite`` None reads every suite.
    """
    records = _records(suite, db, leaderboard_dir)
    frame = records_frame(records)
    frame.insert(frame.columns.get_loc("metric"), "key", [metric_key(m) for r in records for m in r.metrics])
    return frame


def _records(suite: str | None, db: PathLike | bool | None, leaderboard_dir: PathLike | None) -> list[RunRecord]:
    """The records of ``suite`` (every suite when None) from the database or the exported records."""
    if db is not None and leaderboard_dir is not None:
        raise BenchbaseError("pass db= or leaderboard_dir=, not both")
    if db is not None:
        path = Path(compose_config().db if db is True else db)
        if not path.is_file():
            raise BenchbaseError(f"no results database at {path}; run a suite first or pass db=PATH")
        return ResultsDB(path).records(suite)
    folder = Path(compose_config().leaderboard_dir if leaderboard_dir is None else leaderboard_dir) / RESULTS_DIR
    files = [folder / f"{suite}.jsonl"] if suite is not None else sorted(folder.glob("*.jsonl"))
    if not files or not files[0].is_file():
        raise BenchbaseError(f"no exported records {'for ' + suite + ' ' if suite else ''}in {folder}; "
                             "run the suite first (benchbase.notebook.run) or read the database with db=True")
    return [record for path in files for record in read_jsonl(path)]
