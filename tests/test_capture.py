"""Captured tensors have the documented shapes, equal a manual forward, and the teacher exits early."""

from __future__ import annotations

import pytest
import torch

from benchbase.capture import ModelInput, Tap, deepest_block, run_vit


def manual_forward(model, x):
    """Block outputs and q/k/v of every block, by hand, and the final tokens and logits."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    blocks, qkvs = [], []
    for blk in model.blocks:
        h = blk.norm1(x)
        B, T, D = h.shape
        qkv = blk.attn.qkv(h).reshape(B, T, 3, blk.attn.num_heads, D // blk.attn.num_heads).permute(2, 0, 3, 1, 4)
        qkvs.append(qkv)
        x = blk(x)
        blocks.append(x)
    tokens = model.norm(x)
    return blocks, qkvs, tokens, model.forward_head(tokens)


def test_shapes_and_values_match_manual_forward(student, images):
    model = student.model.eval()
    taps = [Tap("block", 0), Tap("attn", 1), Tap("q", -1), Tap("k", -1), Tap("v", -1), Tap("tokens"),
            Tap("logits"), Tap("mlp_out", 1), Tap("attn_out", 1)]
    with torch.no_grad():
        out = run_vit(model, images, taps)
        blocks, qkvs, tokens, logits = manual_forward(model, images)
    B, T, D, H = 3, 17, 32, 2
    assert out[Tap("block", 0)].shape == (B, T, D)
    assert out[Tap("attn", 1)].shape == (B, H, T, T)
    assert out[Tap("q", -1)].shape == (B, H, T, D // H)
    assert out[Tap("logits")].shape == (B, 5)
    torch.testing.assert_close(out[Tap("block", 0)], blocks[0])
    q, k, v = qkvs[1]
    attn = ((q * model.blocks[1].attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(out[Tap("attn", 1)], attn)
    torch.testing.assert_close(out[Tap("attn", 1)].sum(-1), torch.ones(B, H, T))
    torch.testing.assert_close(out[Tap("q", -1)], qkvs[-1][0])
    torch.testing.assert_close(out[Tap("v", -1)], qkvs[-1][2])
    torch.testing.assert_close(out[Tap("tokens")], tokens)
    torch.testing.assert_close(out[Tap("logits")], logits)
    blk = model.blocks[1]
    torch.testing.assert_close(out[Tap("attn_out", 1)], blk.attn(blk.norm1(blocks[0])))
    mid = blocks[0] + blk.attn(blk.norm1(blocks[0]))
    torch.testing.assert_close(out[Tap("mlp_out", 1)], blk.mlp(blk.norm2(mid)))


def test_only_requested_tensors_kept_and_hooks_removed(student, images):
    out = run_vit(student.model, images, [Tap("attn", 0)])
    assert list(out) == [Tap("attn", 0)]
    for blk in student.model.blocks:
        assert not blk._forward_hooks and not blk.attn.qkv._forward_hooks


def test_teacher_stops_at_deepest_requested_block(teacher, images):
    calls = []
    for i, blk in enumerate(teacher.model.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.append(i))
    teacher.run(images, [Tap("block", 1), Tap("attn", 0)])
    assert calls == [0, 1]
    calls.clear()
    teacher.run(images, [Tap("tokens")])
    assert calls == [0, 1, 2, 3]
    assert deepest_block([Tap("v", -2)], 4) == 2


def test_deepest_block_stops_at_its_qkv_projection(teacher, images):
    last = teacher.model.blocks[1]
    calls = []
    last.mlp.register_forward_hook(lambda *_: calls.append("mlp"))
    last.attn.proj.register_forward_hook(lambda *_: calls.append("proj"))
    out = teacher.run(images, [Tap("q", 1), Tap("attn", 1), Tap("block", 0)])
    assert calls == [] and out[Tap("attn", 1)].shape == (3, 4, 17, 17)
    full = teacher.run(images, [Tap("q", 1), Tap("block", 1)])  # the block output needs the whole block
    assert calls == ["proj", "mlp"]
    torch.testing.assert_close(out[Tap("q", 1)], full[Tap("q", 1)])


def test_teacher_outputs_are_constant_targets(teacher, images):
    out = teacher.run(images, [Tap("tokens")])[Tap("tokens")]
    assert not out.requires_grad
    assert not out.is_inference()  # usable as a loss target in autograd


def test_masked_and_kept_inputs(student, images):
    model = student.model.eval()
    keep = torch.tensor([[0, 5, 7], [1, 2, 3], [15, 14, 13]])
    with torch.no_grad():
        tokens = run_vit(model, ModelInput(images, keep=keep), [Tap("block", 0)])[Tap("block", 0)]
        assert tokens.shape == (3, 1 + 3, 32)
        mask = torch.zeros(3, 16, dtype=torch.bool)
        mask[:, :4] = True
        token = torch.zeros(32)
        masked = run_vit(model, ModelInput(images, mask=mask, mask_token=token), [Tap("block", 0)])
        plain = run_vit(model, images, [Tap("block", 0)])
    assert not torch.allclose(masked[Tap("block", 0)], plain[Tap("block", 0)])


def test_bad_taps_are_rejected():
    with pytest.raises(ValueError, match="needs a block index"):
        Tap("attn")
    with pytest.raises(ValueError, match="unknown tap kind"):
        Tap("pixels")
    with pytest.raises(ValueError, match="out of range"):
        Tap("block", 9).resolve(4)
