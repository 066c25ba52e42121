"""Leaderboards: mean ± CI over seeds, row order, failures, protocol splits, Markdown and CSV files."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from benchbase.components import Metric
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import (
    _teachers,
    build_table, check, current_records, format_table, local_records, publish, regenerate_from_records,
    write_leaderboard,
)
from benchbase.results import ResultsDB, RunRecord, write_jsonl

PROBE = "linear probe on base_test (5 classes), 450 images"
FEWSHOT = "5-way 5-shot, 15 queries, 2000 episodes"


def run(
    method: str,
    seed: int,
    top1: float | None = None,
    *,
    role: str = "method",
    status: str = "done",
    error: str = "",
    protocol: str = PROBE,
    fewshot: tuple[float, float] | None = None,
    suite: str = "default",
    created_at: str = "2024-05-01T10:00:00+00:00",
) -> RunRecord:
    metrics = []
    if top1 is not None:
        metrics.append(Metric("top1", top1, 450, protocol, None, {"task": "top1"}))
    if fewshot is not None:
        metrics.append(Metric("acc_5shot", fewshot[0], 2000, FEWSHOT, fewshot[1], {"task": "fewshot"}))
    return RunRecord(
        config_hash=f"{suite}-{role}-{method}-{seed}-{protocol}",
        suite=suite,
        method=method,
        teacher="vit_digits",
        student="vit_tiny",
        dataset="digits",
        seed=seed,
        status=status,
        metrics=metrics,
        config={"trainer": {"epochs": 30}},
        error=error,
        failed_step=5 if status == "failed" else None,
        device="NVIDIA H100",
        created_at=created_at,
        role=role,
    )


def row(df: pd.DataFrame, method: str) -> pd.Series:
    (index,) = df.index[df["method"] == method]
    return df.loc[index]


def test_mean_and_ci_over_seeds_match_hand_computation() -> None:
    values = [81.0, 83.5, 84.25]
    df = build_table([run("feature", s, v) for s, v in enumerate(values)])
    mean = sum(values) / 3
    ci = 1.96 * statistics.stdev(values) / math.sqrt(3)
    cell = row(df, "feature")
    assert cell["top1/top1"] == pytest.approx(mean, abs=1e-12)
    assert cell["top1/top1_ci95"] == pytest.approx(ci, abs=1e-12)
    assert cell["seeds"] == 3 and cell["status"] == "ok"
    assert f"{mean:.1f} ± {ci:.1f}" in format_table(df)


def test_single_seed_uses_the_metrics_own_ci() -> None:
    df = build_table([run("feature", 0, 80.0, fewshot=(70.0, 0.35))])
    cell = row(df, "feature")
    assert cell["fewshot/acc_5shot"] == 70.0 and cell["fewshot/acc_5shot_ci95"] == 0.35
    assert math.isnan(cell["top1/top1_ci95"])  # no CI of its own, one seed


def test_row_order_teacher_then_references_then_sorted_methods() -> None:
    records = [
        run("zeta", 0, 1.0),
        run("scratch", 0, 2.0, role="reference"),
        run("alpha", 0, 3.0),
        run("vit_digits", 0, 4.0, role="teacher"),
        run("mid", 0, 5.0),
    ]
    df = build_table(records)
    assert df["method"].tolist() == ["vit_digits", "scratch", "alpha", "mid", "zeta"]
    assert df["role"].tolist() == ["teacher", "reference", "method", "method", "method"]


def test_failed_seed_shows_status_with_its_error() -> None:
    long_error = "loss is NaN at step 5 " + "x" * 200
    records = [run("feature", 0, 80.0), run("feature", 1, 82.0), run("feature", 2, status="failed", error=long_error)]
    cell = row(build_table(records), "feature")
    assert cell["seeds"] == 2
    assert cell["top1/top1"] == pytest.approx(81.0)
    assert cell["status"].startswith("failed (1/3): loss is NaN at step 5")
    assert len(cell["status"]) < 100  # truncated

    all_failed = row(build_table([run("cls", 0, status="failed", error="CUDA out of memory")]), "cls")
    assert all_failed["status"] == "failed (1/1): CUDA out of memory" and all_failed["seeds"] == 0


def test_latest_run_per_seed_counts() -> None:
    old = run("feature", 0, 50.0, protocol="old", created_at="2024-01-01T00:00:00+00:00")
    new = run("feature", 0, 80.0, created_at="2024-02-01T00:00:00+00:00")
    df = build_table([new, old])
    assert row(df, "feature")["seeds"] == 1
    assert row(df, "feature")["top1/top1"] == 80.0


def test_mixed_protocols_split_into_columns() -> None:
    other = "linear probe on base_test, 224px resize"
    records = [run("a", 0, 80.0), run("a", 1, 82.0), run("b", 0, 60.0, protocol=other)]
    df = build_table(records)
    assert "top1/top1" in df.columns and "top1/top1 [2]" in df.columns
    assert df.attrs["protocols"] == {"top1/top1": PROBE, "top1/top1 [2]": other}
    assert row(df, "a")["top1/top1"] == 81.0 and math.isnan(row(df, "a")["top1/top1 [2]"])
    assert row(df, "b")["top1/top1 [2]"] == 60.0 and math.isnan(row(df, "b")["top1/top1"])


def test_write_leaderboard_markdown_and_csv(tmp_path: Path) -> None:
    other = "linear probe, 224px"
    records = [
        run("vit_digits", 0, 95.0, role="teacher", created_at="2024-04-30T09:00:00+00:00"),
        run("feature", 0, 80.0, fewshot=(70.0, 0.4)),
        run("feature", 1, 82.0, fewshot=(72.0, 0.5), created_at="2024-05-03T09:00:00+00:00"),
        run("cls", 0, 60.0, protocol=other),
        run("broken", 0, status="failed", error="diverged | NaN"),
    ]
    md, csv = write_leaderboard(records, tmp_path / "boards", "default")
    assert (md.name, csv.name) == ("default.md", "default.csv")
    assert sorted(p.name for p in md.parent.iterdir()) == ["default.csv", "default.md"]  # no temp files

    text = md.read_text()
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert "top1/top1 [2]" in table_lines[0]
    assert "vit_digits" in table_lines[2]  # the teacher is the first row
    assert "81.0 ± 2.0" in text  # 1.96 * stdev([80, 82]) / sqrt(2) = 1.96
    assert "diverged \\| NaN" in text  # a pipe in an error does not break the table
    assert f"- `top1/top1`: {PROBE}" in text
    assert f"- `top1/top1 [2]`: {other}" in text
    assert f"- `fewshot/acc_5shot`: {FEWSHOT}" in text
    for expected in ("Dataset: digits", "Teacher: vit_digits", "Student: vit_tiny", "Epochs: 30",
                     "Device: NVIDIA H100", "2024-04-30 to 2024-05-03"):
        assert expected in text
    assert text.rstrip().endswith("Generated by `benchbase leaderboard` from 5 stored runs; do not edit.")

    frame = pd.read_csv(csv)
    assert frame["method"].tolist() == ["vit_digits", "broken", "cls", "feature"]
    for column in ("top1/top1", "top1/top1_ci95", "top1/top1 [2]", "fewshot/acc_5shot", "seeds"):
        assert pd.api.types.is_numeric_dtype(frame[column]), column
    feature = row(frame, "feature")
    assert feature["top1/top1"] == 81.0
    assert feature["top1/top1_ci95"] == pytest.approx(1.96)


def _db_with(tmp_path: Path, *records: RunRecord) -> ResultsDB:
    db = ResultsDB(tmp_path / "results.db")
    for record in records:
        db.save(record)
    return db


def test_publishing_a_database_writes_one_board_per_suite(tmp_path: Path) -> None:
    db = _db_with(tmp_path, run("a", 0, 1.0, suite="s1"), run("a", 0, 2.0, suite="s2"), run("b", 1, 3.0, suite="s2"))
    local = local_records(db, tmp_path / "local")
    paths = [p for suite, records in local.items() for p in publish(records, tmp_path / "boards", suite).paths]
    assert [p.name for p in paths] == ["s1.jsonl", "s1.md", "s1.csv", "s2.jsonl", "s2.md", "s2.csv"]
    assert "from 2 stored runs" in (tmp_path / "boards" / "s2.md").read_text()
    assert pd.read_csv(tmp_path / "boards" / "s1.csv")["top1/top1"].tolist() == [1.0]
    # the tables come back from the exported records alone, and --check sees no difference
    before = (tmp_path / "boards" / "s2.md").read_text()
    (tmp_path / "boards" / "s2.md").unlink()
    regenerate_from_records(tmp_path / "boards")
    assert (tmp_path / "boards" / "s2.md").read_text() == before
    assert check(tmp_path / "boards") == []
    (tmp_path / "boards" / "s1.csv").write_text("edited by hand\n")
    assert check(tmp_path / "boards") == ["s1.csv"]


def test_the_check_names_the_plots_a_page_embeds_without_drawing_them(tmp_path: Path) -> None:
    """--check compares only the tables' text: inside ``paths_only`` a plot returns the path it
    would write (so the page embeds the same figures) and draws nothing; outside it draws."""
    from benchbase.plots import THROUGHPUT, cost_plot, curve_plot, paths_only

    df = pd.DataFrame({"method": ["a", "b"], "top1/top1": [1.0, 2.0], "top1/top1_ci95": [0.1, 0.2],
                       THROUGHPUT: [10.0, 20.0]})
    points = [(float(x), row) for x, (_, row) in zip((0.1, 0.2), df.iterrows())]
    with paths_only():
        assert cost_plot(df, tmp_path / "c.png", "s") == tmp_path / "c.png"
        assert curve_plot(points, ["top1/top1"], "x", "t", tmp_path / "k.png") == tmp_path / "k.png"
        assert cost_plot(df.drop(columns=[THROUGHPUT]), tmp_path / "n.png", "s") is None  # nothing to plot
    assert not list(tmp_path.iterdir())
    assert cost_plot(df, tmp_path / "c.png", "s").stat().st_size > 0
    assert curve_plot(points, ["top1/top1"], "x", "t", tmp_path / "k.png").stat().st_size > 0


def test_local_records_of_the_database_keep_borrowed_rows_and_leave_ablations_out(tmp_path: Path) -> None:
    local = tmp_path / "local"
    shared = run("supervised", 0, 7.0, suite="ablation-x", role="reference")
    db = _db_with(tmp_path, run("a", 0, 1.0, suite="s1"), shared)
    write_jsonl(local / "results" / "s1.jsonl", [dataclasses.replace(shared, suite="s1")])  # borrowed at run time
    found = local_records(db, local)
    assert list(found) == ["s1"]  # `benchbase ablate NAME` writes the ablation's tables in its spec's layout
    assert sorted(r.method for r in found["s1"]) == ["a", "supervised"] and {r.suite for r in found["s1"]} == {"s1"}


def test_sweep_variants_are_separate_rows_and_old_settings_are_left_out() -> None:
    low, high = run("feature", 0, 1.0), run("feature", 0, 2.0)
    low.config = {**low.config, "method": {"name": "feature", "params": {"beta": 1.0, "tau": 1}}}
    high.config = {**high.config, "method": {"name": "feature", "params": {"beta": 2.0, "tau": 1}}}
    df = build_table([low, high])
    assert sorted(df["method"]) == ["feature (beta=1.0)", "feature (beta=2.0)"]
    old = run("feature", 0, 5.0)
    old.config = {**old.config, "trainer": {"epochs": 1}}
    old.created_at = "2000-01-01T00:00:00+00:00"
    assert current_records([old, low, high]) == [low, high]


def test_bad_leaderboard_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchbaseError, match="plain file name"):
        write_leaderboard([run("a", 0, 1.0)], tmp_path, "../escape")


def test_format_table_and_empty_table() -> None:
    text = format_table(build_table([run("a", 0, 0.83125)]))
    assert "0.831" in text and "method" in text
    empty = build_table([])
    assert empty.empty and list(empty.columns) == ["role", "method", "seeds", "status"]
    assert "method" in format_table(empty)


def test_plots_are_written_and_embedded(tmp_path: Path) -> None:
    def with_throughput(record: RunRecord, rate: float, beta: float | None = None) -> RunRecord:
        record.metrics.append(Metric("images_per_second", rate, 10, "training throughput on cpu", None,
                                     {"task": "train"}))
        if beta is not None:
            record.config = {**record.config, "method": {"name": record.method, "params": {"beta": beta}}}
        return record

    records = [with_throughput(run("teacher", 0, 90.0, role="teacher"), float("nan")),
               with_throughput(run("feature", 0, 80.0), 100.0, beta=1.0),
               with_throughput(run("feature", 0, 85.0), 100.0, beta=2.0),
               with_throughput(run("mae", 0, 70.0), 300.0)]
    for i, record in enumerate(records):
        record.config_hash = f"h{i}"
    paths = write_leaderboard(records, tmp_path, "suite")
    names = [p.name for p in paths]
    assert names == ["suite.md", "suite.csv", "suite.png", "suite-feature-beta.png"]
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = (tmp_path / "suite.md").read_text()
    assert "![suite](suite.png)" in text and "![suite-feature-beta](suite-feature-beta.png)" in text


def test_figures_drawn_by_other_tools_are_embedded_and_checked(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    publish([run("a", 0, 1.0, suite="s1")], boards, "s1")
    heat_map = boards / "figures" / "s1" / "heat.png"
    heat_map.parent.mkdir(parents=True)
    heat_map.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert check(boards) == ["s1.md"]  # the committed page does not show the new figure yet
    regenerate_from_records(boards)
    assert "![heat](figures/s1/heat.png)" in (boards / "s1.md").read_text()
    assert check(boards) == []  # --check regenerates elsewhere but finds the figures here
    heat_map.unlink()
    assert check(boards) == ["s1.md"]  # a page showing a figure that is gone is out of date


def test_reported_numbers_get_their_own_table(tmp_path: Path) -> None:
    from benchbase.leaderboard import write_reported

    (tmp_path / "reported").mkdir()
    (tmp_path / "reported" / "p.csv").write_text(
        "paper,where,suite,method,student,teacher,metric,value\n"
        "P,Table 1,s1,m,ViT-S,,top1,80.1\nP,Table 1,s1,m,ViT-S,,top5,95.0\nQ,README,s2,n,ViT-B,T,mIoU,40.0\n")
    [path] = write_reported(tmp_path)
    text = path.read_text()
    assert text.startswith("# Reported in the papers") and "not benchbase measurements" in text
    assert text.index("## s1") < text.index("## s2")
    assert "| P       | Table 1 | m        | ViT-S     |           | 80.1   | 95.0   |" in text


def test_runs_of_other_seeds_share_a_column_unless_a_task_fixes_the_seed():
    runs = [run("a", seed, 0.8 + seed / 100, protocol=f"probe, seed {seed}") for seed in (0, 1, 2)]
    df = build_table(runs)
    assert [c for c in df.columns if c.startswith("top1")] == ["top1/top1", "top1/top1_ci95"] and df["seeds"][0] == 3
    assert df.attrs["protocols"]["top1/top1"] == "probe, seed = the run's seed"
    fixed = build_table([run("a", 0, 0.8, protocol="probe, seed 0"), run("a", 1, 0.8, protocol="probe, seed 0")])
    assert "top1/top1 [2]" in fixed.columns  # seed 0 fixed by the task is not the seed-1 run's own seed


def test_eval_records_are_rows_only_when_asked_and_only_for_tasks_the_table_runs_alike():
    tasks = {"top1": {"evaluator": "linear_probe", "dataset": "digits", "params": {}},
             "fewshot": {"evaluator": "fewshot", "dataset": "digits", "params": {"episodes": 2000}}}
    setting = {"suite": {"tasks": tasks}, "data": {"digits": {"root": None}}, "trainer": {"epochs": 30}}

    def record(method, role="method", row=None, created_at="2024-05-01T10:00:00+00:00", protocol=PROBE, **changes):
        base = run(method, 0, 80.0, role=role, fewshot=(60.0, 1.0), created_at=created_at, protocol=protocol)
        config = {**setting, "suite": {"tasks": {**tasks, **changes}}}
        return dataclasses.replace(base, config={**config, **({} if row is None else {"row": row})})

    records = [
        record("feature"),
        record("model-a", "eval", row=True, created_at="2024-06-01T10:00:00+00:00"),  # newest: sets nothing
        record("model-b", "eval", row=True, fewshot={**tasks["fewshot"], "params": {"episodes": 50}}),
        record("model-c", "eval", row=False),
        record("model-d", "eval", row=True, protocol="another probe"),
    ]
    current = current_records(records)
    assert [r.method for r in current] == ["feature", "model-a", "model-b", "model-d"]
    assert [m.extras["task"] for m in current[2].metrics] == ["top1"]  # its few-shot task differs from the table's
    df = build_table(current)
    assert list(df["method"]) == ["feature", "model-a", "model-b", "model-d"] and list(df["role"])[-1] == "eval"
    assert [c for c in df.columns if not c.endswith("_ci95")] == [
        "role", "method", "top1/top1", "fewshot/acc_5shot", "seeds", "status"]  # no column from an eval record
    assert row(df, "model-a")["fewshot/acc_5shot"] == 60.0 and math.isnan(row(df, "model-b")["fewshot/acc_5shot"])
    assert math.isnan(row(df, "model-d")["top1/top1"])  # another protocol: no cell, no column
    alone = build_table([records[1]])  # a table of eval records alone shows their own columns
    assert "top1/top1" in alone.columns and alone["role"].tolist() == ["eval"]


def test_a_suite_of_eval_records_alone_gets_no_table(tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "results.db")
    record = run("model-a", 0, 80.0, role="eval")
    db.save(dataclasses.replace(record, config={**record.config, "row": True}))
    assert local_records(db, tmp_path / "local") == {}  # so `leaderboard --db` writes no default.md


def test_the_teacher_line_names_which_rows_distil_which_teacher():
    """Rows distilling a recipe teacher's pre-trained weights (TinyMIM) are named on the Teacher line."""
    teacher = run("teacher", 0, 80.0, role="teacher")
    plain = run("mae", 0, 70.0)
    pretrained = dataclasses.replace(run("tinymim", 0, 75.0), teacher="vit_digits [recipe after mae pre-training only]")
    assert _teachers([teacher, plain]) == "vit_digits"
    assert _teachers([teacher, plain, pretrained, run("supervised", 0, 60.0, role="reference")]) == (
        "vit_digits (teacher, mae); vit_digits [recipe after mae pre-training only] (tinymim)")
    without = dataclasses.replace(run("smkd", 0, 65.0), teacher="none")  # a method that uses no teacher
    assert _teachers([teacher, pretrained, without]) == (
        "none (smkd); vit_digits (teacher); vit_digits [recipe after mae pre-training only] (tinymim)")
