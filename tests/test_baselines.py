"""The built-in baselines (cls_token, feature, mae) against hand computations on small tensors."""

from __future__ import annotations

import inspect
import math

import pluggy
import pytest
import timm
import torch
from omegaconf import OmegaConf

from benchbase import PROJECT_NAME, hookspecs
from benchbase.capture import Captures, ModelInput, Tap
from benchbase.components import Loss, StepInputs, Student, Teacher, read_channels
from benchbase.errors import BenchbaseError
from benchbase_plugins import CONF_DIR, cls_token, feature, mae
from benchbase_plugins.cls_token import ClsTokenLoss
from benchbase_plugins.feature import FeatureLoss
from benchbase_plugins.mae import MAELoss, masked_mse, patchify, pixel_target, random_masking, unpatchify
from benchbase_plugins.views import random_resized_crops

PLUGINS = {"cls_token": (cls_token, ClsTokenLoss), "feature": (feature, FeatureLoss), "mae": (mae, MAELoss)}


def tiny_vit(embed_dim: int = 32) -> torch.nn.Module:
    """A 2-block ViT on 1-channel 16x16 images: 16 patches of 4x4, 5 classes."""
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=embed_dim,
        depth=2, num_heads=2, num_classes=5,
    )


@pytest.fixture
def models() -> tuple[Student, Teacher]:
    torch.manual_seed(0)
    return Student(tiny_vit(32)), Teacher(tiny_vit(48))


def run_step(loss: Loss, student: Student, teacher: Teacher | None) -> dict[str, torch.Tensor]:
    """One harness step: inputs, captures (teacher in inference mode), terms."""
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    inputs = loss.make_inputs(images, labels)
    s_caps = student.run(inputs.student, loss.student_taps)
    t_caps = teacher.run(inputs.teacher, loss.teacher_taps) if loss.uses_teacher else None
    return loss(s_caps, t_caps, inputs)


def inputs_with_labels(labels: torch.Tensor) -> StepInputs:
    return StepInputs(student=None, teacher=None, labels=labels)


# ---------------------------------------------------------------------------------- feature


def test_feature_whitening_is_per_token_standardisation(models):
    loss = FeatureLoss()
    loss.setup(*models)
    x = torch.randn(2, 3, 48) * 5 + 2
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    torch.testing.assert_close(loss.whiten(x), (x - mean) / torch.sqrt(var + 1e-5))


def test_feature_loss_equals_hand_smooth_l1_with_beta_2(models):
    loss = FeatureLoss()
    loss.setup(*models)
    z_s, f_t = torch.randn(2, 17, 32) * 3, torch.randn(2, 17, 48)
    terms = loss(Captures({Tap("tokens"): z_s}), Captures({Tap("tokens"): f_t}), inputs_with_labels(None))

    pred = z_s @ loss.proj.weight.T + loss.proj.bias
    mean = f_t.mean(-1, keepdim=True)
    target = (f_t - mean) / torch.sqrt(((f_t - mean) ** 2).mean(-1, keepdim=True) + 1e-5)
    d = (pred - target).abs()
    small = d <= 2.0
    assert small.any() and (~small).any(), "both smooth-L1 branches must be exercised"
    expected = torch.where(small, 0.5 * d**2 / 2.0, d - 0.5 * 2.0).mean()
    assert set(terms) == {"smooth_l1"}
    torch.testing.assert_close(terms["smooth_l1"], expected)


def test_feature_taps_follow_after_norm_flags():
    loss = FeatureLoss(teacher_after_norm=False, student_after_norm=True)
    assert loss.teacher_taps == (Tap("block", -1),) and loss.student_taps == (Tap("tokens"),)


def test_feature_rejects_different_patch_grids(models):
    student, _ = models
    other = Teacher(timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=8, in_chans=1, embed_dim=32, depth=1, num_heads=2,
    ))
    with pytest.raises(BenchbaseError, match="patch grid"):
        FeatureLoss().setup(student, other)


# -------------------------------------------------------------------------------- cls_token


def test_cls_token_kl_equals_hand_computation():
    torch.manual_seed(1)
    student, teacher = Student(tiny_vit(32)), Teacher(tiny_vit(32))
    loss = ClsTokenLoss(tau=2.0)
    loss.setup(student, teacher)
    assert isinstance(loss.proj, torch.nn.Identity)  # equal widths: no projection
    s, t = torch.randn(3, 17, 32), torch.randn(3, 17, 32)
    terms = loss(Captures({Tap("tokens"): s}), Captures({Tap("tokens"): t}), inputs_with_labels(None))

    expected = 0.0
    for b in range(3):
        zs = torch.exp(s[b, 0] / 2.0).sum()
        zt = torch.exp(t[b, 0] / 2.0).sum()
        for k in range(32):
            p_t = math.exp(t[b, 0, k] / 2.0) / zt
            p_s = math.exp(s[b, 0, k] / 2.0) / zs
            expected += p_t * math.log(p_t / p_s)
    assert set(terms) == {"kl_cls"}
    torch.testing.assert_close(terms["kl_cls"], torch.as_tensor(expected / 3, dtype=torch.float32))


def test_cls_token_projects_to_teacher_width(models):
    loss = ClsTokenLoss()
    loss.setup(*models)
    assert isinstance(loss.proj, torch.nn.Linear) and loss.proj.weight.shape == (48, 32)


LOGITS_S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LOGITS_T = torch.tensor([[0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
LABELS = torch.tensor([0, 1])


def hand_ce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return sum(
        -math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)) for row, y in zip(logits.tolist(), targets.tolist())
    ) / len(targets)


def deit_terms(distillation_type: str, tau: float, alpha: float) -> dict[str, torch.Tensor]:
    loss = ClsTokenLoss(mode="deit", distillation_type=distillation_type, tau=tau, alpha=alpha)
    assert loss.student_taps == loss.teacher_taps == (Tap("logits"),)
    return loss(Captures({Tap("logits"): LOGITS_S}), Captures({Tap("logits"): LOGITS_T}), inputs_with_labels(LABELS))


def test_deit_hard_distillation_equals_hand_computation():
    terms = deit_terms("hard", tau=1.0, alpha=0.3)
    teacher_argmax = torch.tensor([1, 2])
    assert terms["ce"].item() == pytest.approx(0.7 * hand_ce(LOGITS_S, LABELS), rel=1e-5)
    assert terms["distill"].item() == pytest.approx(0.3 * hand_ce(LOGITS_S, teacher_argmax), rel=1e-5)


def test_deit_soft_distillation_equals_hand_computation():
    tau = 3.0
    terms = deit_terms("soft", tau=tau, alpha=0.5)
    kl = 0.0
    for s_row, t_row in zip(LOGITS_S.tolist(), LOGITS_T.tolist()):
        zs = sum(math.exp(v / tau) for v in s_row)
        zt = sum(math.exp(v / tau) for v in t_row)
        for s, t in zip(s_row, t_row):
            p_t, p_s = math.exp(t / tau) / zt, math.exp(s / tau) / zs
            kl += p_t * math.log(p_t / p_s)
    assert terms["ce"].item() == pytest.approx(0.5 * hand_ce(LOGITS_S, LABELS), rel=1e-5)
    assert terms["distill"].item() == pytest.approx(0.5 * tau**2 * kl / LOGITS_S.numel(), rel=1e-5)


def test_cls_token_rejects_unknown_options():
    with pytest.raises(BenchbaseError, match="mode"):
        ClsTokenLoss(mode="dist_token")
    with pytest.raises(BenchbaseError, match="distillation_type"):
        ClsTokenLoss(mode="deit", distillation_type="medium")


# -------------------------------------------------------------------------------------- mae


@pytest.mark.parametrize("num_patches", [16, 10, 49])
def test_mae_masks_exactly_the_ratio_per_image(num_patches):
    ids_keep, ids_restore, mask = random_masking(5, num_patches, 0.75)
    len_keep = int(num_patches * (1 - 0.75))
    assert ids_keep.shape == (5, len_keep) and ids_restore.shape == mask.shape == (5, num_patches)
    assert (mask.sum(dim=1) == num_patches - len_keep).all()
    assert (torch.gather(mask, 1, ids_keep) == 0).all()  # kept patches are exactly the unmasked ones
    assert len({tuple(row) for row in ids_keep.tolist()}) > 1  # masks differ between images


def test_mae_unshuffling_restores_image_order():
    ids_keep, ids_restore, mask = random_masking(3, 16, 0.75)
    tokens = torch.arange(16.0).expand(3, 16)
    visible = torch.gather(tokens, 1, ids_keep)  # what the encoder sees, in shuffled order
    filled = torch.cat([visible, torch.full((3, 16 - visible.shape[1]), -1.0)], dim=1)
    restored = torch.gather(filled, 1, ids_restore)
    torch.testing.assert_close(restored, torch.where(mask.bool(), -1.0, tokens))


def test_mae_loss_depends_only_on_masked_patches():
    torch.manual_seed(2)
    pred, target = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5]] = mask[1, [0, 2, 3]] = 1
    base = masked_mse(pred, target, mask)
    expected = sum(((pred[b, n] - target[b, n]) ** 2).mean() for b, n in mask.nonzero().tolist()) / 5
    torch.testing.assert_close(base, expected)

    visible_changed = pred.clone()
    visible_changed[0, 0] += 10.0
    torch.testing.assert_close(masked_mse(visible_changed, target, mask), base)
    masked_changed = pred.clone()
    masked_changed[1, 2] += 10.0
    assert masked_mse(masked_changed, target, mask) > base + 1.0


def test_mae_patchify_order_and_norm_pix_target_by_hand():
    torch.manual_seed(3)
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    b, i, j = 1, 1, 2  # patch in grid row 1, column 2 -> index 1·3 + 2
    by_hand = [images[b, ch, i * 4 + r, j * 4 + c] for r in range(4) for c in range(4) for ch in range(3)]
    torch.testing.assert_close(patches[b, 5], torch.stack(by_hand))

    target = pixel_target(images, 4, norm_pix=True)
    values = by_hand
    mean = sum(values) / 48
    var = sum((v - mean) ** 2 for v in values) / 47  # unbiased, as MAE's torch .var()
    torch.testing.assert_close(target[b, 5], (torch.stack(values) - mean) / (var + 1e-6) ** 0.5)
    torch.testing.assert_close(pixel_target(images, 4, norm_pix=False), patches)


def test_mae_patchify_unpatchify_roundtrip():
    images = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(unpatchify(patchify(images, 4), 4, (2, 3), 3), images)


def test_mae_decoder_positions_are_fixed_sincos(models):
    loss = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2)
    loss.setup(models[0], None)
    pos = loss.decoder_pos_embed
    assert pos.shape == (17, 16) and not pos.requires_grad and (pos[0] == 0).all()
    row, col = 2, 3  # patch 1 + 2·4 + 3; channel k < 4 encodes the column, 8 <= k < 12 the row
    for k in range(4):
        omega = 1.0 / 10000 ** (k / 4)
        assert pos[1 + row * 4 + col, k].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
        assert pos[1 + row * 4 + col, 8 + k].item() == pytest.approx(math.sin(row * omega), abs=1e-6)


def test_mae_decoder_puts_tokens_back_at_their_patches(models):
    loss = MAELoss(decoder_depth=0, decoder_width=16, decoder_heads=2)  # no blocks: per-token map
    loss.setup(models[0], None)
    ids_keep, ids_restore, mask = random_masking(2, 16, 0.75)
    tokens = torch.randn(2, 1 + 4, 32)  # class token + 4 visible patches in shuffled order
    pred = loss.decode(tokens, ids_restore)
    assert pred.shape == (2, 16, 16)
    for b in range(2):
        for n in range(16):
            slot = (ids_keep[b] == n).nonzero()
            h = loss.mask_token[0, 0] if mask[b, n] else loss.decoder_embed(tokens[b, 1 + slot.item()])
            expected = loss.decoder_pred(loss.decoder_norm(h + loss.decoder_pos_embed[1 + n]))
            torch.testing.assert_close(pred[b, n], expected)


def test_mae_make_inputs_masks_the_student_view(models):
    loss = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2)
    loss.setup(models[0], None)
    inputs = loss.make_inputs(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    assert inputs.teacher is None and inputs.student.keep.shape == (4, 4)
    assert (inputs.extras["mask"].sum(1) == 12).all() and inputs.extras["ids_restore"].shape == (4, 16)


def test_mae_target_is_built_from_the_channels_the_student_reads(models):
    """A student reading the event channels (2, 3) of stacked frame + event images: MAE reconstructs
    those two channels (it crashed on a 4-channel target before), and from them alone."""
    torch.manual_seed(0)
    student = Student(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=2,
                                        embed_dim=32, depth=2, num_heads=2, num_classes=5))
    student.input_slice = (2, 4)
    loss = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2, norm_pix_loss=False, crop_scale=None)
    loss.setup(student, None)
    stacked = torch.randn(3, 4, 16, 16)
    inputs = loss.make_inputs(stacked, torch.zeros(3, dtype=torch.long))
    terms = loss(student.run(inputs.student, loss.student_taps), None, inputs)
    frame_changed = stacked.clone()
    frame_changed[:, :2] += 5.0  # the frame channels the student does not read
    inputs.student = ModelInput(frame_changed, keep=inputs.student.keep)
    again = loss(student.run(inputs.student, loss.student_taps), None, inputs)
    torch.testing.assert_close(again["mse_masked"], terms["mse_masked"])
    assert read_channels(stacked, (2, 4)).shape == (3, 2, 16, 16) and read_channels(stacked, None) is stacked


def test_mae_crops_each_image_before_masking_and_reconstructs_the_crop(models):
    """MAE's augmentation: RandomResizedCrop(0.2-1) + flip; the pixel target is the cropped image."""
    student, _ = models
    loss = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2, norm_pix_loss=False)
    loss.setup(student, None)
    x = torch.randn(3, 1, 16, 16)
    torch.manual_seed(2)
    inputs = loss.make_inputs(x, torch.zeros(3, dtype=torch.long))
    torch.manual_seed(2)
    torch.testing.assert_close(inputs.student.images, random_resized_crops(x, (16, 16), (0.2, 1.0)))
    assert not torch.allclose(inputs.student.images, x)
    plain = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2, crop_scale=None)
    plain.setup(student, None)
    assert plain.make_inputs(x, torch.zeros(3, dtype=torch.long)).student.images is x
    with pytest.raises(BenchbaseError, match=r"^mae: crop_scale must be"):
        MAELoss(crop_scale=[0.5, 0.2])


# ---------------------------------------------------------------- training step, registration


@pytest.mark.parametrize(
    "loss, term_names",
    [
        (lambda: ClsTokenLoss(), {"kl_cls"}),
        (lambda: ClsTokenLoss(mode="deit", distillation_type="hard"), {"ce", "distill"}),
        (lambda: ClsTokenLoss(mode="deit", distillation_type="soft", tau=2.0), {"ce", "distill"}),
        (lambda: FeatureLoss(), {"smooth_l1"}),
        (lambda: FeatureLoss(teacher_after_norm=False, student_after_norm=False), {"smooth_l1"}),
        (lambda: MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2), {"mse_masked"}),
    ],
    ids=["cls_kl", "deit_hard", "deit_soft", "feature", "feature_prenorm", "mae"],
)
def test_forward_backward_reaches_student(models, loss, term_names):
    student, teacher = models
    loss = loss()
    loss.setup(student, teacher if loss.uses_teacher else None)
    terms = run_step(loss, student, teacher)
    assert set(terms) == term_names and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert student.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in loss.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_yaml_params_match_constructor(name):
    module, cls = PLUGINS[name]
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
    signature = inspect.signature(cls.__init__).parameters
    assert cfg["name"] == cls.name == name
    assert set(cfg["params"]) == set(signature) - {"self"}
    for key, value in cfg["params"].items():
        assert type(value) is type(signature[key].default), key
    assert cls(**cfg["params"]) is not None


def test_plugins_register_through_pluggy():
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registered: dict[str, type] = {}
    for name, (module, _) in PLUGINS.items():
        pm.register(module, name=name)
    pm.check_pending()
    pm.hook.benchbase_register_methods(register=registered.__setitem__)
    assert registered == {name: cls for name, (_, cls) in PLUGINS.items()}
    assert pm.hook.benchbase_config_dirs() == [[str(CONF_DIR)]] * 3
