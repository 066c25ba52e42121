"""Which ``benchbase eval`` records a suite's table shows as rows.

An eval record (role ``eval``) stored with ``--row`` is a row of its suite's table, after the
methods, with those of its metrics whose task the table's setting runs identically: the same
task config (evaluator, dataset, params) and the same config of the task's dataset. Its metrics
then join the columns of the runs only where their protocols match too (an eval metric never
adds a column). Eval records never choose a table's setting, and records without ``--row`` are
never shown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from benchbase.results import RunRecord

ROLE = "eval"


def _task_setting(record: RunRecord, task: str) -> tuple[object, object] | None:
    """The task's config and its dataset's config in ``record`` (None where it has no such task)."""
    found = ((record.config.get("suite") or {}).get("tasks") or {}).get(task)
    if not isinstance(found, dict):
        return None
    return found, (record.config.get("data") or {}).get(found.get("dataset"))


def _same_task(record: RunRecord, setting: RunRecord, task: str | None) -> bool:
    """Whether ``setting`` runs ``task`` exactly as ``record`` did."""
    ours = _task_setting(record, task) if task else None
    return ours is not None and ours == _task_setting(setting, task)


def shown_eval_rows(records: Sequence[RunRecord], setting: RunRecord) -> list[RunRecord]:
    """The ``row`` eval records among ``records``, each cut to the metrics of tasks that ``setting``
    (a run of the table's setting) runs identically; records left without metrics are dropped."""
    shown = []
    for record in records:
        if record.role != ROLE or not record.config.get("row"):
            continue
        metrics = [m for m in record.metrics if _same_task(record, setting, m.extras.get("task"))]
        if metrics:
            shown.append(dataclasses.replace(record, metrics=metrics))
    return shown
