"""Suite tasks: params checked before anything runs, the model's state while an evaluator scores it,
and a failing evaluator isolated on every row (teacher, floors, methods) with exit status 1."""

from __future__ import annotations

import torch

from benchbase.cli import EXIT_FAILED_ROWS, main
from benchbase.components import Student, Teacher
from benchbase.results import ResultsDB
from benchbase.tasks import evaluation_state

from conftest import tiny_vit
from test_run import instant

EVALUATORS = '''
import torch
from benchbase import hookimpl
from benchbase.components import Evaluator, Metric


class Boom(Evaluator):
    name = "boom"

    def evaluate(self, model, data, device):
        raise RuntimeError("kaboom in evaluate\\nsecond line")


class State(Evaluator):
    """1 when the model arrives in eval mode, on the device, with no parameter requiring gradients."""
    name = "state"

    def __init__(self, needed: int, batch_size: int = 1):
        self.batch_size = batch_size

    def evaluate(self, model, data, device):
        parameters = list(model.parameters())
        ok = (not any(m.training for m in model.modules()) and not any(p.requires_grad for p in parameters)
              and all(p.device.type == device.type for p in parameters) and torch.is_grad_enabled())
        return [Metric("ok", float(ok), 1, f"state on entry, batch {self.batch_size}")]


@hookimpl
def benchbase_register_evaluators(register):
    register("boom", Boom)
    register("state", State)


@hookimpl
def benchbase_config_dirs():
    return [CONF]
'''

SUITE = """\
# @package _global_
defaults:
  - digits
  - _self_
suite:
  name: tasks
  tasks:
    boom: {evaluator: boom, dataset: digits}
    state: {evaluator: state, dataset: digits, params: {needed: 1}}
"""

def plugins_dir(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    conf = tmp_path / "conf" / "suite"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tasks.yaml").write_text(SUITE)
    (folder / "evaluators.py").write_text(f"CONF = {str(conf.parent)!r}\n{EVALUATORS}")
    return str(folder)


def run(tmp_path, capsys, *extra, methods="feature"):
    code = main(["--plugins-dir", plugins_dir(tmp_path), "run", "--methods", methods, *instant(tmp_path, *extra)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_task_key_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    code, _, err = run(tmp_path, capsys, "+suite.tasks.top1.params.poolng=cls")
    assert code == 2
    assert err == ("error: unknown key 'suite.tasks.top1.params.poolng' for evaluator 'linear_probe'; "
                   "accepted: train_split, test_split, pooling, max_iter, batch_size\n")
    assert not (tmp_path / "runs").exists() and ResultsDB(tmp_path / "results.db").records() == []


def test_missing_key_and_rejected_value_are_one_line_errors(tmp_path, capsys):
    code, _, err = run(tmp_path, capsys, "suite=tasks", "~suite.tasks.state.params.needed")
    assert (code, err) == (2, "error: evaluator 'state' of task 'state' needs suite.tasks.state.params.needed; "
                              "set it in the suite\n")
    code, _, err = run(tmp_path, capsys, "+suite.tasks.top1.params.pooling=nope")
    assert (code, err) == (2, "error: task 'top1' (evaluator 'linear_probe'): unknown feature pooling 'nope'; "
                              "available: cls+attn, cls, mean, cls+mean\n")
    code, _, err = run(tmp_path, capsys, "suite=tasks", "suite.tasks.state.evaluator=stat")
    assert code == 2 and err.startswith("error: unknown evaluator 'stat'; available: boom, fewshot,")


def test_failing_evaluator_is_isolated_on_every_row(tmp_path, capsys):
    code, out, err = run(tmp_path, capsys, "suite=tasks", "suite.floors=[pixels,random_init]")
    assert code == EXIT_FAILED_ROWS == 1
    assert "4 of 4 rows failed (their status says why); exit status 1" in err
    records = {r.method: r for r in ResultsDB(tmp_path / "results.db").records()}
    assert set(records) == {"teacher", "pixels", "random_init", "feature"}
    for record in records.values():
        assert record.status == "failed"
        assert record.error == "task boom: RuntimeError: kaboom in evaluate", record.error
        metrics = {(m.extras["task"], m.name): m for m in record.metrics}
        assert ("top1", "top1") in metrics  # the other tasks still ran and keep their metrics
        assert metrics["state", "ok"].value == 1.0  # eval mode, on the device, no gradients
        assert metrics["state", "ok"].protocol == "state on entry, batch 256"  # eval.batch_size injected
    assert "  teacher: FAILED: task boom: RuntimeError: kaboom in evaluate" in out
    assert "failed (1/1): task boom: RuntimeError: kaboom in evaluate" in (tmp_path / "leaderboards" / "tasks.md").read_text()


def test_evaluation_state_is_enforced_then_restored():
    student = Student(tiny_vit())
    student.train()
    student.model.head.requires_grad_(False)  # a mixed state comes back as it was
    student.model.blocks[0].eval()
    before = ([m.training for m in student.modules()], [p.requires_grad for p in student.parameters()])
    with evaluation_state(student, torch.device("cpu")):
        assert not any(m.training for m in student.modules())
        assert not any(p.requires_grad for p in student.parameters())
        assert torch.is_grad_enabled()  # a probe or a copy of the network may still train
    assert ([m.training for m in student.modules()], [p.requires_grad for p in student.parameters()]) == before
    teacher = Teacher(tiny_vit())
    with evaluation_state(teacher, torch.device("cpu")):
        pass
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_eval_checks_its_tasks_before_scoring(tmp_path, capsys):
    assert main(["eval", "pixels", "top1", "+suite.tasks.top1.params.poolng=cls", f"home={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown key 'suite.tasks.top1.params.poolng' for evaluator")
    assert ResultsDB(tmp_path / "results.db").records() == []


ABLATION = """\
name: boom
title: a failing evaluator in an ablation
method: feature
overrides: [suite=tasks]
columns: [row]
variants:
  - {values: {row: feature}}
"""


def test_an_ablation_with_failed_rows_exits_1(tmp_path, capsys):
    folder = plugins_dir(tmp_path)
    (tmp_path / "conf" / "ablation").mkdir()
    (tmp_path / "conf" / "ablation" / "boom.yaml").write_text(ABLATION)
    code = main(["--plugins-dir", folder, "ablate", "boom", *instant(tmp_path)[1:]])  # the spec names its suite
    err = capsys.readouterr().err
    assert code == EXIT_FAILED_ROWS and "1 of 1 rows failed (their status says why); exit status 1" in err
