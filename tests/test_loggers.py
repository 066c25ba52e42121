"""Experiment loggers: what they receive from a training run, TensorBoard and MLflow files, failures."""

from __future__ import annotations

import json
import re
import sys

import pytest
from omegaconf import OmegaConf

from benchbase import distributed
from benchbase.core import Supervised
from benchbase.components import Metric, Student
from benchbase.config import TrainerConfig, compose_config
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import lr_at, train
from benchbase.errors import BenchbaseError
from benchbase.loggers import STEPS_LOG, Logger, RunInfo, RunLoggers, StepLog, StepsFile, TensorBoard
from benchbase.plugin_manager import check_component, load

from conftest import tiny_vit

EPOCHS, BATCH = 2, 128


class Recording(Logger):
    """Keeps every call it gets."""

    calls: list[tuple[str, object]] = []

    def start(self, run: RunInfo) -> None:
        Recording.calls = [("start", run)]

    def log_step(self, step: StepLog) -> None:
        self.calls.append(("step", step))

    def log_metrics(self, metrics, step: int) -> None:
        self.calls.append(("metrics", (dict(metrics), step)))

    def flush(self) -> None:
        self.calls.append(("flush", None))

    def finish(self, status: str) -> None:
        self.calls.append(("finish", status))


class FailsToStart(Recording):
    def start(self, run: RunInfo) -> None:
        raise ConnectionError("tracking server unreachable\nsecond line of the error")


class FailsAtStep(Recording):
    def start(self, run: RunInfo) -> None:
        pass

    def log_step(self, step: StepLog) -> None:
        raise OSError("disk full")


def train_with(loggers: RunLoggers, run_dir) -> int:
    """Train a tiny ViT for :data:`EPOCHS` with ``loggers``; the number of steps it took."""
    data = load_digits_bundle().split("base_train")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig),
                          {"epochs": EPOCHS, "batch_size": BATCH, "progress": False, "warmup_epochs": 1,
                           "lr": 1e-3, "min_lr": 1e-5})
    return train(Student(tiny_vit()), None, Supervised(), data, cfg, run_dir, seed=0, loggers=loggers).steps


def top1(value: float) -> dict[str, Metric]:
    return {"top1/top1": Metric("top1", value, 450, "linear probe", None, {"task": "top1"})}


def test_loggers_get_the_config_every_step_metrics_and_the_end_and_failing_ones_drop_out(tmp_path, capsys):
    run = RunInfo("default", "feature-seed0", tmp_path / "run", {"seed": 0, "trainer": {"lr": 0.001}})
    loggers = RunLoggers({"jsonl": StepsFile, "recording": Recording, "down": FailsToStart, "flaky": FailsAtStep}, run)
    steps = train_with(loggers, run.run_dir)
    loggers.log_metrics(top1(81.0), steps)
    loggers.finish("done")

    kinds = [kind for kind, _ in Recording.calls]
    assert kinds[0] == "start" and kinds[-2:] == ["metrics", "finish"]
    started = Recording.calls[0][1]
    assert (started.suite, started.name, started.config, started.step, started.total_steps) == (
        "default", "feature-seed0", run.config, 0, steps)
    logged = [value for kind, value in Recording.calls if kind == "step"]
    assert [s.step for s in logged] == list(range(1, steps + 1)) and {s.epoch for s in logged} == set(range(EPOCHS))
    assert all(set(s.terms) == {"ce"} and s.lr > 0 and s.images_per_second > 0 for s in logged)
    assert [s.lr for s in logged] == [lr_at(i, steps, steps // EPOCHS, 1e-3, 1e-5) for i in range(steps)]
    assert kinds.count("flush") >= EPOCHS  # with every checkpoint
    assert Recording.calls[-2][1] == (top1(81.0), steps) and Recording.calls[-1][1] == "done"
    # steps.jsonl is one logger among the others, writing what it always wrote
    lines = [json.loads(line) for line in (run.run_dir / STEPS_LOG).read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, steps + 1))
    assert lines[0] == {"step": 1, "epoch": 0, "lr": logged[0].lr, "ce": logged[0].terms["ce"]}
    # each failure is one line naming the logger; the run went on without it
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: logger 'down' failed to start: ConnectionError: tracking server unreachable; "
        "feature-seed0 goes on without it",
        "warning: logger 'flaky' failed to log a step: OSError: disk full; feature-seed0 goes on without it",
    ]
    assert set(loggers.active) == set()  # all finished


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    loggers = RunLoggers({"jsonl": StepsFile, "recording": Recording}, RunInfo("s", "r", tmp_path))
    Recording.calls = []
    loggers.start(0, 10)
    loggers.log_step(StepLog(1, 0, {"ce": 1.0}, 0.1, 5.0))
    loggers.finish("done")
    assert Recording.calls == [] and not (tmp_path / STEPS_LOG).exists()


def test_tensorboard_logger_writes_steps_metrics_and_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunInfo("default", "feature-seed0", tmp_path / "run", {"seed": 0})
    loggers = RunLoggers({"tensorboard": TensorBoard}, run)
    steps = train_with(loggers, run.run_dir)
    loggers.log_metrics(top1(81.0), steps)
    loggers.finish("done")
    events = EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/ce")] == list(range(1, steps + 1))
    assert len(events.Scalars("train/lr")) == len(events.Scalars("train/images_per_second")) == steps
    assert [(e.step, e.value) for e in events.Scalars("eval/top1/top1")] == [(steps, 81.0)]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_logger_uses_a_local_file_store_offline_and_resumes_its_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from benchbase_plugins.mlflow_logger import MLflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    config = {"home": str(tmp_path / "home"), "seed": 0, "trainer": {"lr": 0.001, "betas": [0.9, 0.999]}}
    run = RunInfo("default", "feature-seed0", tmp_path / "run", config)
    loggers = RunLoggers({"mlflow": MLflow}, run)
    steps = train_with(loggers, run.run_dir)
    loggers.log_metrics(top1(81.0), steps)
    loggers.finish("done")
    assert set(loggers.active) == set()

    client = MlflowClient((tmp_path / "home" / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "default"]
    (stored,) = client.search_runs([experiment.experiment_id])
    assert stored.info.run_name == "feature-seed0" and stored.info.status == "FINISHED"
    assert stored.data.params["trainer.lr"] == "0.001" and stored.data.params["trainer.betas"] == "[0.9, 0.999]"
    assert [m.step for m in client.get_metric_history(stored.info.run_id, "loss/ce")] == list(range(1, steps + 1))
    assert stored.data.metrics["eval/top1/top1"] == 81.0 and "train/images_per_second" in stored.data.metrics

    # a run resumed from its checkpoint continues the same MLflow run
    resumed = RunLoggers({"mlflow": MLflow}, run)
    resumed.start(steps - 1, steps)
    resumed.log_step(StepLog(steps, EPOCHS - 1, {"ce": 0.5}, 1e-5, 100.0))
    resumed.finish("stopped")
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == stored.info.run_id and again.info.status == "KILLED"


def test_logger_key_is_validated_and_logger_classes_are_checked():
    bb = load()
    assert {"jsonl", "tensorboard", "mlflow"} <= set(bb.registry.names("loggers"))
    assert list(compose_config(["logger=[tensorboard,mlflow]"]).logger) == ["tensorboard", "mlflow"]
    assert list(bb.logger_classes(["tensorboard", "mlflow", "jsonl"])) == ["jsonl", "tensorboard", "mlflow"]
    with pytest.raises(BenchbaseError, match=r"^unknown logger 'wandb'; available: jsonl, .*tensorboard"):
        bb.logger_classes(["wandb"])
    with pytest.raises(BenchbaseError, match=re.escape("config key 'logger' takes a list; write logger=[tensorboard]")):
        compose_config(["logger=tensorboard"])
    with pytest.raises(BenchbaseError, match="does not subclass benchbase.loggers.Logger"):
        check_component("loggers", "bad", object, "someone")
    with pytest.raises(BenchbaseError, match="does not implement log_step"):
        check_component("loggers", "half", type("Half", (Logger,), {"start": lambda self, run: None}), "someone")


def test_a_tracker_whose_package_is_missing_is_a_one_line_warning(tmp_path, monkeypatch, capsys):
    from benchbase_plugins.mlflow_logger import MLflow

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if `pip install benchbase[mlflow]` never ran
    loggers = RunLoggers({"jsonl": StepsFile, "mlflow": MLflow}, RunInfo("default", "feature-seed0", tmp_path))
    loggers.start(0, 10)
    assert list(loggers.active) == ["jsonl"]
    assert capsys.readouterr().err == ("warning: logger 'mlflow' failed to start: the mlflow package is not installed; "
                                       "pip install 'benchbase[mlflow]'; feature-seed0 goes on without it\n")
    loggers.finish("done")
