"""SMKD: Supervised Masked Knowledge Distillation for few-shot transformers (Lin et al., CVPR 2023).

No external teacher: the teacher is an exponential moving average (EMA) of the student backbone
plus an iBOT projection head, owned by this loss (:class:`.smkd_parts.EmaTeacher`). Each step
makes 2 global and ``local_crops`` local random-resized crops of every image (random flips), masks
the student's global views with iBOT block masks (a learnable ``mask_token`` replaces masked patch
embeddings) and runs the teacher on the unmasked global views. Head outputs become distributions:
student ``log_softmax(g_s / 0.1)``; teacher ``softmax((g_t - c) / τ_t)`` with EMA centres c
(momentum 0.9) and τ_t warmed up linearly from 0.04 to 0.07 over the first
``warmup_teacher_temp_fraction`` of training (30 of 400 epochs). H(p, q) is cross-entropy.

``phase="ssl"`` (phase 1, iBOT): ``cls`` is DINO's cross-view term, H(teacher view q, student view
v) for v ≠ q of the same image over 2 global teacher views and all student views; ``mim`` is Eq. 2,
H between teacher (unmasked view) and student (masked same view) patch distributions averaged over
the masked patches of each image, then over the batch, then over the 2 views.

``phase="supervised"`` (phase 2, Eq. 3-5), with the labels of the batch:

* ``cls`` (Eq. 3): H(teacher view q of image y, student masked view v of image x) for every pair
  with label(x) = label(y): all view pairs when x ≠ y and v ≠ q when x = y (which is Eq. 1). Local
  student views are unmasked and pair only with their own image (as in the released code). The
  mean is over all terms. The released code drops the x = y global pairs when labels are used.
* ``patch`` (Eq. 4-5): for every same-class pair x ≠ y and global views v ≠ q, teacher patch k of
  y (view q) is matched to the student patch k⁺ of x (masked view v) with the highest cosine
  similarity of final backbone tokens (student side detached), and
  Σ_k ω_k·H(P_t(y)_k, P_s(x̂)_k⁺) is averaged over pairs. ω is 1/N (``patch_weight="uniform"``) or
  the teacher's last-block CLS→patch attention, averaged over heads and normalised to sum 1
  (``"attention"``, the released ``--weighted_pool``). Pairs come from the batch only.
  Under torchrun, pairs come from each process's share of the global batch (no gathering).
  ``patch_matching="released_code"`` reproduces HL-hanlin/SMKD ``loss_functions.py`` instead,
  with its three defects (see :func:`patch_loss_released`).
* ``mim``: as in phase 1.

Total: λ1·cls + λ2·patch + λ3·mim; each returned term is already weighted and a term whose λ is 0
is not computed. λ3 defaults to the paper's: 1 in phase 1 (iBOT's MIM weight) and 0 in phase 2,
which the paper writes as L_cls + L_patch and the released ``main_smkd.py`` runs with ``--lambda3``
0 (research notes A.1: its help strings for λ2/λ3 are swapped; in ``SMKDLoss`` λ2 weights the patch
term and λ3 the MIM term). ``lambda3=1`` keeps iBOT's MIM term in phase 2.

Evaluation (``evaluate``): ``"teacher"`` (default) scores and exports the EMA teacher's backbone
(:meth:`SMKDLoss.evaluation_model`; its projection head is not part of it), as the released
evaluation does (``eval_smkd.py --checkpoint_key teacher``, research notes A.2; the notes record no
statement of the paper itself); ``"student"`` scores the trained student like every other method.

Two phases as one recipe (``conf/method/smkd.yaml``): a ``phase: ssl`` stage hands its student
and its whole loss state (EMA teacher, head, mask token, centres) to the ``phase: supervised``
final run (``then: continue``); both phases build the same modules, so the state loads as is. The
schedules (teacher temperature, EMA momentum) start over in the next phase, as a new run of the
released ``main_smkd.py`` does: a finished state (progress 1) counts as progress 0.

Crop sizes: global crops at ``global_crop_size`` (default: the student's input size, the images'
size in every suite without sources) and local crops at ``local_crop_size`` (default: 3/7 of the
global size, a multiple of the patch: 96 of 224). SMKD cuts them from its sources
(:attr:`SMKDLoss.reads_sources`): where the data has larger source images (SMKD's 480-px
miniImageNet copies, ``data.<name>.params.source_size``) the crops are cut from those, as the
released code cuts 224- and 96-px crops from 480-px images; elsewhere from the images themselves.
Local crops are smaller than the model's image size: :func:`.smkd_parts.enable_dynamic_img_size`
switches a fixed-size timm ViT to position-embedding interpolation (a no-op for models built with
``dynamic_img_size=True``; same outputs at the original size).

Photometric augmentation (``photometric``): after its crop and flip, every view gets DINO's colour
jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 1.0 on the first global view, 0.1 on the
second, 0.5 on local views) and solarisation (p 0.2, second global view only), per crop and
batched (:mod:`.photometric`, which states where it differs from DINO's PIL pipeline). The
operations act on pixels in [0, 1], so they need the mean and std the images were normalised
with: ``image_mean`` and ``image_std``, which the harness fills from the distillation data's
:class:`~benchbase.components.DataBundle`. ``"auto"`` (default) augments colour (3-channel) data
and leaves 1-channel data to crops and flips, as SMKD ran here before the option existed (the
embedded suites' normalised gray digits and glyphs). ``auto`` is left out of run hashes
(:attr:`SMKDLoss.later_params`), so those runs keep their names; colour runs under ``auto``
changed with the code, which their code fingerprint records. ``"dino"`` augments 1-channel data
too (brightness, contrast, blur, solarisation: the colour operations need 3 channels);
``"none"``: crops and flips only. Phase 1 augments as phase 2 (iBOT uses the same pipeline).

The constructor defaults are the paper's ViT-S/16 head; ``conf/method/smkd.yaml`` scales it down.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    distributed,
    hookimpl,
)

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)
from .photometric import DINO_GLOBAL, DINO_LOCAL, ViewAugmentation, augment, draw
from .smkd_parts import (
    EmaTeacher,
    IBOTHead,
    check_choice,
    cosine_momentum,
    crop_sizes,
    ema_center,
    enable_dynamic_img_size,
    ibot_masks,
    photometric_stats,
    student_log_probs,
    teacher_probs,
    teacher_temperature,
)
from .views import random_resized_crops

TOKENS, LAST_ATTN = Tap("tokens"), Tap("attn", -1)
GLOBAL_VIEWS = len(DINO_GLOBAL)  # 2: DINO's first and second global view
PHASES = ("ssl", "supervised")
PATCH_MATCHINGS = ("paper", "released_code")
PATCH_WEIGHTS = ("uniform", "attention")
EVALUATED = ("teacher", "student")


class SMKDLoss(Method):
    """SMKD (phase 2) or iBOT (phase 1) self-distillation from an EMA teacher owned by the loss.

    Args:
        phase: ``"supervised"`` (SMKD, Eq. 3-5) or ``"ssl"`` (phase 1: iBOT, Eq. 1-2).
        patch_matching: ``"paper"`` (Eq. 4 cosine matching) or ``"released_code"``.
        patch_weight: ω in Eq. 5, ``"uniform"`` or ``"attention"`` (teacher CLS→patch attention).
        lambda1, lambda2, lambda3: weights of the cls, patch and MIM terms (phase 1 has no patch term;
            ``lambda3=None``: 1 in phase 1, 0 in phase 2, the paper's).
        head_hidden, head_bottleneck, head_out: iBOT head widths (ViT-S: 2048, 256, 8192).
        shared_head: one last layer for class and patch tokens.
        local_crops: number of local views.
        global_crop_scale, local_crop_scale: area fraction ranges of the crops.
        global_crop_size: side of the global crops in pixels (None: the student's input size).
        local_crop_size: side of the local crops (None: 3/7 of the global size, a multiple of the patch).
        mask_prob: probability that a global student view is masked at all.
        mask_ratio: range of the masked fraction of a masked view.
        student_temp: student softmax temperature.
        teacher_temp, warmup_teacher_temp: final and initial teacher temperatures.
        warmup_teacher_temp_fraction: fraction of training over which the teacher temperature warms up.
        momentum_teacher: initial EMA momentum (cosine schedule to 1).
        freeze_last_layer: epochs at the start during which the head's last layer is not updated
            (its gradients dropped after clipping, DINO's ``cancel_gradients_last_layer``; SMKD's
            and iBOT's default 1).
        center_momentum: momentum of the teacher-output centres.
        evaluate: the model scored and exported after training, ``"teacher"`` (the EMA teacher's
            backbone, as the released evaluation) or ``"student"``.
        photometric: DINO's colour augmentation of the views, ``"auto"`` (on 3-channel data),
            ``"dino"`` (on 1- or 3-channel data) or ``"none"`` (see the module docstring).
        image_mean, image_std: the per-channel normalisation of the images (pixels in [0, 1] =
            image · std + mean); left unset, the harness fills them from the data.
    """

    name = "smkd"
    student_arch = "vit"  # written against timm VisionTransformer students
    uses_teacher = False
    student_taps = (TOKENS,)
    reads_sources = True  # the crops are cut from the data's sources (see the module docstring)
    # added after SMKD runs were stored, at the values that compute what those runs did
    later_params = {"photometric": "auto", "global_crop_size": None, "local_crop_size": None}

    def __init__(
        self, phase: str = "supervised", patch_matching: str = "paper", patch_weight: str = "uniform",
        lambda1: float = 1.0, lambda2: float = 1.0, lambda3: float | None = None,
        head_hidden: int = 2048, head_bottleneck: int = 256, head_out: int = 8192, shared_head: bool = True,
        local_crops: int = 10, global_crop_scale: Sequence[float] = (0.25, 1.0),
        local_crop_scale: Sequence[float] = (0.05, 0.25), mask_prob: float = 0.5,
        mask_ratio: Sequence[float] = (0.1, 0.5), student_temp: float = 0.1, teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04, warmup_teacher_temp_fraction: float = 30 / 400,
        momentum_teacher: float = 0.996, center_momentum: float = 0.9, evaluate: str = "teacher",
        freeze_last_layer: int = 1, photometric: str = "auto", image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None, global_crop_size: int | None = None,
        local_crop_size: int | None = None,
    ):
        super().__init__()
        check_choice("phase", phase, PHASES)
        check_choice("patch_matching", patch_matching, PATCH_MATCHINGS)
        check_choice("patch_weight", patch_weight, PATCH_WEIGHTS)
        check_choice("evaluate", evaluate, EVALUATED)
        self.evaluate = evaluate
        self.phase, self.patch_matching, self.patch_weight = phase, patch_matching, patch_weight
        self.lambda1 = lambda1
        self.lambda3 = (1.0 if phase == "ssl" else 0.0) if lambda3 is None else lambda3
        self.lambda2 = lambda2 if phase == "supervised" else 0.0  # phase 1 has no cross-image term
        if not (self.lambda1 or self.lambda2 or self.lambda3):
            raise BenchbaseError(f"smkd(phase={phase}): every loss weight is 0; set lambda1, lambda2 or lambda3")
        self.head_hidden, self.head_bottleneck, self.head_out = head_hidden, head_bottleneck, head_out
        self.shared_head, self.local_crops = shared_head, local_crops
        self.global_crop_size, self.local_crop_size = global_crop_size, local_crop_size
        self.global_crop_scale, self.local_crop_scale = tuple(global_crop_scale), tuple(local_crop_scale)
        self.mask_prob, self.mask_ratio = mask_prob, tuple(mask_ratio)
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_fraction = warmup_teacher_temp_fraction
        self.momentum_teacher, self.center_momentum = momentum_teacher, center_momentum
        self.freeze_last_layer = freeze_last_layer
        stats = photometric_stats(photometric, image_mean, image_std)
        self.photometric = "none" if stats is None else "dino"  # what ``photometric`` comes to on this data
        self.register_buffer("pixel_mean", None if stats is None else stats[0], persistent=False)
        self.register_buffer("pixel_std", None if stats is None else stats[1], persistent=False)
        self.ema_taps = (TOKENS, LAST_ATTN) if self.lambda2 and patch_weight == "attention" else (TOKENS,)
        self.register_buffer("center", torch.zeros(1, head_out))  # class-token centre
        self.register_buffer("center2", torch.zeros(1, 1, head_out))  # patch centre
        self.register_buffer("progress", torch.zeros(()))  # fraction of training done, from after_step
        self._host_progress: float | None = None  # the buffer's value on the host: read without a device sync
        self.register_load_state_dict_post_hook(SMKDLoss._forget_host_progress)

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Build the head, the mask token and the EMA teacher (a copy of the student and head)."""
        model = student.model
        if getattr(model, "cls_token", None) is None:
            raise BenchbaseError("smkd: the student has no class token; use a ViT with one")
        if self.local_crops:
            enable_dynamic_img_size(model)
        device = model.patch_embed.proj.weight.device
        self.patch_size, self.num_prefix = student.patch_size, student.num_prefix_tokens
        self.global_size, self.local_size = crop_sizes(self.global_crop_size, self.local_crop_size,
                                                       tuple(model.patch_embed.img_size), self.patch_size)
        self.head = IBOTHead(student.embed_dim, self.head_hidden, self.head_bottleneck, self.head_out,
                             self.shared_head).to(device)
        self.mask_token = nn.Parameter(torch.zeros(student.embed_dim, device=device))  # iBOT's masked_embed
        self.teacher = EmaTeacher(model, self.head)

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """Student views in two stacked inputs, so each group is one forward pass.

        ``images`` [B, C, S, S] are the sources (any size S). ``student[0]``: the 2 global crops,
        view-major [2·B, C, H, W] ((H, W) the global crop size), with their masks [2·B, N] (True =
        replaced by the mask token); the teacher sees the same crops unmasked inside
        :meth:`forward`. ``student[1]`` (only when ``local_crops`` > 0): the local crops, view-major
        [L·B, C, h, w]. Crops and masks are drawn view by view: global crop, its photometric choices
        (when ``photometric`` applies), its masks, next view.
        """
        size, local = self.global_size, self.local_size
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        crops, masks = [], []
        for view in DINO_GLOBAL:
            crops.append(self.augmented(random_resized_crops(images, size, self.global_crop_scale), view))
            masks.append(ibot_masks(images.shape[0], grid, self.mask_prob, self.mask_ratio))
        views = [ModelInput(torch.cat(crops), mask=torch.cat(masks), mask_token=self.mask_token)]
        if self.local_crops:
            views.append(ModelInput(torch.cat([
                self.augmented(random_resized_crops(images, local, self.local_crop_scale), DINO_LOCAL)
                for _ in range(self.local_crops)])))
        return StepInputs(student=views, teacher=None, labels=labels)

    def augmented(self, crops: Tensor, view: ViewAugmentation) -> Tensor:
        """``crops`` [B, C, h, w] after DINO's photometric augmentation of ``view`` when
        ``photometric`` applies to this data, else as they are."""
        if self.pixel_mean is None:
            return crops
        if crops.shape[1] != self.pixel_mean.shape[1]:
            raise BenchbaseError(f"smkd: the images have {crops.shape[1]} channels but image_mean and image_std have "
                                 f"{self.pixel_mean.shape[1]} values; give one per channel")
        return augment(crops, draw(crops.shape[0], view, crops.device), view, self.pixel_mean, self.pixel_std)

    def forward(self, student: list[Captures], teacher: None, inputs: StepInputs) -> dict[str, Tensor]:
        """Terms ``cls``, ``patch`` (phase 2 only) and ``mim``, each weighted by its λ."""
        global_views, labels = inputs.student[0], inputs.labels
        batch = labels.shape[0]
        if self.phase == "ssl":  # every image is its own class: only same-image pairs remain
            labels = torch.arange(batch, device=labels.device)
        s_tokens = student[0][TOKENS]  # [2B, T, D]
        s_cls, s_patch = self.head(s_tokens, self.num_prefix)
        s_cls = by_view(s_cls, GLOBAL_VIEWS)
        if self.local_crops:
            s_cls = torch.cat([s_cls, by_view(self.head.cls(student[1][TOKENS][:, 0]), self.local_crops)])
        t_caps = self.teacher.run(global_views.images, self.ema_taps)
        t_cls, t_patch = self.teacher.heads(t_caps[TOKENS], self.num_prefix)
        t_cls, t_patch = by_view(t_cls.float(), GLOBAL_VIEWS), by_view(t_patch.float(), GLOBAL_VIEWS)  # [2, B, (N,) K]
        if self._host_progress is None:  # after construction or a loaded state: one read of the buffer
            self._host_progress = float(self.progress)
        progress = self._host_progress if self._host_progress < 1 else 0.0  # 1: a previous phase's final state
        temp = teacher_temperature(progress, self.warmup_teacher_temp, self.teacher_temp,
                                   self.warmup_teacher_temp_fraction)
        t_cls_p, t_patch_p = teacher_probs(t_cls, self.center, temp), teacher_probs(t_patch, self.center2, temp)
        s_cls_lp = student_log_probs(s_cls, self.student_temp)  # [V, B, K]
        s_patch_lp = student_log_probs(by_view(s_patch, GLOBAL_VIEWS), self.student_temp)  # [2, B, N, K]

        terms: dict[str, Tensor] = {}
        if self.lambda1:
            terms["cls"] = self.lambda1 * cls_loss(t_cls_p, s_cls_lp[:GLOBAL_VIEWS], s_cls_lp[GLOBAL_VIEWS:], labels)
        if self.lambda2:
            t_feats = by_view(t_caps[TOKENS][:, self.num_prefix :].float(), GLOBAL_VIEWS)  # [2, B, N, D]
            s_feats = by_view(s_tokens[:, self.num_prefix :].detach().float(), GLOBAL_VIEWS)
            weights = self.patch_weights(t_caps)
            if self.patch_matching == "paper":
                patch = patch_loss_paper(t_patch_p, s_patch_lp, t_feats, s_feats, weights, labels)
            else:
                patch = patch_loss_released(t_patch_p, s_patch_lp, t_feats, s_feats, weights, labels,
                                            weighted=self.patch_weight == "attention")
            terms["patch"] = self.lambda2 * patch
        if self.lambda3:
            terms["mim"] = self.lambda3 * mim_loss(t_patch_p, s_patch_lp, by_view(global_views.mask, GLOBAL_VIEWS))
        self.update_centers(t_cls, t_patch)
        return terms

    def patch_weights(self, t_caps: Captures) -> Tensor:
        """ω [2, B, N]: 1/N, or the teacher's last-block CLS→patch attention (head mean, sums to 1);
        ``t_caps`` are the teacher's captures of both global views stacked view-major ([2·B, ...])."""
        tokens = t_caps[TOKENS][:, self.num_prefix :]
        if self.patch_weight == "uniform":
            return by_view(torch.full(tokens.shape[:2], 1.0 / tokens.shape[1], device=tokens.device), GLOBAL_VIEWS)
        attn = t_caps[LAST_ATTN].float().mean(dim=1)[:, 0, self.num_prefix :]
        return by_view(attn / attn.sum(dim=-1, keepdim=True), GLOBAL_VIEWS)

    @torch.no_grad()
    def update_centers(self, t_cls: Tensor, t_patch: Tensor) -> None:
        """EMA of the batch means of the teacher's class logits [2, B, K] and patch logits [2, B, N, K]
        (patches averaged per image first). Under torchrun the means are averaged over the processes
        first (equal per-process batches: the global batch mean), as DINO and iBOT all-reduce theirs,
        so every rank keeps the same centres."""
        cls_mean = distributed.all_reduce_mean(t_cls.mean(dim=(0, 1)))
        patch_mean = distributed.all_reduce_mean(t_patch.mean(dim=2).mean(dim=(0, 1)))
        self.center.copy_(ema_center(self.center, cls_mean.unsqueeze(0), self.center_momentum))
        self.center2.copy_(ema_center(self.center2, patch_mean.view(1, 1, -1), self.center_momentum))

    def before_update(self, epoch: int) -> None:
        """During the first ``freeze_last_layer`` epochs, the head's last layer keeps its weights."""
        if epoch < self.freeze_last_layer:
            for param in {*self.head.last_layer.parameters(), *self.head.patch_last_layer.parameters()}:
                param.grad = None

    @staticmethod
    def _forget_host_progress(module: SMKDLoss, _keys: object) -> None:
        """After ``load_state_dict``: the next forward reads the loaded ``progress`` buffer once."""
        module._host_progress = None

    def after_step(self, student: Student, progress: float) -> None:
        """EMA update of the teacher with the cosine momentum at ``progress``; remember ``progress``."""
        self.teacher.update(student.model, self.head, cosine_momentum(self.momentum_teacher, progress))
        self.progress.fill_(progress)
        self._host_progress = progress

    def evaluation_model(self, student: Student) -> Student:
        """The EMA teacher's backbone as a :class:`Student` (``evaluate="teacher"``), else ``student``.

        The view shares the teacher's modules (no copy) and reads the same input channels as ``student``.
        """
        if self.evaluate == "student":
            return student
        view = Student(self.teacher.backbone)
        view.input_slice = student.input_slice
        return view


def cls_loss(t_probs: Tensor, s_global: Tensor, s_local: Tensor, labels: Tensor) -> Tensor:
    """Class-token term: mean of H(teacher view q of image j, student view v of image i).

    Global student views pair with every same-class teacher image (all view pairs when i ≠ j,
    v ≠ q when i = j); local views pair only with their own image.

    Args:
        t_probs: [2, B, K] teacher class distributions of the global views.
        s_global: [2, B, K] student log-probabilities of the masked global views.
        s_local: [L, B, K] student log-probabilities of the local views.
        labels: [B] class of each image (all distinct in phase 1).
    """
    batch, views = labels.shape[0], t_probs.shape[0]
    ce_global = -torch.einsum("qjk,vik->viqj", t_probs, s_global)  # [v, i, q, j]
    same_class = labels[:, None] == labels[None, :]
    same_image = torch.eye(batch, dtype=torch.bool, device=labels.device)
    same_view = torch.eye(views, dtype=torch.bool, device=labels.device)
    pairs = same_class[None, :, None, :] & ~(same_image[None, :, None, :] & same_view[:, None, :, None])
    ce_local = -torch.einsum("qik,lik->liq", t_probs, s_local)  # [l, i, q]
    return ((ce_global * pairs).sum() + ce_local.sum()) / (pairs.sum() + ce_local.numel())


def mim_loss(t_probs: Tensor, s_log_probs: Tensor, masks: Tensor) -> Tensor:
    """Eq. 2: H per patch averaged over each image's masked patches (0 for an unmasked image), then
    over the batch and the views.

    Args:
        t_probs: [2, B, N, K] teacher patch distributions of the unmasked global views.
        s_log_probs: [2, B, N, K] student patch log-probabilities of the masked views.
        masks: [2, B, N] bool, True = masked.
    """
    ce = -(t_probs * s_log_probs).sum(dim=-1)  # [2, B, N]
    per_image = (ce * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1)
    return per_image.mean()


def by_view(x: Tensor, views: int) -> Tensor:
    """[V·B, ...] stacked view-major -> [V, B, ...]."""
    return x.view(views, -1, *x.shape[1:])


def class_groups(labels: Tensor, min_size: int) -> tuple[Tensor, Tensor]:
    """The images of each label that has at least ``min_size`` of them, as a padded table.

    Args:
        labels: [B].

    Returns:
        ``index`` [G, S] long: batch indices of group g in ascending order, padded with 0 to the
        largest group's size S (groups in ascending label order); ``valid`` [G, S] bool: not padding.
    """
    sorted_labels, order = labels.sort(stable=True)
    _, group_of, counts = torch.unique_consecutive(sorted_labels, return_inverse=True, return_counts=True)
    slot = torch.arange(labels.shape[0], device=labels.device) - (counts.cumsum(0) - counts)[group_of]
    index = torch.zeros(counts.shape[0], int(counts.max()), dtype=torch.long, device=labels.device)
    valid = torch.zeros_like(index, dtype=torch.bool)
    index[group_of, slot], valid[group_of, slot] = order, True
    keep = counts >= min_size
    return index[keep], valid[keep]


def view_pairs(views: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every ordered pair of distinct views (v, q) as two [V·(V-1), 1, 1] long tensors (v-major)."""
    first, second = zip(*permutations(range(views), 2))
    return (torch.tensor(first, device=device).view(-1, 1, 1), torch.tensor(second, device=device).view(-1, 1, 1))


def cosine_matches(t_feats: Tensor, s_feats: Tensor) -> Tensor:
    """Eq. 4 within a group: for teacher image j, patch k and student image i, the patch of i
    with the highest cosine similarity to (j, k).

    Args:
        t_feats: [..., G, N, D] teacher patch features.
        s_feats: [..., G, N, D] student patch features.

    Returns:
        [..., G, N, G] long (j, k, i), indices into the N patches of student image i.
    """
    g, n = t_feats.shape[-3:-1]
    sim = F.normalize(t_feats, dim=-1).flatten(-3, -2) @ F.normalize(s_feats, dim=-1).flatten(-3, -2).transpose(-1, -2)
    return sim.view(*sim.shape[:-2], g, n, g, n).argmax(dim=-1)


def patch_loss_paper(
    t_probs: Tensor, s_log_probs: Tensor, t_feats: Tensor, s_feats: Tensor, weights: Tensor, labels: Tensor
) -> Tensor:
    """Eq. 4-5 over every same-class pair (student image i ≠ teacher image j) and view pair v ≠ q.

    All label groups and view pairs at once: the groups are padded to the largest (see
    :func:`class_groups`) and padded images are left out of the mean.

    Args:
        t_probs: [2, B, N, K] teacher patch distributions.
        s_log_probs: [2, B, N, K] student patch log-probabilities (masked views).
        t_feats: [2, B, N, D] teacher final patch tokens.
        s_feats: [2, B, N, D] student final patch tokens (detached).
        weights: [2, B, N] ω of each teacher patch.
        labels: [B].

    Returns:
        Mean over pairs of Σ_k ω_k·H(t_probs[q, j, k], s_log_probs[v, i, k⁺]); 0 without pairs.
    """
    index, valid = class_groups(labels, min_size=2)  # [G, S]
    if not index.numel():
        return s_log_probs.new_zeros(())
    v, q = view_pairs(t_probs.shape[0], labels.device)  # [V', 1, 1] student view, teacher view
    size, n = index.shape[1], t_probs.shape[2]
    match = cosine_matches(t_feats[q, index], s_feats[v, index])  # [V', G, j, k, i]
    ce = -(t_probs[q, index].flatten(2, 3) @ s_log_probs[v, index].flatten(2, 3).transpose(-1, -2))
    ce = ce.view(*match.shape[:4], size, n).gather(-1, match.unsqueeze(-1)).squeeze(-1)  # [V', G, j, k, i]
    per_pair = (ce * weights[q, index].unsqueeze(-1)).sum(dim=3)  # [V', G, j, i]
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(size, dtype=torch.bool, device=labels.device)
    return (per_pair * pairs).sum() / (pairs.sum() * per_pair.shape[0])


def patch_loss_released(
    t_probs: Tensor, s_log_probs: Tensor, t_feats: Tensor, s_feats: Tensor, weights: Tensor, labels: Tensor,
    weighted: bool,
) -> Tensor:
    """The patch term exactly as HL-hanlin/SMKD ``loss_functions.py::SMKDLoss`` computes it.

    For student view s ≠ teacher view t, each label group G (ascending batch indices), each teacher
    image i of G and each row (image a of G, patch k) (all at once here, groups padded):

    1. the "similarity" is ``einsum("snc,tNC->tsNn")`` with distinct letters: the product of the
       sums of the normalised features, (Σ_c ŝ[a, n, c])·(Σ_C t̂[i, k, C]), not a dot product;
    2. its argmax n* is a per-image index used on rows flattened over the group, so the student
       prediction is always that of the group's first image G[0], patch n*;
    3. the target is the teacher distribution of view s (not t), image G[a], patch k.

    Uniform (``--weighted_pool False``): rows with a = i are dropped, the rest averaged; groups of one
    image are skipped. Weighted: every row is weighted by the teacher's (view t) attention ω[G[a], k]
    and summed. Either way the result is divided by the number of (s, t, G, i) terms; 0 when there
    are none (the released code divides 0 by 0).

    Args: as :func:`patch_loss_paper`; ``weighted`` selects the attention weighting.
    """
    index, valid = class_groups(labels, min_size=1 if weighted else 2)  # [G, S]
    if not index.numel():
        return s_log_probs.new_zeros(())
    s, t = view_pairs(t_probs.shape[0], labels.device)  # [V', 1, 1]
    size, n = index.shape[1], t_probs.shape[2]
    s_sums = F.normalize(s_feats, dim=-1).sum(dim=-1)[s, index]  # [V', G, a, n]
    t_sums = F.normalize(t_feats, dim=-1).sum(dim=-1)[t, index]  # [V', G, i, k]
    match = (t_sums[:, :, :, None, :, None] * s_sums[:, :, None, :, None, :]).argmax(dim=-1)  # [V', G, i, a, k]
    first = s_log_probs[s.squeeze(-1), index[:, 0]]  # [V', G, N, K]: the group's first image
    ce_first = -(t_probs[s, index].flatten(2, 3) @ first.transpose(-1, -2)).view(*match.shape[:2], size, n, n)
    ce = ce_first.unsqueeze(2).expand(-1, -1, size, -1, -1, -1).gather(-1, match.unsqueeze(-1)).squeeze(-1)
    rows = valid[:, :, None] & valid[:, None, :]  # [G, i, a]
    if weighted:
        total = (ce * weights[t, index].unsqueeze(2)).sum(dim=-1)  # [V', G, i, a]
    else:
        rows &= ~torch.eye(size, dtype=torch.bool, device=labels.device)
        total = ce.sum(dim=-1) / ((valid.sum(dim=1) - 1) * n)[:, None, None]
    return (total * rows).sum() / (valid.sum() * total.shape[0])


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(SMKDLoss.name, SMKDLoss)

