"""TinyMIM relation distillation against hand computations on small tensors and tiny timm ViTs."""

from __future__ import annotations

import inspect
import json
import math
from importlib.metadata import entry_points

import pytest
import timm
import torch
from omegaconf import OmegaConf

from benchbase.capture import Captures, ModelInput, Tap
from benchbase.cli import main
from benchbase.components import StepInputs, Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.results import ResultsDB
from benchbase_plugins import CONF_DIR
from benchbase_plugins.tinymim import TinyMIMLoss, jitter_colours, relation_kl, relation_logits
from benchbase_plugins.views import random_resized_crops


def vit(width: int, depth: int, heads: int, seed: int) -> torch.nn.Module:
    """A ViT on 1-channel 16x16 images: 16 patches of 4x4 plus a class token (T = 17), 5 classes."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=width, depth=depth,
        num_heads=heads, num_classes=5,
    )


@pytest.fixture
def models() -> tuple[Student, Teacher]:
    """Student: width 32, 2 blocks, 2 heads. Teacher: width 48, 4 blocks, 4 heads."""
    return Student(vit(32, 2, 2, seed=0)), Teacher(vit(48, 4, 4, seed=1))


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))


NO_INPUTS = StepInputs(student=ModelInput(None), teacher=None, labels=None)  # no patch dropping


def qkv_captures(block: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Captures:
    return Captures({Tap("q", block): q, Tap("k", block): k, Tap("v", block): v})


def hand_softmax_rows(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """softmax(a bᵀ / sqrt(d)) of one head, [T, d] x2 -> T rows of T probabilities, by loops."""
    d = a.shape[-1]
    rows = []
    for i in range(a.shape[0]):
        logits = [sum(a[i, c].item() * b[j, c].item() for c in range(d)) / math.sqrt(d)
                  for j in range(b.shape[0])]
        z = sum(math.exp(x) for x in logits)
        rows.append([math.exp(x) / z for x in logits])
    return rows


# ----------------------------------------------------------------------------------- relations


def test_relation_is_scaled_softmax_by_hand():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    rel = relation_logits(q, k).softmax(-1)
    for h in range(2):
        torch.testing.assert_close(rel[0, h], torch.tensor(hand_softmax_rows(q[0, h], k[0, h])))


def test_student_qk_relation_is_its_attention_map_over_all_tokens(models):
    student, _ = models
    caps = student.run(images(), (Tap("q", -1), Tap("k", -1), Tap("attn", -1)))
    rel = relation_logits(caps[Tap("q", -1)], caps[Tap("k", -1)]).softmax(-1)
    assert rel.shape == (3, 2, 17, 17)  # class token + 16 patches
    torch.testing.assert_close(rel, caps[Tap("attn", -1)])


def test_kl_terms_equal_hand_computation():
    torch.manual_seed(1)
    s = [torch.randn(2, 2, 3, 4) for _ in range(3)]  # student q, k, v: d_head 4
    t = [torch.randn(2, 2, 3, 6) for _ in range(3)]  # teacher q, k, v: d_head 6
    loss = TinyMIMLoss(relations=["qk", "vv", "qq", "kk"])
    terms = loss(qkv_captures(-1, *s), qkv_captures(-1, *t), NO_INPUTS)
    assert list(terms) == ["qk", "vv", "qq", "kk"]
    pairs = {"qk": (0, 1), "vv": (2, 2), "qq": (0, 0), "kk": (1, 1)}
    for name, (a, b) in pairs.items():
        total = 0.0
        for n in range(2):
            for h in range(2):
                p_s = hand_softmax_rows(s[a][n, h], s[b][n, h])
                p_t = hand_softmax_rows(t[a][n, h], t[b][n, h])
                total += sum(pt * math.log(pt / ps) for rs, rt in zip(p_s, p_t) for ps, pt in zip(rs, rt))
        assert terms[name].item() == pytest.approx(total / (2 * 2 * 3), rel=1e-5), name  # mean over B·H·T rows


def test_identical_relations_give_zero_and_different_ones_do_not():
    torch.manual_seed(2)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    same = relation_logits(q, k)
    assert relation_kl(same, same.clone()).abs().item() < 1e-6
    assert relation_kl(same, relation_logits(k, q)).item() > 1e-3


def test_no_softmax_ablation_is_mse_of_scaled_products():
    torch.manual_seed(3)
    s, t = [torch.randn(1, 2, 3, 4) for _ in range(3)], [torch.randn(1, 2, 3, 4) for _ in range(3)]
    terms = TinyMIMLoss(softmax=False)(qkv_captures(-1, *s), qkv_captures(-1, *t), NO_INPUTS)
    products = [x[0] @ x[1].transpose(-2, -1) / 2 for x in (s, t)]  # sqrt(d_head) = 2
    expected = (products[0] - products[1]).pow(2).mean()
    torch.testing.assert_close(terms["qk"], expected)


# ------------------------------------------------------------------------------- head alignment


def test_head_alignment_gives_last_block_teacher_heads_without_new_parameters(models):
    student, teacher = models
    before = {name: p.shape for name, p in student.named_parameters()}
    TinyMIMLoss().setup(student, teacher)
    attn = student.model.blocks[-1].attn
    assert (attn.num_heads, attn.head_dim, attn.scale) == (4, 8, 8**-0.5)
    assert student.model.blocks[0].attn.num_heads == 2
    assert {name: p.shape for name, p in student.named_parameters()} == before
    caps = student.run(images(), (Tap("q", -1), Tap("attn", -1), Tap("attn_out", -1), Tap("block", 0)))
    assert caps[Tap("q", -1)].shape == (3, 4, 17, 8)
    # the block's own (fused) forward uses the 4 heads: attention output recomputed by hand
    block = student.model.blocks[-1]
    x = block.norm1(caps[Tap("block", 0)])
    v = attn.qkv(x).reshape(3, 17, 3, 4, 8)[:, :, 2].transpose(1, 2)
    heads_out = (caps[Tap("attn", -1)] @ v).transpose(1, 2).reshape(3, 17, 32)
    torch.testing.assert_close(caps[Tap("attn_out", -1)], attn.proj(heads_out))


def test_the_scored_student_gets_its_own_head_count_back_unless_asked_to_keep_the_teachers(models):
    """export_heads="student": fine-tuning starts from a standard ViT, as the official code's; the weights stay."""
    student, teacher = models
    loss = TinyMIMLoss()
    loss.setup(student, teacher)
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    scored = loss.evaluation_model(student)
    assert [b.attn.num_heads for b in scored.model.blocks] == [2, 2]
    assert (scored.model.blocks[-1].attn.head_dim, scored.model.blocks[-1].attn.scale) == (16, 16**-0.5)
    assert all(torch.equal(v, scored.state_dict()[k]) for k, v in weights.items())
    kept, keeper = Student(vit(32, 2, 2, seed=0)), TinyMIMLoss(export_heads="teacher")
    keeper.setup(kept, teacher)
    assert [b.attn.num_heads for b in keeper.evaluation_model(kept).model.blocks] == [2, 4]
    with pytest.raises(BenchbaseError, match=r"^tinymim: export_heads='both'; use student or teacher$"):
        TinyMIMLoss(export_heads="both")


def test_head_alignment_errors(models):
    student, _ = models
    with pytest.raises(BenchbaseError, match="divisible"):
        TinyMIMLoss().setup(student, Teacher(vit(48, 2, 3, seed=1)))  # 32 channels into 3 heads
    with pytest.raises(BenchbaseError, match="head_alignment"):
        TinyMIMLoss(head_alignment=False).setup(student, Teacher(vit(48, 2, 4, seed=1)))
    TinyMIMLoss(head_alignment=False).setup(student, Teacher(vit(48, 2, 2, seed=1)))  # equal counts: fine
    with pytest.raises(BenchbaseError, match="out of range"):
        TinyMIMLoss(teacher_block=4).setup(student, Teacher(vit(48, 2, 2, seed=1)))
    with pytest.raises(BenchbaseError, match="relations"):
        TinyMIMLoss(relations=["qv"])


# (whole blocks run, qkv projections run): the target block runs only up to its q/k/v
@pytest.mark.parametrize("teacher_block, calls, qkv", [(-1, [1, 1, 1, 0], [1, 1, 1, 1]), (1, [1, 0, 0, 0], [1, 1, 0, 0])])
def test_teacher_stops_at_target_block(models, teacher_block, calls, qkv):
    student, teacher = models
    loss = TinyMIMLoss(teacher_block=teacher_block)
    loss.setup(student, teacher)
    counts, qkv_counts = [0] * 4, [0] * 4
    handles = [b.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, b in enumerate(teacher.model.blocks)]
    handles += [b.attn.qkv.register_forward_hook(lambda *_, i=i: qkv_counts.__setitem__(i, qkv_counts[i] + 1))
                for i, b in enumerate(teacher.model.blocks)]
    caps = teacher.run(loss.make_inputs(images(), torch.zeros(3)).teacher, loss.teacher_taps)
    for handle in handles:
        handle.remove()
    assert counts == calls and qkv_counts == qkv
    assert loss.student_taps == (Tap("k", -1), Tap("q", -1), Tap("v", -1))
    assert caps[Tap("q", teacher_block)].shape == (3, 4, 17, 12)


# ---------------------------------------------------------------------------------------- inputs


def test_both_models_see_one_shared_random_resized_crop(models):
    """The paper's augmentation: one RandomResizedCrop(0.2-1) + flip per image, the same for teacher and student."""
    loss = TinyMIMLoss(color_jitter=0.0)
    loss.setup(*models)
    x = images()
    torch.manual_seed(3)
    inputs = loss.make_inputs(x, torch.zeros(3))
    assert inputs.student.images is inputs.teacher.images and inputs.student.images.shape == x.shape
    assert not torch.allclose(inputs.student.images, x)
    torch.manual_seed(3)
    torch.testing.assert_close(random_resized_crops(x, (16, 16), (0.2, 1.0)), inputs.teacher.images)
    with pytest.raises(BenchbaseError, match=r"^tinymim: crop_scale must be \[low, high\]"):
        TinyMIMLoss(crop_scale=[0.0, 1.0])


def test_only_the_student_view_is_jittered(models):
    loss = TinyMIMLoss(color_jitter=0.0, crop_scale=None)
    loss.setup(*models)
    x = images()
    plain = loss.make_inputs(x, torch.zeros(3))
    assert plain.student.images is x and plain.teacher.images is x and plain.student.keep is None

    loss.color_jitter = 0.4
    torch.manual_seed(4)
    jittered = loss.make_inputs(x, torch.zeros(3))
    assert jittered.teacher.images is x and not torch.allclose(jittered.student.images, x)
    torch.manual_seed(4)
    torch.testing.assert_close(loss.make_inputs(x, torch.zeros(3)).student.images, jittered.student.images)


def test_jitter_by_hand_on_one_channel():
    x = images(2)
    torch.manual_seed(5)
    out = jitter_colours(x, 0.4)
    torch.manual_seed(5)
    b, c, _ = (0.6 + 0.8 * torch.rand(2, 1, 1, 1) for _ in range(3))  # saturation: no-op for 1 channel
    black = x.amin(dim=(1, 2, 3), keepdim=True)
    y = (x - black) * b + black
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (y - mean) * c + mean)


def test_masked_input_drops_patches_and_aligns_teacher_tokens(models):
    student, teacher = models
    loss = TinyMIMLoss(masked_input=True, mask_ratio=0.75, color_jitter=0.0)
    loss.setup(student, teacher)
    inputs = loss.make_inputs(images(), torch.zeros(3))
    keep = inputs.student.keep
    assert keep.shape == (3, 4) and inputs.teacher.keep is None
    assert student.run(inputs.student, loss.student_taps)[Tap("q", -1)].shape == (3, 4, 5, 8)
    # a student whose q/k/v equal the teacher's at [cls] + kept patches matches exactly: zero loss
    t_caps = teacher.run(inputs.teacher, loss.teacher_taps)
    index = torch.cat([torch.zeros(3, 1, dtype=torch.long), keep + 1], dim=1)
    s_caps = Captures({Tap(tap.kind, -1): torch.stack([t_caps[tap][n][:, index[n]] for n in range(3)])
                       for tap in loss.teacher_taps})
    terms = loss(s_caps, t_caps, inputs)
    assert all(term.abs().item() < 1e-6 for term in terms.values())


# ------------------------------------------------------------------- training step, registration


@pytest.mark.parametrize("params", [
    {}, {"relations": ["qq", "kk", "vv"], "teacher_block": 1}, {"softmax": False}, {"masked_input": True},
], ids=["default", "qq_kk_vv", "no_softmax", "masked"])
def test_forward_backward_reaches_student(models, params):
    student, teacher = models
    loss = TinyMIMLoss(**params)
    loss.setup(student, teacher)
    inputs = loss.make_inputs(images(4), torch.zeros(4))
    s_caps, t_caps = student.run(inputs.student, loss.student_taps), teacher.run(inputs.teacher, loss.teacher_taps)
    terms = loss(s_caps, t_caps, inputs)
    assert set(terms) == set(params.get("relations", ["qk", "vv"]))
    assert all(t.dim() == 0 and torch.isfinite(t) and t > 0 for t in terms.values())
    sum(terms.values()).backward()
    assert student.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert student.model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters()) and not list(loss.parameters())


def test_yaml_params_match_constructor_and_entry_point():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "tinymim.yaml"))
    signature = inspect.signature(TinyMIMLoss.__init__).parameters
    assert cfg["name"] == TinyMIMLoss.name == "tinymim"
    assert set(cfg["params"]) == set(signature) - {"self"}
    for key, value in cfg["params"].items():
        assert value == signature[key].default and type(value) is type(signature[key].default), key
    assert any(ep.value == "benchbase_plugins.tinymim" for ep in entry_points(group="benchbase"))


def test_cli_run_stores_a_done_record(tmp_path):
    assert main([
        "run", "--methods", "tinymim", "suite=digits", "trainer.epochs=1", "teacher.recipe.pretrain_method=none",
        "teacher.recipe.finetune_epochs=0", "suite.tasks.fewshot.params.episodes=50", "~suite.tasks.segmentation",
        "suite.references=[]",
        "trainer.progress=false", "student.num_heads=2",  # 64 channels: 2 heads, aligned to the teacher's 4
        f"home={tmp_path}", f"leaderboard_dir={tmp_path}/lb",
    ]) == 0
    record = next(r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "tinymim")
    assert record.status == "done" and record.config["method"]["params"]["relations"] == ["qk", "vv"]
    # the last block's output path never trains: frozen features are read before it (tests/test_untrained.py)
    top1 = next(m for m in record.metrics if m.name == "top1")
    assert top1.extras["read_point"].startswith("frozen features read after block 3 of 4")
    assert "frozen features" not in top1.protocol  # the column's protocol stays the one every row shares
    run_dir = next((tmp_path / "runs" / "digits").glob("tinymim-seed0-*"))
    assert json.loads((run_dir / "untrained.json").read_text()) == top1.extras["untrained"]
    assert "norm.weight" in top1.extras["untrained"]
    page = (tmp_path / "leaderboards" / "digits.md").read_text()
    assert "Read points (frozen-feature columns):\n- `tinymim`: frozen features read after block 3 of 4" in page
    assert page.count("| top1/top1") == 1  # one column for every row
    # benchbase eval of the stored run reads it where the run did, and reproduces its metric
    assert main(["eval", str(run_dir), "top1", f"home={tmp_path}"]) == 0
    (evaluated,) = [r for r in ResultsDB(tmp_path / "results.db").records() if r.role == "eval"]
    assert evaluated.metrics[0] == top1
