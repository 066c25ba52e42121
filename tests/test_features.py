"""Frozen-feature extraction: every pooling against a by-hand forward pass of a tiny timm ViT."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.components import Student
from benchbase.errors import BenchbaseError
from benchbase.evaluation.features import POOLINGS, extract_features


from conftest import tensor_images


def tiny_student(**overrides) -> Student:
    torch.manual_seed(0)
    kwargs = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    return Student(timm.create_model("vit_tiny_patch16_224", **{**kwargs, **overrides}))


def manual_tokens_and_attention(model, images: Tensor) -> tuple[Tensor, Tensor]:
    """[B, T, D] final-norm tokens and [B, H, T, T] last-block attention, computed block by block."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    h = last.norm1(x)
    batch, tokens, dim = h.shape
    heads = last.attn.num_heads
    q, k, _ = last.attn.qkv(h).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) / (dim // heads) ** 0.5).softmax(dim=-1)
    return model.norm(last(x)), attn


@pytest.fixture(scope="module")
def setup():
    student = tiny_student()
    torch.manual_seed(1)
    images = torch.randn(7, 1, 16, 16)
    dataset = tensor_images(images, torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    with torch.no_grad():
        tokens, attn = manual_tokens_and_attention(student.model.eval(), images)
    return student, dataset, tokens, attn


def test_cls_attn_matches_manual_computation(setup):
    student, dataset, tokens, attn = setup
    assert torch.allclose(tokens, student.model.forward_features(dataset.images), atol=1e-5)
    weights = attn[:, :, 0, 1:].mean(dim=1)  # class token -> 16 patches, averaged over the 2 heads
    weights = weights / weights.sum(dim=1, keepdim=True)
    pooled = (weights.unsqueeze(-1) * tokens[:, 1:]).sum(dim=1)
    expected = torch.cat([F.normalize(tokens[:, 0], dim=-1), F.normalize(pooled, dim=-1)], dim=1)

    features, labels = extract_features(student, dataset, "cls+attn", batch_size=3)

    assert features.shape == (7, 64) and features.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == dataset.targets
    assert torch.allclose(features, expected, atol=1e-5)
    # the attention weighting is not the plain mean (the test would not notice otherwise)
    plain = F.normalize(tokens[:, 1:].mean(dim=1), dim=-1)
    assert not torch.allclose(features[:, 32:], plain, atol=1e-3)


def test_other_poolings(setup):
    student, dataset, tokens, _ = setup
    expected = {
        "cls": tokens[:, 0],
        "mean": tokens[:, 1:].mean(dim=1),
        "cls+mean": torch.cat(
            [F.normalize(tokens[:, 0], dim=-1), F.normalize(tokens[:, 1:].mean(dim=1), dim=-1)], dim=1
        ),
    }
    for pooling, want in expected.items():
        features, _ = extract_features(student, dataset, pooling, batch_size=4)
        assert features.shape == want.shape, pooling
        assert torch.allclose(features, want, atol=1e-5), pooling
    assert set(POOLINGS) == {"cls+attn", *expected}


def test_runs_in_eval_mode_and_restores_training_mode():
    student = tiny_student(drop_rate=0.5, proj_drop_rate=0.5)
    dataset = tensor_images(torch.randn(5, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0]))
    student.train()
    first, _ = extract_features(student, dataset, "cls")
    second, _ = extract_features(student, dataset, "cls")
    assert torch.equal(first, second)  # dropout is off during extraction
    assert student.training and student.model.training


def test_bad_pooling_and_missing_class_token():
    dataset = tensor_images(torch.randn(2, 1, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(BenchbaseError, match="unknown feature pooling 'max'"):
        extract_features(tiny_student(), dataset, "max")
    no_cls = tiny_student(class_token=False, global_pool="avg")
    with pytest.raises(BenchbaseError, match="needs a class token"):
        extract_features(no_cls, dataset, "cls+attn")
    features, _ = extract_features(no_cls, dataset, "mean")
    assert features.shape == (2, 32)
