"""Every user error ends with one line naming the problem and the fix, exit status 2, nothing lost."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from benchbase.cli import main
from benchbase.errors import BenchbaseError
from benchbase.results import ResultsDB

from test_run import CHEAP, tiny


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *fragments):
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def image_folder(root, classes=("a", "b"), per_class=4, size=16):
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), color=(40 * i, 100 if cls == "a" else 200, 30)).save(folder / f"{i}.png")
    return root


FOLDER = ["suite=imagefolder", "student.embed_dim=32", "student.depth=2", "student.num_heads=2",
          "teacher.embed_dim=32", "teacher.depth=2", "teacher.num_heads=2", "data.imagefolder.image_size=16"]


def test_unknown_plugin(capsys):
    assert_one_line(*run_cli(capsys, "run", "--methods", "smkd_typo"), "unknown plugin 'smkd_typo'", "available:", "mae")


def test_unknown_key_group_option_and_wrong_type(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", "trainer.lrr=1"),
                    "unknown config key 'trainer.lrr'", "group 'trainer'")
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", "teacher=vit_gigantic"),
                    "unknown teacher option 'vit_gigantic'", "available:")
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", "trainer.batch_size=many"),
                    "wrong type", "trainer.batch_size")
    assert_one_line(*run_cli(capsys, "run", "--methods", "mae", f"home={tmp_path}", "method.params.mask_ration=0.5"),
                    "unknown config key 'method.params.mask_ration'", "mask_ratio")


def test_missing_dataset_path_and_path_that_is_a_file(capsys, tmp_path):
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", *FOLDER, f"data.imagefolder.root={tmp_path}/nope"),
                    f"{tmp_path}/nope does not exist")
    (tmp_path / "file.txt").write_text("x")
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", *FOLDER, f"data.imagefolder.root={tmp_path}/file.txt"),
                    "is a file, not a folder")
    assert_one_line(*run_cli(capsys, "run", f"home={tmp_path}", *FOLDER), "data.imagefolder.root=PATH")


def test_unreadable_image_names_the_file(capsys, tmp_path):
    root = image_folder(tmp_path / "data")
    bad = root / "train" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    code, err = run_cli(capsys, "run", "--methods", "feature", *tiny(tmp_path, fewshot=False), *FOLDER,
                        f"data.imagefolder.root={root}")
    assert_one_line(code, err, "cannot read image", str(bad), "on_corrupt=skip")


def test_checkpoint_of_another_architecture_names_keys(capsys, tmp_path):
    import timm

    other = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=48,
                              depth=2, num_heads=2, num_classes=5)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    code, err = run_cli(capsys, "run", "--methods", "feature", *tiny(tmp_path), "teacher.source=checkpoint",
                        f"teacher.checkpoint={tmp_path}/other.pt")
    assert_one_line(code, err, "does not fit this teacher's architecture", "shape mismatch",
                    "blocks.0.attn.proj.weight (48, 48) vs (128, 128)", "missing: blocks.2")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    code, err = run_cli(capsys, "run", "--methods", "feature", *tiny(tmp_path), "teacher.source=checkpoint",
                        f"teacher.checkpoint={tmp_path}/corrupt.pt")
    assert_one_line(code, err, "corrupt or not a torch checkpoint")


def test_too_small_dataset_for_protocol(capsys, tmp_path):
    """Found only when the evaluator sees the data: the rows fail with the one-line reason, exit 1."""
    code, _ = run_cli(capsys, "run", "--methods", "", *tiny(tmp_path, "~suite.tasks.segmentation"),
                      "suite.tasks.fewshot.params.ways=6")
    assert code == 1
    teacher = ResultsDB(tmp_path / "results.db").records()[0]
    assert teacher.status == "failed" and teacher.error.startswith("task fewshot: few-shot split 'novel' of dataset 'digits': 6-way")
    assert "\n" not in teacher.error and [m.name for m in teacher.metrics][:1] == ["top1"]


def test_nothing_stored_is_lost_by_a_failed_command(capsys, tmp_path):
    assert main(["run", "--methods", "feature", *tiny(tmp_path, "suite.references=[]", *CHEAP)]) == 0
    db = (tmp_path / "results.db").read_bytes()
    assert_one_line(*run_cli(capsys, "run", "--methods", "feature", *tiny(tmp_path), "trainer.epochs=x"), "wrong type")
    assert (tmp_path / "results.db").read_bytes() == db


def test_debug_shows_the_traceback(tmp_path):
    # --debug lets the error propagate (to Python's traceback printer; in-process: one start fewer)
    with pytest.raises(BenchbaseError, match="unknown plugin 'nope'"):
        main(["--debug", "run", "--methods", "nope"])
    # without it, the command line prints one line and exits 2
    out = subprocess.run([sys.executable, "-m", "benchbase", "run", "--methods", "nope"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
