"""Multi-process training (torchrun, DistributedDataParallel over gloo on the CPU).

Two processes must train what one process trains: each takes its half of every global batch, DDP
averages the gradients, and only rank 0 writes logs, checkpoints, records and tables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from benchbase import distributed
from benchbase.cli import main
from benchbase.components import Student
from benchbase.core import Supervised
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import StepModule, _distribute, train
from benchbase.loggers import STEPS_LOG
from benchbase.errors import BenchbaseError
from benchbase.results import ResultsDB
from benchbase_plugins.smkd import SMKDLoss

from conftest import tiny_vit
from test_resume import trainer
from test_run import tiny

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, port: int) -> None:
    """Join a ``WORLD``-process gloo group on this machine (what torchrun's environment does)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def test_shard_splits_a_global_batch_into_contiguous_equal_slices():
    batch = [7, 3, 9, 1, 4, 8]
    assert [distributed.shard(batch, r, 3) for r in range(3)] == [[7, 3], [9, 1], [4, 8]]
    assert distributed.shard(batch, 0, 1) == batch
    with pytest.raises(BenchbaseError, match="multiple of 4"):
        distributed.shard(batch, 0, 4)


def test_one_process_is_rank_zero_of_one_and_reductions_are_no_ops():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    tensor = torch.tensor([1.0, -2.5])
    assert distributed.all_reduce_mean(tensor) is tensor and tensor.tolist() == [1.0, -2.5]
    assert distributed.broadcast_from_main({"a": 1}) == {"a": 1}
    distributed.barrier()


def _train_worker(rank: int, port: int, out: Path) -> None:
    _join(rank, port)
    student = Student(tiny_vit(seed=3))
    result = train(student, None, Supervised(), load_digits_bundle().split("base_train"), trainer(epochs=1),
                   out / "run", seed=7)
    if rank == 0:
        torch.save({"state": student.state_dict(), "steps": result.steps}, out / "ddp.pt")
    dist.destroy_process_group()


def test_two_processes_train_the_weights_of_one(tmp_path):
    """Same global batches, halves per rank, averaged gradients: the weights after an epoch match
    the single-process weights up to float summation order (not bit-exact: the gradient of the
    batch mean is summed in two halves, then averaged)."""
    mp.spawn(_train_worker, args=(_free_port(), tmp_path), nprocs=WORLD)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = Student(tiny_vit(seed=3))
    result = train(single, None, Supervised(), load_digits_bundle().split("base_train"), trainer(epochs=1),
                   tmp_path / "single", seed=7)
    assert ddp["steps"] == result.steps
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    logged = (tmp_path / "run" / STEPS_LOG).read_text().splitlines()
    assert len(logged) == result.steps  # written once, by rank 0


def _group_of_one_worker(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env()  # what `torchrun --nproc_per_node 1` leads to
    student = Student(tiny_vit(seed=3))
    assert distributed.joined() and distributed.world_size() == 1
    assert isinstance(_distribute(StepModule(student, Supervised())), DistributedDataParallel)
    train(student, None, Supervised(), load_digits_bundle().split("base_train"), trainer(epochs=1), out / "run", seed=7)
    torch.save(student.state_dict(), out / "one.pt")
    distributed.shutdown()


def test_torchrun_with_one_process_joins_a_group_of_one_and_trains_the_same_weights(tmp_path):
    """The collectives and DDP path of N processes, run by one (a single GPU's NCCL check)."""
    mp.spawn(_group_of_one_worker, args=(_free_port(), tmp_path), nprocs=1)
    single = Student(tiny_vit(seed=3))
    train(single, None, Supervised(), load_digits_bundle().split("base_train"), trainer(epochs=1),
          tmp_path / "single", seed=7)
    grouped = torch.load(tmp_path / "one.pt", weights_only=True)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(grouped[name], value, rtol=0, atol=0, msg=name)


def _centre_worker(rank: int, port: int) -> None:
    _join(rank, port)
    t_cls = [torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)]
    t_patch = [torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(10 + r)) for r in range(WORLD)]
    loss = SMKDLoss(head_out=8, local_crops=0, center_momentum=0.9)
    loss.update_centers(t_cls[rank], t_patch[rank])
    whole_cls, whole_patch = torch.cat(t_cls, dim=1), torch.cat(t_patch, dim=1)  # the global batch
    torch.testing.assert_close(loss.center, 0.1 * whole_cls.mean(dim=(0, 1)).view(1, -1))
    torch.testing.assert_close(loss.center2, 0.1 * whole_patch.mean(dim=2).mean(dim=(0, 1)).view(1, 1, -1))
    dist.destroy_process_group()


def test_smkd_centres_follow_the_global_batch_mean_on_every_rank():
    mp.spawn(_centre_worker, args=(_free_port(),), nprocs=WORLD)


def _metrics(home: Path) -> dict[tuple[str, str, str], float]:
    records = ResultsDB(home / "results.db").records()
    keys = [(r.method, r.seed) for r in records]
    assert sorted(keys) == sorted(set(keys)), keys  # one record per (method, seed): rank 1 wrote none
    return {(r.method, m.extras["task"], m.name): m.value for r in records for m in r.metrics
            if m.name != "images_per_second"}


def test_torchrun_two_processes_match_one_process(tmp_path):
    """``torchrun --nproc_per_node 2 -m benchbase run`` against the same command in one process.

    Not bit-exact, so metrics are compared within 2 points: gradients are summed in a different
    order, and the recipe teacher's MAE masks are drawn from each rank's own random stream (the
    per-rank seeds of DINO and MAE), so the teacher, and through it the student, differ slightly.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    overrides = ["--methods", "feature"]
    extra = ("suite.references=[]", "trainer.batch_size=64", "student.drop_path=0.0")
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
         str(_free_port()), "-m", "benchbase", "run", *overrides, *tiny(tmp_path / "multi", *extra)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("feature seed 0: done") == 1  # only rank 0 prints
    # the same command in one process: this one (one thread, as the subprocesses have)
    assert main(["run", *overrides, *tiny(tmp_path / "one", *extra)]) == 0
    multi_m, one_m = _metrics(tmp_path / "multi"), _metrics(tmp_path / "one")
    assert multi_m.keys() == one_m.keys() and ("feature", "top1", "top1") in multi_m
    for key, value in one_m.items():
        assert multi_m[key] == pytest.approx(value, abs=2.0), key
    run_dir = next((tmp_path / "multi" / "runs" / "digits").glob("feature-seed0-*"))
    steps = (run_dir / STEPS_LOG).read_text().splitlines()
    assert len(steps) == len((next((tmp_path / "one" / "runs" / "digits").glob("feature-seed0-*")) / STEPS_LOG)
                             .read_text().splitlines())  # the same global steps, logged once
    assert (run_dir / "student.pt").exists() and (tmp_path / "multi" / "leaderboards" / "digits.md").exists()
