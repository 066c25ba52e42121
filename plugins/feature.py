"""Feature Distillation (Wei et al. 2022, arXiv 2205.14141; TinyMIM Eq. 7-8).

``L = SmoothL1_beta(W z_s, LN(f_t))``, averaged over every token and channel. ``z_s`` holds the
student's final tokens [B, T, D_s] and ``W`` is a linear projection to D_t (FD's 1x1 Conv1d
"decoder", which is a Linear over channels). ``f_t`` holds the teacher's final tokens [B, T, D_t],
by default after its final norm (FD's ``PRED_FEAT_AFTERNORM``). ``LN`` is a LayerNorm without
affine parameters, FD's "whitening". Both models see the same view. FD's shared relative position
bias is part of its student architecture, not of the loss, and is not reproduced here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from benchbase.api import BenchbaseError, Captures, Method, Register, StepInputs, Student, Tap, Teacher, hookimpl

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)


def _final_tap(after_norm: bool) -> Tap:
    """The model's final tokens after its last norm, or the raw output of its last block."""
    return Tap("tokens") if after_norm else Tap("block", -1)


class FeatureLoss(Method):
    """Smooth-L1 between projected student tokens and whitened teacher tokens.

    Args:
        beta: smooth-L1 threshold (FD and TinyMIM use 2.0).
        teacher_after_norm: take the teacher's tokens after its final norm (else its last block).
        student_after_norm: take the student's tokens after its final norm (else its last block).
    """

    name = "feature"
    student_arch = "vit"  # written against timm VisionTransformer students

    def __init__(self, beta: float = 2.0, teacher_after_norm: bool = True, student_after_norm: bool = True):
        super().__init__()
        self.beta = beta
        self.student_taps = (_final_tap(student_after_norm),)
        self.teacher_taps = (_final_tap(teacher_after_norm),)
        self.proj: nn.Linear | None = None
        self.whiten: nn.LayerNorm | None = None

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Build the [D_s -> D_t] projection and the teacher whitening; token layouts must match."""
        s_layout = (student.num_prefix_tokens, student.num_patches)
        t_layout = (teacher.num_prefix_tokens, teacher.num_patches)
        if s_layout != t_layout:
            raise BenchbaseError(
                f"feature: student tokens (prefix, patches) = {s_layout} but teacher {t_layout}; "
                "use the same patch grid and prefix tokens"
            )
        device = student.model.patch_embed.proj.weight.device
        self.proj = nn.Linear(student.embed_dim, teacher.embed_dim, device=device)
        self.whiten = nn.LayerNorm(teacher.embed_dim, elementwise_affine=False, device=device)

    def forward(self, student: Captures, teacher: Captures, inputs: StepInputs) -> dict[str, Tensor]:
        """Term ``{"smooth_l1"}`` over [B, T, D_t]."""
        pred = self.proj(student[self.student_taps[0]])
        target = self.whiten(teacher[self.teacher_taps[0]])
        return {"smooth_l1": F.smooth_l1_loss(pred, target, beta=self.beta)}


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(FeatureLoss.name, FeatureLoss)

