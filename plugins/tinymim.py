"""TinyMIM relation distillation (Ren et al., CVPR 2023, Eq. 4, 5, 9; code: OliverRensu/TinyMIM).

For head m of a block with queries, keys and values Q, K, V of shape [T, d_head] (over all T = 1 + N
tokens, class token included), a relation is ``R^AB = softmax(A Bᵀ / sqrt(d_head))`` [T, T], so
``R^QK`` is the attention map. The teacher's relations come from its target block
(``teacher_block``; the paper uses the 18th of MAE ViT-L's 24 blocks, i.e. ``teacher_block=17``)
and the student's from its last block. As in timm and the official code, that block's q/k/v are
computed from LN(x) of the block input. Each term is ``KL(R_t || R_s)`` summed over keys and
averaged over batch, heads and query rows (the official ``KLDivLoss(reduction='none')(pred.log(),
target).sum(-1).mean()``; the student side uses ``log_softmax`` for stability). The default terms
are ``{"qk", "vv"}``, equally weighted (Eq. 9). ``relations`` also accepts ``qq`` and ``kk``
(Table 7).

Head alignment: ``setup`` turns the student's last block into the paper's "adaptive block". It
keeps the student's width D_s but splits it into the teacher's M_t heads of D_s / M_t channels.
Only ``num_heads``, ``head_dim`` and ``scale`` of ``student.model.blocks[-1].attn`` (a timm
``Attention``) change, so there are no new parameters and the student stays a plain timm
``VisionTransformer``. After training the last block gets its own head count back
(``export_heads="student"``: the same weights, split as the official fine-tuning's standard ViT
loads them); ``export_heads="teacher"`` keeps the M_t heads, and the saved ``student.pt`` lists
each block's head count, which :func:`benchbase.models.load_weights` restores.

Inputs: both models see the same random resized crop of each image (scale 0.2-1, with a horizontal
flip: ``crop_scale``, the paper's augmentation). The student's view also gets colour jitter (see
:func:`jitter_colours`, the official ``ColorJitter(0.4, 0.4, 0.4)`` on the student crop only).
``masked_input`` is the Table 12 ablation: the student encodes a random ``1 - mask_ratio`` of the
patches (MAE-style ``ModelInput.keep``). The teacher still sees the whole image, and its relations
are taken over the same visible tokens as the student's (q/k/v gathered at the kept positions).
``softmax=False`` is the Table 7 "no softmax" ablation. A KL needs distributions, so each term is
then the MSE between the raw scaled products ``A Bᵀ / sqrt(d_head)`` of student and teacher.

Not part of the loss: drop path (teacher 0.0, student 0.1 in the paper, the same rate in every
block) is the method config's protocol (``method.student: {drop_path: 0.1, drop_path_schedule:
constant}``, with the paper's AdamW betas and no clipping), and ``teacher.distill_drop_path`` is
the frozen teacher's stochastic depth while it teaches. The teacher is a recipe teacher's
MAE-pretrained weights (``method.teacher_stage=pretrain``). Sequential
distillation (B -> S -> T) is a harness stage: ``method.stages=[{name: S, then: teach, student:
{...S sizes...}}]`` trains S from the suite's teacher, caches it, and makes it the final run's
teacher (see :mod:`benchbase.stages` and the ``tinymim-sequential`` ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.api import (
    BenchbaseError,
    Captures,
    Method,
    ModelInput,
    Register,
    StepInputs,
    Student,
    Tap,
    Teacher,
    hookimpl,
    set_block_heads,
)

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)
from .mae import random_masking
from .views import check_crop_scale, random_resized_crops

RELATIONS = ("qk", "vv", "qq", "kk")
EXPORT_HEADS = ("student", "teacher")


def relation_logits(a: Tensor, b: Tensor) -> Tensor:
    """Scaled products ``a bᵀ / sqrt(d_head)``: [B, H, T, d_head] x2 -> [B, H, T, T]."""
    return a @ b.transpose(-2, -1) * a.shape[-1] ** -0.5


def relation_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(softmax(t) || softmax(s))`` per query row [B, H, T], averaged over all rows."""
    log_p_s = F.log_softmax(student_logits, dim=-1)
    p_t = F.softmax(teacher_logits, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(-1).mean()


def visible_tokens(x: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
    """Prefix tokens plus the kept patches: [B, H, T, d] with ``keep`` [B, N_keep] -> [B, H, P + N_keep, d]."""
    index = torch.cat([torch.arange(num_prefix, device=keep.device).expand(keep.shape[0], -1),
                       keep + num_prefix], dim=1)
    return torch.gather(x, 2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1]))


def jitter_colours(images: Tensor, strength: float) -> Tensor:
    """Batched colour jitter of normalised images [B, C, H, W], one random factor per image and op.

    Factors are drawn with ``torch.rand`` from U[max(0, 1 - strength), 1 + strength], like
    torchvision's ``ColorJitter(strength, strength, strength)``, so ``torch.manual_seed`` fixes
    them. The mean and std used to normalise are unknown here, so the three operations use
    reference points taken from the image itself. They run in this fixed order, with no clamping
    and no hue:

    * brightness scales each image about its minimum (its darkest value, standing in for black);
    * contrast scales it about its mean over channels and pixels;
    * saturation blends each pixel with its channel mean. This is a no-op for one channel.
    """
    low, high = max(0.0, 1.0 - strength), 1.0 + strength

    def factor() -> Tensor:  # [B, 1, 1, 1]
        return low + (high - low) * torch.rand(images.shape[0], 1, 1, 1, device=images.device, dtype=images.dtype)

    black = images.amin(dim=(1, 2, 3), keepdim=True)
    x = (images - black) * factor() + black
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * factor() + grey


class TinyMIMLoss(Method):
    """Relation distillation from one teacher block to the student's (head-aligned) last block.

    Args:
        relations: terms to distil, from ``qk``, ``vv``, ``qq``, ``kk`` (paper default qk + vv).
        teacher_block: index into the teacher's blocks of the target block (-1 = last).
        softmax: softmax relations with a KL loss; False uses raw scaled products with MSE.
        head_alignment: give the student's last block the teacher's head count (else the counts must match).
        color_jitter: strength of the student-only colour jitter (0 disables).
        masked_input: the student sees only ``1 - mask_ratio`` of the patches (Table 12 ablation).
        mask_ratio: fraction of patches hidden from the student when ``masked_input``.
        crop_scale: area range of the one ``RandomResizedCrop`` (with a horizontal flip) both models
            see of each image (the paper's 0.2-1); None: no crop.
        export_heads: the last block's head count after training, in what is scored and saved:
            ``"student"`` (its own, as the official fine-tuning loads a standard ViT) or
            ``"teacher"`` (the adaptive block's M_t heads it was distilled with).
    """

    name = "tinymim"
    student_arch = "vit"  # written against timm VisionTransformer students

    def __init__(
        self, relations: list[str] = ["qk", "vv"], teacher_block: int = -1, softmax: bool = True,  # noqa: B006
        head_alignment: bool = True, color_jitter: float = 0.4, masked_input: bool = False,
        mask_ratio: float = 0.75, export_heads: str = "student", crop_scale: list[float] | None = [0.2, 1.0],  # noqa: B006
    ):
        super().__init__()
        unknown = [r for r in relations if r not in RELATIONS]
        if not relations or unknown or len(set(relations)) != len(relations):
            raise BenchbaseError(
                f"tinymim: relations must be distinct names from {', '.join(RELATIONS)}; got {list(relations)}"
            )
        if not 0.0 <= mask_ratio < 1.0:
            raise BenchbaseError(f"tinymim: mask_ratio must be in [0, 1); got {mask_ratio}")
        if color_jitter < 0:
            raise BenchbaseError(f"tinymim: color_jitter must be >= 0; got {color_jitter}")
        if export_heads not in EXPORT_HEADS:
            raise BenchbaseError(f"tinymim: export_heads={export_heads!r}; use {' or '.join(EXPORT_HEADS)}")
        self.export_heads, self.own_heads = export_heads, None
        self.crop_scale = check_crop_scale("tinymim", crop_scale)
        self.relations, self.softmax, self.head_alignment = tuple(relations), softmax, head_alignment
        self.color_jitter, self.masked_input, self.mask_ratio = color_jitter, masked_input, mask_ratio
        kinds = sorted({kind for r in self.relations for kind in r})
        self.student_taps = tuple(Tap(kind, -1) for kind in kinds)
        self.teacher_taps = tuple(Tap(kind, teacher_block) for kind in kinds)

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Check the token layouts and the target block; give the student's last block M_t heads."""
        s_layout = (student.num_prefix_tokens, student.num_patches)
        t_layout = (teacher.num_prefix_tokens, teacher.num_patches)
        if s_layout != t_layout:
            raise BenchbaseError(
                f"tinymim: student tokens (prefix, patches) = {s_layout} but teacher {t_layout}; "
                "relations need the same tokens"
            )
        depth, index = teacher.depth, self.teacher_taps[0].block
        if not -depth <= index < depth:
            raise BenchbaseError(f"tinymim: teacher_block={index} is out of range for a {depth}-block teacher")
        self.num_prefix, self.patch_size = student.num_prefix_tokens, student.patch_size
        heads = teacher.model.blocks[index].attn.num_heads
        attn = student.model.blocks[-1].attn
        self.own_heads = attn.num_heads
        if attn.num_heads == heads:
            return
        if not self.head_alignment:
            raise BenchbaseError(
                f"tinymim: the student's last block has {attn.num_heads} heads and the teacher's target block "
                f"{heads}; set method.params.head_alignment=true or use equal head counts"
            )
        width = attn.num_heads * attn.head_dim
        if width % heads:
            raise BenchbaseError(
                f"tinymim: head alignment splits the student's width {width} into the teacher's {heads} heads; "
                "use a student width divisible by the teacher's head count"
            )
        if any(p.numel() for p in (*attn.q_norm.parameters(), *attn.k_norm.parameters())):
            raise BenchbaseError("tinymim: head alignment needs a student without per-head q/k norms (qk_norm)")
        attn.num_heads, attn.head_dim = heads, width // heads
        attn.scale = attn.head_dim**-0.5

    def evaluation_model(self, student: Student) -> Student:
        """``student``, its last block split back into its own head count (``export_heads="student"``):
        the same weights, so fine-tuning starts from a standard ViT as the official code's does."""
        if self.export_heads == "student" and self.own_heads is not None:
            set_block_heads(student.model, [b.attn.num_heads for b in student.model.blocks[:-1]] + [self.own_heads])
        return student

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """One shared crop (``crop_scale``) for both models; the student's jittered (and optionally
        patch-dropped)."""
        if self.crop_scale is not None:
            images = random_resized_crops(images, tuple(images.shape[-2:]), self.crop_scale)
        view = jitter_colours(images, self.color_jitter) if self.color_jitter > 0 else images
        keep = None
        if self.masked_input:
            n = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
            keep, _, _ = random_masking(images.shape[0], n, self.mask_ratio, images.device)
        return StepInputs(student=ModelInput(view, keep=keep), teacher=ModelInput(images), labels=labels)

    def forward(self, student: Captures, teacher: Captures, inputs: StepInputs) -> dict[str, Tensor]:
        """One term per relation, e.g. ``{"qk", "vv"}``, from [B, M_t, T, d_head] q/k/v of both models."""
        s = {tap.kind: student[tap] for tap in self.student_taps}
        t = {tap.kind: teacher[tap] for tap in self.teacher_taps}
        if inputs.student.keep is not None:
            t = {kind: visible_tokens(x, inputs.student.keep, self.num_prefix) for kind, x in t.items()}
        distance = relation_kl if self.softmax else F.mse_loss
        return {r: distance(relation_logits(s[r[0]], s[r[1]]), relation_logits(t[r[0]], t[r[1]]))
                for r in self.relations}


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(TinyMIMLoss.name, TinyMIMLoss)

