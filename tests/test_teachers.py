"""Teachers: the cached recipe, a checkpoint path, a timm hub name without a network."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchbase.cli import main
from benchbase.capture import Tap
from benchbase.config import TeacherConfig, compose_config
from benchbase.data.digits import load_digits_bundle
from benchbase.errors import BenchbaseError
from benchbase.models import build_vit
from benchbase.plugin_manager import load
from benchbase.results import ResultsDB
from benchbase.suite import suite_context
from benchbase.components import Student
from benchbase.methods import Methods, recipe_identity, run_identity, teacher_stage
from benchbase.suite import teacher_name
from benchbase.teachers import PRETRAINED_FILE, TEACHER_FILE, frozen, load_teacher

from conftest import tiny_vit
from test_run import tiny


def test_recipe_teacher_is_trained_once_and_cached(tmp_path):
    assert main(["run", "--methods", "feature", *tiny(tmp_path, "suite.references=[]")]) == 0
    cached = list((tmp_path / "teachers").glob(f"*/{TEACHER_FILE}"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert main(["run", "--methods", "mae", *tiny(tmp_path, "suite.references=[]")]) == 0
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not retrained
    records = ResultsDB(tmp_path / "results.db").records()
    teacher_rows = [r for r in records if r.role == "teacher"]
    assert len(teacher_rows) == 1 and teacher_rows[0].status == "done"
    by_method = {r.method: r for r in records}
    assert by_method["mae"].teacher == "none"  # MAE distils from no teacher
    # feature distils the recipe's MAE-pretrained weights (method.teacher_stage=pretrain, TinyMIM's baselines)
    assert by_method["feature"].teacher.endswith("[recipe after mae pre-training only]")
    assert by_method["feature"].versions["teacher"] == teacher_rows[0].versions["teacher"] + "/pretrain"
    # a different recipe is a different teacher
    assert _key(_ctx(tmp_path)) != _key(_ctx(tmp_path, "teacher.recipe.pretrain_epochs=2"))


def _ctx(home, *overrides: str):
    return suite_context(load(), ["suite=digits", f"home={home}", *overrides])


def _key(ctx, **changed_params) -> str:
    """The recipe key of a suite, its recipe losses' params as their config files set them
    (``changed_params`` updated)."""
    def params(name):
        return {**recipe_params(name), **changed_params}

    methods = Methods(ctx.bb, ctx.overrides)
    recipe_params = methods.recipe_params
    methods.recipe_params = params
    return methods.recipe_key(ctx.cfg, ctx.dataset("digits"))


def _other(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return f"{value}-other"


def test_recipe_key_covers_every_param_of_the_recipe_losses_and_run_hashes_stay(tmp_path):
    ctx = _ctx(tmp_path)
    params = ctx.methods.recipe_params("mae")  # method/mae.yaml's, which the recipe pre-trains with
    assert {"mask_ratio", "decoder_depth", "decoder_width", "norm_pix_loss"} <= set(params)
    base = _key(ctx)
    keys = {name: _key(ctx, **{name: _other(value)}) for name, value in params.items()}
    assert base not in keys.values() and len(set(keys.values())) == len(keys)  # each param: its own key
    assert _key(_ctx(tmp_path, "trainer.precision=bf16")) != base  # every trainer setting the recipe trains with
    assert _key(_ctx(tmp_path, "trainer.progress=false", "trainer.num_workers=2")) == base  # not the run-only ones
    # the teacher as run hashes name it is what it was: stored runs keep their config hashes
    assert recipe_identity(compose_config(["suite=digits", "trainer.precision=bf16"])) == recipe_identity(ctx.cfg)
    assert ctx.teacher_source() == f"recipe:{base}"


def test_a_method_distils_the_recipe_teachers_pretrained_weights_when_it_asks(tmp_path):
    """``method.teacher_stage=pretrain``: the weights the recipe had after its pre-training stage
    (those its pre-training checkpoint holds), cached beside the fine-tuned teacher; its runs get
    their own hash; a recipe without pre-training teaches the fine-tuned one and says so."""
    assert main(["run", "--methods", "tinymim", *tiny(tmp_path, "suite.references=[]", "~suite.tasks.fewshot",
                                                       "~suite.tasks.segmentation")]) == 0
    folder = next((tmp_path / "teachers").glob(f"*/{PRETRAINED_FILE}")).parent
    pretrained = torch.load(folder / PRETRAINED_FILE, weights_only=True)["model"]
    stage = torch.load(folder / "pretrain" / "checkpoint.pt", weights_only=True)["student"]
    assert pretrained.keys() == {k.removeprefix("model.") for k in stage}
    for key, value in pretrained.items():
        torch.testing.assert_close(value, stage[f"model.{key}"])
    ctx = _ctx(tmp_path, *tiny(tmp_path))
    teacher = ctx.teacher("pretrain")
    torch.testing.assert_close(teacher.model.state_dict()["blocks.0.attn.qkv.weight"],
                               pretrained["blocks.0.attn.qkv.weight"])
    fine_tuned = ctx.teacher("finetune")  # the teacher row's, trained after the pre-training stage
    assert not torch.equal(fine_tuned.model.state_dict()["blocks.0.attn.qkv.weight"],
                           pretrained["blocks.0.attn.qkv.weight"])
    assert teacher.source == fine_tuned.source + "/pretrain"

    def identity(*overrides):
        cfg = ctx.methods.config("tinymim") if not overrides else Methods(ctx.bb, [*tiny(tmp_path), *overrides]).config("tinymim")
        return run_identity(cfg, "method", "tinymim", {}, 0)["teacher"]
    assert identity() == {"teacher": identity("method.teacher_stage=finetune"), "stage": "pretrain"}
    assert identity("method.teacher_stage=finetune") == recipe_identity(ctx.cfg)  # as runs were named before
    without = Methods(ctx.bb, [*tiny(tmp_path), "teacher.recipe.pretrain_method=none"]).config("tinymim")
    assert teacher_stage(without) == "finetune" and "no pre-training stage" in teacher_name(without)
    fresh = _ctx(tmp_path / "fresh", *tiny(tmp_path / "fresh"))
    fresh.teacher("pretrain")  # trains the recipe up to the stage asked for, no further
    assert [p.name for p in (tmp_path / "fresh" / "teachers").glob("*/teacher*.pt")] == [PRETRAINED_FILE]
    with pytest.raises(BenchbaseError, match="no pretrain stage .*set method.teacher_stage=finetune"):
        _ctx(tmp_path, *tiny(tmp_path), "teacher.recipe.pretrain_method=none").teacher("pretrain")
    with pytest.raises(BenchbaseError, match=r"^method.teacher_stage='first'; use finetune or pretrain$"):
        teacher_stage(Methods(ctx.bb, ["method.teacher_stage=first"]).config("tinymim"))


def test_teacher_from_a_checkpoint_path(tmp_path):
    bb = load()
    cfg = compose_config([*tiny(tmp_path), "teacher.source=checkpoint", f"teacher.checkpoint={tmp_path}/t.pt"],
                         bb.config_dirs())
    data = load_digits_bundle()
    torch.manual_seed(5)
    weights = build_vit(cfg.teacher, data)
    torch.save({"model": weights.state_dict()}, tmp_path / "t.pt")
    teacher = load_teacher(Methods(bb, []), cfg, data, tmp_path)
    for key, value in weights.state_dict().items():
        torch.testing.assert_close(teacher.model.state_dict()[key], value)
    assert teacher.source == f"{tmp_path}/t.pt" and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())


def test_timm_hub_teacher_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at import time, so patch it too
    bb = load()
    cfg = compose_config([*tiny(tmp_path), "teacher.source=timm", "teacher.model=vit_tiny_patch16_224.augreg_in21k"],
                         bb.config_dirs())
    with pytest.raises(BenchbaseError, match="could not load timm pretrained weights"):
        load_teacher(Methods(bb, []), cfg, load_digits_bundle(), tmp_path)


def test_sweep_runs_one_suite_per_value(tmp_path, capsys):
    assert main(["run", "-m", "--methods", "feature", *tiny(tmp_path, "suite.references=[]"),
                 "method.params.beta=1.0,2.0"]) == 0
    assert "sweep: 2 jobs" in capsys.readouterr().out
    betas = sorted(r.config["method"]["params"]["beta"] for r in ResultsDB(tmp_path / "results.db").records()
                   if r.method == "feature")
    assert betas == [1.0, 2.0]


def test_a_distilled_tinymim_student_teaches_the_next_run(tmp_path):
    first = [*tiny(tmp_path, "suite.references=[]"), "student.num_heads=2"]
    assert main(["run", "--methods", "tinymim", *first]) == 0
    checkpoint = next((tmp_path / "runs" / "digits").glob("tinymim-seed0-*/student.pt"))
    second = [*tiny(tmp_path, "suite.references=[]"), "teacher.source=checkpoint", f"teacher.checkpoint={checkpoint}",
              "teacher.embed_dim=64", "teacher.depth=4", "teacher.num_heads=2", "student.embed_dim=32",
              "student.depth=2", "student.num_heads=2"]
    assert main(["run", "--methods", "tinymim", *second]) == 0
    records = [r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "tinymim"]
    assert len(records) == 2 and all(r.status == "done" for r in records)
    chained = [r for r in records if r.config["teacher"]["source"] == "checkpoint"]
    assert len(chained) == 1 and chained[0].config["teacher"]["checkpoint"] == str(checkpoint)


def test_distill_drop_path_is_stochastic_only_while_teaching(images, tmp_path):
    data = load_digits_bundle()
    tcfg = OmegaConf.merge(OmegaConf.structured(TeacherConfig), {"distill_drop_path": 0.5})
    teacher = frozen(Student(tiny_vit(depth=4)), tcfg, "test")
    taps = [Tap("tokens")]
    plain = [teacher.run(images, taps)[Tap("tokens")] for _ in range(2)]
    torch.testing.assert_close(plain[0], plain[1], rtol=0, atol=0)  # deterministic outside teaching()
    with teacher.teaching():
        dropped = [teacher.run(images, taps)[Tap("tokens")] for _ in range(2)]
    assert not torch.equal(dropped[0], dropped[1])
    torch.testing.assert_close(teacher.run(images, taps)[Tap("tokens")], plain[0], rtol=0, atol=0)
    assert all(b.drop_path1.drop_prob == 0.5 for b in teacher.model.blocks)
    # a model trained with drop path (a stage's student) teaches deterministically unless asked
    trained_with_drop_path = build_vit(OmegaConf.merge(OmegaConf.structured(TeacherConfig),
                                                       {"embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": 4,
                                                        "drop_path": 0.3}), data)
    still = frozen(Student(trained_with_drop_path), OmegaConf.structured(TeacherConfig), "test")
    with still.teaching():
        again = [still.run(images, taps)[Tap("tokens")] for _ in range(2)]
    torch.testing.assert_close(again[0], again[1], rtol=0, atol=0)
    # how the teacher teaches is not part of which teacher the recipe trains
    assert _key(_ctx(tmp_path, "teacher.distill_drop_path=0.3")) == _key(_ctx(tmp_path))


def test_a_run_taught_with_teacher_drop_path_is_another_run(tmp_path):
    from benchbase.config import config_hash
    from benchbase.methods import run_identity as _identity

    def run_hash(*overrides):
        return config_hash(_identity(compose_config([f"home={tmp_path}", *overrides]), "method", "tinymim", {}, 0))

    # it was left out of recipe teachers' run hashes, so such a run reused the one taught without it
    assert run_hash("teacher.distill_drop_path=0.1") != run_hash() == run_hash("teacher.distill_drop_path=0.0")


def test_recipe_finetune_params_reach_its_fine_tuning_and_name_the_teacher_only_when_set():
    """``teacher.recipe.finetune_params`` (the Omniglot suite's label smoothing and shifts) build the
    recipe's fine-tuning method; left empty, the teacher is named as before the key existed."""
    default = compose_config(["suite=digits"])
    assert default.teacher.recipe.finetune_params == {}
    without = OmegaConf.create(OmegaConf.to_container(default))  # a config from before the key existed
    del without.teacher.recipe["finetune_params"]
    assert recipe_identity(without) == recipe_identity(default)  # stored runs keep their hashes
    smoothed = compose_config(["suite=digits", "+teacher.recipe.finetune_params.label_smoothing=0.1",
                               "+teacher.recipe.finetune_params.shift=2"])
    assert recipe_identity(smoothed) != recipe_identity(default)
    data = load_digits_bundle()
    plan = Methods(load(), []).recipe_plan(smoothed.teacher.recipe, data)
    assert plan[-1][:3] == ("finetune", "supervised", {"label_smoothing": 0.1, "shift": 2})
    assert Methods(load(), []).recipe_plan(default.teacher.recipe, data)[-1][2] == {}


def test_recipe_finetune_trainer_sets_the_fine_tuning_stages_trainer_and_names_the_teacher_only_when_set(tmp_path):
    """``teacher.recipe.finetune_trainer`` (the Omniglot suite's warm-up) is the fine-tuning stage's
    trainer over the suite's, in its plan and cache key; left empty, the teacher keeps its names."""
    default = compose_config(["suite=digits"])
    without = OmegaConf.create(OmegaConf.to_container(default))  # a config from before the key existed
    del without.teacher.recipe["finetune_trainer"]
    assert recipe_identity(without) == recipe_identity(default)
    warm = ["+teacher.recipe.finetune_trainer.warmup_epochs=9"]
    assert recipe_identity(compose_config(["suite=digits", *warm])) != recipe_identity(default)
    methods = Methods(load(), [])
    plan = methods.recipe_plan(compose_config(["suite=digits", *warm]).teacher.recipe, load_digits_bundle())
    assert plan[-1][0] == "finetune" and plan[-1][4] == {"warmup_epochs": 9}
    assert plan[0][4] == methods.recipe_trainer("mae")  # pre-training keeps its own protocol
    assert _key(_ctx(tmp_path, *warm)) != _key(_ctx(tmp_path))


def test_supervised_shift_translates_each_training_image_by_whole_pixels():
    from benchbase.core import Supervised, random_shifts
    torch.manual_seed(0)
    images = torch.randn(16, 1, 8, 8)
    assert torch.equal(random_shifts(images, 0), images)
    shifted = random_shifts(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    offsets = [[(y, x) for y in range(5) for x in range(5) if torch.equal(shifted[i], padded[i, :, y:y + 8, x:x + 8])]
               for i in range(16)]
    assert all(offsets) and len({o[0] for o in offsets}) > 1  # each a translation, not all the same
    labels = torch.arange(16)
    inputs = Supervised(label_smoothing=0.1, shift=2).make_inputs(images, labels)
    assert inputs.student.images.shape == images.shape and torch.equal(inputs.labels, labels)
    with pytest.raises(BenchbaseError, match="shift=-1"):
        Supervised(shift=-1)


def test_a_recipe_of_pretraining_only_is_the_pretrained_encoder_for_every_row(tmp_path):
    """``teacher.recipe.finetune_method=none`` (TinyMIM's MAE-pretrained teacher, suite=cifar): the
    recipe trains its pre-training stage only; that encoder is the teacher row's and every method's,
    whatever stage the method asks for, and the tables name it; nothing to train is a one-line error."""
    only = ("teacher.recipe.finetune_method=none", "suite.references=[]", "~suite.tasks.fewshot",
            "~suite.tasks.segmentation")
    assert main(["run", "--methods", "cls_token", *tiny(tmp_path, *only)]) == 0
    assert [p.name for p in (tmp_path / "teachers").glob("*/teacher*.pt")] == [PRETRAINED_FILE]
    assert not list((tmp_path / "teachers").glob("*/finetune"))  # no fine-tuning stage ran
    records = {r.role: r for r in ResultsDB(tmp_path / "results.db").records()}
    source = records["teacher"].versions["teacher"]
    assert source.endswith("/pretrain") and records["method"].versions["teacher"] == source
    assert records["method"].teacher.endswith("[recipe after mae pre-training only]")
    ctx = _ctx(tmp_path, *tiny(tmp_path, *only))
    torch.testing.assert_close(ctx.teacher("finetune").model.state_dict()["blocks.0.attn.qkv.weight"],
                               ctx.teacher("pretrain").model.state_dict()["blocks.0.attn.qkv.weight"])
    cfg = Methods(ctx.bb, [*tiny(tmp_path, *only), "method.teacher_stage=finetune"]).config("cls_token")
    assert teacher_stage(cfg) == "pretrain" and teacher_name(cfg).endswith("[recipe after mae pre-training only]")
    with pytest.raises(BenchbaseError, match="^teacher.recipe trains nothing"):
        _ctx(tmp_path, *tiny(tmp_path, *only), "teacher.recipe.pretrain_method=none").teacher()
