"""A method's own protocol (method.trainer / method.student / teacher_stage), suite deviations, lr scaling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from benchbase.cli import main
from benchbase.config import suite_setting, trainer_identity
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import lr_at, peak_lr
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import method_protocols, setting_key
from benchbase.methods import Methods, run_identity
from benchbase.plugin_manager import load
from benchbase.results import ResultsDB, RunRecord

from test_run import instant


@pytest.fixture(scope="module")
def bb():
    return load()


def test_a_method_protocol_sets_its_runs_trainer_and_student_over_the_suites(bb):
    methods = Methods(bb, [])
    suite = methods.config("supervised", "reference")
    mae = methods.config("mae")
    assert list(mae.trainer.betas) == [0.9, 0.95] and mae.trainer.clip_grad is None  # MAE's AdamW, no clipping
    assert mae.student.drop_path == 0.0 and suite.student.drop_path == 0.1  # MAE pre-trains without drop path
    assert mae.method.suite_values == {"trainer": {"betas": [0.9, 0.999], "clip_grad": 3.0},
                                       "student": {"drop_path": 0.1, "params": {}}}
    assert mae.student.params.pos_embed == "sincos"  # MAE's fixed position table
    tinymim = methods.config("tinymim")
    assert (tinymim.student.drop_path, tinymim.student.drop_path_schedule) == (0.1, "constant")  # Table 13
    assert tinymim.student.params.pos_embed == "sincos"
    # the runs differ, so their hashes do; the suite's setting (what puts rows in one table) does not
    assert run_identity(mae, "method", "mae", {}, 0)["trainer"] != run_identity(suite, "method", "mae", {}, 0)["trainer"]
    resolved = OmegaConf.to_container(mae, resolve=True)
    assert suite_setting(resolved, "trainer") == OmegaConf.to_container(suite.trainer, resolve=True)
    assert suite_setting(resolved, "student") == OmegaConf.to_container(suite.student, resolve=True)
    # every method's `method.*` override changes its protocol setting too
    assert Methods(bb, ["method.trainer.clip_grad=1.0"]).config("mae").trainer.clip_grad == 1.0


def test_the_teacher_recipe_pretrains_with_its_methods_trainer_settings(bb):
    methods = Methods(bb, ["suite=digits"])  # the digits recipe pre-trains with MAE
    assert methods.recipe_trainer("mae") == {"betas": [0.9, 0.95], "clip_grad": None}  # not its lr or batch
    cfg = methods.config("supervised", "reference")
    data = load_digits_bundle()
    plan = methods.recipe_plan(cfg.teacher.recipe, data)
    assert [(stage, trainer) for stage, _, _, _, trainer in plan] == [
        ("pretrain", {"betas": [0.9, 0.95], "clip_grad": None}), ("finetune", {})]
    deviating = Methods(bb, ["suite=digits", "+suite.deviations.mae.trainer.clip_grad=2.0"])
    assert deviating.recipe_trainer("mae")["clip_grad"] == 2.0
    assert deviating.recipe_key(deviating.config("supervised", "reference"), data) != methods.recipe_key(cfg, data)


def test_suite_deviations_change_one_methods_protocol_and_are_named_on_the_page(tmp_path, bb):
    overrides = instant(tmp_path, "+suite.deviations.feature.trainer.clip_grad=1.5",
                        "suite.scaled=['digits at 16 px instead of ImageNet at 224 px','4 epochs instead of 300']",
                        "suite.unserved={top1: 'a teacher of 0 epochs scores as the floors do'}")
    assert Methods(bb, overrides).config("feature").trainer.clip_grad == 1.5
    assert Methods(bb, overrides).config("mae").trainer.clip_grad is None  # the other methods keep theirs
    assert main(["run", "--methods", "feature,mae", *overrides]) == 0
    page = next((tmp_path / "leaderboards").glob("digits.md")).read_text()
    assert "- `feature`: trainer.clip_grad=1.5" in page  # under "Suite deviations"
    assert "Suite deviations from the methods' protocols" in page
    scaled = "Scaled down from the papers' protocols to fit the machine (`suite.scaled`):\n"
    assert scaled + "- digits at 16 px instead of ImageNet at 224 px\n- 4 epochs instead of 300\n" in page
    unserved = "Tasks this suite's teacher cannot serve (`suite.unserved`: not 10 points above both floors"
    assert unserved in page and "- `top1`: a teacher of 0 epochs scores as the floors do\n" in page
    assert page.index(unserved) < page.index("| role")  # with the teacher-vs-floors lines, above the table
    assert "- `mae`: trainer.betas=[0.9, 0.95], trainer.clip_grad=None, student.drop_path=0.0" in page
    records = {r.method: r for r in ResultsDB(tmp_path / "results.db").records()}
    assert setting_key(records["feature"]) == setting_key(records["mae"]) == setting_key(records["teacher"])
    with pytest.raises(BenchbaseError, match=r"^method.trainer.betaz \(mae\): trainer has no key 'betaz'"):
        Methods(bb, ["+method.trainer.betaz=1"]).config("mae")
    with pytest.raises(BenchbaseError, match=r"^suite.deviations.mae: .*its keys are those of a method config"):
        Methods(bb, ["+suite.deviations.mae.speed=1"]).config("mae")


def test_the_suites_scaled_down_lines_are_not_part_of_a_runs_identity(bb):
    plain = Methods(bb, ["suite=digits"]).config("feature")
    scaled = Methods(bb, ["suite=digits", "suite.scaled=[fewer epochs]"]).config("feature")
    assert list(scaled.suite.scaled) == ["fewer epochs"]
    assert run_identity(plain, "method", "feature", {}, 0) == run_identity(scaled, "method", "feature", {}, 0)


def test_suite_protocols_set_a_methods_own_values_at_the_suites_scale_before_the_deviations(bb):
    overrides = ["suite=digits", "+suite.protocols.tinymim.params.teacher_block=-2",
                 "+suite.protocols.tinymim.trainer.lr=5e-4", "+suite.protocols.tinymim.trainer.warmup_epochs=10",
                 "+suite.deviations.tinymim.trainer.warmup_epochs=3", "+suite.deviations.tinymim.trainer.betas=suite"]
    methods = Methods(bb, overrides)
    cfg = methods.config("tinymim")
    assert methods.params(cfg)["teacher_block"] == -2 and cfg.trainer.lr == 5e-4  # keys its method file leaves out
    assert cfg.trainer.warmup_epochs == 3  # the deviation is merged last
    assert list(cfg.trainer.betas) == [0.9, 0.999]  # `suite`: the suite's own betas, not TinyMIM's 0.9 / 0.95
    assert cfg.method.suite_values.trainer.lr == 1e-3  # the suite's own, which tables group rows by
    assert methods.config("mae").trainer.lr == 1e-3  # the other methods keep theirs
    record = RunRecord("h", "digits", "tinymim", "none", "s", "digits", 0, "done", [],
                       OmegaConf.to_container(cfg, resolve=True))
    lines = method_protocols([record])
    heading = lines.index("The methods' protocols at this suite's scale (`suite.protocols`, over their method files):")
    assert lines[heading + 1] == "- `tinymim`: params.teacher_block=-2, trainer.lr=0.0005, trainer.warmup_epochs=10"
    assert "- `tinymim`: trainer.warmup_epochs=3, trainer.betas=suite" in lines[heading + 2:]  # under the deviations
    with pytest.raises(BenchbaseError, match=r"^suite.protocols.smkd: .*its keys are those of a method config"):
        Methods(bb, ["+suite.protocols.smkd.speed=1"]).config("smkd")


def test_linear_lr_scaling_is_maes_rule_and_leaves_stored_hashes_alone(tmp_path):
    assert peak_lr({"lr": 1.5e-4, "lr_scaling": "linear"}, 4096) == pytest.approx(2.4e-3)  # TinyMIM/MAE at 4096
    assert peak_lr({"lr": 1e-3, "lr_scaling": "none"}, 4096) == 1e-3
    with pytest.raises(BenchbaseError, match=r"^trainer.lr_scaling='sqrt'; use none or linear$"):
        peak_lr({"lr": 1e-3, "lr_scaling": "sqrt"}, 64)
    assert "lr_scaling" not in trainer_identity({"lr": 1e-3, "lr_scaling": "none"})  # runs stored before it
    assert trainer_identity({"lr": 1e-3, "lr_scaling": "linear"}) == {"lr": 1e-3, "lr_scaling": "linear"}
    # the optimiser's peak lr at the run's batch: base 0.0512 x 64 / 256 = 0.0128 after warm-up
    assert main(["run", "--methods", "feature", *instant(tmp_path, "trainer.epochs=1", "trainer.warmup_epochs=0",
                                                           "trainer.lr=0.0512", "trainer.lr_scaling=linear",
                                                           "trainer.min_lr=0.0128")]) == 0
    steps = (next((tmp_path / "runs" / "digits").glob("feature-seed0-*")) / "steps.jsonl").read_text().splitlines()
    assert all(math.isclose(json.loads(line)["lr"], 0.0128) for line in steps)


def test_smkds_trainer_schedules_weight_decay_and_clips_each_parameter(bb):
    from benchbase.engine import check_trainer, clip_gradients, weight_decay_at

    smkd = Methods(bb, []).config("smkd")
    assert (smkd.trainer.weight_decay, smkd.trainer.weight_decay_end) == (0.04, 0.4)
    assert smkd.trainer.clip_grad_mode == "per_parameter"
    # DINO's cosine_scheduler: start at step 0, the midpoint halfway, the end value at the last step
    assert weight_decay_at(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert weight_decay_at(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert weight_decay_at(100, 100, 0.04, 0.4) == pytest.approx(0.4)
    assert weight_decay_at(30, 100, 0.05, None) == 0.05
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])  # norms 5 and 0.5
    clip_gradients([a, b], 1.0, "per_parameter")
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0]) / (5 + 1e-6))  # scaled to norm 1 alone
    assert torch.equal(b.grad, torch.tensor([0.3, 0.4]))  # under the clip: left exactly as it was
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0, "global")  # one norm over both: sqrt(25 + 0.25)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]) / (25.25 ** 0.5 + 1e-6))
    with pytest.raises(BenchbaseError, match=r"^trainer.clip_grad_mode='each'; use global or per_parameter$"):
        check_trainer({"clip_grad_mode": "each"})
    assert "weight_decay_end" not in trainer_identity({"weight_decay_end": None, "clip_grad_mode": "global"})


def test_exponential_schedule_follows_the_released_eventsam_stepping():
    """EventSAM's train.py: Adam(lr=2e-4), ExponentialLR(gamma=0.9), scheduler.step() after every
    epoch with epoch % 3 == 0. The lr of each epoch's steps equals that loop's, warm-up aside."""
    from omegaconf import OmegaConf

    from benchbase.config import TrainerConfig
    from benchbase.engine import check_trainer, scheduled_lr

    cfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"schedule": "exponential", "gamma": 0.9, "gamma_every": 3})
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    steps_per_epoch = 4
    for epoch in range(8):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert scheduled_lr(cfg, step, 32, 0, 2e-4, steps_per_epoch) == pytest.approx(optimizer.param_groups[0]["lr"])
        if epoch % 3 == 0:
            optimizer.step()  # (no gradient: nothing moves; keeps torch's call-order check quiet)
            scheduler.step()
    assert scheduled_lr(cfg, 0, 32, 4, 2e-4, steps_per_epoch) == pytest.approx(0.5e-4)  # warm-up as in cosine
    cosine = OmegaConf.structured(TrainerConfig)
    assert scheduled_lr(cosine, 10, 32, 0, 2e-4, 4) == pytest.approx(lr_at(10, 32, 0, 2e-4, cosine.min_lr))
    with pytest.raises(BenchbaseError, match=r"^trainer.schedule='step'; use cosine or exponential$"):
        check_trainer({"schedule": "step"})
    assert not {"schedule", "gamma", "gamma_every"} & set(trainer_identity(dict(cosine)))  # hashes unchanged
