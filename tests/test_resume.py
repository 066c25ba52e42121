"""Checkpoints and resume: a run killed mid-training and restarted equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from benchbase.core import Supervised
from benchbase.cli import main
from benchbase.components import Student
from benchbase.config import TrainerConfig
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import CHECKPOINT, lr_at, train
from benchbase.errors import MethodFailed
from benchbase.loggers import STEPS_LOG
from benchbase.results import ResultsDB

from conftest import tiny_vit
from test_run import instant


def trainer(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 3, "batch_size": 64, "progress": False, **kw})


class CrashAt(Supervised):
    """Supervised loss that raises once, at a given step (a simulated crash mid-epoch)."""

    def __init__(self, crash_step: int):
        super().__init__()
        self.crash_step, self.steps = crash_step, 0

    def after_step(self, student, progress):
        self.steps += 1
        if self.steps == self.crash_step:
            raise KeyboardInterrupt


def test_resume_after_crash_mid_epoch_equals_uninterrupted(tmp_path):
    data = load_digits_bundle().split("base_train")
    whole = Student(tiny_vit(seed=3))
    train(whole, None, Supervised(), data, trainer(), tmp_path / "whole", seed=7)
    crashed = Student(tiny_vit(seed=3))
    with pytest.raises(KeyboardInterrupt):
        train(crashed, None, CrashAt(crash_step=13), data, trainer(), tmp_path / "crashed", seed=7)  # epoch 1, mid
    lines_before = (tmp_path / "crashed" / STEPS_LOG).read_text().count("\n")
    assert lines_before == 12  # steps 1-12 logged; the crash came in step 13's after_step
    resumed = Student(tiny_vit(seed=99))  # weights come from the checkpoint, not the init
    result = train(resumed, None, Supervised(), data, trainer(), tmp_path / "crashed", seed=7)
    assert result.resumed_from_epoch == 1
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / STEPS_LOG).read_text().splitlines()]
    assert steps == list(range(1, result.steps + 1))  # each step logged exactly once


def test_non_finite_loss_fails_with_its_step(tmp_path):
    class Nan(Supervised):
        calls = 0

        def forward(self, student, teacher, inputs):
            self.calls += 1
            terms = super().forward(student, teacher, inputs)
            return {"ce": terms["ce"] * (float("nan") if self.calls == 3 else 1.0)}

    for every in (1, 4):  # terms read every step, or four steps at a time (a GPU's default is 25)
        with pytest.raises(MethodFailed) as err:
            train(Student(tiny_vit()), None, Nan(), load_digits_bundle().split("base_train"),
                  trainer(sync_every=every), tmp_path / f"nan{every}", 0)
        assert err.value.step == 2 and "non-finite" in str(err.value)
        steps = [json.loads(line)["step"] for line in (tmp_path / f"nan{every}" / STEPS_LOG).read_text().splitlines()]
        assert steps == [1, 2]  # the finite steps before it, each logged once


def test_reading_terms_in_batches_changes_no_weight_and_no_logged_value(tmp_path):
    data = load_digits_bundle().split("base_train")
    logs = {}
    for every in (1, 5):  # 9 steps an epoch: reads fall mid-epoch and at each epoch's end
        student = Student(tiny_vit(seed=3))
        result = train(student, None, Supervised(), data, trainer(sync_every=every), tmp_path / str(every), seed=7)
        logs[every] = [{k: v for k, v in json.loads(line).items() if k != "images_per_second"}
                       for line in (tmp_path / str(every) / STEPS_LOG).read_text().splitlines()]
        logs[every, "weights"] = student.state_dict()
        assert result.steps == len(logs[every]) == 27
    assert logs[1] == logs[5]
    for a, b in zip(logs[1, "weights"].values(), logs[5, "weights"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_sigkill_then_same_command_resumes_to_the_same_metrics(tmp_path):
    args = [sys.executable, "-m", "benchbase", "run", "--methods", "feature",
            *instant(tmp_path / "killed", "trainer.epochs=3")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "killed" / "runs" / "digits"
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = list(runs.glob("feature-*/" + CHECKPOINT))
        if ckpt and torch.load(ckpt[0], weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no checkpoint appeared")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [r for r in ResultsDB(tmp_path / "killed" / "results.db").records() if r.method == "feature"]
    # the same command again resumes from what the killed process left on disk; it and the
    # uninterrupted run for comparison run in this process (two interpreter starts fewer)
    assert main(args[3:]) == 0
    assert main([*args[3:6], *instant(tmp_path / "clean", "trainer.epochs=3")]) == 0

    def metrics(home):
        records = [r for r in ResultsDB(home / "results.db").records() if r.method == "feature"]
        assert len(records) == 1 and records[0].status == "done"
        return {(m.extras["task"], m.name): (m.value, m.ci95) for m in records[0].metrics if m.name != "images_per_second"}

    assert metrics(tmp_path / "killed") == metrics(tmp_path / "clean")
    log = next(runs.glob("feature-*/" + STEPS_LOG)).read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == list(range(1, len(log) + 1))


def test_a_run_resumed_after_its_last_step_reports_no_throughput(tmp_path):
    args = ["run", "--methods", "feature", *instant(tmp_path, "trainer.epochs=1")]
    assert main(args) == 0
    (tmp_path / "results.db").unlink()  # as if stopped after training, before the record was stored
    assert main(args) == 0
    (record,) = [r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "feature"]
    assert record.status == "done" and "top1" in {m.name for m in record.metrics}
    assert "images_per_second" not in {m.name for m in record.metrics}  # not a rate of 0
