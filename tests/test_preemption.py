"""Preemption: a stop signal checkpoints at the next step, hands the signal on, and the resumed run
equals an uninterrupted one; ``trainer.compile`` compiles the untapped blocks and trains the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from conftest import tiny_vit
from test_distributed import WORLD, _free_port, _join
from test_resume import trainer

from benchbase.core import Supervised
from benchbase.capture import Tap
from benchbase.components import Student
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import CHECKPOINT, compiled, recompile_limit_key, train
from benchbase.loggers import STEPS_LOG

BATCHES = len(load_digits_bundle().split("base_train")) // 64  # per epoch, in trainer()'s batches of 64


class Noisy(Supervised):
    """Supervised loss on images with fresh noise from torch's global generator each step, so that a
    resumed run matches only if the random streams continue where they stopped."""

    def make_inputs(self, images, labels):
        return super().make_inputs(images + 0.5 * torch.randn_like(images), labels)


class SignalAt(Noisy):
    """Supervised loss that sends its own process ``signum`` during the forward of step ``at``."""

    def __init__(self, at: int, signum: int):
        super().__init__()
        self.at, self.signum, self.calls = at, signum, 0

    def forward(self, student, teacher, inputs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(student, teacher, inputs)


class SignalAfterLastStep(Noisy):
    """Supervised loss that sends its own process ``signum`` after its last step (past the step's check)."""

    def __init__(self, last: int, signum: int):
        super().__init__()
        self.last, self.signum, self.steps = last, signum, 0

    def after_step(self, student, progress):
        self.steps += 1
        if self.steps == self.last:
            os.kill(os.getpid(), self.signum)


class Requeued(Exception):
    """What the test's stand-in for submitit's handler raises (submitit's own exits the process)."""


def test_stop_signal_checkpoints_that_step_hands_the_signal_on_and_resume_equals_uninterrupted(tmp_path):
    data = load_digits_bundle().split("base_train")
    whole = Student(tiny_vit(seed=3))
    train(whole, None, Noisy(), data, trainer(), tmp_path / "whole", seed=7)
    received = []

    def requeue(signum, _frame):
        received.append(signum)
        raise Requeued

    before = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(Requeued):
            train(Student(tiny_vit(seed=3)), None, SignalAt(17, signal.SIGUSR2), data, trainer(),
                  tmp_path / "stopped", seed=7)
        assert received == [signal.SIGUSR2]  # handed on once, after the checkpoint
        assert signal.getsignal(signal.SIGUSR2) is requeue  # the previous handler is back
    finally:
        signal.signal(signal.SIGUSR2, before)
    state = torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"], state["partial"]["batch"]) == (0, 17, 17 - BATCHES)  # epoch 1, mid
    assert (tmp_path / "stopped" / STEPS_LOG).read_text().count("\n") == 17
    resumed = Student(tiny_vit(seed=99))  # weights come from the checkpoint
    result = train(resumed, None, Noisy(), data, trainer(), tmp_path / "stopped", seed=7)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same batches, same random streams
    steps = [json.loads(line)["step"] for line in (tmp_path / "stopped" / STEPS_LOG).read_text().splitlines()]
    assert steps == list(range(1, result.steps + 1))


def test_a_signal_during_the_last_step_reaches_its_handler_after_the_final_checkpoint(tmp_path):
    data = load_digits_bundle().split("base_train")
    received = []

    def requeue(signum, _frame):
        received.append(signum)
        raise Requeued

    before = signal.signal(signal.SIGTERM, requeue)
    try:
        with pytest.raises(Requeued):
            train(Student(tiny_vit()), None, SignalAfterLastStep(BATCHES, signal.SIGTERM), data, trainer(epochs=1),
                  tmp_path / "run", seed=0)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert received == [signal.SIGTERM]
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"], state["partial"]) == (0, BATCHES, None)  # the complete run


SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_vit
from test_distributed import WORLD, _free_port, _join
from test_resume import trainer
from benchbase.core import Supervised
from benchbase.components import Student
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import train
train(Student(tiny_vit()), None, Supervised(), load_digits_bundle().split("base_train"), trainer(epochs=50),
      Path({run!r}), seed=0)
"""


def test_sigterm_with_the_default_action_ends_the_process_after_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    code = SCRIPT.format(tests=os.path.dirname(__file__), run=str(run))
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=stderr)
    deadline = time.time() + 240
    while not ((run / STEPS_LOG).exists() and (run / STEPS_LOG).read_text().count("\n") >= 5):
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"training did not start: {(tmp_path / 'stderr').read_text()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM, (tmp_path / "stderr").read_text()  # ended by the signal itself
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["step"] >= 5 and state["step"] == (state["epoch"] + 1) * BATCHES + state["partial"]["batch"]
    assert (run / STEPS_LOG).read_text().count("\n") == state["step"]


class Probe(Supervised):
    """Supervised loss that also taps block 1's attention and notes which student blocks are compiled."""

    student_taps = (Tap("logits"), Tap("attn", 1))

    def forward(self, student, teacher, inputs):
        self.compiled = [block._compiled_call_impl is not None for block in self.blocks]
        return super().forward(student, teacher, inputs)


def test_compile_compiles_the_untapped_blocks_and_trains_the_same_weights(tmp_path):
    data = load_digits_bundle().split("base_train")
    eager, fused = Student(tiny_vit(seed=3)), Student(tiny_vit(seed=3))
    train(eager, None, Supervised(), data, trainer(epochs=1), tmp_path / "eager", seed=7)
    probe = Probe()
    probe.blocks = list(fused.model.blocks)  # a plain list: not the loss's submodules
    # aot_eager: TorchDynamo capture and AOTAutograd without inductor's code generation (seconds on a CPU)
    train(fused, None, probe, data, trainer(epochs=1, compile=True, compile_backend="aot_eager"), tmp_path / "fused", 7)
    assert probe.compiled == [True, False, True]  # block 1 is tapped: its hooks need the eager module
    assert not any(block._compiled_call_impl is not None for block in fused.model.blocks)  # eager again
    for a, b in zip(eager.state_dict().values(), fused.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_reaches_every_block_when_their_drop_path_rates_differ():
    """Stochastic depth gives each block its own drop_prob (a float TorchDynamo specialises on), so
    each block is a graph of its own: past Dynamo's default limit of 8 the rest would run eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    key = recompile_limit_key()
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=16,
                              depth=12, num_heads=2, num_classes=5, drop_path_rate=0.1)
    cfg = OmegaConf.create({"compile": True, "compile_mode": "default", "compile_backend": "aot_eager"})
    with torch._dynamo.config.patch(**{key: 8}):  # Dynamo's default (other tests may change it)
        with compiled([(Student(model), ())], cfg):
            model(torch.randn(2, 1, 16, 16)).sum().backward()
        assert getattr(torch._dynamo.config, key) == 8  # the limit is back where it was
    assert counters["stats"]["unique_graphs"] == 12  # one per drop_prob, none left to eager


class SignalAfterStep(Noisy):
    """Noisy loss that sends its own process ``signum`` after step ``at`` (past that step's check)."""

    def __init__(self, at: int, signum: int):
        super().__init__()
        self.at, self.signum, self.steps = at, signum, 0

    def after_step(self, student, progress):
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), self.signum)


def _ddp_worker(rank: int, port: int, out: Path) -> None:
    """Both runs in one process group: the uninterrupted one, then the stopped and resumed one."""
    _join(rank, port)
    data = load_digits_bundle().split("base_train")
    for interrupt in (False, True):
        run = out / ("stopped" if interrupt else "whole")
        if interrupt:
            received = []

            def requeue(signum, _frame):
                received.append(signum)
                raise Requeued

            signal.signal(signal.SIGUSR2, requeue)
            # rank 1 is signalled before step 4's check, rank 0 only after it: both must stop after step 4
            loss = SignalAt(4, signal.SIGUSR2) if rank == 1 else SignalAfterStep(4, signal.SIGUSR2)
            with pytest.raises(Requeued):
                train(Student(tiny_vit(seed=3)), None, loss, data, trainer(epochs=1), run, seed=7)
            assert received == [signal.SIGUSR2]
            dist.barrier()
            if rank == 0:
                state = torch.load(run / CHECKPOINT, weights_only=True)
                assert (state["step"], state["partial"]["batch"], len(state["partial"]["rng"])) == (4, 4, WORLD)
                assert not torch.equal(state["partial"]["rng"][0]["cpu"], state["partial"]["rng"][1]["cpu"])
        student = Student(tiny_vit(seed=99 if interrupt else 3))
        train(student, None, Noisy(), data, trainer(epochs=1), run, seed=7)
        if rank == 0:
            torch.save(student.state_dict(), out / f"{run.name}.pt")
    dist.destroy_process_group()


def test_under_ddp_every_rank_stops_after_the_same_step_and_resumes_exactly(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), tmp_path), nprocs=WORLD)  # one start of the two processes
    whole, resumed = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "stopped"))
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "stopped" / STEPS_LOG).read_text().splitlines()]
    assert steps == list(range(1, BATCHES + 1))
