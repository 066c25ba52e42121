"""Multi-process training under ``torchrun``: process group, rank queries, batch sharding, reductions.

``torchrun --nproc_per_node N -m benchbase run ...`` starts N copies of the command with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in their environment; :func:`init_from_env` joins them into one
process group (NCCL for CUDA tensors and gloo for CPU ones, so ``trainer.device=cpu`` works on a GPU
machine too) and pins each process to the GPU ``LOCAL_RANK``. ``--nproc_per_node 1`` joins a group
of one: the same collectives and DistributedDataParallel path as N processes, on one GPU.
Everything here is a no-op (rank 0 of 1) in a plain single process, so callers need no special case.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import BatchSampler, Sampler

from benchbase.errors import BenchbaseError

T = TypeVar("T")


def init_from_env() -> None:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` and
    ``MASTER_ADDR`` set, any world size); else nothing."""
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")


def shutdown() -> None:
    """Leave the process group (after the last collective); nothing in one process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process is in a process group (under torchrun, even as its only member)."""
    return dist.is_initialized()


def rank() -> int:
    """This process's rank (0 in one process)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes training together (1 in one process)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes results, logs, checkpoints and tables (rank 0)."""
    return rank() == 0


def main_echo(echo: Callable[[str], Any]) -> Callable[[str], Any]:
    """``echo`` on rank 0, a silent one on the other ranks: rank 0 speaks for the run."""
    return echo if is_main() else _silent


def _silent(*_args: Any) -> None:
    """The echo of ranks other than 0."""


def barrier() -> None:
    """Wait until every process gets here."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over the processes, in place (and returned); unchanged in one process."""
    if joined():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself in one process."""
    if not joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (any picklable value) in rank order, on every rank; ``[obj]`` in one process."""
    if not joined():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def local_batch_size(global_batch: int, world: int) -> int:
    """Each process's share of a global batch; :class:`BenchbaseError` unless ``world`` divides it
    (unequal shares would weight the processes' gradients unequally)."""
    if global_batch % world:
        raise BenchbaseError(
            f"the global batch of {global_batch} images does not split over {world} processes; "
            f"set trainer.batch_size to a multiple of {world}"
        )
    return global_batch // world


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """The contiguous slice ``rank`` of ``world`` equal slices of ``indices`` (one global batch)."""
    size = local_batch_size(len(indices), world)
    return list(indices[rank * size:(rank + 1) * size])


class ShardedBatches(Sampler[list[int]]):
    """This process's slice of every global batch drawn by ``batches`` (the same on every rank),
    from global batch ``start`` on (a run resumed mid-epoch skips the batches it has trained on)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int, start: int = 0):
        self.batches, self.rank, self.world, self.start = batches, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        for batch in islice(self.batches, self.start, None):
            yield shard(batch, self.rank, self.world)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)
