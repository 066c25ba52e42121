"""SAM's image encoder as a benchbase model: captures against a hand-written forward, early exit,
window shapes, checkpoints. Tiny encoders with random weights (research notes 5.3)."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling.image_encoder import window_partition, window_unpartition

from benchbase.capture import ModelInput, Tap
from benchbase.errors import BenchbaseError
from benchbase.sam import (
    SamStudent,
    SamTeacher,
    build_sam_encoder,
    pad_to_size,
    run_sam,
    sam_attention,
    window_attention_to_dense,
)


TINY = {"depth": 3, "global_attn_indexes": (1,), "window_size": 3}  # the architecture of tiny()


def tiny(seed: int = 0, **overrides):
    """A tiny SAM encoder: 64 px, patch 16 (a 4×4 grid), width 32, 2 heads, d = 16, by default
    3 blocks with block 1 global and windows of 3 (the grid pads to 6: 4 windows, 5 of 9 real
    tokens in the corner windows). Position embedding and rel-pos tables (zero-initialised in
    SAM) are random so that they matter."""
    torch.manual_seed(seed)
    cfg = {**TINY, **overrides}
    encoder = build_sam_encoder("tiny", **cfg)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                param.normal_(0.0, 0.5)
    return encoder.eval()


def images(batch: int = 2, channels: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def hand_attention(attn, x: torch.Tensor):
    """q, k, v [B', Hd, n, d] and softmax(q kᵀ·scale + rel-pos bias) [B', Hd, n, n] for x [B', h, w, D],
    the decomposed bias written out token pair by token pair (tables of exactly 2h−1 rows)."""
    batch, height, width, dim = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(batch, height * width, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
    bias = torch.zeros_like(logits)
    for qi in range(height * width):
        qy, qx = divmod(qi, width)
        for ki in range(height * width):
            ky, kx = divmod(ki, width)
            table = attn.rel_pos_h[qy - ky + height - 1] + attn.rel_pos_w[qx - kx + width - 1]
            bias[..., qi, ki] = (q[..., qi, :] * table).sum(-1)
    return q, k, v, (logits + bias).softmax(-1)


def manual_forward(encoder, x: torch.Tensor) -> dict:
    """Every block by hand from the encoder's own layers; returns per-block tensors and the neck."""
    x = encoder.patch_embed(x) + encoder.pos_embed  # [B, 4, 4, D]
    grid = x.shape[1:3]
    out = {}
    for index, block in enumerate(encoder.blocks):
        h = block.norm1(x)
        if block.window_size:
            h, padded = window_partition(h, block.window_size)
        q, k, v, probs = hand_attention(block.attn, h)
        branch = block.attn.proj((probs @ v).transpose(1, 2).reshape(h.shape))
        if block.window_size:
            branch = window_unpartition(branch, block.window_size, padded, grid)
        x = x + branch
        mlp = block.mlp(block.norm2(x))
        x = x + mlp
        out[index] = {"attn": probs, "q": q, "k": k, "v": v, "attn_out": branch.flatten(1, 2),
                      "mlp_out": mlp.flatten(1, 2), "block": x.flatten(1, 2)}
    out["tokens"] = encoder.neck(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    return out


KINDS = ("block", "attn", "q", "k", "v", "attn_out", "mlp_out")


@torch.no_grad()
def test_captures_equal_a_manual_forward_with_rel_pos():
    encoder, x = tiny(), images()
    expected = manual_forward(encoder, x)
    taps = [Tap(kind, i) for i in range(3) for kind in KINDS] + [Tap("tokens")]
    got = run_sam(encoder, x, taps)
    for i in range(3):
        for kind in KINDS:
            torch.testing.assert_close(got[Tap(kind, i)], expected[i][kind], msg=f"{kind} of block {i}")
    torch.testing.assert_close(got[Tap("tokens")], expected["tokens"])
    # and the neck tokens are SAM's own forward output
    torch.testing.assert_close(got[Tap("tokens")], encoder(x).flatten(2).transpose(1, 2))
    # the rel-pos bias matters: without it the attention would differ
    plain = (expected[1]["q"] @ expected[1]["k"].transpose(-2, -1) * 0.25).softmax(-1)
    assert (plain - got[Tap("attn", 1)]).abs().max() > 1e-2


@torch.no_grad()
def test_window_and_global_shapes():
    captured = run_sam(tiny(), images(batch=2), [Tap(kind, i) for i in (0, 1) for kind in KINDS])
    windows = 2 * 4  # 2 images, a 6×6 padded grid cut into 2×2 windows of 3×3
    assert captured[Tap("attn", 0)].shape == (windows, 2, 9, 9)
    assert captured[Tap("q", 0)].shape == captured[Tap("v", 0)].shape == (windows, 2, 9, 16)
    assert captured[Tap("attn", 1)].shape == (2, 2, 16, 16)
    assert captured[Tap("k", 1)].shape == (2, 2, 16, 16)
    for i in (0, 1):
        for kind in ("block", "attn_out", "mlp_out"):
            assert captured[Tap(kind, i)].shape == (2, 16, 32)
    for i in (0, 1):  # attention rows are distributions
        torch.testing.assert_close(captured[Tap("attn", i)].sum(-1), torch.ones(captured[Tap("attn", i)].shape[:-1]))


@pytest.mark.parametrize(("taps", "blocks_run", "neck_runs"), [
    ([Tap("block", 0)], [1, 0, 0], 0),
    ([Tap("attn", 1), Tap("q", 0)], [1, 1, 0], 0),
    ([Tap("block", -1)], [1, 1, 1], 0),
    ([Tap("tokens"), Tap("block", 0)], [1, 1, 1], 1),
])
@torch.no_grad()
def test_early_exit_runs_only_needed_blocks_and_neck(taps, blocks_run, neck_runs):
    encoder = tiny()
    calls = [0] * 4
    for i, module in enumerate([*encoder.blocks, encoder.neck]):
        module.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    captured = run_sam(encoder, images(), taps)
    assert calls == [*blocks_run, neck_runs]
    assert set(captured) == set(taps)
    for i, block in enumerate(encoder.blocks):  # the capture hooks are removed again
        assert not block._forward_hooks and not block.attn.qkv._forward_hooks, i


@torch.no_grad()
def test_unsupported_inputs_and_taps():
    encoder = tiny()
    with pytest.raises(ValueError, match="no classifier"):
        run_sam(encoder, images(), [Tap("logits")])
    with pytest.raises(ValueError, match="keep"):
        run_sam(encoder, ModelInput(images(), keep=torch.zeros(2, 4, dtype=torch.long)), [Tap("block", 0)])
    with pytest.raises(BenchbaseError, match="64x64"):
        run_sam(encoder, images(size=48), [Tap("block", 0)])


@torch.no_grad()
def test_mask_tokens_replace_patch_embeddings_before_position_embedding():
    encoder, x = tiny(), images(batch=1)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True
    token = torch.randn(32)
    got = run_sam(encoder, ModelInput(x, mask=mask, mask_token=token), [Tap("block", 1)])[Tap("block", 1)]
    embedded = encoder.patch_embed(x)
    embedded[0, 1, 1] = token  # patch 5 is row 1, column 1 of the 4×4 grid
    h = embedded + encoder.pos_embed
    for block in encoder.blocks[:2]:
        h = block(h)
    torch.testing.assert_close(got, h.flatten(1, 2))


@torch.no_grad()
def test_sam_attention_is_what_sam_attention_forward_uses():
    encoder = tiny()
    x = torch.randn(2, 4, 4, 32)
    for block in encoder.blocks:  # block 0's 5-row window table is interpolated to the 4×4 grid's 7 rows
        attn = block.attn
        probs = sam_attention(attn, x)  # [2, 2, 16, 16]
        v = attn.qkv(x).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
        rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(2, 4, 4, 32))
        torch.testing.assert_close(rebuilt, attn(x))
    _, _, _, hand = hand_attention(encoder.blocks[1].attn, x)  # the global block's table fits exactly
    torch.testing.assert_close(sam_attention(encoder.blocks[1].attn, x), hand)


def test_window_attention_to_dense_places_each_window_and_drops_padding():
    batch, heads, window, grid = 2, 3, 3, (4, 5)  # pads to 6×6: 2×2 windows
    attn = torch.rand(batch * 4, heads, 9, 9)
    dense = window_attention_to_dense(attn, grid, window)
    assert dense.shape == (batch, heads, 20, 20)
    expected = torch.zeros_like(dense)
    for b in range(batch):
        for r in range(2):
            for c in range(2):
                for qi in range(9):
                    for ki in range(9):
                        (qy, qx), (ky, kx) = divmod(qi, 3), divmod(ki, 3)
                        q_pos, k_pos = (r * 3 + qy, c * 3 + qx), (r * 3 + ky, c * 3 + kx)
                        if max(q_pos[0], k_pos[0]) < 4 and max(q_pos[1], k_pos[1]) < 5:
                            expected[b, :, q_pos[0] * 5 + q_pos[1], k_pos[0] * 5 + k_pos[1]] = \
                                attn[b * 4 + r * 2 + c, :, qi, ki]
    torch.testing.assert_close(dense, expected)


@torch.no_grad()
def test_dense_window_attention_reproduces_the_block_minus_padding_values():
    encoder, x = tiny(), images()
    caps = run_sam(encoder, x, [Tap("attn", 0), Tap("v", 0), Tap("attn_out", 0)])
    dense = window_attention_to_dense(caps[Tap("attn", 0)], (4, 4), 3)  # [2, 2, 16, 16]
    block = encoder.blocks[0]
    h = block.norm1(encoder.patch_embed(x) + encoder.pos_embed)
    v = block.attn.qkv(h).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]  # real tokens' values
    padding_v = block.attn.qkv.bias[64:].reshape(2, 16)  # a zero (padding) token's value: the bias
    padding_mass = 1 - dense.sum(-1, keepdim=True)  # [2, 2, 16, 1]
    mixed = dense @ v + padding_mass * padding_v[None, :, None, :]
    rebuilt = block.attn.proj(mixed.transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(rebuilt, caps[Tap("attn_out", 0)])


# ------------------------------------------------------------------------------------ building


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_presets_match_segment_anything_registry(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        ours = build_sam_encoder(name)
        theirs = sam_model_registry[name]().image_encoder
    assert str(ours) == str(theirs)  # same layers, widths, LayerNorm eps, windows
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert [b.window_size for b in ours.blocks] == [b.window_size for b in theirs.blocks]


def test_builder_overrides_and_errors():
    encoder = build_sam_encoder("tiny", img_size=32, in_chans=5, embed_dim=16, depth=3, num_heads=4,
                                window_size=1, global_attn_indexes=[0, 2], patch_size=8, out_chans=8)
    assert encoder.patch_embed.proj.weight.shape == (16, 5, 8, 8)
    assert encoder.pos_embed.shape == (1, 4, 4, 16)
    assert [b.window_size for b in encoder.blocks] == [0, 1, 0]
    assert encoder(torch.randn(1, 5, 32, 32)).shape == (1, 8, 4, 4)
    with pytest.raises(BenchbaseError, match="unknown SAM encoder 'vit_x'"):
        build_sam_encoder("vit_x")
    with pytest.raises(BenchbaseError, match="global_attn_indexes"):
        build_sam_encoder("tiny", global_attn_indexes=[2])
    with pytest.raises(BenchbaseError, match="multiple of patch_size"):
        build_sam_encoder("tiny", img_size=60)


def full_sam_state(encoder) -> dict[str, torch.Tensor]:
    """A full SAM checkpoint's layout: the encoder under ``image_encoder.`` plus other modules."""
    state = {f"image_encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 32)
    return state


def test_full_sam_checkpoint_loads_image_encoder_keys(tmp_path):
    source = tiny(seed=3)
    torch.save(full_sam_state(source), tmp_path / "sam.pth")
    loaded = build_sam_encoder("tiny", **TINY, checkpoint=tmp_path / "sam.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)
    torch.save(source.state_dict(), tmp_path / "encoder.pth")  # a bare encoder state dict too
    bare = build_sam_encoder("tiny", **TINY, checkpoint=tmp_path / "encoder.pth")
    torch.testing.assert_close(bare.pos_embed, source.pos_embed)


def test_mismatched_checkpoint_is_a_one_line_error_naming_keys(tmp_path):
    torch.save(full_sam_state(tiny(embed_dim=48)), tmp_path / "wide.pth")
    with pytest.raises(BenchbaseError) as err:
        build_sam_encoder("tiny", **TINY, checkpoint=tmp_path / "wide.pth")
    message = str(err.value)
    assert "\n" not in message and "shape mismatch" in message and "blocks.0.attn.proj.bias" in message
    torch.save(full_sam_state(tiny(depth=2)), tmp_path / "shallow.pth")
    with pytest.raises(BenchbaseError, match=r"missing: blocks\.2\."):
        build_sam_encoder("tiny", **TINY, checkpoint=tmp_path / "shallow.pth")


def test_larger_image_checkpoint_is_cropped_like_eventsam(tmp_path):
    big = tiny(img_size=128)  # grid 8: global tables have 15 rows, window tables 5
    torch.save(full_sam_state(big), tmp_path / "big.pth")
    small = build_sam_encoder("tiny", **TINY, checkpoint=tmp_path / "big.pth")
    torch.testing.assert_close(small.pos_embed, big.pos_embed[:, :4, :4])  # top-left
    torch.testing.assert_close(small.blocks[1].attn.rel_pos_h, big.blocks[1].attn.rel_pos_h[4:11])  # offsets -3..3
    torch.testing.assert_close(small.blocks[0].attn.rel_pos_w, big.blocks[0].attn.rel_pos_w)  # window: unchanged


# -------------------------------------------------------------------------------------- wrappers


def test_student_and_teacher_wrappers():
    student, teacher = SamStudent(tiny()), SamTeacher(tiny(seed=1))
    for model in (student, teacher):
        assert (model.embed_dim, model.depth, model.num_heads, model.patch_size) == (32, 3, 2, 16)
        assert (model.num_patches, model.num_prefix_tokens, model.grid, model.in_chans) == (16, 0, (4, 4), 3)
    assert student.export() is student.model
    tap = Tap("block", 1)
    s_out = student.run(images(), [tap])[tap]
    s_out.sum().backward()
    assert student.model.blocks[1].mlp.lin1.weight.grad is not None
    assert student.model.blocks[2].mlp.lin1.weight.grad is None  # early exit
    t_out = teacher.run(images(), [tap, Tap("attn", 0)])
    assert not t_out[tap].requires_grad and not t_out[tap].is_inference()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_pad_to_size_pads_bottom_right():
    x = torch.ones(1, 2, 3, 5)
    padded = pad_to_size(x, 8)
    assert padded.shape == (1, 2, 8, 8) and padded[..., :3, :5].eq(1).all() and padded.sum() == 30
    with pytest.raises(BenchbaseError, match="larger"):
        pad_to_size(torch.ones(1, 1, 9, 4), 8)
