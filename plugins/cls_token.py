"""Class-token distillation: TinyMIM's baseline (Eq. 6) or DeiT-style logit distillation.

``mode="feature"`` (TinyMIM, Ren et al. 2023, Eq. 6): ``L = KL(p_t || p_s)`` between the
softmax-normalised class-token features of teacher and student, both taken after the model's
final norm. The student's token goes through a linear projection to the teacher's width when the
widths differ. The paper does not say how a feature becomes a distribution; here it is a softmax
over the feature dimension at temperature ``tau``. The KL is summed over features and averaged
over the batch.

``mode="deit"`` (Touvron et al. 2021, ``losses.py::DistillationLoss``):
``loss = (1 - alpha) * CE(s, y) + alpha * L_dist``. With ``distillation_type="hard"``,
``L_dist = CE(s, argmax t)``. With ``"soft"``,
``L_dist = tau² · KL(log_softmax(s/tau) || log_softmax(t/tau))`` (``log_target``, summed, divided
by ``s.numel()``). DeiT puts ``L_dist`` on a separate distillation token and head. The student here
is the harness's plain ViT, so both terms use the class-token logits ``s``. This is DeiT's
"class token only" variant, not DeiT's distilled architecture.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from benchbase.api import BenchbaseError, Captures, Method, Register, StepInputs, Student, Tap, Teacher, hookimpl

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)

MODES = ("feature", "deit")
DISTILLATION_TYPES = ("hard", "soft")


class ClsTokenLoss(Method):
    """Class-token distillation: KL on class-token features, or DeiT-style logit distillation.

    Args:
        tau: softmax temperature (both modes).
        mode: ``"feature"`` (TinyMIM Eq. 6) or ``"deit"`` (logit distillation).
        distillation_type: ``"hard"`` or ``"soft"``; only used when ``mode="deit"``.
        alpha: weight of the distillation term against cross-entropy; only for ``mode="deit"``.
    """

    name = "cls_token"
    student_arch = "vit"  # written against timm VisionTransformer students

    def __init__(self, tau: float = 1.0, mode: str = "feature", distillation_type: str = "hard", alpha: float = 0.5):
        super().__init__()
        if mode not in MODES:
            raise BenchbaseError(f"cls_token: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if distillation_type not in DISTILLATION_TYPES:
            raise BenchbaseError(
                f"cls_token: unknown distillation_type {distillation_type!r}; expected hard or soft"
            )
        self.tau, self.mode, self.distillation_type, self.alpha = tau, mode, distillation_type, alpha
        tap = Tap("tokens") if mode == "feature" else Tap("logits")
        self.student_taps = self.teacher_taps = (tap,)
        self.proj: nn.Module = nn.Identity()

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Check both models have what the mode needs and build the [D_s -> D_t] projection."""
        if self.mode == "feature":
            for role, model in (("student", student), ("teacher", teacher)):
                if getattr(model.model, "cls_token", None) is None:
                    raise BenchbaseError(f"cls_token: the {role} has no class token; use a ViT with one")
            if student.embed_dim != teacher.embed_dim:
                device = student.model.patch_embed.proj.weight.device
                self.proj = nn.Linear(student.embed_dim, teacher.embed_dim, device=device)
        elif student.model.num_classes != teacher.model.num_classes:
            raise BenchbaseError(
                f"cls_token(mode=deit): the teacher predicts {teacher.model.num_classes} classes and the "
                f"student {student.model.num_classes}; they must match"
            )

    def forward(self, student: Captures, teacher: Captures, inputs: StepInputs) -> dict[str, Tensor]:
        """Terms ``{"kl_cls"}`` (feature) or ``{"ce", "distill"}`` (deit), already weighted."""
        s, t = student[self.student_taps[0]], teacher[self.teacher_taps[0]]
        if self.mode == "feature":  # s: [B, T, D_s], t: [B, T_t, D_t] -> class tokens [B, D_t]
            log_p_s = F.log_softmax(self.proj(s[:, 0]) / self.tau, dim=-1)
            p_t = F.softmax(t[:, 0] / self.tau, dim=-1)
            return {"kl_cls": F.kl_div(log_p_s, p_t, reduction="batchmean")}
        # s, t: [B, num_classes] logits
        if self.distillation_type == "hard":
            distill = F.cross_entropy(s, t.argmax(dim=-1))
        else:
            distill = F.kl_div(
                F.log_softmax(s / self.tau, dim=-1), F.log_softmax(t / self.tau, dim=-1),
                reduction="sum", log_target=True,
            ) * self.tau**2 / s.numel()
        return {"ce": (1 - self.alpha) * F.cross_entropy(s, inputs.labels), "distill": self.alpha * distill}


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(ClsTokenLoss.name, ClsTokenLoss)

