"""EventSAM: weighted adaptation of pivotal tokens (Chen, Zhu et al., CVPR 2024; code: zhiwen-xdu/EventSAM).

A frozen SAM image encoder (the teacher) sees the RGB frame; a copy of it (the student) sees an
event representation of the same, pixel-aligned scene. The student's block outputs are pulled
towards the teacher's, each token weighted by an importance the teacher's attention gives
cheaply (no teacher gradients). Both models are SAM ``ImageEncoderViT``s wrapped as
:class:`benchbase.sam.SamStudent` / :class:`benchbase.sam.SamTeacher`.

Inputs: the data provider stacks frame and events into one image tensor, [B, C_f + C_e, H, W],
frame channels first (``frame_channels`` = C_f, ``event_channels`` = C_e; EventSAM: an RGB frame
and a 3-channel voxel-like event image, both normalised with ImageNet mean/std). The teacher gets
``images[:, :C_f]``, the student ``images[:, C_f:]``; both are zero-padded bottom/right to the
encoder's ``img_size`` (the released code pads 260×346 DAVIS frames to 512).

Loss, for each distilled block s with layer weight λ_s (released: blocks [2, 5, 8, 11] of SAM
ViT-B, λ = [0.1, 0.4, 0.7, 1.0]) and block outputs F [B, N, D] of teacher (T) and student (S)::

    term_s = λ_s · distance(w_s ⊙ F_T, w_s ⊙ F_S)         (w_s [B, N] broadcast over D)

``distance="l1"`` is the released ``nn.L1Loss`` (mean over B·N·D, so mean(w·|F_T − F_S|));
``"mse"`` is the squared variant. Terms are named ``block{s}``; their sum is the loss. The
released code also logs the unweighted per-block L1; here every returned term is summed, so it is
not returned.

Token importance. The paper models the forward pass after block s as a Markov chain,
H(s) = Π_{i=s+1..n} (α_i P(i) + (1 − α_i) I), P(i) block i's attention; the product of attention
matrices converges, so the α_i collapse into one β: H(s) ≈ β P̃ + (1 − β) I and the token weights
are w_s = 1ᵀH(s) = β·1ᵀP̃ + (1 − β)·1 (sum over queries: how much attention each token gets).
``beta`` is β (the released code's 0.5 gives (1ᵀP + 1) / 2). P̃ depends on ``importance``:

* ``"released_code"`` (``mix_encoder.py`` since 2024-03-30): P̃ is one matrix, the
  head-averaged attention of block s + 1, evaluated as the released ``Block.forward``'s second
  attention call: block s + 1's ``attn`` applied to its own attention-branch output (after window
  un-partition, before the residual) over the whole grid, so a windowed block gives a dense N×N
  "pseudo-global" matrix (SAM interpolates its window rel-pos table). The last block gets w = 1
  (the released ``torch.ones``). No further normalisation: with β = 0.5 the weights average 1.
* ``"paper"`` (default): P̃ = P(n)·…·P(s+1), the chain of the teacher's head-averaged attention
  transition matrices of every later block, as the forward pass uses them: a global block's
  N×N attention, a windowed block's block-diagonal one (mass given to padding tokens dropped; see
  :func:`benchbase.sam.window_attention_to_dense`). The last block's empty chain gives w = 1.
  (The first release multiplied per-head attention of blocks s+1..next global block; the paper's
  exact equations are not verified, research notes 1.1–1.2.)

Student: ``init_from_teacher`` copies the teacher's encoder into the student (the released code
loads SAM into both, so the student starts as an exact copy). When the event and frame channel
counts differ, the student's patch embedding starts from the teacher's, summed over the frame's
channels and shared equally by the event channels (:func:`adapted_patch_embedding`), not at random.
``trainable`` selects what trains: ``"released_code"`` (``train.py``: the patch embedding and the
MLPs of the distilled blocks), ``"paper_figure"`` (the framework figure: the patch embedding and
every block's MLP) or ``"all"``. Attention, norms, position embeddings (and the unused neck) stay
frozen in the first two.

``importance="uniform"`` weights every token 1 (no attention is captured): the unweighted
feature-distillation baseline on the same pairs, blocks, layer weights and trainable set.

Padding. When the data are smaller than the encoder (the released code pads 260×346 frames to
512), the bottom/right tokens see only zero padding. ``exclude_padding=False`` (default) keeps
them in the loss as the released code does (its ``nn.L1Loss`` averages over the whole padded
grid); ``True`` drops every token whose patch holds no real pixel, so the distance is the mean
over the tokens that see the image. The paper's choice is not verified (research notes 6), so the
released behaviour is the default.

Token mixing (the framework figure's "Token Mixing" with a "Random Mask"; ``mix_tokens``, 10% RGB
tokens, is commented out in the released code): with ``mix_ratio`` = r > 0, each training step
replaces a random fraction r of the student's patch tokens, after its patch embedding and before
the position embedding, with the teacher's patch-embedded frame tokens at the same positions
(the teacher's frozen patch embedding, no gradient). Default 0: off, as released.

Not included: a relation loss (the figure's label; the released code uses feature L1).
The released optimiser (Adam, lr 2e-4, no weight decay, 5 epochs, batch 16) is the suite's
trainer setting, not a loss option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention
from torch import Tensor, nn

from benchbase.api import (
    BenchbaseError,
    Captures,
    Method,
    Metric,
    ModelInput,
    Register,
    SamStudent,
    SamTeacher,
    StepInputs,
    Student,
    Tap,
    Teacher,
    hookimpl,
    pad_to_size,
    sam_attention,
    window_attention_to_dense,
)

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)

IMPORTANCE = ("released_code", "paper", "uniform")
TRAINABLE = ("released_code", "paper_figure", "all")
DISTANCES = {"l1": F.l1_loss, "mse": F.mse_loss}


def token_importance(transitions: Sequence[Tensor], beta: float) -> Tensor:
    """``w = β · 1ᵀ(P_n ⋯ P_{s+1}) + (1 − β) · 1`` for ``transitions = [P_{s+1}, …, P_n]``.

    Each P is a head-averaged attention matrix [B, N, N] (rows are queries); the sum runs over
    queries, so w[b, k] grows with the attention token k receives. ``transitions`` must not be
    empty (the last block's weights are ones). Returns [B, N].
    """
    weights = torch.ones_like(transitions[-1][:, 0])  # 1ᵀ, [B, N]
    for matrix in reversed(transitions):  # 1ᵀ P_n, then (1ᵀ P_n) P_{n-1}, ...
        weights = torch.einsum("bq,bqk->bk", weights, matrix)
    return beta * weights + (1.0 - beta)


def weighted_distance(student: Tensor, teacher: Tensor, weights: Tensor, distance: str,
                      keep: Tensor | None = None) -> Tensor:
    """``distance(w ⊙ F_S, w ⊙ F_T)`` (mean reduction) for features [B, N, D] and weights [B, N].

    ``keep`` [N] bool restricts the mean to those tokens (None: every token).
    """
    if keep is not None:
        student, teacher, weights = student[:, keep], teacher[:, keep], weights[:, keep]
    w = weights.unsqueeze(-1)
    return DISTANCES[distance](w * student, w * teacher)


def image_tokens(size: tuple[int, int], grid: tuple[int, int], patch: int) -> Tensor:
    """[h·w] bool: the tokens of an h×w ``grid`` of ``patch``-pixel patches whose patch holds at
    least one pixel of a ``size`` = (H, W) image padded bottom/right (the others see only padding)."""
    rows = torch.arange(grid[0]) * patch < size[0]
    cols = torch.arange(grid[1]) * patch < size[1]
    return (rows[:, None] & cols[None, :]).reshape(-1)


class EventSAMLoss(Method):
    """Token-weighted block-output distillation from a frame-fed SAM teacher to an event-fed student.

    Args:
        frame_channels: channels of the frame (teacher input), first in the stacked image; None
            (default) takes the teacher's input channels.
        event_channels: channels of the event representation (student input), after the frame;
            None (default) takes the student's input channels.
        distilled_blocks: blocks whose outputs are aligned (negative counts from the end); the
            indices refer to both encoders. None (default): the released pattern scaled to the
            depth (:func:`released_blocks`), four evenly spaced blocks ending with the last: the
            released [2, 5, 8, 11] for SAM ViT-B, [0, 1, 2, 3] for the small suites' 4 blocks.
        layer_weights: λ per distilled block; None (default): evenly from 0.1 to 1, which for four
            blocks is the released [0.1, 0.4, 0.7, 1.0].
        importance: ``"paper"`` (default: the chain of all later blocks' attention),
            ``"released_code"`` (attention of block s + 1) or ``"uniform"`` (every weight 1); see the
            module docstring.
        beta: β in w = β·1ᵀP + (1 − β)·1, in [0, 1] (released 0.5; 0 gives uniform weights).
        distance: ``"l1"`` (released) or ``"mse"``.
        trainable: ``"released_code"``, ``"paper_figure"`` or ``"all"``.
        init_from_teacher: copy the teacher's weights into the student in ``setup``.
        exclude_padding: leave tokens that see only padding out of the loss (released: False).
        mix_ratio: fraction of student patch tokens replaced by the teacher's in training
            (token mixing; released: 0, off).
    """

    name = "eventsam"
    student_arch = "sam"  # distils between SAM image encoders (benchbase.sam)

    def __init__(
        self, frame_channels: int | None = None, event_channels: int | None = None,
        distilled_blocks: list[int] | None = None, layer_weights: list[float] | None = None,
        importance: str = "paper", beta: float = 0.5, distance: str = "l1",
        trainable: str = "released_code", init_from_teacher: bool = True, exclude_padding: bool = False,
        mix_ratio: float = 0.0,
    ):
        super().__init__()
        if (frame_channels is not None and frame_channels < 1) or (event_channels is not None and event_channels < 1):
            raise BenchbaseError(
                f"eventsam: frame_channels and event_channels must be >= 1; got {frame_channels}, {event_channels}"
            )
        if distilled_blocks is not None and layer_weights is not None and (
                not distilled_blocks or len(layer_weights) != len(distilled_blocks)):
            raise BenchbaseError(
                f"eventsam: give one layer weight per distilled block; got blocks {list(distilled_blocks)} "
                f"and layer_weights {list(layer_weights)}"
            )
        for key, value, allowed in (("importance", importance, IMPORTANCE), ("trainable", trainable, TRAINABLE),
                                    ("distance", distance, tuple(DISTANCES))):
            if value not in allowed:
                raise BenchbaseError(f"eventsam: {key} must be one of {', '.join(allowed)}; got {value!r}")
        if not 0.0 <= beta <= 1.0:
            raise BenchbaseError(f"eventsam: beta must be in [0, 1]; got {beta}")
        if not 0.0 <= mix_ratio < 1.0:
            raise BenchbaseError(f"eventsam: mix_ratio must be in [0, 1); got {mix_ratio}")
        self.frame_channels, self.event_channels = frame_channels, event_channels
        self.requested_blocks = None if distilled_blocks is None else list(distilled_blocks)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.importance, self.beta, self.distance = importance, beta, distance
        self.trainable, self.init_from_teacher = trainable, init_from_teacher
        self.exclude_padding, self.mix_ratio = exclude_padding, mix_ratio
        self.spread: dict[int, Tensor] = {}  # per distilled block: summed per-step [weights' spread, weighted / uniform]
        self.spread_steps = 0

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Check the encoders, resolve the blocks and taps, initialise the student, set what trains."""
        if not isinstance(student, SamStudent) or not isinstance(teacher, SamTeacher):
            raise BenchbaseError(
                "eventsam distils between SAM image encoders; use a SAM student and a SAM teacher "
                f"(got {type(student).__name__} and {type(teacher).__name__})"
            )
        # unset channel counts are the encoders' own (the harness builds each for its modality)
        self.frame_channels = self.frame_channels or teacher.in_chans
        self.event_channels = self.event_channels or student.in_chans
        for role, model, channels, key in (("teacher", teacher, self.frame_channels, "frame_channels"),
                                           ("student", student, self.event_channels, "event_channels")):
            if model.in_chans != channels:
                raise BenchbaseError(
                    f"eventsam: the {role} takes {model.in_chans}-channel images but {key}={channels}; "
                    f"build the {role} with in_chans={channels}"
                )
        if (student.grid, student.embed_dim) != (teacher.grid, teacher.embed_dim):
            raise BenchbaseError(
                f"eventsam: student token grid/width {student.grid}/{student.embed_dim} differ from the teacher's "
                f"{teacher.grid}/{teacher.embed_dim}; the loss compares block outputs token by token"
            )
        depth = teacher.depth
        if self.requested_blocks is None:  # the released pattern scaled to the depth (ViT-B: 2, 5, 8, 11)
            self.requested_blocks = released_blocks(depth)
        if self.layer_weights is None:  # evenly from 0.1 to 1 (ViT-B: 0.1, 0.4, 0.7, 1.0)
            count = len(self.requested_blocks)
            self.layer_weights = [1.0] if count == 1 else [0.1 + 0.9 * i / (count - 1) for i in range(count)]
        if len(self.layer_weights) != len(self.requested_blocks):
            raise BenchbaseError(
                f"eventsam: give one layer weight per distilled block; got blocks {self.requested_blocks} "
                f"and layer_weights {self.layer_weights}"
            )
        blocks = [b + depth if b < 0 else b for b in self.requested_blocks]
        if any(not 0 <= b < min(depth, student.depth) for b in blocks) or len(set(blocks)) != len(blocks):
            raise BenchbaseError(
                f"eventsam: distilled_blocks {self.requested_blocks} must be distinct blocks of both the "
                f"{depth}-block teacher and the {student.depth}-block student"
            )
        self.blocks, self.depth, self.grid, self.img_size = blocks, depth, teacher.grid, teacher.model.img_size
        self.patch_size = teacher.patch_size
        # plain dicts: the teacher's modules must not become parameters or state of the loss
        self.teacher_patch_embed: dict[str, nn.Module] = {"frame": teacher.model.patch_embed}
        self.windows = [block.window_size for block in teacher.model.blocks]
        self.student_taps = tuple(Tap("block", b) for b in blocks)
        importance_taps: list[Tap] = []
        if self.importance == "released_code":
            self.pivot_attention: dict[int, Attention] = {
                b + 1: teacher.model.blocks[b + 1].attn for b in blocks if b + 1 < depth}
            importance_taps = [Tap("attn_out", i) for i in sorted(self.pivot_attention)]
        elif self.importance == "paper" and min(blocks) + 1 < depth:
            importance_taps = [Tap("attn", i) for i in range(min(blocks) + 1, depth)]
        self.teacher_taps = tuple(Tap("block", b) for b in blocks) + tuple(importance_taps)
        if self.init_from_teacher:
            copy_teacher(student, teacher)
        set_trainable(student, self.trainable, blocks)

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """Split stacked [B, C_f + C_e, H, W] images: the frame for the teacher, the events for the student."""
        channels = self.frame_channels + self.event_channels
        if images.shape[1] != channels:
            raise BenchbaseError(
                f"eventsam: images have {images.shape[1]} channels but frame_channels + event_channels = {channels}; "
                "the data must stack the frame and the events channel-wise"
            )
        size = tuple(images.shape[-2:])
        images = pad_to_size(images, self.img_size)
        frames, events = images[:, : self.frame_channels], images[:, self.frame_channels:]
        student = ModelInput(events)
        if self.mix_ratio > 0 and self.training:
            student = self.mixed_input(events, frames)
        extras = {"image_size": size}
        return StepInputs(student=student, teacher=ModelInput(frames), labels=labels, extras=extras)

    @torch.no_grad()
    def mixed_input(self, events: Tensor, frames: Tensor) -> ModelInput:
        """The student's input with a random ``mix_ratio`` of its patch tokens taken from the teacher:
        ``mask`` [B, N] marks them, ``mask_token`` [B, h, w, D] holds the teacher's patch-embedded
        ``frames`` (the student's position embedding is added to either)."""
        teacher_tokens = self.teacher_patch_embed["frame"](frames)  # [B, h, w, D]
        mask = torch.rand(events.shape[0], self.grid[0] * self.grid[1], device=events.device) < self.mix_ratio
        return ModelInput(events, mask=mask, mask_token=teacher_tokens)

    @torch.no_grad()
    def token_weights(self, teacher: Captures) -> dict[int, Tensor]:
        """The importance w_s [B, N] of each distilled block's tokens from the teacher's captures."""
        if self.importance == "uniform":
            return {block: torch.ones_like(teacher[Tap("block", block)][..., 0]) for block in self.blocks}
        if self.importance == "paper":
            transitions = {i: self._transition(teacher, i) for i in range(min(self.blocks) + 1, self.depth)}
        weights = {}
        for block in self.blocks:
            if block == self.depth - 1:
                weights[block] = torch.ones_like(teacher[Tap("block", block)][..., 0])
                continue
            if self.importance == "released_code":
                tokens = teacher[Tap("attn_out", block + 1)].unflatten(1, self.grid)  # [B, h, w, D]
                chain = [sam_attention(self.pivot_attention[block + 1], tokens).mean(1)]
            else:
                chain = [transitions[i] for i in range(block + 1, self.depth)]
            weights[block] = token_importance(chain, self.beta)
        return weights

    def _transition(self, teacher: Captures, index: int) -> Tensor:
        """Block ``index``'s head-averaged attention as an N×N transition matrix [B, N, N]."""
        attn = teacher[Tap("attn", index)].mean(1, keepdim=True)
        if self.windows[index] > 0:
            attn = window_attention_to_dense(attn, self.grid, self.windows[index])
        return attn[:, 0]

    def forward(self, student: Captures, teacher: Captures, inputs: StepInputs) -> dict[str, Tensor]:
        """``{"block{s}": λ_s · distance(w_s ⊙ F_T, w_s ⊙ F_S)}`` over block outputs [B, N, D]."""
        weights = self.token_weights(teacher)
        keep = None
        if self.exclude_padding:
            keep = image_tokens(inputs.extras["image_size"], self.grid, self.patch_size).to(weights[self.blocks[0]].device)
        distances = {b: weighted_distance(student[Tap("block", b)], teacher[Tap("block", b)], weights[b], self.distance,
                                          keep) for b in self.blocks}
        if self.training:
            self.note_spread(weights, distances, student, teacher, keep)
        return {f"block{b}": lam * distances[b] for b, lam in zip(self.blocks, self.layer_weights)}


    @torch.no_grad()
    def note_spread(self, weights: dict[int, Tensor], distances: dict[int, Tensor], student: Captures,
                    teacher: Captures, keep: Tensor | None) -> None:
        """Add one training step's statistics of each distilled block: the spread of its [B, ...]
        token weights (coefficient of variation over an image's tokens, std / mean, averaged over the
        batch) and the ratio of its weighted distance to the same distance with uniform weights."""
        for block, w in weights.items():
            flat = w.flatten(1).float()
            spread = (flat.std(dim=1, unbiased=False) / flat.mean(dim=1).clamp_min(1e-12)).mean()
            uniform = weighted_distance(student[Tap("block", block)], teacher[Tap("block", block)], torch.ones_like(w),
                                        self.distance, keep)
            ratio = distances[block].detach() / uniform.clamp_min(1e-12)
            self.spread[block] = self.spread.get(block, 0.0) + torch.stack([spread, ratio])
        self.spread_steps += 1

    def training_summary(self) -> list[Metric]:
        """Per distilled block s, over the training steps: ``importance_cv_block{s}``, how unequal the
        teacher's token importance was (percent; 0 for uniform weights and for the last block,
        weighted 1), and ``weighting_effect_block{s}``, by how much the weighting changed the block's
        distance against uniform weights (percent; 0: no effect). Their protocol texts name no
        option of the row (importance, beta, distance: those are in its config), so rows that differ
        in them share one column; the number of steps averaged is the metric's ``n``."""
        if not self.spread_steps:
            return []
        steps, metrics = self.spread_steps, []
        for block, total in sorted(self.spread.items()):
            spread, ratio = (float(v) / steps for v in total)
            metrics += [
                Metric(f"importance_cv_block{block}", 100 * spread, steps,
                       f"spread of the teacher's token importance at distilled block {block}: the coefficient of "
                       f"variation of the weights over an image's tokens (std / mean, percent), averaged over the "
                       f"images of each training step, then over the steps"),
                Metric(f"weighting_effect_block{block}", 100 * (ratio - 1), steps,
                       f"effect of the token weighting on distilled block {block}'s loss distance: 100 x (weighted / "
                       f"uniformly weighted distance - 1), averaged over the training steps"),
            ]
        return metrics


def released_blocks(depth: int) -> list[int]:
    """The released distilled blocks scaled to a ``depth``-block encoder: four evenly spaced blocks
    ending with the last, (k + 1)·depth/4 - 1 for k = 0..3 (ViT-B's 12 blocks: 2, 5, 8, 11; the
    small suites' 4: 0, 1, 2, 3), or every block of a shallower encoder."""
    return list(range(depth)) if depth < 4 else [(k + 1) * depth // 4 - 1 for k in range(4)]


def adapted_patch_embedding(weight: Tensor, channels: int) -> Tensor:
    """A [D, C_t, p, p] patch-embedding weight for ``channels`` input channels: the teacher's filters
    summed over its channels and shared equally by the new ones (each gets sum / ``channels``), so an
    input whose channels all equal x meets the teacher's response to the grey image x (timm's
    ``adapt_input_conv`` rule)."""
    return (weight.sum(dim=1, keepdim=True) / channels).repeat(1, channels, 1, 1)


def copy_teacher(student: SamStudent, teacher: SamTeacher) -> None:
    """Copy the teacher encoder's tensors into the student's (the released init: both from SAM).

    When the channel counts differ (a 1-channel frame teaching a 3-bin voxel grid), the student's
    patch embedding starts from the teacher's through :func:`adapted_patch_embedding` (its bias as
    it is) instead of at random; any other difference is a :class:`BenchbaseError` naming the keys.
    """
    source, own = teacher.model.state_dict(), student.model.state_dict()
    if student.in_chans != teacher.in_chans:
        source = dict(source)
        source["patch_embed.proj.weight"] = adapted_patch_embedding(source["patch_embed.proj.weight"],
                                                                    student.in_chans)
    differ = sorted(k for k in source if k not in own or own[k].shape != source[k].shape)
    missing = sorted(k for k in own if k not in source and not k.startswith("patch_embed."))
    if differ or missing:
        raise BenchbaseError(
            f"eventsam: init_from_teacher needs the student to have the teacher's architecture; differing "
            f"tensors: {', '.join((differ + missing)[:3])}; use the same SAM preset or init_from_teacher=false"
        )
    student.model.load_state_dict(source, strict=False)


def set_trainable(student: SamStudent, mode: str, blocks: Sequence[int]) -> None:
    """``requires_grad`` per ``mode``: released_code = patch embedding + MLPs of ``blocks``;
    paper_figure = patch embedding + every block's MLP; all = every parameter."""
    encoder = student.model
    encoder.requires_grad_(mode == "all")
    if mode == "all":
        return
    encoder.patch_embed.requires_grad_(True)
    for index in range(len(encoder.blocks)) if mode == "paper_figure" else blocks:
        encoder.blocks[index].mlp.requires_grad_(True)


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(EventSAMLoss.name, EventSAMLoss)

