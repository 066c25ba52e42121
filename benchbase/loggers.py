"""Experiment loggers: where a run's config, per-step losses and evaluation metrics go as it trains.

A logger is a :class:`Logger` subclass that a plugin registers through the
``benchbase_register_loggers`` hook; the ``logger`` config key names the ones a run uses
(``logger=[tensorboard,mlflow]``). Built in: ``jsonl``, the run folder's ``steps.jsonl`` (always on:
resuming relies on it), and ``tensorboard`` (``pip install 'benchbase[tensorboard]'``). The
``mlflow`` plugin (``pip install 'benchbase[mlflow]'``) ships with benchbase as an outside plugin
would.

A run's loggers (:class:`RunLoggers`) start when training starts (after a resume has loaded its
checkpoint, so they know the first step), get every step's loss terms, learning rate and throughput
(the floats the engine already gathered: logging adds no device sync), are flushed with each
checkpoint, get the evaluation metrics, and finish with the run's status. Under torchrun only rank 0
logs. A logger that fails to start, or fails later, is dropped with a one-line warning and the run
goes on without it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchbase import distributed
from benchbase.components import Metric
from benchbase.errors import BenchbaseError

STEPS_LOG = "steps.jsonl"
ALWAYS = "jsonl"
"""The logger every run uses, whatever ``logger`` says."""


@dataclass
class RunInfo:
    """What a logger learns when its run starts: the ``suite``'s name (an ablation's runs:
    ``ablation-<name>``; empty for a stage or a teacher recipe), the run's ``name`` within it
    (``<method>-seed<seed>``), its ``run_dir`` (``config.yaml``, ``steps.jsonl``, checkpoints; a logger
    may write there), its resolved ``config`` as stored with its record, the ``step`` it starts from
    (nonzero when it resumes from a checkpoint) and the ``total_steps`` it trains."""

    suite: str
    name: str
    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    total_steps: int = 0


@dataclass
class StepLog:
    """One optimiser step as the engine logs it, every value already a Python float: steps done
    (``step``, 1 for the first), the ``epoch``, the loss ``terms`` the method returned (the mean over
    the processes under torchrun), the learning rate ``lr`` and ``images_per_second``, the training
    throughput since the run (or its resume) started, all processes together."""

    step: int
    epoch: int
    terms: dict[str, float]
    lr: float
    images_per_second: float


class Logger(ABC):
    """An experiment tracker following one run (one instance per run, on rank 0 only).

    Register the class with ``benchbase_register_loggers``; the harness constructs it without
    arguments (read settings from environment variables, as MLflow's and W&B's clients do) and
    calls :meth:`start`, then :meth:`log_step` for every step, :meth:`flush` with every checkpoint,
    :meth:`log_metrics` once evaluated, and :meth:`finish`. An exception from any of them drops
    this logger for the rest of the run, with a one-line warning.
    """

    @abstractmethod
    def start(self, run: RunInfo) -> None:
        """The run starts (or resumes at ``run.step``): open files or connections, log the config."""

    @abstractmethod
    def log_step(self, step: StepLog) -> None:
        """One training step's loss terms, learning rate and throughput. Called every step: buffer
        slow writes and send them in :meth:`flush`."""

    def log_metrics(self, metrics: Mapping[str, Metric], step: int) -> None:
        """The trained model's evaluation metrics, keyed ``<task>/<metric name>`` as the leaderboard
        columns are, after ``step`` training steps. Default: ignored."""

    def flush(self) -> None:
        """Write what is buffered (called with every checkpoint and when training ends). Default: nothing."""

    def finish(self, status: str) -> None:
        """The run ended with ``status``: ``done`` (trained and evaluated), ``failed`` or ``stopped``
        (a signal or Ctrl-C; rerunning resumes it). Close what :meth:`start` opened. Default: nothing."""


class StepsFile(Logger):
    """``steps.jsonl`` in the run folder: one JSON line per step with ``step``, ``epoch``, ``lr`` and
    the loss terms. On resume, lines past the checkpoint's step (left by a killed run) are dropped,
    so each step is logged once."""

    def start(self, run: RunInfo) -> None:
        path = run.run_dir / STEPS_LOG
        _truncate_log(path, run.step)
        self.file = path.open("a")

    def log_step(self, step: StepLog) -> None:
        self.file.write(json.dumps({"step": step.step, "epoch": step.epoch, "lr": step.lr, **step.terms}) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def finish(self, status: str) -> None:
        self.file.close()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (left by a run killed mid-epoch) so a resume logs each step once."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            break  # a torn last line
    path.write_text("".join(line + "\n" for line in kept))


TENSORBOARD_DIR = "tensorboard"


class TensorBoard(Logger):
    """TensorBoard event files in ``<run folder>/tensorboard`` (through ``torch.utils.tensorboard``):
    ``loss/<term>``, ``train/lr`` and ``train/images_per_second`` per step, ``eval/<task>/<metric>``
    at the last step, and the config as text. ``tensorboard --logdir $BENCHBASE_HOME/runs`` shows
    every run. A resumed run purges the events past its checkpoint."""

    def start(self, run: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise BenchbaseError(f"{exc}; pip install 'benchbase[tensorboard]'") from None
        self.writer = SummaryWriter(str(run.run_dir / TENSORBOARD_DIR), purge_step=run.step or None)
        if not run.step:
            self.writer.add_text("config", "```\n" + json.dumps(run.config, indent=2, default=str) + "\n```")

    def log_step(self, step: StepLog) -> None:
        for name, value in step.terms.items():
            self.writer.add_scalar(f"loss/{name}", value, step.step)
        self.writer.add_scalar("train/lr", step.lr, step.step)
        self.writer.add_scalar("train/images_per_second", step.images_per_second, step.step)

    def log_metrics(self, metrics: Mapping[str, Metric], step: int) -> None:
        for key, metric in metrics.items():
            self.writer.add_scalar(f"eval/{key}", metric.value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, status: str) -> None:
        self.writer.close()


def _warn(text: str) -> None:
    tqdm.write(f"warning: {text}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    """The first line of ``exc``, after its type unless it is a :class:`BenchbaseError` (whose message
    names the problem and the fix)."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return first if isinstance(exc, BenchbaseError) and first else f"{type(exc).__name__}: {first}".rstrip(": ")


class RunLoggers:
    """The loggers following one run: each call goes to every one of them in turn.

    ``factories`` (name -> a :class:`Logger` class) are constructed and started by :meth:`start`.
    A logger that raises, in its constructor or any call, is dropped with a one-line warning naming
    it and the run goes on. Empty on ranks other than 0, where every call does nothing.
    """

    def __init__(self, factories: Mapping[str, Callable[[], Logger]], run: RunInfo):
        self.factories = dict(factories) if distributed.is_main() else {}
        self.run = run
        self.active: dict[str, Logger] = {}

    def start(self, step: int, total_steps: int) -> None:
        """Start every logger for a run that begins at ``step`` (nonzero on resume) of ``total_steps``."""
        run = dataclasses.replace(self.run, step=step, total_steps=total_steps)
        for name, factory in self.factories.items():
            try:
                logger = factory()
                logger.start(run)
            except Exception as exc:
                _warn(f"logger {name!r} failed to start: {_one_line(exc)}; {run.name} goes on without it")
            else:
                self.active[name] = logger

    def log_step(self, step: StepLog) -> None:
        self._each("log a step", lambda logger: logger.log_step(step))

    def log_metrics(self, metrics: Mapping[str, Metric], step: int) -> None:
        self._each("log the metrics", lambda logger: logger.log_metrics(metrics, step))

    def flush(self) -> None:
        self._each("flush", lambda logger: logger.flush())

    def finish(self, status: str) -> None:
        """Finish every started logger with ``status`` (``done``, ``failed`` or ``stopped``: see
        :meth:`Logger.finish`); they are then closed."""
        self._each("finish", lambda logger: logger.finish(status))
        self.active.clear()

    def _each(self, what: str, call: Callable[[Logger], object]) -> None:
        for name, logger in list(self.active.items()):
            try:
                call(logger)
            except Exception as exc:
                del self.active[name]
                _warn(f"logger {name!r} failed to {what}: {_one_line(exc)}; {self.run.name} goes on without it")


def logger_names(names: Iterable[str]) -> list[str]:
    """``jsonl`` (always on), then ``names`` in order, each once."""
    return list(dict.fromkeys([ALWAYS, *names]))


@contextmanager
def training(loggers: RunLoggers | None, run_dir: Path, step: int, total_steps: int) -> Iterator[RunLoggers]:
    """The loggers of a training loop that starts at ``step`` of ``total_steps``, flushed when it ends.

    ``loggers`` are started here and finished by their owner (after evaluation); without them (a
    stage, a teacher recipe), the run folder's ``steps.jsonl`` alone is started and finished here.
    """
    own = loggers is None
    if loggers is None:
        loggers = RunLoggers({ALWAYS: StepsFile}, RunInfo("", run_dir.name, run_dir))
    loggers.start(step, total_steps)
    status = "stopped"
    try:
        yield loggers
        status = "done"
    except Exception:
        status = "failed"
        raise
    finally:
        loggers.flush()
        if own:
            loggers.finish(status)
