"""Named suites compose, and the omniglot and cifar suites run end to end on the real shared data (tiny settings)."""

from __future__ import annotations

import pytest
import timm
import torch

from benchbase.cli import main
from benchbase.config import compose_config
from benchbase.methods import Methods
from benchbase.plugin_manager import load
from benchbase.results import ResultsDB
from benchbase.stages import plan

from conftest import DATA


@pytest.mark.parametrize("suite, student, distill", [
    ("digits", "vit_tiny_patch16_224", "digits"),
    ("glyphs", "vit_tiny_patch16_224", "glyphs"),
    ("omniglot", "vit_tiny_patch16_224", "omniglot"),
    ("cifar", "vit_tiny_patch16_224", "cifar10"),
    ("cifar-val", "vit_tiny_patch16_224", "cifar10"),
    ("imagenet", "vit_small_patch16_224", "imagenet"),
    ("ade20k", "vit_small_patch16_224", "imagenet"),
    ("miniimagenet", "vit_small_patch16_224", "miniimagenet"),
    ("tieredimagenet", "vit_small_patch16_224", "tieredimagenet"),
    ("cifarfs", "vit_small_patch16_224", "cifarfs"),
    ("fc100", "vit_small_patch16_224", "fc100"),
    ("imagefolder", "vit_tiny_patch16_224", "imagefolder"),
    ("eventsam", "tiny", "digit_scene_events"),
])
def test_suites_compose_with_their_models(suite, student, distill):
    cfg = compose_config([f"suite={suite}"], load().config_dirs())
    assert cfg.suite.name == suite and cfg.student.model == student and cfg.suite.distill.dataset == distill
    assert compose_config([f"suite={suite}", "student=vit_tiny"]).student.drop_path == 0.1  # the command line wins


def vit_width_and_heads(model_cfg) -> tuple[int, int]:
    """A ViT config's width and head count: its own fields, else its timm model's (built on the meta device)."""
    if model_cfg.get("embed_dim") and model_cfg.get("num_heads"):
        return model_cfg.embed_dim, model_cfg.num_heads
    with torch.device("meta"):
        model = timm.create_model(model_cfg.model, pretrained=False)
    return model.embed_dim, model.blocks[-1].attn.num_heads


@pytest.mark.parametrize("suite", ["digits", "glyphs", "omniglot", "omniglot-val", "cifar", "imagefolder",
                                   "imagenet", "ade20k", "miniimagenet", "tieredimagenet", "cifarfs", "fc100"])
def test_tinymim_can_align_every_vit_suites_student_to_its_teacher_heads(suite):
    # TinyMIM splits the student's last block into the teacher's heads: the suite's student width
    # must divide by the teacher's head count, or its TinyMIM rows fail at setup
    cfg = compose_config([f"suite={suite}"], load().config_dirs())
    (width, _), (_, heads) = vit_width_and_heads(cfg.student), vit_width_and_heads(cfg.teacher)
    assert width % heads == 0, f"{suite}: student width {width}, teacher heads {heads}"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared test data folder {DATA} is absent")
def test_omniglot_suite_is_smkds_experiment_in_miniature():
    """Distil on the base alphabets' characters x 4 quarter turns; 5- and 20-way, 1- and 5-shot on the
    novel alphabets; the teacher trained by the issue's supervised ViT recipe; three seeds."""
    cfg = compose_config(["suite=omniglot"], load().config_dirs())
    data = cfg.data.omniglot
    assert data.image_size == 28 and data.params.rotations == 4
    assert set(data.params.base_alphabets).isdisjoint(data.params.novel_alphabets)
    assert (cfg.suite.distill.dataset, cfg.suite.distill.split) == ("omniglot", "base")
    episodes = {(t.params.ways, tuple(t.params.shots)) for t in cfg.suite.tasks.values() if t.evaluator == "fewshot"}
    assert episodes == {(5, (1, 5)), (20, (1, 5))}
    assert all(t.params.split == "novel" and t.params.queries == 15 for t in cfg.suite.tasks.values())
    assert list(cfg.suite.seeds) == [0, 1, 2]
    recipe = cfg.teacher.recipe
    assert (recipe.pretrain_method, recipe.finetune_epochs, recipe.batch_size) == ("none", 30, 32)
    assert recipe.finetune_params == {"label_smoothing": 0.1, "shift": 2}
    assert (cfg.teacher.embed_dim, cfg.teacher.depth, cfg.teacher.patch_size) == (96, 6, 4)
    assert cfg.student.embed_dim <= cfg.teacher.embed_dim and cfg.student.depth <= cfg.teacher.depth
    # the reference row trains with the teacher's recipe: a deviation may set a param its method file leaves out
    methods = Methods(load(), ["suite=omniglot"])
    reference = methods.config("supervised", "reference")
    assert methods.params(reference) == {"label_smoothing": 0.1, "shift": 2}
    assert (reference.trainer.epochs, reference.trainer.batch_size) == (recipe.finetune_epochs, recipe.batch_size)
    assert methods.params(methods.config("smkd"))["momentum_teacher"] == 0.996
    # the students' trainer: batch 32 (chosen on omniglot-val), which SMKD's deviation follows
    assert cfg.trainer.batch_size == 32 and methods.config("smkd").trainer.batch_size == 32


def test_the_omniglot_validation_split_holds_out_a_base_alphabet_and_never_a_test_one():
    """Recipes are chosen on suite=omniglot-val: its novel classes are one of the test suite's base
    alphabets, it distils on the other base alphabets, and no test alphabet is in either; everything
    else (tasks, teacher recipe, student, trainer) is the test suite's."""
    dirs = load().config_dirs()
    test, val = (compose_config([f"suite={name}"], dirs) for name in ("omniglot", "omniglot-val"))
    base, novel = set(test.data.omniglot.params.base_alphabets), set(test.data.omniglot.params.novel_alphabets)
    val_base, val_novel = set(val.data.omniglot.params.base_alphabets), set(val.data.omniglot.params.novel_alphabets)
    assert val_novel and val_base and val_novel < base and val_base | val_novel == base
    assert not (val_base | val_novel) & novel
    assert val.suite.name == "omniglot-val" and val.suite.tasks == test.suite.tasks
    assert (val.teacher, val.student, val.trainer) == (test.teacher, test.student, test.trainer)
    assert test.teacher.recipe.finetune_trainer == {"warmup_epochs": 9}  # the recipe chosen on it


FEWSHOT_SUITES = {  # suite: (source size, evaluation resize, evaluation crop), SMKD's released setting
    "miniimagenet": (480, 360, 320),
    "tieredimagenet": (480, 360, 320),
    "cifarfs": (84, 256, 224),
    "fc100": (84, 256, 224),
}


@pytest.mark.parametrize("suite", FEWSHOT_SUITES)
def test_fewshot_suites_run_smkd_in_its_setting_and_the_others_in_theirs(suite):
    """SMKD's full-scale suites: its sources, crops, evaluation view, head, EMA and trainer (both
    phases); the models read 224 px; the other methods keep their protocols over the suite's trainer."""
    source, resize, crop = FEWSHOT_SUITES[suite]
    methods = Methods(load(), [f"suite={suite}"])
    smkd = methods.config("smkd")
    data = smkd.data[suite]
    assert data.image_size == 224 and dict(data.params) == {"source_size": source, "eval_resize": resize,
                                                             "eval_crop": crop}
    params = methods.params(smkd)
    assert (params["global_crop_size"], params["local_crop_size"], params["local_crops"]) == (224, 96, 10)
    assert (params["head_hidden"], params["head_bottleneck"], params["head_out"]) == (2048, 256, 8192)
    assert params["momentum_teacher"] == 0.996
    trainer = smkd.trainer
    assert (trainer.lr, trainer.lr_scaling, trainer.min_lr, trainer.warmup_epochs) == (5e-4, "none", 1e-5, 10)
    assert (trainer.batch_size, list(trainer.betas)) == (512, [0.9, 0.999])  # 8 GPUs x 64, AdamW's own betas
    assert (trainer.weight_decay, trainer.weight_decay_end, trainer.clip_grad_mode) == (0.04, 0.4, "per_parameter")
    assert smkd.method.suite_values.trainer.lr == 1.5e-4  # the suite's (fullscale), which tables group rows by
    (phase1,) = plan(methods, smkd, 0)
    assert phase1.params["phase"] == "ssl" and phase1.params["head_out"] == 8192
    assert (phase1.cfg.trainer.lr, phase1.cfg.trainer.batch_size, phase1.cfg.trainer.warmup_epochs) == (5e-4, 512, 10)
    tinymim = methods.config("tinymim")  # its own protocol over the suite's trainer=fullscale
    assert (tinymim.trainer.lr, tinymim.trainer.lr_scaling, tinymim.trainer.batch_size) == (1.5e-4, "linear", 4096)
    assert list(tinymim.trainer.betas) == [0.9, 0.95] and "protocols" not in tinymim.method.suite_values
    assert methods.params(methods.config("smkd", "reference"))["head_out"] == 8192
    assert not smkd.suite.deviations  # nothing deviates from SMKD's setting to fit the machine
    # tieredImageNet's 206,209 test images as 320-px pixel features would not fit: its pixels floor is left out
    assert list(smkd.suite.floors) == (["random_init"] if suite == "tieredimagenet" else ["pixels", "random_init"])


def test_smkds_paper_protocol_is_its_method_file_and_small_suites_name_their_deviations():
    """SMKD's protocol lives in one place, its method file (the paper's head, EMA and trainer), which
    every suite uses unless it names a deviation: the small suites scale the head, set the EMA
    momentum for their steps per epoch and keep their own trainer (`suite`); the full-scale suites
    change nothing of SMKD's own (the few-shot ones fix its crop sizes: suite.protocols)."""
    for suite in ("digits", "glyphs", "omniglot", "cifar", "imagefolder"):
        methods = Methods(load(), [f"suite={suite}"])
        smkd, suite_trainer = methods.config("smkd"), compose_config([f"suite={suite}"]).trainer
        params = methods.params(smkd)
        assert (params["head_hidden"], params["head_bottleneck"], params["head_out"]) == (256, 64, 512), suite
        assert set(smkd.suite.deviations.smkd.trainer.values()) == {"suite"}, suite
        assert (smkd.trainer.lr, smkd.trainer.batch_size, smkd.trainer.warmup_epochs) == (
            suite_trainer.lr, suite_trainer.batch_size, suite_trainer.warmup_epochs), suite  # the suite's own
        assert smkd.trainer.weight_decay_end == 0.4 and smkd.trainer.clip_grad_mode == "per_parameter"  # SMKD's
        assert not any({"source_size", "eval_resize", "eval_crop"} & set(d.params) for d in smkd.data.values()), suite
    for suite in ("imagenet", "ade20k"):  # SMKD in its paper's protocol over the suite's data
        methods = Methods(load(), [f"suite={suite}"])
        smkd = methods.config("smkd")
        assert not smkd.suite.deviations and methods.params(smkd)["head_out"] == 8192
        assert (smkd.trainer.lr, smkd.trainer.batch_size, smkd.trainer.warmup_epochs) == (5e-4, 512, 10)
    momentum = {s: Methods(load(), [f"suite={s}"]).params(Methods(load(), [f"suite={s}"]).config("smkd"))[
        "momentum_teacher"] for s in ("digits", "glyphs", "omniglot")}
    assert momentum == {"digits": 0.967, "glyphs": 0.994, "omniglot": 0.996}  # ~3 epochs at each suite's steps


@pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared test data folder {DATA} is absent")
def test_omniglot_suite_runs_on_real_data(tmp_path):
    """The few-shot suite end to end on the real Omniglot zips (tiny models and epochs): its recipe
    teacher trains with labels on the base alphabets' turned characters, a student distils, and both
    are scored by 5- and 20-way episodes on the novel alphabets only."""
    tiny = [
        "suite=omniglot", "suite.seeds=[0]", "suite.references=[]", "suite.floors=[]", "trainer.epochs=1",
        "trainer.num_workers=0", "trainer.warmup_epochs=0", "trainer.progress=false",
        "teacher.recipe.finetune_epochs=1", "teacher.recipe.finetune_trainer.warmup_epochs=0",
        "student.embed_dim=24", "student.depth=1", "student.num_heads=2",
        "teacher.embed_dim=24", "teacher.depth=1", "teacher.num_heads=2",
        f"data.omniglot.root={DATA / 'omniglot'}",
        "suite.tasks.fewshot.params.episodes=50", "suite.tasks.fewshot20.params.episodes=20",
        f"home={tmp_path}", f"leaderboard_dir={tmp_path}/lb",
    ]
    assert main(["run", "--methods", "feature", *tiny]) == 0
    records = {r.role: r for r in ResultsDB(tmp_path / "results.db").records("omniglot")}
    assert records["method"].status == "done", records["method"].error
    for record in records.values():
        metrics = {(m.extras["task"], m.name): m for m in record.metrics}
        assert metrics[("fewshot", "5way-1shot")].n == 50 and metrics[("fewshot20", "20way-5shot")].n == 20
        assert 0 <= metrics[("fewshot20", "20way-1shot")].value <= 100
    assert "| feature" in (tmp_path / "leaderboards" / "omniglot.md").read_text()


def test_cifar_suite_is_tinymims_experiment_and_runs_on_real_data(tmp_path, cifar_root, camvid_few_root):
    """TinyMIM's experiment in miniature: an MAE-pretrained teacher (no fine-tuning stage) distilled on
    CIFAR-10's training images, every row scored by fine-tuned top-1 on the held-out images and
    fine-tuned CamVid mIoU, frozen probes as extra columns; cifar-val scores minival instead."""
    cfg = compose_config(["suite=cifar"], load().config_dirs())
    assert cfg.teacher.recipe.pretrain_method == "mae" and cfg.teacher.recipe.finetune_method == "none"
    assert {name: task.evaluator for name, task in cfg.suite.tasks.items()} == {
        "top1": "finetune", "segmentation": "segmentation", "top1_frozen": "linear_probe",
        "segmentation_frozen": "segmentation"}
    assert cfg.suite.tasks.top1.params.recipe == "mae" and cfg.suite.tasks.segmentation.params.head == "decoder"
    validation = compose_config(["suite=cifar-val"], load().config_dirs())
    assert validation.suite.tasks.top1.params.test_split == validation.suite.tasks.top1_frozen.params.test_split \
        == "minival" and validation.data.cifar10.params.minival_fraction == 0.125
    tiny = [
        "suite=cifar", "suite.seeds=[0]", "suite.floors=[]", "trainer.epochs=1", "trainer.num_workers=0",
        "trainer.progress=false",
        "teacher.recipe.pretrain_epochs=1", "teacher.embed_dim=32", "teacher.depth=2", "teacher.num_heads=2",
        "student.embed_dim=32", "student.depth=2", "student.num_heads=2",
        f"data.cifar10.root={cifar_root}", "+data.cifar10.params.max_per_class=20",
        f"data.camvid.root={camvid_few_root}", "data.camvid.image_size=32",
        "suite.tasks.top1.params.epochs=1", "suite.tasks.segmentation.params.epochs=1",
        "suite.tasks.segmentation_frozen.params.epochs=1",
        f"home={tmp_path}", f"leaderboard_dir={tmp_path}/lb",
    ]
    assert main(["run", "--methods", "tinymim", *tiny]) == 0
    records = {r.role: r for r in ResultsDB(tmp_path / "results.db").records("cifar")}
    assert records["method"].status == "done", records["method"].error
    assert records["teacher"].teacher.endswith("[recipe after mae pre-training only]")
    metrics = {(m.extras["task"], m.name): m for m in records["method"].metrics}
    assert metrics[("top1", "top1")].n == metrics[("top1_frozen", "top1")].n == 40  # 10 classes x 4 held out
    assert "RandAugment rand-m9-mstd0.5-inc1" in metrics[("top1", "top1")].protocol
    assert "fine-tuned decoder" in metrics[("segmentation", "mIoU")].protocol
    assert "linear probe" in metrics[("segmentation_frozen", "mIoU")].protocol
    assert "| tinymim" in (tmp_path / "leaderboards" / "cifar.md").read_text()


def test_eventsam_suite_runs_sam_on_frames_to_sam_on_events(tmp_path):
    tiny = [
        "suite=eventsam", "trainer.epochs=1", "teacher.recipe.finetune_epochs=1", "trainer.progress=false",
        "suite.tasks.segmentation.params.epochs=1", "+data.digit_scene_events.params.n_train=32",
        "+data.digit_scene_events.params.n_test=16", f"home={tmp_path}", f"leaderboard_dir={tmp_path}/lb",
        "suite.tasks.everything.params.points_per_side=4", "+suite.tasks.everything.params.max_images=4",
        "suite.floors=[]",  # the floors of this suite are tested in test_event_suites.py
    ]
    assert main(["run", *tiny]) == 0  # every method plugin: only eventsam fits SAM students, the rest skip
    records = {r.method: r for r in ResultsDB(tmp_path / "results.db").records("eventsam")}
    assert set(records) == {"teacher", "supervised_segmentation", "eventsam"}  # the from-scratch reference row
    assert records["eventsam"].status == "done", records["eventsam"].error
    names = {(m.extras["task"], m.name) for m in records["eventsam"].metrics}
    assert {("segmentation", n) for n in ("mIoU", "seg_mIoU", "seg_aIoU", "seg_precision", "seg_recall")} <= names
    assert {("everything", n) for n in ("mIoU", "aIoU", "precision", "recall")} <= names  # EventSAM's evaluation
    # the loss's training summary: the spread of the teacher's importance weights at each distilled block
    spread = {m.name: m for m in records["eventsam"].metrics if m.name.startswith(("importance_cv", "weighting_"))}
    assert set(spread) == {f"{kind}_block{b}" for b in range(4) for kind in ("importance_cv", "weighting_effect")}
    assert all(m.extras["task"] == "train" for m in spread.values()) and spread["importance_cv_block0"].value > 0
    assert records["eventsam"].config["student"]["input"] == "events"
    assert records["teacher"].config["teacher"]["input"] == "frame"
