"""Saved students keep each block's head count, so a head-aligned TinyMIM student can be a teacher."""

from __future__ import annotations

import pytest
import torch

from benchbase.capture import Tap
from benchbase.components import Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.models import load_weights, save_weights
from benchbase_plugins.tinymim import TinyMIMLoss

from conftest import tiny_vit


def test_head_aligned_student_round_trips_with_its_head_counts(tmp_path, images):
    student = Student(tiny_vit(embed_dim=32, depth=3, num_heads=2))
    TinyMIMLoss().setup(student, Teacher(tiny_vit(embed_dim=48, depth=4, num_heads=4, seed=1)))
    assert [b.attn.num_heads for b in student.model.blocks] == [2, 2, 4]
    save_weights(student.export(), tmp_path / "student.pt")
    rebuilt = tiny_vit(embed_dim=32, depth=3, num_heads=2, seed=7)  # built from the plain config
    load_weights(rebuilt, tmp_path / "student.pt")
    assert [b.attn.num_heads for b in rebuilt.blocks] == [2, 2, 4]
    as_teacher = Teacher(rebuilt)
    out = as_teacher.run(images, [Tap("attn", -1), Tap("tokens")])
    assert out[Tap("attn", -1)].shape == (3, 4, 17, 17)
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(out[Tap("tokens")], student.run(images, [Tap("tokens")])[Tap("tokens")])


def _drop_rates(model) -> list[float]:
    return [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]


def test_drop_path_schedules_linear_ramp_and_constant():
    from omegaconf import OmegaConf

    from benchbase.config import ModelConfig
    from benchbase.data.digits import load_digits_bundle
    from benchbase.models import build_vit

    data = load_digits_bundle()
    base = {"embed_dim": 32, "depth": 5, "num_heads": 2, "patch_size": 4, "drop_path": 0.1}
    linear = build_vit(OmegaConf.merge(OmegaConf.structured(ModelConfig), base), data)
    constant = build_vit(OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, "drop_path_schedule": "constant"}),
                         data)
    assert _drop_rates(linear) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert _drop_rates(constant) == pytest.approx([0.1] * 5)
    assert all(b.drop_path2.drop_prob == pytest.approx(0.1) for b in constant.blocks)
    with pytest.raises(BenchbaseError, match="drop_path_schedule='ramp'; use one of linear, constant"):
        build_vit(OmegaConf.merge(OmegaConf.structured(ModelConfig), {**base, "drop_path_schedule": "ramp"}), data)


def test_a_fixed_sincos_position_embedding_is_maes_table_and_never_trained():
    """``params.pos_embed=sincos``: MAE's 2-D table (column half, then row half), zero for the class token."""
    import math

    from omegaconf import OmegaConf

    from benchbase.config import ModelConfig
    from benchbase.data.digits import load_digits_bundle
    from benchbase.models import build_vit, sincos_pos_embed

    table = sincos_pos_embed(8, 2, 3)  # 2 rows x 3 columns, omega = [1, 1/100] for dim / 4 = 2
    assert table.shape == (6, 8)
    row, col = 1, 2  # patch 5 in row-major order
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(table[5], torch.tensor(expected))
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"embed_dim": 32, "depth": 1, "num_heads": 2,
                                                              "patch_size": 4, "params": {"pos_embed": "sincos"}})
    model = build_vit(cfg, load_digits_bundle())  # 16x16 images: a 4x4 grid
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_pos_embed(32, 4, 4))
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(32))
    with pytest.raises(BenchbaseError, match="divisible by 4"):
        sincos_pos_embed(6, 2, 2)


def test_cost_metrics_count_vit_tiny_like_the_papers():
    import timm

    from benchbase.cost import cost_metrics

    class Images:
        in_chans, image_size = 3, 224

    metrics = {m.name: m.value for m in cost_metrics(Student(timm.create_model("vit_tiny_patch16_224")), Images)}
    # ViT-T/16 at 224 px: 5.7 M parameters and 1.3 GFLOPs (multiply-adds) as DeiT and TinyMIM report;
    # by hand, 12 blocks x (197 tokens x 12 x 192² linear MACs + 2 x 197² x 192 attention MACs)
    # + the patch embedding's 196 x 768 x 192 = 1.2535 GMACs
    by_hand = 12 * (197 * 12 * 192**2 + 2 * 197**2 * 192) + 196 * 768 * 192
    assert metrics["params_m"] == pytest.approx(5.717, abs=0.001)
    assert metrics["gflops"] == pytest.approx(by_hand / 1e9, rel=1e-3)
