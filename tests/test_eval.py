"""``benchbase eval``: stored runs, checkpoints, timm and SAM weights, pixels, scored without training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

from benchbase.cli import main
from benchbase.results import ResultsDB
from benchbase.models_from import load_timm_weights
from benchbase.sam import build_sam_encoder

FEWSHOT_20 = "suite.tasks.fewshot.params.episodes=20"


def fast(home: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long digits suite: a 1-epoch recipe teacher, few-shot and top-1 only."""
    return ["suite=digits", "trainer.epochs=1", "teacher.recipe.pretrain_method=none",
            "teacher.recipe.finetune_epochs=1", "suite.references=[]", "~suite.tasks.segmentation", "suite.tasks.fewshot.params.episodes=50",
            "trainer.progress=false", f"home={home}", f"leaderboard_dir={home}/lb", *extra]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, Path]:
    """A stored tiny run of `feature`: (home, run folder)."""
    home = tmp_path_factory.mktemp("home")
    assert main(["run", "--methods", "feature", *fast(home)]) == 0
    return home, next((home / "runs" / "digits").glob("feature-seed0-*"))


def evals(home: Path) -> list:
    return [r for r in ResultsDB(home / "results.db").records() if r.role == "eval"]


def test_eval_of_a_stored_run_reproduces_its_metrics_and_reuses_its_record(stored, capsys):
    home, folder = stored
    [run] = [r for r in ResultsDB(home / "results.db").records() if r.method == "feature"]
    assert main(["eval", str(folder), f"home={home}"]) == 0
    [record] = evals(home)
    scored = [m for m in run.metrics if m.extras["task"] in ("top1", "fewshot")]
    assert len(scored) == 3 and record.metrics == scored  # values, CIs, protocols: identical
    assert record.role == "eval" and record.suite == "digits" and record.seed == 0
    assert record.teacher == run.teacher and record.student == run.student
    provenance = record.config["provenance"]
    assert provenance["kind"] == "run" and provenance["run"]["config_hash"] == run.config_hash
    assert provenance["weights"] == str(folder / "student.pt") and len(provenance["sha256"]) == 64
    assert record.config["row"] is False and "fewshot/5way-1shot" in capsys.readouterr().out
    # the same evaluation by config-hash prefix (or the run's student.pt) reuses the stored record
    assert main(["eval", run.config_hash[:8], f"home={home}"]) == 0
    assert main(["eval", str(folder / "student.pt"), "top1", "fewshot", f"home={home}"]) == 0
    assert "reusing the run stored" in capsys.readouterr().out and len(evals(home)) == 1
    # another seed draws other episodes; --row makes the record a row of the suite's table
    assert main(["eval", "--row", "--name", "feature-seed1", str(folder), "fewshot", "seed=1", f"home={home}"]) == 0
    other = next(r for r in evals(home) if r.seed == 1)
    assert [m.name for m in other.metrics] == ["5way-1shot", "5way-5shot"] and other.method == "feature-seed1"
    assert other.metrics[0].value != scored[1].value
    assert main(["leaderboard", "--db", str(home / "results.db"), "--out", str(home / "lb")]) == 0
    local = home / "leaderboards" / "digits.md"  # the local table (issue 21's publish model)
    rows = [line for line in local.read_text().splitlines() if line.startswith("| eval")]
    assert len(rows) == 1 and "feature-seed1" in rows[0]  # evaluated without --row: not a row


def test_eval_of_checkpoint_timm_and_sam_weights(stored, tmp_path, capsys):
    home, folder = stored
    # a student.pt copied elsewhere: a checkpoint, built with the student config (the digits suite's)
    copy = tmp_path / "student.pt"
    copy.write_bytes((folder / "student.pt").read_bytes())
    assert main(["eval", str(copy), "fewshot", "suite=digits", FEWSHOT_20, f"home={home}"]) == 0
    assert main(["eval", str(copy), "fewshot", "suite=digits", FEWSHOT_20, "student.embed_dim=32", f"home={home}"]) == 2
    assert "does not fit this vit model" in capsys.readouterr().err
    # timm's architecture with weights from a file (timm adapts them to 16 px and one channel)
    weights = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=10).state_dict(), weights)
    assert main(["eval", "--weights", str(weights), "timm:vit_tiny_patch16_224", "fewshot", FEWSHOT_20,
                 "suite=digits", "student.depth=2", f"home={home}"]) == 0
    # SAM's image encoder from a SAM checkpoint (image_encoder.* keys); SAM has no class token
    encoder = build_sam_encoder("tiny", img_size=16, in_chans=1, patch_size=4)
    torch.save({f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}, tmp_path / "sam.pth")
    assert main(["eval", "--weights", str(tmp_path / "sam.pth"), "sam:tiny", "fewshot", FEWSHOT_20,
                 "suite=digits", "student.patch_size=4", "+suite.tasks.fewshot.params.pooling=mean", f"home={home}"]) == 0
    kinds = {r.config["provenance"]["kind"]: r for r in evals(home)}
    assert {"checkpoint", "timm", "sam"} <= set(kinds)
    assert kinds["timm"].method == "timm:vit_tiny_patch16_224" and kinds["sam"].student.startswith("tiny")
    assert all(0 < m.value <= 100 for r in kinds.values() for m in r.metrics)


def test_timm_weights_are_loaded_and_adapted_like_timms_pretrained_weights(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=5, img_size=16, in_chans=1,
                              dynamic_img_size=True)
    load_timm_weights(model, tmp_path / "vit.pth")
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert torch.allclose(model.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    assert model.pos_embed.shape == (1, 2, 192)  # class token + one 16-pixel patch
    assert model.head.weight.shape == (5, 192)  # the 10-class classifier is left out


def test_eval_of_pixels_equals_the_suites_pixels_floor(stored):
    home, _ = stored
    [floor] = [r for r in ResultsDB(home / "results.db").records() if r.role == "floor" and r.method == "pixels"]
    assert main(["eval", "pixels", "suite=digits", *fast(home)[4:]]) == 0  # the run's suite, tasks and seed
    [record] = [r for r in evals(home) if r.config["provenance"] == {"kind": "pixels"}]
    assert record.metrics == floor.metrics and record.method == "pixels"


def test_inline_task(stored, capsys):
    home, folder = stored
    inline = ["suite.tasks.three.evaluator=fewshot", "suite.tasks.three.dataset=digits",
              "+suite.tasks.three.params.ways=3", "+suite.tasks.three.params.shots=[2]",
              "+suite.tasks.three.params.episodes=30"]
    assert main(["eval", str(folder), "three", *inline, f"home={home}"]) == 0
    [record] = [r for r in evals(home) if r.metrics and r.metrics[0].extras["task"] == "three"]
    assert [(m.name, m.n) for m in record.metrics] == [("3way-2shot", 30)]
    assert main(["eval", str(folder), "three", *inline, "+suite.tasks.three.params.within_group=true",
                 f"home={home}"]) == 2
    assert "within_group=true needs class groups, but split 'novel' of dataset 'digits'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["nowhere/model.pt"], "MODEL 'nowhere/model.pt' is not a file or folder here; MODEL is a run folder"),
    (["abcdef12"], "no stored run in .* with a config hash starting 'abcdef12'"),
    (["timm:vit_tiny_patch16_224"], "timm:vit_tiny_patch16_224 needs --weights FILE"),
    (["--weights", "w.pth", "sam:vit_b"], "--weights w.pth is not a file"),
    (["--weights", "w.pth", "pixels"], "the pixels model has no weights; drop --weights"),
    (["--weights", "{run}/student.pt", "timm:vit_tiny_patch16_224"],
     "checkpoint .*student.pt does not fit this timm VisionTransformer's architecture .*shape mismatch"),
    (["{run}", "nope"], "suite 'digits' has no task 'nope'; its tasks: top1, fewshot"),
    (["--weights", "{run}/student.pt", "{run}"], "--weights is for timm:NAME and sam:PRESET models"),
    (["{run}", "student=vit_tiny"], "brings its own architecture; drop the student=... override"),
    (["{home}"], "is not a benchbase run folder .no config.yaml, student.pt."),
])
def test_eval_errors_are_one_line(stored, capsys, args, message):
    home, folder = stored
    argv = [a.format(run=folder, home=home) for a in args]
    assert main(["eval", *argv, f"home={home}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(message, err), err
