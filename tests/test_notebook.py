"""The Python API: run a suite from Python (with loggers), load tidy results and the published tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import benchbase.notebook as bb
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import format_table
from benchbase.results import ResultsDB

from conftest import LEADERBOARDS


def quick(home: Path, *extra: str) -> list[str]:
    """A seconds-long digits suite: no pre-training, one epoch, the linear probe only, no extra rows."""
    return ["suite=digits", "trainer.epochs=1", "teacher.recipe.pretrain_method=none",
            "teacher.recipe.finetune_epochs=1", "~suite.tasks.fewshot", "~suite.tasks.segmentation", "suite.references=[]", "suite.floors=[]",
            "trainer.progress=false", f"home={home}", f"leaderboard_dir={home}/lb", *extra]


def test_run_one_method_from_python_with_loggers_then_load_its_results(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    board = bb.run(*quick(tmp_path, "logger=[tensorboard,mlflow]"), methods="feature")
    assert board.text in capsys.readouterr().out  # the table returned is the one printed
    assert board.frame["method"].tolist() == ["teacher", "feature"] and board.name == "digits"
    assert str(board) == format_table(board.frame) and "<table" in board._repr_html_()

    tidy = bb.results("digits", db=tmp_path / "results.db")
    assert {"role", "method", "seed", "shown", "key", "value", "ci95", "protocol"} <= set(tidy.columns)
    assert len(tidy) == sum(len(r.metrics) for r in board.records) and tidy.shown.all()  # one row per run x metric
    top1 = tidy[(tidy.method == "feature") & (tidy.key == "top1/top1")].iloc[0]
    assert top1.role == "method" and top1.seed == 0 and "linear probe" in top1.protocol
    assert top1.value == board.frame.loc[board.frame.method == "feature", "top1/top1"].item()
    assert bb.table("digits", db=tmp_path / "results.db").text == board.text
    assert not (tmp_path / "lb").exists()  # the committed folder changes only on publish

    # the loggers the config key named followed the method's run (not the teacher recipe's)
    (run_dir,) = (tmp_path / "runs" / "digits").glob("feature-seed0-*")
    assert (run_dir / "steps.jsonl").is_file() and any((run_dir / "tensorboard").iterdir())
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (tracked,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert tracked.info.run_name == "feature-seed0" and tracked.info.status == "FINISHED"
    assert tracked.data.metrics["eval/top1/top1"] == pytest.approx(top1.value)

    # the same call again reuses every stored run; publish=True merges them into the committed folder
    stored = len(ResultsDB(tmp_path / "results.db").records())
    assert bb.run(*quick(tmp_path), methods="feature", publish=True, echo=lambda line: None).text == board.text
    assert len(ResultsDB(tmp_path / "results.db").records()) == stored
    assert bb.table("digits", leaderboard_dir=tmp_path / "lb").text == board.text


def test_bad_overrides_and_names_are_the_command_lines_one_line_errors(tmp_path):
    with pytest.raises(BenchbaseError, match="^wrong type for config key 'trainer.epochs'"):
        bb.run(*quick(tmp_path, "trainer.epochs=many"), methods="feature")
    with pytest.raises(BenchbaseError, match="^unknown method 'nope'; available: .*feature"):
        bb.run(*quick(tmp_path), methods=["nope"])
    with pytest.raises(BenchbaseError, match="^unknown logger 'wandb'"):
        bb.run(*quick(tmp_path, "logger=[wandb]"), methods="feature")
    with pytest.raises(BenchbaseError, match="^no records of digits in "):
        bb.table("digits", leaderboard_dir=tmp_path)
    with pytest.raises(BenchbaseError, match="^no results database at "):
        bb.results(db=tmp_path / "missing.db")
    assert bb.config("trainer.epochs=2").trainer.epochs == 2


@pytest.mark.parametrize("name", ["digits", "ablation-tinymim-relations"])
def test_tables_of_exported_records_are_the_published_ones(name):
    board = bb.table(name, leaderboard_dir=LEADERBOARDS)
    assert board.frame.to_csv(index=False) == (LEADERBOARDS / f"{name}.csv").read_text()


def test_tidy_results_of_exported_records_average_to_the_table():
    tidy = bb.results("digits", leaderboard_dir=LEADERBOARDS)
    board = bb.table("digits", leaderboard_dir=LEADERBOARDS)
    cells = tidy[tidy.shown & (tidy.key == "top1/top1")].groupby("method")["value"].mean()
    for method, mean in cells.items():
        assert math.isclose(board.frame.loc[board.frame.method == method, "top1/top1"].item(), mean)
    assert set(bb.results(leaderboard_dir=LEADERBOARDS).suite) >= {"digits", "ablation-tinymim-relations"}
