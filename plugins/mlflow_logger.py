"""MLflow tracking for benchbase runs: ``logger=[mlflow]``, after ``pip install 'benchbase[mlflow]'``.

A logger plugin like any other (only the ``benchbase_register_loggers`` hook): each run of a suite
becomes an MLflow run named ``<method>-seed<seed>`` in the experiment named after the suite. The
resolved config goes in as params (dotted keys), the loss terms, lr and throughput as step metrics
(``loss/<term>``, ``train/lr``, ``train/images_per_second``: buffered and sent in batches with each
checkpoint, not one request per step), the evaluation metrics as ``eval/<task>/<metric>`` at the last
step, and the run's end as its status (done: FINISHED, failed: FAILED, stopped: KILLED). A run that
resumes from its checkpoint continues its MLflow run.

Where: ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///mlflow.db``, Databricks), else a local
file store in ``$BENCHBASE_HOME/mlruns`` that needs no network. MLflow 3 keeps its file store in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE=true``, which this logger sets for that default;
``mlflow ui --backend-store-uri $BENCHBASE_HOME/mlruns`` shows it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchbase.api import BenchbaseError, Logger, Metric, Register, RunInfo, StepLog, hookimpl

STORE_DIR = "mlruns"
"""The default store's folder under ``$BENCHBASE_HOME``."""
RUN_FILE = "mlflow-run.json"
"""In the run folder: the tracking URI and run id that a resumed run continues."""
STATUS = {"done": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as ``{"a.b.c": "value"}``; lists and scalars become their JSON text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class MLflow(Logger):
    """One MLflow run per benchbase run, through ``MlflowClient`` (no global active run)."""

    def start(self, run: RunInfo) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise BenchbaseError("the mlflow package is not installed; pip install 'benchbase[mlflow]'") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (Path(run.config.get("home") or ".") / STORE_DIR).resolve().as_uri()
        self.client, self.pending = MlflowClient(uri), []
        resumed = _previous_run(run, uri)
        if resumed:
            self.run_id = resumed
            self.client.update_run(resumed, status="RUNNING")
            return
        experiment = run.suite or "benchbase"
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run.name,
                                             tags={"benchbase.run_dir": str(run.run_dir)}).info.run_id
        (run.run_dir / RUN_FILE).write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}))
        self._log_params(run.config)

    def _log_params(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(config).items()]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def _add(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric as MlflowMetric

        now = int(time.time() * 1000)
        self.pending += [MlflowMetric(key, float(value), now, step) for key, value in values.items()]

    def log_step(self, step: StepLog) -> None:
        self._add({**{f"loss/{k}": v for k, v in step.terms.items()}, "train/lr": step.lr,
                   "train/images_per_second": step.images_per_second}, step.step)

    def log_metrics(self, metrics: Mapping[str, Metric], step: int) -> None:
        self._add({f"eval/{key}": metric.value for key, metric in metrics.items()}, step)
        self.flush()

    def flush(self) -> None:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        pending, self.pending = self.pending, []
        for chunk in _chunks(pending, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=STATUS[status])


def _previous_run(run: RunInfo, uri: str) -> str | None:
    """The MLflow run id this run's folder recorded for ``uri``, when the run resumes."""
    path = run.run_dir / RUN_FILE
    if not run.step or not path.exists():
        return None
    recorded = json.loads(path.read_text())
    return recorded["run_id"] if recorded.get("tracking_uri") == uri else None


@hookimpl
def benchbase_register_loggers(register: Register) -> None:
    register("mlflow", MLflow)
