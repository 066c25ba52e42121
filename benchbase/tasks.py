"""A suite's tasks as the harness runs them: params checked before anything runs, the model's state
while an evaluator scores it, and a failing task kept from taking its row down.

- **Params.** A task's ``params`` are its evaluator's constructor keyword arguments. The harness
  adds ``batch_size`` (the config's ``eval.batch_size``), ``seed`` (the row's seed) and, when
  scoring, ``teacher_checkpoint`` (the path of the suite teacher's file, see
  :func:`benchbase.teachers.teacher_checkpoint`) when the constructor takes them and the task
  leaves them unset (:func:`evaluator_params`). Before
  anything trains, :func:`check_task` checks every task: a known evaluator and dataset, no unknown
  key, no required key left out, and a constructor that accepts the values (it is called once, so
  it should only check and store its arguments).
- **State.** While ``Evaluator.evaluate`` runs (:func:`evaluation_state`), the model is in eval
  mode, on the evaluation device, and its parameters do not require gradients; autograd itself
  stays on, so an evaluator may train a probe or a copy of the network (``model.export()``).
  The model's modes and flags are restored afterwards.
- **Isolation.** :func:`run_isolated` runs every task of a row even when one raises; the row is
  then stored as failed, its error naming each failed task with a one-line reason, and it keeps
  the metrics of the tasks that succeeded (:class:`TasksFailed`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from benchbase.components import Evaluator, Metric
from benchbase.errors import BenchbaseError
from benchbase.plugin_manager import Registry

INJECTED = ("batch_size", "seed", "teacher_checkpoint")
"""Constructor arguments the harness fills in when a task leaves them unset."""


def evaluator_params(ev_cls: type[Evaluator], task: DictConfig, batch_size: int, seed: int,
                     teacher_checkpoint: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    """The keyword arguments of ``task``'s evaluator: its ``params``, plus ``batch_size``, ``seed``
    and ``teacher_checkpoint()`` (called only then) where the constructor takes them and the task
    does not set them."""
    params = OmegaConf.to_container(task.params, resolve=True) or {}
    accepted = inspect.signature(ev_cls).parameters
    for key, value in zip(INJECTED, (lambda: batch_size, lambda: seed, teacher_checkpoint)):
        if key in accepted and key not in params:
            params[key] = value()
    return params


def check_task(registry: Registry, name: str, task: DictConfig, batch_size: int, seed: int) -> None:
    """Check task ``name`` of a suite without running it.

    Raises:
        BenchbaseError: one line naming the task and what is wrong: an unknown evaluator or
            dataset, an unknown key (with the accepted ones), a required key left out, or a value
            the evaluator's constructor rejects.
    """
    ev_cls = registry.get("evaluators", task.evaluator)
    registry.get("datasets", task.dataset)
    params = evaluator_params(ev_cls, task, batch_size, seed)
    signature = inspect.signature(ev_cls)
    keys = [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    where = f"suite.tasks.{name}.params"
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        for key in params:
            if key not in keys:
                raise BenchbaseError(
                    f"unknown key '{where}.{key}' for evaluator {task.evaluator!r}; "
                    f"accepted: {', '.join(keys) or 'none'}"
                )
    for key in keys:
        if key not in params and signature.parameters[key].default is inspect.Parameter.empty:
            raise BenchbaseError(
                f"evaluator {task.evaluator!r} of task {name!r} needs {where}.{key}; set it in the suite"
            )
    try:
        ev_cls(**params)
    except Exception as exc:  # a plugin's own check, raised as whatever it chose
        raise BenchbaseError(f"task {name!r} (evaluator {task.evaluator!r}): {one_line(exc)}") from None


@contextlib.contextmanager
def evaluation_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` in eval mode, on ``device``, with parameters that do not require gradients; each
    module's mode and each parameter's flag are restored on exit (the device is kept)."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.to(device).eval().requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, after its type unless it is a
    :class:`BenchbaseError` (whose message already names the problem and the fix)."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, BenchbaseError) and lines:
        return lines[0]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class TasksFailed(Exception):
    """Some tasks of a row raised after every task ran: the message names each failed task with its
    one-line reason; ``metrics`` are those of the tasks that succeeded."""

    def __init__(self, failures: list[str], metrics: list[Metric]):
        super().__init__("; ".join(failures))
        self.metrics = metrics

    def record_fields(self) -> dict[str, Any]:
        """The fields of the row's stored record: failed, with this error and the metrics kept."""
        return {"status": "failed", "error": str(self), "metrics": self.metrics}


def run_isolated(tasks: Mapping[str, Callable[[], list[Metric]]]) -> list[Metric]:
    """The metrics of every task (task name -> a call scoring it), in order.

    Raises:
        TasksFailed: after all of them ran, when any raised.
    """
    metrics: list[Metric] = []
    failures: list[str] = []
    for name, score in tasks.items():
        try:
            metrics += score()
        except Exception as exc:  # one failing evaluator never takes the row's other tasks down
            failures.append(f"task {name}: {one_line(exc)}")
    if failures:
        raise TasksFailed(failures, metrics)
    return metrics
