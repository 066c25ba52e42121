"""EventSAM's token-weighted adaptation against hand computations on tiny SAM encoders."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

import pytest
import torch
from omegaconf import OmegaConf
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition, window_unpartition

from benchbase.capture import Tap
from benchbase.components import Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.sam import SamStudent, SamTeacher, build_sam_encoder, window_attention_to_dense
from benchbase_plugins import CONF_DIR
from benchbase_plugins.eventsam import (
    EventSAMLoss, image_tokens, released_blocks, token_importance, weighted_distance,
)

# 4 blocks on a 4×4 grid: 0 and 2 windowed (windows of 3, padded grid 6×6), 1 and 3 global,
# like SAM's alternation; distilled blocks 1 and 3 (the global ones) plus windowed block 0.
ARCH = {"depth": 4, "global_attn_indexes": (1, 3), "window_size": 3}
BLOCKS, WEIGHTS = [0, 1, 3], [0.1, 0.4, 1.0]


def encoder(seed: int, in_chans: int = 3, **overrides):
    torch.manual_seed(seed)
    model = build_sam_encoder("tiny", in_chans=in_chans, **{**ARCH, **overrides})
    with torch.no_grad():  # SAM zero-initialises these; random values make them matter
        for name, param in model.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                param.normal_(0.0, 0.5)
    return model


def models(event_channels: int = 2, **overrides) -> tuple[SamStudent, SamTeacher]:
    return SamStudent(encoder(0, in_chans=event_channels, **overrides)), SamTeacher(encoder(1))


def ready(student=None, teacher=None, **params) -> tuple[EventSAMLoss, SamStudent, SamTeacher]:
    if student is None:
        student, teacher = models(params.get("event_channels", 2))
    loss = EventSAMLoss(**{"event_channels": 2, "distilled_blocks": BLOCKS, "layer_weights": WEIGHTS, **params})
    loss.setup(student, teacher)
    return loss, student, teacher


def stacked(batch: int = 2, channels: int = 5, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(2))


def step(loss, student, teacher, images=None):
    inputs = loss.make_inputs(stacked() if images is None else images, torch.zeros(2, dtype=torch.long))
    return loss(student.run(inputs.student, loss.student_taps), teacher.run(inputs.teacher, loss.teacher_taps), inputs)


# --------------------------------------------------------------------------------- importance


def test_token_importance_by_hand_for_one_matrix_and_a_chain():
    # two heads of a 3-token attention, rows are queries
    heads = torch.tensor([[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]],
                          [[0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]]])
    p = heads.mean(0, keepdim=True)  # [1, 3, 3]
    # released code: (column sums of the head mean + 1) / 2
    columns = [(0.5 + 0.0 + 0.2 + 0.1 + 0.3 + 1.0) / 2, (0.25 + 1.0 + 0.2 + 0.8 + 0.3 + 0.0) / 2,
               (0.25 + 0.0 + 0.6 + 0.1 + 0.4 + 0.0) / 2]
    torch.testing.assert_close(token_importance([p], 0.5)[0], torch.tensor([(c + 1) / 2 for c in columns]))
    torch.testing.assert_close(token_importance([p], 0.2)[0], torch.tensor([0.2 * c + 0.8 for c in columns]))
    # paper: 1ᵀ (P2 P1) for the chain [P1, P2] (P1 the nearer block), by loops
    p1, p2 = p[0], torch.tensor([[0.0, 0.5, 0.5], [0.9, 0.1, 0.0], [0.3, 0.3, 0.4]])
    product = [[sum(p2[i, m].item() * p1[m, j].item() for m in range(3)) for j in range(3)] for i in range(3)]
    columns = [sum(product[i][j] for i in range(3)) for j in range(3)]
    got = token_importance([p1[None], p2[None]], 0.7)[0]
    torch.testing.assert_close(got, torch.tensor([0.7 * c + 0.3 for c in columns]))
    assert got.mean().item() == pytest.approx(1.0)  # row-stochastic chain: weights average 1


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_row_stochastic_attention_gives_weights_averaging_one_and_at_least_one_minus_beta(beta):
    generator = torch.Generator().manual_seed(3)
    chain = [torch.randn(2, 9, 9, generator=generator).mul(3).softmax(-1) for _ in range(3)]
    for transitions in (chain[:1], chain):  # one matrix (released) and a product (paper)
        weights = token_importance(transitions, beta)
        torch.testing.assert_close(weights.mean(-1), torch.ones(2), atol=1e-6, rtol=0)
        assert weights.min().item() >= 1 - beta - 1e-6
        if 0 < beta:
            assert weights.std().item() > 1e-3  # not trivially uniform


def test_uniform_attention_gives_uniform_weights():
    uniform = torch.full((2, 7, 7), 1 / 7)
    for transitions in ([uniform], [uniform, uniform, uniform]):
        torch.testing.assert_close(token_importance(transitions, 0.5), torch.ones(2, 7))


def released_weights(teacher: SamTeacher, images: torch.Tensor, block: int, beta: float) -> torch.Tensor:
    """The released ``Block.forward`` + ``matirx_to_weight`` for block ``block`` + 1, written out:
    the block's attention called again on its un-partitioned attention output over the whole grid."""
    enc = teacher.model
    with torch.no_grad():
        x = enc.patch_embed(images) + enc.pos_embed
        for blk in enc.blocks[: block + 1]:
            x = blk(x)
        pivot = enc.blocks[block + 1]
        if pivot.window_size:
            windows, padded = window_partition(pivot.norm1(x), pivot.window_size)
            branch = window_unpartition(pivot.attn(windows), pivot.window_size, padded, (4, 4))
        else:
            branch = pivot.attn(pivot.norm1(x))
        attn, n = pivot.attn, 16
        qkv = attn.qkv(branch).reshape(2, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.reshape(3, 2 * attn.num_heads, n, -1).unbind(0)
        logits = add_decomposed_rel_pos((q * attn.scale) @ k.transpose(-2, -1), q, attn.rel_pos_h, attn.rel_pos_w,
                                        (4, 4), (4, 4))
        matrix = logits.softmax(-1).view(-1, attn.num_heads, n, n).mean(-3).sum(-2)  # [B, N]
    return beta * matrix + (1 - beta)


def test_released_code_weights_use_the_next_blocks_pseudo_global_attention():
    loss, student, teacher = ready(importance="released_code", beta=0.5)
    assert set(loss.teacher_taps) == {Tap("block", 0), Tap("block", 1), Tap("block", 3),
                                      Tap("attn_out", 1), Tap("attn_out", 2)}
    frames = stacked()[:, :3]
    weights = loss.token_weights(teacher.run(frames, loss.teacher_taps))
    torch.testing.assert_close(weights[0], released_weights(teacher, frames, 0, 0.5))  # via global block 1
    torch.testing.assert_close(weights[1], released_weights(teacher, frames, 1, 0.5))  # via windowed block 2
    torch.testing.assert_close(weights[3], torch.ones(2, 16))  # the last block
    assert weights[1].std() > 1e-3 and weights[1].min() >= 0.5
    torch.testing.assert_close(weights[1].mean(-1), torch.ones(2))  # no padding on the full grid


def test_paper_weights_are_the_chain_of_all_later_attention_matrices():
    loss, student, teacher = ready(importance="paper", beta=0.3)
    assert set(loss.teacher_taps) == {Tap("block", 0), Tap("block", 1), Tap("block", 3),
                                      Tap("attn", 1), Tap("attn", 2), Tap("attn", 3)}
    frames = stacked()[:, :3]
    caps = teacher.run(frames, loss.teacher_taps)
    weights = loss.token_weights(caps)
    dense = {1: caps[Tap("attn", 1)].mean(1), 3: caps[Tap("attn", 3)].mean(1),
             2: window_attention_to_dense(caps[Tap("attn", 2)], (4, 4), 3).mean(1)}
    for block, chain in ((0, dense[3] @ dense[2] @ dense[1]), (1, dense[3] @ dense[2])):
        torch.testing.assert_close(weights[block], 0.3 * chain.sum(-2) + 0.7, msg=f"block {block}")
    torch.testing.assert_close(weights[3], torch.ones(2, 16))
    assert weights[1].mean() < 1  # the windowed block's mass on padding tokens is dropped


@pytest.mark.parametrize("importance", ["released_code", "paper"])
def test_beta_zero_gives_uniform_weights(importance):
    loss, _, teacher = ready(importance=importance, beta=0.0)
    weights = loss.token_weights(teacher.run(stacked()[:, :3], loss.teacher_taps))
    for block in BLOCKS:
        torch.testing.assert_close(weights[block], torch.ones(2, 16))


def test_uniform_importance_weights_every_token_one_and_captures_no_attention():
    loss, _, teacher = ready(importance="uniform")
    assert set(loss.teacher_taps) == {Tap("block", b) for b in BLOCKS}
    weights = loss.token_weights(teacher.run(stacked()[:, :3], loss.teacher_taps))
    for block in BLOCKS:
        torch.testing.assert_close(weights[block], torch.ones(2, 16))


# ------------------------------------------------------------------------------------ the loss


def test_weighted_distance_by_hand():
    s = torch.tensor([[[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]]])  # [1, 3, 2]
    t = torch.tensor([[[0.0, 0.0], [1.5, 2.0], [1.0, 1.0]]])
    w = torch.tensor([[2.0, 0.5, 1.0]])
    l1 = (2 * (1 + 2) + 0.5 * (1 + 2) + 1 * (2 + 0)) / 6
    mse = (4 * (1 + 4) + 0.25 * (1 + 4) + 1 * (4 + 0)) / 6
    assert weighted_distance(s, t, w, "l1").item() == pytest.approx(l1)
    assert weighted_distance(s, t, w, "mse").item() == pytest.approx(mse)


@pytest.mark.parametrize("distance", ["l1", "mse"])
def test_loss_terms_are_layer_weighted_token_weighted_distances(distance):
    loss, student, teacher = ready(distance=distance, importance="paper")
    inputs = loss.make_inputs(stacked(), torch.zeros(2))
    s_caps = student.run(inputs.student, loss.student_taps)
    t_caps = teacher.run(inputs.teacher, loss.teacher_taps)
    terms = loss(s_caps, t_caps, inputs)
    assert list(terms) == ["block0", "block1", "block3"]
    weights = loss.token_weights(t_caps)
    for block, lam in zip(BLOCKS, WEIGHTS):
        diff = (s_caps[Tap("block", block)] - t_caps[Tap("block", block)]) * weights[block][..., None]
        expected = lam * (diff.abs().mean() if distance == "l1" else diff.pow(2).mean())
        torch.testing.assert_close(terms[f"block{block}"], expected)


def test_image_tokens_keep_every_patch_that_holds_a_real_pixel():
    # a 33x20 image on a 4x4 grid of 16-pixel patches: rows 0-2 (pixels 0..47 hold 0..32), columns 0-1
    keep = image_tokens((33, 20), (4, 4), 16).reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:3, :2] = True
    assert torch.equal(keep, expected)
    assert image_tokens((64, 64), (4, 4), 16).all()


@pytest.mark.parametrize("distance", ["l1", "mse"])
def test_exclude_padding_averages_only_over_tokens_that_see_the_image(distance):
    images = stacked(size=40)  # padded to 64: token rows/columns 0-2 see pixels, row/column 3 only padding
    kept, student, teacher = ready(exclude_padding=True, distance=distance)
    released, _, _ = ready(student, teacher, distance=distance, init_from_teacher=False)
    inputs = kept.make_inputs(images, torch.zeros(2))
    s_caps = student.run(inputs.student, kept.student_taps)
    t_caps = teacher.run(inputs.teacher, kept.teacher_taps)
    with_padding, without = released(s_caps, t_caps, inputs), kept(s_caps, t_caps, inputs)
    weights = kept.token_weights(t_caps)
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[:3, :3] = True
    inside = inside.reshape(-1)
    for block, lam in zip(BLOCKS, WEIGHTS):
        diff = (s_caps[Tap("block", block)] - t_caps[Tap("block", block)]) * weights[block][..., None]
        per_token = diff.abs() if distance == "l1" else diff.pow(2)
        torch.testing.assert_close(without[f"block{block}"], lam * per_token[:, inside].mean())
        torch.testing.assert_close(with_padding[f"block{block}"], lam * per_token.mean())
        assert not torch.allclose(without[f"block{block}"], with_padding[f"block{block}"])


def test_token_mixing_replaces_the_chosen_student_tokens_by_the_teachers_patch_tokens():
    loss, student, teacher = ready(mix_ratio=0.4)
    torch.manual_seed(5)
    images = stacked()
    inputs = loss.make_inputs(images, torch.zeros(2))
    mask = inputs.student.mask  # [B, N]
    assert mask.shape == (2, 16) and 0 < mask.float().mean() < 1
    enc, frames = student.model, images[:, :3]
    with torch.no_grad():
        own = enc.patch_embed(images[:, 3:])
        mixed = torch.where(mask.reshape(2, 4, 4, 1), teacher.model.patch_embed(frames), own) + enc.pos_embed
        for blk in enc.blocks[:2]:
            mixed = blk(mixed)
        torch.testing.assert_close(student.run(inputs.student, [Tap("block", 1)])[Tap("block", 1)],
                                   mixed.flatten(1, 2))
    assert loss.make_inputs(images, torch.zeros(2)).student.mask is not None
    off, _, _ = ready(student, teacher, init_from_teacher=False)
    assert off.make_inputs(images, torch.zeros(2)).student.mask is None  # released default: no mixing
    sum(step(loss, student, teacher, images).values()).backward()  # the teacher's tokens carry no gradient
    assert all(p.grad is None for p in teacher.parameters())


def test_identical_inputs_and_weights_give_zero_loss():
    student, teacher = models(event_channels=3)
    loss, _, _ = ready(student, teacher, event_channels=3)  # init_from_teacher: an exact copy
    same = stacked(channels=3)
    terms = step(loss, student, teacher, torch.cat([same, same], dim=1))
    assert all(term.abs().item() < 1e-6 for term in terms.values())


def test_make_inputs_splits_frame_and_events_and_pads():
    loss, _, _ = ready()
    images = stacked(size=48)
    inputs = loss.make_inputs(images, torch.zeros(2))
    assert inputs.teacher.images.shape == (2, 3, 64, 64) and inputs.student.images.shape == (2, 2, 64, 64)
    torch.testing.assert_close(inputs.teacher.images[..., :48, :48], images[:, :3])
    torch.testing.assert_close(inputs.student.images[..., :48, :48], images[:, 3:])
    assert inputs.student.images[..., 48:, :].abs().sum() == 0 and inputs.teacher.images[..., :, 48:].abs().sum() == 0
    with pytest.raises(BenchbaseError, match="4 channels but frame_channels \\+ event_channels = 5"):
        loss.make_inputs(stacked(channels=4), torch.zeros(2))


# ------------------------------------------------------------------------------ student set-up


def names_with_grad(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


MLP = ("mlp.lin1.weight", "mlp.lin1.bias", "mlp.lin2.weight", "mlp.lin2.bias")
PATCH = {"patch_embed.proj.weight", "patch_embed.proj.bias"}


@pytest.mark.parametrize(("mode", "expected"), [
    ("released_code", PATCH | {f"blocks.{b}.{m}" for b in BLOCKS for m in MLP}),
    ("paper_figure", PATCH | {f"blocks.{b}.{m}" for b in range(4) for m in MLP}),
    ("all", None),
])
def test_trainable_parameter_sets(mode, expected):
    _, student, teacher = ready(trainable=mode)
    if expected is None:
        expected = {name for name, _ in student.model.named_parameters()}
    assert names_with_grad(student.model) == expected
    assert not names_with_grad(teacher.model)


@pytest.mark.parametrize("importance", ["released_code", "paper"])
def test_backward_reaches_only_trainable_student_parameters(importance):
    loss, student, teacher = ready(importance=importance)
    sum(step(loss, student, teacher).values()).backward()
    with_grad = {name for name, p in student.model.named_parameters() if p.grad is not None}
    assert with_grad == names_with_grad(student.model)
    assert all(student.model.get_parameter(name).grad.abs().sum() > 0 for name in with_grad)
    assert all(p.grad is None for p in teacher.parameters())
    assert not list(loss.parameters()) and not loss.state_dict()  # the teacher's modules are not the loss's


def test_init_copies_teacher_and_adapts_a_different_patch_embedding():
    student, teacher = models(event_channels=2)
    own_patch = student.model.patch_embed.proj.weight.clone()
    ready(student, teacher)
    for key, value in teacher.model.state_dict().items():
        if key.startswith("patch_embed."):
            continue
        torch.testing.assert_close(student.model.state_dict()[key], value, msg=key)
    frame_filters = teacher.model.patch_embed.proj.weight  # [D, 3, p, p]: the frame's 3 channels
    adapted = student.model.patch_embed.proj.weight  # [D, 2, p, p]: each event channel gets half the sum
    torch.testing.assert_close(adapted, frame_filters.sum(dim=1, keepdim=True).repeat(1, 2, 1, 1) / 2)
    assert not torch.equal(adapted, own_patch)
    torch.testing.assert_close(student.model.patch_embed.proj.bias, teacher.model.patch_embed.proj.bias)
    grey = torch.rand(1, 1, 16, 16)  # the same response to a grey image, fed as 3 or as 2 equal channels
    torch.testing.assert_close(student.model.patch_embed(grey.repeat(1, 2, 1, 1)),
                               teacher.model.patch_embed(grey.repeat(1, 3, 1, 1)))
    same, teacher = models(event_channels=3)
    ready(same, teacher, event_channels=3)
    torch.testing.assert_close(same.model.patch_embed.proj.weight, teacher.model.patch_embed.proj.weight)
    untouched, teacher = models(event_channels=3)
    before = untouched.model.blocks[0].mlp.lin1.weight.clone()
    ready(untouched, teacher, event_channels=3, init_from_teacher=False)
    torch.testing.assert_close(untouched.model.blocks[0].mlp.lin1.weight, before)


def test_setup_errors():
    with pytest.raises(BenchbaseError, match="init_from_teacher needs"):
        ready(*models(window_size=2))
    with pytest.raises(BenchbaseError, match="student takes 2-channel images but event_channels=3"):
        ready(*models(event_channels=2), event_channels=3)
    with pytest.raises(BenchbaseError, match="token grid/width"):
        ready(*models(embed_dim=48))
    with pytest.raises(BenchbaseError, match="distinct blocks"):
        ready(distilled_blocks=[1, 4], layer_weights=[1.0, 1.0])
    with pytest.raises(BenchbaseError, match="SAM image encoders"):
        ready(Student(torch.nn.Identity()), Teacher(torch.nn.Linear(1, 1)))
    with pytest.raises(BenchbaseError, match="one layer weight"):
        ready(distilled_blocks=None, layer_weights=[1.0, 0.5, 0.2])  # checked against the derived blocks
    for params, pattern in (({"distilled_blocks": [1, 2], "layer_weights": [1.0]}, "one layer weight"), ({"beta": 1.5}, "beta"),
                            ({"importance": "rollout"}, "importance"), ({"trainable": "mlp"}, "trainable"),
                            ({"distance": "cos"}, "distance"), ({"mix_ratio": 1.0}, "mix_ratio")):
        with pytest.raises(BenchbaseError, match=pattern):
            EventSAMLoss(**params)


def test_negative_block_indices_count_from_the_end():
    loss, _, _ = ready(distilled_blocks=[-3, -1], layer_weights=[1.0, 1.0])
    assert loss.blocks == [1, 3] and loss.student_taps == (Tap("block", 1), Tap("block", 3))


def test_yaml_params_match_constructor_and_entry_point():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "eventsam.yaml"))
    signature = inspect.signature(EventSAMLoss.__init__).parameters
    assert cfg["name"] == EventSAMLoss.name == "eventsam"
    assert set(cfg["params"]) == set(signature) - {"self"}
    for key, value in cfg["params"].items():
        assert value == signature[key].default and type(value) is type(signature[key].default), key
    assert any(ep.value == "benchbase_plugins.eventsam" for ep in entry_points(group="benchbase"))
    assert cfg["trainer"] == {"batch_size": 16, "lr": 2e-4, "weight_decay": 0.0, "warmup_epochs": 0, "clip_grad": None,
                              "schedule": "exponential", "gamma": 0.9, "gamma_every": 18}  # the released trainer



def test_default_blocks_follow_the_released_pattern_scaled_to_the_depth():
    loss, _, _ = ready(distilled_blocks=None, layer_weights=None)
    assert loss.blocks == [0, 1, 2, 3]  # 4 blocks: every one, so importance reaches three non-final blocks
    assert loss.layer_weights == pytest.approx([0.1, 0.4, 0.7, 1.0])  # the released weights
    assert released_blocks(12) == [2, 5, 8, 11] and released_blocks(24) == [5, 11, 17, 23]
    assert released_blocks(6) == [0, 2, 3, 5] and released_blocks(2) == [0, 1]


@pytest.mark.parametrize("importance", ["released_code", "paper", "uniform"])
def test_the_spread_of_the_importance_weights_is_reported_after_training(importance):
    """``training_summary``: per distilled block, the coefficient of variation of the token weights
    over an image's tokens and the weighted distance against the uniformly weighted one, averaged
    over the images and steps seen in training (none outside it)."""
    loss, student, teacher = ready(importance=importance)
    assert loss.training_summary() == []
    inputs = loss.make_inputs(stacked(), torch.zeros(2))
    t_caps = teacher.run(inputs.teacher, loss.teacher_taps)
    for _ in range(2):
        loss(student.run(inputs.student, loss.student_taps), t_caps, inputs)
    loss.eval()
    loss(student.run(inputs.student, loss.student_taps), t_caps, inputs)  # not a training step: not counted
    summary = {m.name: m for m in loss.training_summary()}
    assert list(summary) == [f"{kind}_block{b}" for b in BLOCKS for kind in ("importance_cv", "weighting_effect")]
    assert all(m.n == 2 for m in summary.values())
    weights = loss.token_weights(t_caps)
    s_caps = student.run(inputs.student, loss.student_taps)
    for block in BLOCKS:
        flat = weights[block].flatten(1)
        expected = 100 * (flat.std(dim=1, unbiased=False) / flat.mean(dim=1)).mean()
        assert summary[f"importance_cv_block{block}"].value == pytest.approx(float(expected), rel=1e-5)
        s, t = s_caps[Tap("block", block)], t_caps[Tap("block", block)]
        effect = 100 * ((weights[block][..., None] * (s - t)).abs().mean() / (s - t).abs().mean() - 1).detach()  # l1
        assert summary[f"weighting_effect_block{block}"].value == pytest.approx(float(effect), rel=1e-4, abs=1e-4)
    assert summary["importance_cv_block3"].value == 0.0  # the last block is weighted 1 everywhere
    assert summary["weighting_effect_block3"].value == pytest.approx(0.0, abs=1e-4)
    if importance == "uniform":
        assert all(m.value == pytest.approx(0.0, abs=1e-4) for m in summary.values())
    else:
        assert summary["importance_cv_block0"].value > 1.0 and summary["weighting_effect_block0"].value != 0.0


def test_the_spread_metrics_share_one_column_across_rows():
    """The summary's protocol texts name no option of the row (importance, beta, distance, steps):
    rows of an ablation that differ in those options share the `train/...` columns."""
    protocols = []
    for params, steps in (({}, 1), ({"importance": "released_code", "beta": 0.25, "distance": "mse"}, 2)):
        loss, student, teacher = ready(**params)
        inputs = loss.make_inputs(stacked(), torch.zeros(2))
        t_caps = teacher.run(inputs.teacher, loss.teacher_taps)
        for _ in range(steps):
            loss(student.run(inputs.student, loss.student_taps), t_caps, inputs)
        protocols.append({m.name: m.protocol for m in loss.training_summary()})
    assert protocols[0] == protocols[1] and len(protocols[0]) == 2 * len(BLOCKS)
