"""SMKD (plugins/smkd.py): head, EMA teacher, schedules, views, masks and every loss term against
hand computations on small tensors; forward/backward on tiny ViTs; checkpoints; one CLI run."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from benchbase_plugins import CONF_DIR
from benchbase_plugins.smkd import (
    SMKDLoss,
    class_groups,
    cls_loss,
    cosine_matches,
    mim_loss,
    patch_loss_paper,
    patch_loss_released,
)
from benchbase_plugins.smkd_parts import (
    IBOTHead,
    block_mask,
    cosine_momentum,
    enable_dynamic_img_size,
    ibot_masks,
    local_crop_size,
    student_log_probs,
    teacher_probs,
    teacher_temperature,
)
from benchbase_plugins.views import random_resized_crops
from omegaconf import OmegaConf
from test_run import CHEAP, tiny

from benchbase.capture import ModelInput, Tap, embed
from benchbase.cli import main
from benchbase.components import Method, Student
from benchbase.core import Supervised
from benchbase.engine import param_groups, weight_decay_at
from benchbase.errors import BenchbaseError
from benchbase.methods import DATA_ARGS
from benchbase.results import ResultsDB

TOKENS = Tap("tokens")
SMALL_HEAD = {"head_hidden": 24, "head_bottleneck": 8, "head_out": 16}


def tiny_student(seed: int = 0) -> Student:
    """A 2-block ViT on 1-channel 16x16 images (16 patches of 4x4, fixed image size), 5 classes."""
    torch.manual_seed(seed)
    return Student(timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
        num_classes=5,
    ))


def built_loss(student: Student, **params) -> SMKDLoss:
    loss = SMKDLoss(**{**SMALL_HEAD, "local_crops": 2, **params})
    loss.setup(student, None)
    return loss


def run_step(loss: SMKDLoss, student: Student, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One harness step: views, student captures per view, terms."""
    inputs = loss.make_inputs(torch.randn(labels.shape[0], 1, 16, 16), labels)
    captures = [student.run(view, loss.student_taps) for view in inputs.student]
    return loss(captures, None, inputs)


def random_dists(*shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities and student log-probabilities of ``shape`` (last dim = K)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).softmax(-1), torch.randn(*shape, generator=g).log_softmax(-1)


# -------------------------------------------------------------------------------------- head


def test_head_widths_and_l2_normalisation_before_the_weight_normed_last_layer():
    torch.manual_seed(0)
    head = IBOTHead(32, hidden=24, bottleneck=8, out_dim=16, shared=True)
    widths = [(m.in_features, m.out_features) for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [(32, 24), (24, 24), (24, 8)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert head.last_layer.bias is None and head.patch_last_layer is head.last_layer
    # weight = g · v / ‖v‖ with g = 1 at init: unit rows
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(16))
    tokens = torch.randn(3, 17, 32) * 5
    cls, patches = head(tokens, num_prefix=1)
    assert cls.shape == (3, 16) and patches.shape == (3, 16, 16)
    z = head.mlp(tokens)
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.last_layer.parametrizations.weight.original1
    expected = z @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(cls, expected[:, 0])
    torch.testing.assert_close(patches, expected[:, 1:])
    # outputs do not depend on the scale of the bottleneck features: they are normalised first
    with torch.no_grad():
        head.mlp[-1].weight.mul_(7.0)
        head.mlp[-1].bias.mul_(7.0)
    torch.testing.assert_close(head(tokens, 1)[0], cls)


def test_separate_heads_have_separate_last_layers():
    head = IBOTHead(32, 24, 8, 16, shared=False)
    assert head.patch_last_layer is not head.last_layer
    assert head.patch_last_layer.weight.shape == (16, 8)


# ------------------------------------------------------------------- EMA teacher and schedules


def test_cosine_momentum_schedule_by_hand():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 0.25) == pytest.approx(1 - 0.004 * (1 + math.sqrt(0.5)) / 2)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)


def test_after_step_is_the_ema_update_with_the_cosine_momentum():
    student = tiny_student()
    loss = built_loss(student)
    teacher_before = [p.clone() for p in loss.teacher.parameters()]
    with torch.no_grad():
        for p in [*student.parameters(), *loss.head.parameters()]:
            p.add_(torch.randn_like(p))
    loss.after_step(student, 0.5)
    m = 0.998
    students = [*student.model.parameters(), *loss.head.parameters()]
    for before, after, s in zip(teacher_before, loss.teacher.parameters(), students, strict=True):
        torch.testing.assert_close(after, m * before + (1 - m) * s)
    assert float(loss.progress) == 0.5
    loss.after_step(student, 1.0)  # momentum 1: the teacher no longer moves
    for p, q in zip(loss.teacher.parameters(), [m * b + (1 - m) * s for b, s in zip(teacher_before, students)]):
        torch.testing.assert_close(p, q)


def test_teacher_temperature_warms_up_linearly_then_stays():
    f = 30 / 400
    assert teacher_temperature(0.0, 0.04, 0.07, f) == pytest.approx(0.04)
    assert teacher_temperature(f / 2, 0.04, 0.07, f) == pytest.approx(0.055)
    assert teacher_temperature(f, 0.04, 0.07, f) == pytest.approx(0.07)
    assert teacher_temperature(0.9, 0.04, 0.07, f) == pytest.approx(0.07)
    assert teacher_temperature(0.0, 0.04, 0.07, 0.0) == pytest.approx(0.07)


def test_centering_and_sharpening_by_hand():
    logits, center = torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[0.5, 0.0, 1.0]])
    e = [math.exp((1.0 - 0.5) / 0.04), math.exp(2.0 / 0.04), math.exp((4.0 - 1.0) / 0.04)]
    torch.testing.assert_close(teacher_probs(logits, center, 0.04), torch.tensor([[x / sum(e) for x in e]]))
    s = [math.exp(x / 0.1) for x in (1.0, 2.0, 4.0)]
    torch.testing.assert_close(student_log_probs(logits, 0.1), torch.tensor([[math.log(x / sum(s)) for x in s]]))


def test_forward_updates_centers_from_the_teacher_outputs_and_uses_the_progress():
    student = tiny_student()
    loss = built_loss(student)
    with torch.no_grad():
        loss.center.fill_(1.0)
        loss.center2.fill_(-1.0)
    inputs = loss.make_inputs(torch.randn(4, 1, 16, 16), torch.tensor([0, 0, 1, 1]))
    cls, patch = loss.teacher.head(loss.teacher.run(inputs.student[0].images, [TOKENS])[TOKENS], 1)  # both views
    loss([student.run(v, loss.student_taps) for v in inputs.student], None, inputs)
    torch.testing.assert_close(loss.center, 0.9 * 1.0 + 0.1 * cls.mean(0, keepdim=True))
    torch.testing.assert_close(loss.center2[0], 0.9 * -1.0 + 0.1 * patch.mean(dim=(0, 1))[None])


def test_forward_uses_the_scheduled_teacher_temperature_and_the_centre():
    torch.manual_seed(0)
    student = tiny_student()
    loss = built_loss(student, lambda2=0.0, lambda3=0.0)
    loss.progress.fill_(loss.warmup_teacher_temp_fraction / 2)  # half-way through the warm-up
    with torch.no_grad():
        loss.center.normal_()
    center, labels = loss.center.clone(), torch.tensor([0, 0, 1, 2])
    torch.manual_seed(1)
    inputs = loss.make_inputs(torch.randn(4, 1, 16, 16), labels)
    caps = [student.run(v, loss.student_taps) for v in inputs.student]
    t_cls, _ = loss.teacher.head(loss.teacher.run(inputs.student[0].images, [TOKENS])[TOKENS], 1)
    s_cls, _ = loss.head(caps[0][TOKENS], 1)
    s_local = loss.head.cls(caps[1][TOKENS][:, 0])
    temp = (0.04 + 0.07) / 2
    expected = cls_loss(F.softmax((t_cls.view(2, 4, -1) - center) / temp, dim=-1),
                        F.log_softmax(s_cls.view(2, 4, -1) / 0.1, dim=-1), F.log_softmax(s_local.view(2, 4, -1) / 0.1, dim=-1),
                        labels)
    torch.testing.assert_close(loss(caps, None, inputs)["cls"], expected)


# ------------------------------------------------------------------------------ views, masks


def test_block_masks_ratio_bounds_and_half_unmasked():
    torch.manual_seed(0)
    masks = ibot_masks(2000, (4, 4), mask_prob=0.5, ratio_range=(0.1, 0.5))
    assert masks.shape == (2000, 16) and masks.dtype == torch.bool
    fraction = masks.float().mean(dim=1)
    assert abs(float((fraction == 0).float().mean()) - 0.5) < 0.05
    assert float(fraction.max()) <= 0.5
    for ratio in (0.1, 0.3, 0.5):  # never above the drawn ratio, at most a few patches short (14x14 grid)
        fractions = torch.tensor([float(block_mask((14, 14), ratio).float().mean()) for _ in range(50)])
        assert float(fractions.max()) <= ratio + 1e-6 and float(fractions.min()) >= ratio - 0.06


def test_block_masks_are_blocks():
    """Blocks are at least 2 patches wide on a 14x14 grid: every masked patch has a masked neighbour."""
    torch.manual_seed(1)
    for _ in range(20):
        mask = block_mask((14, 14), 0.3)
        padded = F.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
        neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
        assert mask.any() and bool((neighbours[mask] > 0).all())


def test_random_resized_crops_identity_flip_shapes_and_reproducibility():
    images = torch.randn(3, 2, 8, 8)
    same = random_resized_crops(images, (8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    torch.testing.assert_close(same, images)
    flipped = random_resized_crops(images, (8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
    torch.testing.assert_close(flipped, images.flip(-1))
    # a quarter-area crop of a horizontal ramp, upsampled 2x, is a ramp of slope 1/2
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    crop = random_resized_crops(ramp, (8, 8), scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_prob=0.0)
    torch.testing.assert_close(crop[0, 0, :, 2:6].diff(dim=-1), torch.full((8, 3), 0.5))
    torch.manual_seed(3)
    a = random_resized_crops(images, (4, 4), scale=(0.05, 0.25))
    torch.manual_seed(3)
    b = random_resized_crops(images, (4, 4), scale=(0.05, 0.25))
    assert a.shape == (3, 2, 4, 4) and torch.equal(a, b)
    assert images.min() <= a.min() and a.max() <= images.max()
    assert local_crop_size(224, 16) == 96 and local_crop_size(16, 4) == 8


def test_dynamic_image_size_runs_local_crops_and_keeps_full_size_outputs():
    student = tiny_student()
    x = torch.randn(2, 1, 16, 16)
    before = student.run(x, [TOKENS])[TOKENS]
    enable_dynamic_img_size(student.model)
    torch.testing.assert_close(student.run(x, [TOKENS])[TOKENS], before)
    assert student.run(torch.randn(2, 1, 8, 8), [TOKENS])[TOKENS].shape == (2, 1 + 4, 32)


def test_masked_positions_carry_the_mask_embedding_and_only_they_enter_the_mim_loss():
    student = tiny_student()
    loss = built_loss(student, mask_prob=1.0)
    with torch.no_grad():
        loss.mask_token.normal_()
    view = loss.make_inputs(torch.randn(3, 1, 16, 16), torch.arange(3)).student[0]
    model = student.model
    tokens = embed(model, view)[:, model.num_prefix_tokens :]  # after the position embedding
    plain = embed(model, ModelInput(view.images))[:, model.num_prefix_tokens :]
    pos = model.pos_embed[:, model.num_prefix_tokens :]
    mask = view.mask
    assert mask.any() and (~mask).any()
    torch.testing.assert_close(tokens[mask], (loss.mask_token + pos.expand(6, -1, -1)[mask]))
    torch.testing.assert_close(tokens[~mask], plain[~mask])
    # the MIM term reads the student's prediction at masked positions only
    t, s = random_dists(2, 3, 16, 5, seed=14)
    masks = mask.view(2, 3, 16)
    before = mim_loss(t, s, masks)
    changed = s.clone()
    changed[~masks] = changed[~masks].flip(-1)
    torch.testing.assert_close(mim_loss(t, changed, masks), before)
    changed[masks] = changed[masks].flip(-1)
    assert not torch.allclose(mim_loss(t, changed, masks), before)


def test_make_inputs_views_and_masks():
    student = tiny_student()
    loss = built_loss(student, local_crops=3)
    images = torch.randn(5, 1, 16, 16)
    torch.manual_seed(4)
    inputs = loss.make_inputs(images, torch.arange(5))
    global_views, local_views = inputs.student
    assert global_views.images.shape == (2 * 5, 1, 16, 16) and local_views.images.shape == (3 * 5, 1, 8, 8)
    assert global_views.mask.shape == (2 * 5, 16) and global_views.mask_token is loss.mask_token
    assert local_views.mask is None
    # view-major stacks of what the crop and mask functions draw view by view
    torch.manual_seed(4)
    expected_global, expected_masks = [], []
    for _ in range(2):
        expected_global.append(random_resized_crops(images, (16, 16), loss.global_crop_scale))
        expected_masks.append(ibot_masks(5, (4, 4), loss.mask_prob, loss.mask_ratio))
    expected_local = [random_resized_crops(images, (8, 8), loss.local_crop_scale) for _ in range(3)]
    torch.testing.assert_close(global_views.images, torch.cat(expected_global))
    assert torch.equal(global_views.mask, torch.cat(expected_masks))
    torch.testing.assert_close(local_views.images, torch.cat(expected_local))
    assert len(built_loss(student, local_crops=0).make_inputs(images, torch.arange(5)).student) == 1


def test_crops_have_the_configured_sizes_cut_from_larger_sources():
    """SMKD's 224 / 96 px crops of 480-px sources in small: a student reading 24 px (6x6 patches of 4),
    48-px sources, global crops 24 and local 12 (explicit, or the defaults: the student's input size
    and 3/7 of it); the crops and masks are the draws of the crop and mask functions at those sizes."""
    torch.manual_seed(0)
    student = Student(timm.create_model("vit_tiny_patch16_224", img_size=24, patch_size=4, in_chans=1, embed_dim=32,
                                        depth=2, num_heads=2, num_classes=5))
    sources = torch.randn(3, 1, 48, 48)
    explicit = built_loss(student, global_crop_size=24, local_crop_size=12)
    made = []
    for loss in (explicit, built_loss(student)):
        torch.manual_seed(7)
        made.append(loss.make_inputs(sources, torch.arange(3)))
    inputs, defaults = made
    global_views, local_views = inputs.student
    assert global_views.images.shape == (2 * 3, 1, 24, 24) and local_views.images.shape == (2 * 3, 1, 12, 12)
    assert global_views.mask.shape == (2 * 3, 36)  # the global crops' 6x6 patches
    assert all(torch.equal(a.images, b.images) for a, b in zip(inputs.student, defaults.student))
    torch.manual_seed(7)
    first = random_resized_crops(sources, (24, 24), explicit.global_crop_scale)  # the first global view's draw
    torch.testing.assert_close(global_views.images[:3], first)
    captures = [student.run(view, explicit.student_taps) for view in inputs.student]
    assert captures[1][TOKENS].shape == (2 * 3, 1 + 9, 32)  # local crops: 3x3 patches
    assert set(explicit(captures, None, inputs)) == {"cls", "patch"}
    wide = built_loss(student, global_crop_size=32)
    assert (wide.global_size, wide.local_size) == ((32, 32), (12, 12))  # 3/7 of 32: 13.7, to the nearest multiple of 4
    with pytest.raises(BenchbaseError, match=r"^smkd: local_crop_size=10 is not a positive multiple of the student's "
                                             r"4-px patches; use a multiple of 4"):
        built_loss(student, local_crop_size=10)


def test_smkd_trains_on_the_sources_and_its_crop_sizes_keep_run_hashes():
    from benchbase.components import DataBundle
    from benchbase.data.tensors import TensorImages
    from benchbase.methods import identity_params
    from benchbase.stages import training_split

    assert SMKDLoss.reads_sources and not Method.reads_sources
    split = TensorImages(torch.zeros(2, 1, 16, 16), torch.arange(2), ["a", "b"])
    source = TensorImages(torch.zeros(2, 1, 48, 48), torch.arange(2), ["a", "b"])
    data = DataBundle("d", {"base": split}, 16, 1, 2, sources={"base": source})
    assert training_split(data, "base", SMKDLoss(**SMALL_HEAD)) is source
    assert training_split(data, "base", Supervised()) is split
    assert training_split(dataclasses.replace(data, sources=None), "base", SMKDLoss(**SMALL_HEAD)) is split
    # left unset (null), the crop sizes name runs as they were named before the params existed
    assert identity_params(SMKDLoss, {"global_crop_size": None, "local_crop_size": None, "lambda1": 1.0}) == {
        "lambda1": 1.0}
    assert identity_params(SMKDLoss, {"global_crop_size": 224, "local_crop_size": 96}) == {
        "global_crop_size": 224, "local_crop_size": 96}


# ------------------------------------------------------------------------------- loss terms


def test_cls_term_uses_same_class_pairs_and_cross_view_self_pairs_by_hand():
    labels = torch.tensor([0, 0, 1])
    t, s = random_dists(2, 3, 4, seed=0)
    _, s_local = random_dists(1, 3, 4, seed=1)
    terms = []
    for v in range(2):  # global student views
        for i in range(3):
            for q in range(2):
                for j in range(3):
                    if labels[i] == labels[j] and (i != j or v != q):
                        terms.append(-(t[q, j] * s[v, i]).sum())
    pairs = {(i, j) for v in range(2) for i in range(3) for q in range(2) for j in range(3)
             if labels[i] == labels[j] and i != j}
    assert pairs == {(0, 1), (1, 0)} and len(terms) == 6 + 8  # 3 images x 2 cross views + 2 pairs x 4 views
    terms += [-(t[q, i] * s_local[0, i]).sum() for i in range(3) for q in range(2)]
    torch.testing.assert_close(cls_loss(t, s, s_local, labels), torch.stack(terms).mean())


def test_cls_term_with_distinct_labels_is_dino_cross_view():
    t, s = random_dists(2, 4, 6, seed=2)
    _, s_local = random_dists(3, 4, 6, seed=3)
    students = torch.cat([s, s_local])
    expected = [(-(t[q] * students[v]).sum(-1)).mean() for q in range(2) for v in range(5) if v != q]
    torch.testing.assert_close(cls_loss(t, s, s_local, torch.arange(4)), torch.stack(expected).mean())


def test_mim_term_by_hand():
    t, s = random_dists(2, 2, 3, 4, seed=4)
    masks = torch.tensor([[[True, False, True], [False, False, False]], [[False, True, False], [True, True, True]]])
    ce = -(t * s).sum(-1)
    per_view = [
        ((ce[0, 0, 0] + ce[0, 0, 2]) / 2 + 0.0) / 2,
        (ce[1, 0, 1] + (ce[1, 1, 0] + ce[1, 1, 1] + ce[1, 1, 2]) / 3) / 2,
    ]
    torch.testing.assert_close(mim_loss(t, s, masks), (per_view[0] + per_view[1]) / 2)


def test_cosine_matching_picks_the_cosine_argmax_not_the_dot_product():
    # teacher image 0 patch 0 points along x; student image 1 has a long diagonal patch (largest dot
    # product) and a short patch along x (cosine 1): the match is the short one.
    t_feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    s_feats = torch.tensor([[[0.0, 3.0], [-2.0, 0.1]], [[10.0, 10.0], [0.5, 0.0]]])
    match = cosine_matches(t_feats, s_feats)  # [j, k, i]
    assert match.shape == (2, 2, 2)
    assert match[0, 0, 1] == 1 and match[0, 1, 1] == 0 and match[1, 1, 0] == 1 and match[0, 1, 0] == 0


def test_paper_patch_term_by_hand():
    torch.manual_seed(5)
    labels = torch.tensor([0, 1, 0, 0, 1, 2])  # classes of 3, 2 and 1 images
    t, s = random_dists(2, 6, 3, 5, seed=6)
    t_feats, s_feats = torch.randn(2, 6, 3, 6), torch.randn(2, 6, 3, 6)
    weights = torch.rand(2, 6, 3)
    expected = []
    for v, q in ((0, 1), (1, 0)):
        for i in range(6):
            for j in range(6):
                if i == j or labels[i] != labels[j]:
                    continue
                total = 0.0
                for k in range(3):
                    cos = [F.cosine_similarity(t_feats[q, j, k], s_feats[v, i, l], dim=0) for l in range(3)]
                    best = max(range(3), key=lambda l: float(cos[l]))
                    total = total + weights[q, j, k] * -(t[q, j, k] * s[v, i, best]).sum()
                expected.append(total)
    assert len(expected) == 2 * (6 + 2)
    torch.testing.assert_close(patch_loss_paper(t, s, t_feats, s_feats, weights, labels), torch.stack(expected).mean())
    assert patch_loss_paper(t, s, t_feats, s_feats, weights, torch.arange(6)) == 0


def test_class_groups_pad_each_label_with_enough_images():
    labels = torch.tensor([7, 2, 7, 5, 7, 2])
    index, valid = class_groups(labels, min_size=2)
    assert index.tolist() == [[1, 5, 0], [0, 2, 4]] and valid.tolist() == [[True, True, False], [True] * 3]
    index, valid = class_groups(labels, min_size=1)
    assert index[valid.sum(1) == 1].tolist() == [[3, 0, 0]]
    assert class_groups(torch.arange(4), min_size=2)[0].numel() == 0


def test_patch_matching_stays_within_the_student_image():
    """Teacher patch (image 0, patch 0) points along x. The teacher's own image holds the exact
    direction (cosine 1), the other image of the class a close one (its patch 1): the match is
    patch 1 of the student image of the pair, never a patch of another image."""
    t_feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]).expand(2, -1, -1, -1)
    s_feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.2]]]).expand(2, -1, -1, -1)
    match = cosine_matches(t_feats[0], s_feats[0])  # [j, k, i]
    assert match[0, 0, 1] == 1 and match[0, 0, 0] == 0
    t, s = random_dists(2, 2, 2, 4, seed=10)
    weights = torch.zeros(2, 2, 2)
    weights[:, 0, 0] = 1.0  # only teacher patch (0, 0) counts
    loss = patch_loss_paper(t, s, t_feats, s_feats, weights, torch.tensor([3, 3]))
    by_hand = [-(t[q, 0, 0] * s[v, 1, 1]).sum() for v, q in ((0, 1), (1, 0))]
    torch.testing.assert_close(loss, (by_hand[0] + by_hand[1]) / 4)  # 2 view pairs x 2 image pairs
    wrong = [-(t[q, 0, 0] * s[v, i, k]).sum() for v, q in ((0, 1), (1, 0)) for i, k in ((0, 0), (1, 0))]
    assert all(not torch.allclose(loss, (wrong[a] + wrong[b]) / 4) for a, b in ((0, 2), (1, 3)))


def test_images_alone_in_their_class_add_only_self_distillation():
    labels = torch.tensor([0, 1, 0, 2])  # images 1 and 3 are alone in their class
    t, s = random_dists(2, 4, 5, seed=11)
    _, s_local = random_dists(2, 4, 5, seed=12)
    own = [-(t[q, i] * s[v, i]).sum() for i in (1, 3) for v in range(2) for q in range(2) if v != q]
    own += [-(t[q, i] * s_local[l, i]).sum() for i in (1, 3) for l in range(2) for q in range(2)]
    pair = [-(t[q, j] * s[v, i]).sum() for i in (0, 2) for j in (0, 2) for v in range(2) for q in range(2)
            if i != j or v != q]
    pair += [-(t[q, i] * s_local[l, i]).sum() for i in (0, 2) for l in range(2) for q in range(2)]
    torch.testing.assert_close(cls_loss(t, s, s_local, labels), torch.stack(own + pair).mean())
    # the patch term ignores them: changing everything about images 1 and 3 changes nothing
    tp, sp = random_dists(2, 4, 3, 5, seed=13)
    feats, weights = torch.randn(2, 2, 4, 3, 6), torch.rand(2, 4, 3)
    before = patch_loss_paper(tp, sp, feats[0], feats[1], weights, labels)
    alone = torch.tensor([1, 3])
    tp2, sp2, f2, w2 = tp.clone(), sp.clone(), feats.clone(), weights.clone()
    tp2[:, alone], sp2[:, alone] = tp2[:, alone].flip(-1), sp2[:, alone].flip(-1)
    f2[:, :, alone], w2[:, alone] = -f2[:, :, alone], 1 - w2[:, alone]
    torch.testing.assert_close(patch_loss_paper(tp2, sp2, f2[0], f2[1], w2, labels), before)


def released_reference(t, s, t_feats, s_feats, weights, labels, weighted):
    """A loop transcription of the released SMKDLoss patch term (flattened rows, index_select)."""
    sn, tn = F.normalize(s_feats, dim=-1), F.normalize(t_feats, dim=-1)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(index)
    total, terms = 0.0, 0
    for view_s in range(2):
        for view_t in range(2):
            if view_s == view_t:
                continue
            for _, idx in sorted(groups.items()):
                k = s.shape[-1]
                student_2d = s[view_s][idx].permute(2, 0, 1).reshape(k, -1).permute(1, 0)
                teacher_2d = t[view_s][idx].permute(2, 0, 1).reshape(k, -1).permute(1, 0)
                attn_1d = weights[view_t][idx].reshape(-1)
                best = torch.argmax(torch.einsum("snc, tNC -> tsNn", sn[view_s][idx], tn[view_t][idx]), dim=-1)
                n = best.shape[-1]
                for i in range(len(best)):
                    rows = torch.index_select(student_2d, 0, best[i].reshape(-1))
                    loss2 = torch.sum(-teacher_2d * rows, dim=-1)
                    if weighted:
                        total, terms = total + (loss2 * attn_1d).sum(), terms + 1
                    else:
                        loss2[i * n : (i + 1) * n] = 0
                        if len(loss2) > n:
                            total, terms = total + loss2.sum() / (len(loss2) - n), terms + 1
    return total / terms


@pytest.mark.parametrize("weighted", [False, True])
def test_released_patch_term_equals_a_transcription_of_the_released_loop(weighted):
    torch.manual_seed(7)
    labels = torch.tensor([2, 0, 2, 1, 2, 0])  # groups of 3, 2 and 1 images
    t, s = random_dists(2, 6, 4, 5, seed=8)
    t_feats, s_feats = torch.randn(2, 6, 4, 3), torch.randn(2, 6, 4, 3)
    weights = torch.rand(2, 6, 4).softmax(-1)
    torch.testing.assert_close(
        patch_loss_released(t, s, t_feats, s_feats, weights, labels, weighted),
        released_reference(t, s, t_feats, s_feats, weights, labels, weighted),
    )


def test_released_matching_is_a_product_of_sums_and_differs_from_the_paper():
    # student patches (unit norm) [1, 0] and [0.6, 0.8]; teacher patch [1, 0]. Cosine picks patch 0,
    # the released einsum picks the larger feature sum, patch 1.
    s_feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]] * 2)
    t_feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]] * 2)
    assert cosine_matches(t_feats, s_feats)[0, 0, 1] == 0
    released = torch.einsum("snc,tNC->tsNn", s_feats, t_feats)
    torch.testing.assert_close(released, torch.einsum("sn,tN->tsNn", s_feats.sum(-1), t_feats.sum(-1)))
    assert released.argmax(-1)[0, 1, 0] == 1
    # on a two-image class the two losses then differ
    t, s = random_dists(2, 2, 2, 3, seed=9)
    features = (torch.stack([t_feats] * 2), torch.stack([s_feats] * 2))
    weights, labels = torch.full((2, 2, 2), 0.5), torch.tensor([4, 4])
    paper = patch_loss_paper(t, s, *features, weights, labels)
    code = patch_loss_released(t, s, *features, weights, labels, weighted=False)
    assert not torch.allclose(paper, code)


# ------------------------------------------------------------------- model, phases, state


@pytest.mark.parametrize(("phase", "matching", "weight"), [
    ("supervised", "paper", "uniform"), ("supervised", "released_code", "attention"),
    ("supervised", "paper", "attention"), ("ssl", "paper", "uniform"),
])
def test_forward_backward_on_tiny_vits(phase, matching, weight):
    student = tiny_student()
    loss = built_loss(student, phase=phase, patch_matching=matching, patch_weight=weight, mask_prob=1.0, lambda3=1.0)
    terms = run_step(loss, student, torch.tensor([0, 0, 1, 1, 1, 2]))
    assert set(terms) == ({"cls", "patch", "mim"} if phase == "supervised" else {"cls", "mim"})
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert student.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert loss.mask_token.grad is not None and loss.mask_token.grad.abs().sum() > 0
    assert loss.head.mlp[0].weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.teacher.parameters())
    optimised = {id(p) for group in param_groups([student, loss], 0.05) for p in group["params"]}
    assert not optimised & {id(p) for p in loss.teacher.parameters()}
    assert id(loss.mask_token) in {id(p) for p in param_groups([student, loss], 0.05)[1]["params"]}


def test_lambda3_defaults_to_the_papers_phases_mim_in_phase_1_none_in_phase_2():
    """Phase 2 is the paper's L_cls + L_patch (the released code's --lambda3 0); phase 1 is iBOT."""
    assert (SMKDLoss(phase="ssl").lambda3, SMKDLoss(phase="supervised").lambda3) == (1.0, 0.0)
    student = tiny_student()
    assert set(run_step(built_loss(student), student, torch.tensor([0, 0, 1, 1, 1, 2]))) == {"cls", "patch"}
    cfg = OmegaConf.load(Path(CONF_DIR) / "method" / "smkd.yaml")
    assert cfg.params.lambda3 == 0.0 and cfg.stages[0].params.lambda3 == 1.0


def test_a_zero_weight_omits_its_term_and_all_zero_is_an_error():
    student = tiny_student()
    terms = run_step(built_loss(student, lambda3=0.0, lambda2=0.5), student, torch.tensor([0, 0, 1]))
    assert set(terms) == {"cls", "patch"}
    with pytest.raises(BenchbaseError, match="every loss weight is 0"):
        SMKDLoss(phase="ssl", lambda1=0.0, lambda3=0.0)
    with pytest.raises(BenchbaseError, match="patch_matching"):
        SMKDLoss(patch_matching="cosine")


def test_teacher_stays_in_eval_mode():
    student = tiny_student()
    loss = built_loss(student)
    loss.train()
    assert loss.training and loss.head.training and not loss.teacher.training
    assert not loss.teacher.backbone.blocks[0].training


def test_state_dict_round_trip_restores_teacher_centers_and_progress():
    student = tiny_student()
    loss = built_loss(student)
    run_step(loss, student, torch.tensor([0, 0, 1, 1]))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1)
    loss.after_step(student, 0.3)
    state = loss.state_dict()
    assert "teacher.backbone.pos_embed" in state and "center2" in state and "mask_token" in state
    fresh = built_loss(tiny_student(seed=1))
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=key)
    assert float(fresh.progress) == pytest.approx(0.3) and fresh.center.abs().sum() > 0


def test_evaluation_model_is_the_ema_teacher_backbone_or_the_student():
    student = tiny_student()
    student.input_slice = (0, 1)
    loss = built_loss(student)
    scored = loss.evaluation_model(student)
    assert isinstance(scored, Student) and scored.model is loss.teacher.backbone and scored.input_slice == (0, 1)
    assert not any(name.startswith("head") for name, _ in scored.named_parameters())  # no projection head
    with torch.no_grad():
        for p in loss.teacher.parameters():
            p.add_(0.5)  # the teacher now differs from the student
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(scored.run(x, [TOKENS])[TOKENS], loss.teacher.run(x, [TOKENS])[TOKENS])
    assert not torch.allclose(scored.run(x, [TOKENS])[TOKENS], student.run(x, [TOKENS])[TOKENS])
    assert built_loss(student, evaluate="student").evaluation_model(student) is student
    with pytest.raises(BenchbaseError, match="evaluate"):
        SMKDLoss(evaluate="ema")


def test_a_finished_phase_state_restarts_the_temperature_warmup():
    """Phase 2 starts from phase 1's state, whose progress is 1: its first step uses the warm-up
    temperature (progress 0), as a fresh run would, not the final one."""
    def cls_term(progress: float) -> torch.Tensor:
        torch.manual_seed(0)
        student = tiny_student()
        loss = built_loss(student, lambda2=0.0, lambda3=0.0)
        loss.progress.fill_(progress)
        torch.manual_seed(1)
        return run_step(loss, student, torch.tensor([0, 0, 1, 1]))["cls"]

    torch.testing.assert_close(cls_term(1.0), cls_term(0.0))
    assert not torch.allclose(cls_term(0.5), cls_term(0.0))


def test_yaml_keys_are_the_constructor_arguments():
    """Every constructor argument but those the harness fills from the data (DATA_ARGS)."""
    cfg = OmegaConf.load(CONF_DIR / "method" / "smkd.yaml")
    assert cfg.name == SMKDLoss.name == "smkd"
    keys = [p for p in inspect.signature(SMKDLoss.__init__).parameters if p != "self"]
    assert sorted(cfg.params) == sorted(k for k in keys if k not in DATA_ARGS)
    assert {"image_mean", "image_std"} <= set(keys) & set(DATA_ARGS)
    SMKDLoss(**OmegaConf.to_container(cfg.params))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_phase_recipe_end_to_end_and_phase_2_starts_from_phase_1(tmp_path):
    run = ["run", "--methods", "smkd", *tiny(tmp_path, "suite.references=[]", "method.params.local_crops=2",
                                               "method.stages.0.trainer.epochs=1", *CHEAP)]  # SMKD has no teacher
    assert main(run) == 0
    db = ResultsDB(tmp_path / "results.db")
    (record,) = [r for r in db.records() if r.method == "smkd"]
    assert record.status == "done" and record.config["method"]["params"]["phase"] == "supervised"
    assert record.config["method"]["stages"][0]["params"]["phase"] == "ssl"
    fewshot = {m.name for m in record.metrics if m.extras["task"] == "fewshot"}
    assert {"5way-1shot", "5way-5shot"} <= fewshot
    (stage_dir,) = (tmp_path / "stages").glob("*/")
    assert json.loads((stage_dir / "stage.json").read_text())["params"]["phase"] == "ssl"
    last_terms = [set(json.loads(f.read_text().splitlines()[-1])) for f in
                  (stage_dir / "steps.jsonl", Path(record.run_dir) / "steps.jsonl")]
    assert {"cls", "mim"} <= last_terms[0] and "patch" not in last_terms[0]  # phase 1: iBOT
    assert {"cls", "patch"} <= last_terms[1] and "mim" not in last_terms[1]  # phase 2: SMKD, L_cls + L_patch
    # SMKD's trainer: the decayed group's weight decay follows the cosine 0.04 -> 0.4 to the last step
    steps = len((Path(record.run_dir) / "steps.jsonl").read_text().splitlines())
    groups = torch.load(Path(record.run_dir) / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(weight_decay_at(steps - 1, steps, 0.04, 0.4))
    assert groups[1]["weight_decay"] == 0.0

    # phase 2 without a step: the scored and exported model is phase 1's final EMA teacher backbone
    # (evaluate=teacher), or phase 1's final student (evaluate=student); the stage is not trained again
    stage_log = (stage_dir / "steps.jsonl").read_text()
    phase1 = _weights(stage_dir / "loss.pt")
    teacher = {k.removeprefix("teacher.backbone."): v for k, v in phase1.items() if k.startswith("teacher.backbone.")}
    for evaluate, expected in (("teacher", teacher), ("student", _weights(stage_dir / "student.pt")["model"])):
        assert main([*run, "trainer.epochs=0", f"method.params.evaluate={evaluate}"]) == 0
        (latest,) = [r for r in db.records() if r.method == "smkd" and r.config["trainer"]["epochs"] == 0
                     and r.config["method"]["params"]["evaluate"] == evaluate]
        exported = _weights(Path(latest.run_dir) / "student.pt")["model"]
        assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert list((tmp_path / "stages").glob("*/")) == [stage_dir] and (stage_dir / "steps.jsonl").read_text() == stage_log


def test_progress_is_read_from_the_host_until_a_state_is_loaded():
    """The teacher-temperature schedule reads ``progress`` without a device sync each step; a loaded
    state (a resume, a previous phase) is read from its buffer once."""
    loss = SMKDLoss(head_out=8, local_crops=0)
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    state["progress"].fill_(0.25)
    loss._host_progress = 0.9
    loss.load_state_dict(state)
    assert loss._host_progress is None and float(loss.progress) == 0.25


def test_head_last_layer_keeps_its_weights_during_the_first_epochs():
    """DINO's cancel_gradients_last_layer: after clipping, before the optimiser step, the last layer's
    gradients are dropped while epoch < freeze_last_layer; the rest of the head still learns."""
    from benchbase.components import Student
    from benchbase.config import TrainerConfig
    from benchbase.engine import StepModule, make_optimizer, train_step
    from omegaconf import OmegaConf

    from conftest import tiny_vit

    student = Student(tiny_vit(seed=1))
    loss = SMKDLoss(head_hidden=16, head_bottleneck=8, head_out=16, local_crops=2, freeze_last_layer=1)
    loss.setup(student, None)
    cfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"clip_grad": 3.0, "clip_grad_mode": "per_parameter"})
    optimizer = make_optimizer([student, loss], cfg, 1e-2, torch.device("cpu"))
    images, labels = torch.randn(8, 1, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    last = [p for p in loss.head.last_layer.parameters()]
    mlp = [p for p in loss.head.mlp.parameters()]

    def step(epoch):
        before = [p.detach().clone() for p in last + mlp]
        train_step(StepModule(student, loss), None, loss, optimizer, images, labels, torch.device("cpu"), None, cfg,
                   0, 1e-2, epoch=epoch)
        return [not torch.equal(b, p) for b, p in zip(before, last + mlp)]

    moved = step(epoch=0)
    assert not any(moved[:len(last)]) and any(moved[len(last):])  # frozen last layer, learning MLP
    moved = step(epoch=1)
    assert all(moved[:len(last)])  # from the second epoch on, the last layer learns too
