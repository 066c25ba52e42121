"""The distillation loop that any Method plugs into.

AdamW with linear warm-up and cosine decay, gradient clipping, bf16 autocast on CUDA, a progress
bar with the loss terms and throughput, per-step loss terms, lr and throughput for the run's
loggers (:mod:`benchbase.loggers`; ``steps.jsonl`` always), a checkpoint after every epoch and
resume from the last one. Each epoch re-seeds every random generator from
(seed, epoch), so a resumed run repeats exactly what an uninterrupted run does.

Under ``torchrun`` (see :mod:`benchbase.distributed`) the student and the loss's own parameters train
as one :class:`~torch.nn.parallel.DistributedDataParallel` module (:class:`StepModule`); each process
takes its contiguous slice of every global batch of ``trainer.batch_size`` images (the same
permutation on every rank) and draws its own augmentation/masking randomness (seed offset by the
rank, as DINO and MAE do). For a loss that is a mean over images, the averaged gradients then equal
the single-process gradient up to float summation order; a loss that relates images of a batch
sees each process's share (a loss keeping global state reduces it, e.g. SMKD's centres). Only
rank 0 logs and writes checkpoints; every rank resumes from rank 0's checkpoint, so with
several nodes the run folder must be on a shared filesystem. Logged terms are the mean over the
processes. An exception raised on one rank only (not a non-finite loss, which all ranks see) leaves
the others waiting until the process group's timeout.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm.auto import tqdm

from benchbase import distributed, preemption
from benchbase.capture import Captures, ModelInput, Tap
from benchbase.components import LabeledImages, Loss, StepInputs, Student, Teacher
from benchbase.errors import BenchbaseError, MethodFailed
from benchbase.loggers import RunLoggers, StepLog, training
from benchbase.untrained import untrained_parameters

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a training run did: its steps and epochs, the last step's loss terms, the throughput, the
    epoch it resumed from, and ``untrained``: the student's parameters (names relative to
    ``student.model``) that the optimiser held but that never received a gradient (none when no
    step ran; see :mod:`benchbase.untrained`)."""

    steps: int
    epochs: int
    final_terms: dict[str, float]
    images_per_second: float
    resumed_from_epoch: int
    untrained: list[str] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else the CPU. Under torchrun ``auto``/``cuda`` mean this process's
    GPU (``LOCAL_RANK``, set by :func:`benchbase.distributed.init_from_env`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchbaseError(f"trainer.device={name} but CUDA is not available; use trainer.device=cpu")
    if name == "cuda" and distributed.joined():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA for ``auto``/``bf16``; full precision on the CPU unless bf16 is asked for."""
    if precision not in ("auto", "fp32", "bf16"):
        raise BenchbaseError(f"trainer.precision={precision!r}; use auto, fp32 or bf16")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


LR_SCALINGS = ("none", "linear")
CLIP_GRAD_MODES = ("global", "per_parameter")
SCHEDULES = ("cosine", "exponential")


def _setting(cfg: Any, key: str, default: Any = None) -> Any:
    """Trainer setting ``key`` of ``cfg`` (a config, a mapping or an attribute namespace), ``default`` if unset."""
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def check_trainer(cfg: Any) -> None:
    """One-line errors for trainer choices outside their options (``lr_scaling``, ``clip_grad_mode``,
    ``schedule``)."""
    for key, options in (("lr_scaling", LR_SCALINGS), ("clip_grad_mode", CLIP_GRAD_MODES), ("schedule", SCHEDULES)):
        value = _setting(cfg, key, options[0])
        if value not in options:
            raise BenchbaseError(f"trainer.{key}={value!r}; use {' or '.join(options)}")


def peak_lr(cfg: Any, batch_size: int) -> float:
    """The peak learning rate of trainer ``cfg`` at global batch ``batch_size``: ``cfg.lr``, or
    with ``lr_scaling=linear`` the base lr scaled as MAE does, ``cfg.lr x batch_size / 256``."""
    check_trainer(cfg)
    lr = _setting(cfg, "lr")
    return lr * batch_size / 256 if _setting(cfg, "lr_scaling", "none") == "linear" else lr


def weight_decay_at(step: int, total: int, start: float, end: float | None) -> float:
    """The weight decay at ``step`` of ``total``: ``start`` throughout, or with ``end`` a half-cycle
    cosine from ``start`` to ``end`` over all steps (DINO's ``cosine_scheduler``, no warm-up)."""
    if end is None:
        return start
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / max(1, total)))


def clip_gradients(params: list[nn.Parameter], clip: float, mode: str) -> None:
    """Clip gradients to norm ``clip``: all together (``global``) or each parameter's alone
    (``per_parameter``, DINO's ``clip_gradients``: a gradient of norm g > clip is scaled by
    clip / (g + 1e-6)). Neither waits for the device: the norms and scales stay tensors."""
    if mode == "global":
        nn.utils.clip_grad_norm_(params, clip)
        return
    grads = [param.grad for param in params if param.grad is not None]
    if grads:
        norms = torch._foreach_norm(grads)
        scales = [torch.clamp(clip / (norm + 1e-6), max=1.0) for norm in norms]  # x 1.0 leaves g as it is
        torch._foreach_mul_(grads, scales)


def scheduled_lr(cfg: Any, step: int, total: int, warmup: int, base: float, steps_per_epoch: int) -> float:
    """The learning rate at ``step`` under trainer ``cfg``'s ``schedule``: ``cosine`` (:func:`lr_at`)
    or ``exponential``: linear warm-up, then ``base`` x ``gamma``^k, where k counts the finished
    epochs e with e % ``gamma_every`` == 0 (the released EventSAM's ``ExponentialLR(gamma=0.9)``
    stepped after each epoch that is a multiple of 3: k = ceil(epoch / gamma_every))."""
    if _setting(cfg, "schedule", "cosine") == "cosine":
        return lr_at(step, total, warmup, base, cfg.min_lr)
    if step < warmup:
        return base * (step + 1) / warmup
    epoch = step // max(1, steps_per_epoch)
    return base * _setting(cfg, "gamma", 0.9) ** math.ceil(epoch / max(1, _setting(cfg, "gamma_every", 1)))


def lr_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    """Linear warm-up for ``warmup`` steps, then half-cycle cosine from ``base`` to ``minimum``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings (1-D or named)."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            skip = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token", "reg_token"))
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "decayed": True},
            {"params": no_decay, "weight_decay": 0.0, "decayed": False}]


def make_optimizer(modules: list[nn.Module], cfg: Any, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``modules`` (:func:`param_groups`) with trainer
    ``cfg``'s weight decay and betas; on CUDA the fused implementation (one kernel for every
    parameter instead of several per tensor list)."""
    return torch.optim.AdamW(param_groups(modules, cfg.weight_decay), lr=lr, betas=tuple(cfg.betas),
                             fused=device.type == "cuda")


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, ModelInput):
        return ModelInput(*(t.to(device, non_blocking=True) if isinstance(t, Tensor) else t
                            for t in (obj.images, obj.mask, obj.mask_token, obj.keep)))
    return obj


def _run(model: Student | Teacher, inputs: Any, taps) -> Captures | list[Captures] | None:
    if inputs is None or not taps:
        return None
    if isinstance(inputs, list):
        return [model.run(inp, taps) for inp in inputs]
    return model.run(inputs, taps)


class StepModule(nn.Module):
    """The trainable computation of one step: the student's captures, then the loss terms.

    One module holding the student and the loss, so that under torchrun a single
    DistributedDataParallel wrapper all-reduces the gradients of both (heads, decoders and mask
    tokens live in the loss). The teacher stays outside: frozen, run in inference mode.
    """

    def __init__(self, student: Student, loss: Loss):
        super().__init__()
        self.student, self.loss = student, loss

    def forward(self, student_inputs: Any, teacher_out: Captures | list[Captures] | None,
                inputs: StepInputs) -> dict[str, Tensor]:
        """Loss terms of ``student_inputs`` (a :class:`ModelInput` or a list) against ``teacher_out``."""
        return self.loss(_run(self.student, student_inputs, self.loss.student_taps), teacher_out, inputs)


def _distribute(module: StepModule) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun (a group of one too), else itself.

    ``find_unused_parameters=True``: which parameters a step uses depends on the loss (a student's
    classifier head under feature distillation, the last block's MLP under TinyMIM, a plugin's
    optional branches), so DDP looks for them in each step's graph instead of requiring a static
    declaration; the traversal is small next to a ViT step. ``device_ids`` stays None: the module
    lives on one device, and DDP then leaves the (already placed) inputs alone.
    """
    if not distributed.joined():
        return module
    return DistributedDataParallel(module, device_ids=None, find_unused_parameters=True)


def _epoch_batches(dataset: LabeledImages, cfg: Any, seed: int, epoch: int, device, skip: int = 0) -> Iterator:
    """This process's share of each global batch of the epoch, from global batch ``skip`` on: the
    global batches come from one permutation seeded by (seed, epoch), identical on every rank and
    to a single-process run."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    global_batches = BatchSampler(RandomSampler(dataset, generator=generator),
                                  batch_size=min(cfg.batch_size, len(dataset)), drop_last=True)
    loader = DataLoader(
        dataset,
        batch_sampler=distributed.ShardedBatches(global_batches, distributed.rank(), distributed.world_size(), skip),
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    return iter(loader)


@contextlib.contextmanager
def compiled(models: list[tuple[Student | Teacher | None, Sequence[Tap]]], cfg: Any) -> Iterator[None]:
    """With ``cfg.compile``: ``torch.compile`` (``cfg.compile_mode``, ``cfg.compile_backend``) every
    transformer block of ``models`` that none of its taps names, for the duration of the context.

    Tapped blocks stay eager: capture adds hooks to their submodules on every call, which a compiled
    block would trace again each step. Blocks past a teacher's early exit never run, so never
    compile. ``nn.Module.compile`` works in place: parameters and state-dict keys stay as they are.
    """
    blocks: list[nn.Module] = []
    if cfg.compile:
        for model, taps in models:
            if model is not None and hasattr(model.model, "blocks"):
                tapped = {tap.resolve(model.depth).block for tap in taps}
                blocks += [block for index, block in enumerate(model.model.blocks) if index not in tapped]
    if not blocks:
        yield
        return
    import torch._dynamo  # only where something compiles (a submodule torch does not import itself)

    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    for block in blocks:
        block.compile(mode=mode, backend=cfg.compile_backend)
    # Blocks differing in a Python float (stochastic depth's drop_prob rises with depth) each compile
    # their own graph; under TorchDynamo's default limit of 8 the blocks past it would run eager.
    config = torch._dynamo.config
    key = recompile_limit_key()
    try:
        with config.patch(**{key: max(getattr(config, key), 2 * len(blocks) + 8)}):
            yield
    finally:
        for block in blocks:  # back to eager for evaluation and for the next run's taps
            block._compiled_call_impl = None


def recompile_limit_key() -> str:
    """The name of TorchDynamo's per-function recompile limit in this torch (``recompile_limit``;
    ``cache_size_limit`` before torch 2.6, an alias after)."""
    import torch._dynamo

    return "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def _seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch's generators from (seed, epoch); each rank of a multi-process run gets its own stream."""
    torch.manual_seed(seed * 1_000_003 + epoch + rank * 1_000_000_007)


def train(
    student: Student,
    teacher: Teacher | None,
    loss: Loss,
    dataset: LabeledImages,
    cfg: Any,
    run_dir: Path,
    seed: int,
    desc: str = "",
    loss_state: dict | None = None,
    loggers: RunLoggers | None = None,
) -> TrainResult:
    """Train ``student`` (and the loss's own parameters) on ``dataset`` with ``loss``.

    ``cfg`` is a TrainerConfig. Writes ``checkpoint.pt`` into ``run_dir`` and logs every step to
    ``loggers`` (started here, finished by the caller; default: ``steps.jsonl`` in ``run_dir``);
    if a checkpoint is there, training resumes after its epoch. Raises :class:`MethodFailed` on a
    non-finite loss, with the step. ``loss_state`` (a previous stage's ``loss.state_dict()``) is
    loaded into the loss after its ``setup`` when the run starts afresh. Under torchrun every rank calls this with the same arguments;
    ``cfg.batch_size`` is the global batch and must be a multiple of the number of processes.
    """
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()  # every rank sees rank 0's run folder (and checkpoint) as it is now
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    if device.type == "cuda":  # fixed input shapes: cuDNN picks its fastest convolution once per shape
        torch.backends.cudnn.benchmark = True
    if len(dataset) < 2:
        raise BenchbaseError(f"the distillation split has {len(dataset)} images; it needs at least 2")
    distributed.local_batch_size(min(cfg.batch_size, len(dataset)), world)
    _seed_everything(seed, -1)  # the same on every rank: the loss's heads start identical
    loss.setup(student, teacher)
    student.to(device)
    loss.to(device)
    if teacher is not None:
        teacher.to(device)
    lr = peak_lr(cfg, min(cfg.batch_size, len(dataset)))
    optimizer = make_optimizer([student, loss], cfg, lr, device)
    steps_per_epoch = len(dataset) // min(cfg.batch_size, len(dataset))
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    start_epoch, step, partial = 0, 0, None
    ckpt_path = run_dir / CHECKPOINT
    if loss_state is not None and not ckpt_path.exists():
        loss.load_state_dict(loss_state)
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        student.load_state_dict(state["student"])
        loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        partial = state.get("partial")
    if main:
        if step:
            where = f"epoch {start_epoch}, batch {partial['batch']}" if partial else f"the start of epoch {start_epoch}"
            tqdm.write(f"resuming {run_dir} from its checkpoint at step {step} ({where})", file=sys.stderr)
    step_module = _distribute(StepModule(student, loss))
    resumed_from = start_epoch
    started = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=desc, disable=None if cfg.progress and main else True, leave=False,
               dynamic_ncols=True)
    sync_every = _setting(cfg, "sync_every", None) or (25 if device.type == "cuda" else 1)
    with (training(loggers, run_dir, step, total) as log,
          preemption.StopSignals() as stop_signals,
          compiled([(student, loss.student_taps), (teacher, loss.teacher_taps)], cfg)):
        reader = StepReader(sync_every, log, bar, started)
        for epoch in range(start_epoch, cfg.epochs):
            skip = partial["batch"] if partial and epoch == start_epoch else 0
            if skip:  # resumed mid-epoch: the random streams continue where the checkpoint left them
                preemption.set_rng_state(partial["rng"][rank])
            else:
                _seed_everything(seed, epoch, rank)
            student.train()
            for batch, (images, labels) in enumerate(_epoch_batches(dataset, cfg, seed, epoch, device, skip), skip):
                try:
                    names, values = train_step(step_module, teacher, loss, optimizer, images, labels, device, amp, cfg,
                                               step, scheduled_lr(cfg, step, total, warmup, lr, steps_per_epoch), stop_signals,
                                               weight_decay_at(step, total, cfg.weight_decay, _setting(cfg, "weight_decay_end")),
                                               epoch)
                except MethodFailed:
                    raise
                except Exception as exc:
                    raise MethodFailed(f"{type(exc).__name__} at step {step}: {exc}", step=step) from exc
                lr_now = optimizer.param_groups[0]["lr"]
                step += 1
                loss.after_step(student, step / max(1, total))
                if reader.add(step - 1, epoch, lr_now, names, values, images.shape[0] * world):
                    # a stop signal on some rank: checkpoint this step, then let the signal act
                    rngs = distributed.all_gather(preemption.rng_state())
                    if main:
                        log.flush()
                        _save_checkpoint(ckpt_path, student, loss, optimizer, epoch - 1, step,
                                         partial={"batch": batch + 1, "rng": rngs})
                    distributed.barrier()
                    stop_signals.deliver()
            reader.read()  # every step of the epoch checked before its checkpoint
            if main:
                log.flush()
                _save_checkpoint(ckpt_path, student, loss, optimizer, epoch, step)
    bar.close()
    elapsed = time.perf_counter() - started
    untrained = untrained_parameters(student.model, optimizer) if step else []
    rate = reader.seen_images / elapsed if elapsed else 0.0
    return TrainResult(step, cfg.epochs, reader.terms, rate, resumed_from, untrained)


def train_step(step_module: nn.Module, teacher, loss, optimizer, images, labels, device, amp, cfg, step: int,
               lr: float, stop: preemption.StopSignals | None = None,
               weight_decay: float | None = None, epoch: int = 0) -> tuple[list[str], Tensor]:
    """One optimiser step of ``step_module`` (a :class:`StepModule`, DDP-wrapped under torchrun).

    Returns the names of the loss terms and, still on the device, their values followed by a stop
    flag ([n_terms + 1] float32, averaged over the processes: the flag is > 0 when a stop signal
    reached any process, so it rides along with the terms at no extra collective). Nothing here
    waits for the device; :class:`StepReader` reads the values (and checks them) in batches."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if weight_decay is not None and group.get("decayed"):  # not the norms, biases and tokens
            group["weight_decay"] = weight_decay
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    inputs = loss.make_inputs(images, labels)
    inputs.student, inputs.teacher = _to_device(inputs.student, device), _to_device(inputs.teacher, device)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        teacher_out = None
        if teacher is not None:
            with teacher.teaching():
                teacher_out = _run(teacher, inputs.teacher, loss.teacher_taps)
        terms = step_module(inputs.student, teacher_out, inputs)
    total_loss = sum(terms.values())
    stopping = float(stop is not None and stop.requested)
    values = torch.cat([torch.stack([v.detach().float() for v in terms.values()]),
                        torch.full((1,), stopping, device=total_loss.device)])
    distributed.all_reduce_mean(values)
    optimizer.zero_grad(set_to_none=True)
    total_loss.backward()
    if cfg.clip_grad:
        clip_gradients([p for g in optimizer.param_groups for p in g["params"]], cfg.clip_grad,
                       _setting(cfg, "clip_grad_mode", "global"))
    loss.before_update(epoch)
    optimizer.step()
    return list(terms), values


class StepReader:
    """The loss terms of the steps taken since the last read, kept on the device and read to the
    host in one transfer every ``every`` steps (and whenever :meth:`read` is called): the host waits
    for the device once per read instead of once per step, so a GPU's queue stays full. Every step
    is still checked (a non-finite term raises :class:`MethodFailed` naming the first such step)
    and logged, to ``log`` and the progress ``bar``."""

    def __init__(self, every: int, log, bar, started: float):
        self.every, self.log, self.bar, self.started = max(1, every), log, bar, started
        self.pending: list[tuple[int, int, float, list[str], Tensor, int]] = []
        self.seen_images, self.terms = 0, {}

    def add(self, step: int, epoch: int, lr: float, names: list[str], values: Tensor, images: int) -> bool:
        """Record step ``step`` (0-based) of ``images`` images (all processes); read when due.
        Returns whether a stop signal reached any process by the last step read."""
        self.pending.append((step, epoch, lr, names, values, images))
        return self.read() if len(self.pending) >= self.every else False

    def read(self) -> bool:
        """Read, check and log the pending steps; whether any of them carries a stop flag."""
        if not self.pending:
            return False
        rows = torch.cat([values for *_, values, _ in self.pending]).tolist()
        stopping, offset = False, 0
        for step, epoch, lr, names, _, images in self.pending:
            *row, flag = rows[offset:offset + len(names) + 1]
            offset += len(names) + 1
            self.terms = dict(zip(names, row))
            if not all(math.isfinite(v) for v in row):
                raise MethodFailed(f"non-finite loss at step {step}: {self.terms}", step=step)
            self.seen_images += images
            rate = self.seen_images / max(1e-9, time.perf_counter() - self.started)
            self.log.log_step(StepLog(step + 1, epoch, self.terms, lr, rate))
            stopping = stopping or flag > 0
        self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in self.terms.items()}, "img/s": f"{rate:.0f}"})
        self.bar.update(len(self.pending))
        self.pending.clear()
        return stopping


def _save_checkpoint(path: Path, student, loss, optimizer, epoch: int, step: int, partial: dict | None = None) -> None:
    """Everything a resume needs after ``step`` steps: ``epoch`` is the last complete epoch; ``partial``
    (``{"batch": k, "rng": [each rank's random state]}``) says that ``k`` batches of the next epoch
    are done as well (a checkpoint written on a stop signal)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"student": student.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
         "epoch": epoch, "step": step, "partial": partial},
        tmp,
    )
    tmp.replace(path)

