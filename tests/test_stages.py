"""Method stages: cached chains of runs (SMKD's phases, TinyMIM's sequential distillation)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchbase.cli import main
from benchbase.components import Student
from benchbase.config import TrainerConfig, compose_config
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import CHECKPOINT, train
from benchbase.errors import BenchbaseError
from benchbase.results import ResultsDB
from benchbase_plugins.mae import MAELoss
from conftest import tiny_vit
from test_run import tiny


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# The stage tests run without the suite's reference row: method.* overrides (the stages) never
# reach it (suite.method_cfg), so it only adds a training and an evaluation.


def _run_dir(home, method):
    (folder,) = (home / "runs" / "digits").glob(f"{method}-seed0-*")
    return folder


def test_init_stage_hands_its_student_to_the_final_run_and_is_cached(tmp_path):
    # another loss's stage gets only its own params: without them, MAE's constructor defaults (the
    # paper's 8-block, 512-wide decoder) were two thirds of this test's time
    stage = ("method.stages=[{name:pre,method:mae,then:init,trainer:{epochs:1},"
             "params:{decoder_depth:1,decoder_width:16,decoder_heads:2}}]")
    # the final run trains no step, so its exported student is exactly the stage's
    assert main(["run", "--methods", "feature", *tiny(tmp_path, stage, "trainer.epochs=0", "suite.references=[]")]) == 0
    (stage_dir,) = (tmp_path / "stages").glob("*/")
    assert (stage_dir / "stage.json").exists() and (stage_dir / "steps.jsonl").read_text().count("\n") > 0
    final = _state(_run_dir(tmp_path, "feature") / "student.pt")["model"]
    staged = _state(stage_dir / "student.pt")["model"]
    assert final.keys() == staged.keys() and all(torch.equal(final[k], staged[k]) for k in final)
    record = next(r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "feature")
    assert record.status == "done" and record.config["method"]["stages"][0]["method"] == "mae"

    # another final setting reuses the stage instead of training it again
    log = (stage_dir / "steps.jsonl").read_text()
    assert main(["run", "--methods", "feature", *tiny(tmp_path, stage, "trainer.epochs=0",
                                                     "suite.references=[]", "method.params.beta=1.0")]) == 0
    assert list((tmp_path / "stages").glob("*/")) == [stage_dir] and (stage_dir / "steps.jsonl").read_text() == log


def test_continue_stage_hands_over_the_loss_state(tmp_path):
    stage = "method.stages=[{name:phase1,then:continue,trainer:{epochs:1}}]"
    assert main(["run", "--methods", "mae", *tiny(tmp_path, stage, "suite.references=[]")]) == 0
    (stage_dir,) = (tmp_path / "stages").glob("*/")
    handed = _state(stage_dir / "loss.pt")
    assert handed and handed.keys() == _state(_run_dir(tmp_path, "mae") / CHECKPOINT)["loss"].keys()


def test_train_starts_the_loss_from_a_handed_state_unless_resuming(tmp_path):
    data = load_digits_bundle().split("base_train")
    config = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 1, "batch_size": 64, "progress": False})
    donor = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2)
    train(Student(tiny_vit()), None, donor, data, config, tmp_path / "donor", seed=0)
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    fresh = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2)
    train(Student(tiny_vit()), None, fresh, data, OmegaConf.merge(config, {"epochs": 0}),
          tmp_path / "handed", seed=0, loss_state=state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    # resuming: the run's own checkpoint wins over the handed state
    resumed = MAELoss(decoder_depth=1, decoder_width=16, decoder_heads=2)
    train(Student(tiny_vit()), None, resumed, data, config, tmp_path / "donor", seed=0,
          loss_state={k: torch.zeros_like(v) for k, v in state.items()})
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in state.items())


def test_teach_stage_student_becomes_the_next_teacher(tmp_path):
    # a narrower intermediate student (B -> S), then the final student distils from it (S -> T)
    stage = "method.stages=[{name:S,then:teach,student:{embed_dim:32,num_heads:2},trainer:{epochs:1}}]"
    assert main(["run", "--methods", "feature", *tiny(tmp_path, stage, "suite.references=[]")]) == 0
    ckpt = _state(_run_dir(tmp_path, "feature") / CHECKPOINT)
    # feature distillation projects the student (64) onto its teacher's width: 32, the stage's student
    assert tuple(ckpt["loss"]["proj.weight"].shape) == (32, 64)


@pytest.mark.parametrize("stage, message", [
    ("method.stages=[{name:x,then:later}]", "then='later'"),
    ("method.stages=[{name:x,trainer:{epochz:1}}]", "method.stages[0] (x)"),
    # a stage of zero epochs would hand over its untrained start: phase 2 of zero epochs must not
    # silently zero a phase 1 whose length follows the run's
    ("method.stages=[{name:x,trainer:{epochs:0}}]", "method.stages.0.trainer.epochs=N"),
])
def test_bad_stage_is_a_one_line_error(tmp_path, capsys, stage, message):
    assert main(["run", "--methods", "feature", *tiny(tmp_path, stage)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "stages").exists()


def test_stages_compose_from_yaml_defaults():
    cfg = compose_config(["method=supervised", "method.stages=[{name:a,params:{x:1}}]"])
    assert cfg.method.stages[0].then == "continue" and cfg.method.stages[0].params == {"x": 1}


def _phase1_epochs(*overrides: str) -> int:
    from benchbase.methods import Methods
    from benchbase.plugin_manager import load
    from benchbase.stages import plan

    cfg = compose_config(["method=smkd", *overrides], load().config_dirs())
    (phase1,) = plan(Methods(load(), []), cfg, 0)
    return phase1.cfg.trainer.epochs


def test_smkd_phase1_follows_the_run_epochs_unless_the_stage_sets_its_own():
    assert _phase1_epochs("suite=digits") == 30  # the default trainer's
    assert _phase1_epochs("trainer.epochs=7") == 7  # `${trainer.epochs}` resolves to the run's, not to itself
    assert _phase1_epochs("suite=cifar") == 2
    assert _phase1_epochs("trainer.epochs=0", "method.stages.0.trainer.epochs=20") == 20
    with pytest.raises(BenchbaseError, match=r"stages\[0\] \(phase1\) trains 0 epochs"):
        _phase1_epochs("trainer.epochs=0")  # "phase 2 of zero epochs" needs phase 1's own length


def test_tinymim_sequential_chain_distils_through_a_head_aligned_intermediate(tmp_path):
    # B (4 heads) -> S (2 heads; its last block aligned to B's 4) -> T: S loads back with its heads
    stage = "method.stages=[{name:S,then:teach,student:{embed_dim:32,num_heads:2},trainer:{epochs:1}}]"
    assert main(["run", "--methods", "tinymim", *tiny(tmp_path, stage, "suite.references=[]")]) == 0
    (stage_dir,) = (tmp_path / "stages").glob("*/")
    assert _state(stage_dir / "student.pt")["block_heads"] == [2, 2, 2, 4]
    record = next(r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "tinymim")
    assert record.status == "done", record.error
