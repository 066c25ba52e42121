"""End to end through the command line: records, tables, reuse, failures, third-party methods."""

from __future__ import annotations

import sqlite3

import pytest

from benchbase.cli import main
from benchbase.results import ResultsDB

from thirdparty import make_distribution


def tiny(home, *extra, fewshot: bool = True, floors: bool = False):
    """Overrides for a seconds-long run of the digits suite (the fastest embedded suite; another with
    fewshot=False, named after these overrides);
    the floor rows only with ``floors`` (they are tested where a test asks for them). The default
    suite's tasks are cut to test size: 50 few-shot episodes and one segmentation-probe epoch (its 40
    epochs were half of a tiny run's time; the probe itself is tested in test_segmentation.py)."""
    return [
        "suite=digits", "trainer.epochs=1", "teacher.recipe.pretrain_epochs=1", "teacher.recipe.finetune_epochs=1",
        *(["suite.tasks.fewshot.params.episodes=50", "suite.tasks.segmentation.params.epochs=1"] if fewshot else []),
        "trainer.progress=false",
        *([] if floors else ["suite.floors=[]"]),
        f"home={home}", f"leaderboard_dir={home}/lb", *extra,
    ]


CHEAP = ("teacher.recipe.pretrain_method=none", "teacher.recipe.finetune_epochs=0", "~suite.tasks.segmentation")
"""With :func:`tiny`: an untrained teacher and no segmentation probe, for tests about rows, records and
tables rather than numbers."""


def names_of(record) -> set[tuple[str, str]]:
    return {(m.extras["task"], m.name) for m in record.metrics}


def instant(home, *extra):
    """Overrides for a digits-suite run that trains nothing (zero-epoch teacher recipe and student),
    scored by the linear probe alone, without reference or floor rows: a few seconds end to end."""
    return ["suite=digits", "trainer.epochs=0", "teacher.recipe.pretrain_method=none", "teacher.recipe.finetune_epochs=0",
            "~suite.tasks.fewshot", "~suite.tasks.segmentation", "suite.references=[]", "suite.floors=[]",
            "trainer.progress=false",
            f"home={home}", f"leaderboard_dir={home}/lb", *extra]


def test_tiny_run_writes_records_and_table_and_reuses_them(tmp_path, capsys):
    assert main(["run", "--methods", "feature,mae", *tiny(tmp_path, floors=True)]) == 0
    out = capsys.readouterr().out
    records = ResultsDB(tmp_path / "results.db").records("digits")
    by_method = {r.method: r for r in records}
    assert set(by_method) == {"teacher", "pixels", "random_init", "supervised", "feature", "mae"}
    assert by_method["teacher"].role == "teacher" and by_method["supervised"].role == "reference"
    assert by_method["pixels"].role == by_method["random_init"].role == "floor"
    # the floors are scored by the same evaluators, with per-sample outcomes for the paired tests
    assert {(m.extras["task"], m.name) for m in by_method["pixels"].metrics} == {
        (t, m) for t, m in names_of(by_method["feature"]) if t != "cost" and t != "train"}
    assert all("outcomes" in m.extras for m in by_method["pixels"].metrics)
    feature = by_method["feature"]
    assert feature.status == "done" and feature.config["method"]["name"] == "feature"
    names = names_of(feature)
    assert {("top1", "top1"), ("fewshot", "5way-1shot"), ("fewshot", "5way-5shot")} <= names
    fewshot = next(m for m in feature.metrics if m.name == "5way-1shot")
    assert fewshot.n == 50 and fewshot.ci95 > 0 and "prototype" in fewshot.protocol
    assert feature.versions["plugin:feature"] and feature.git_rev is not None
    table = (tmp_path / "leaderboards" / "digits.md").read_text()
    assert "| feature" in table and "| teacher" in table and "5way-1shot" in table
    assert (tmp_path / "leaderboards" / "digits.csv").exists()
    assert "feature" in out and "top1" in out
    run_dir = tmp_path / "runs" / "digits"
    feature_dir = next(run_dir.glob("feature-seed0-*"))
    assert (feature_dir / "config.yaml").exists() and (feature_dir / "steps.jsonl").read_text().count("\n") > 0
    # the same command reuses stored runs, and says so: nothing is trained again
    before = feature_dir.joinpath("steps.jsonl").stat().st_mtime_ns
    assert main(["run", "--methods", "feature", *tiny(tmp_path, floors=True)]) == 0
    assert feature_dir.joinpath("steps.jsonl").stat().st_mtime_ns == before
    assert len(ResultsDB(tmp_path / "results.db").records("digits")) == 6
    when = feature.created_at[:16].replace("T", " ")
    out = capsys.readouterr().out
    assert f"feature seed 0: reusing the run stored {when} UTC (made by benchbase " in out
    assert "floor pixels seed 0: reusing the run stored" in out
    # --force reruns it; the new record supersedes the old one, which stays in the database
    assert main(["run", "--force", "--methods", "feature", *tiny(tmp_path)]) == 0
    assert "reusing" not in capsys.readouterr().out
    db = ResultsDB(tmp_path / "results.db")
    assert len(db.records("digits")) == 6  # teacher row, reference and feature ran again:
    assert len(db.records("digits", superseded=True)) == 9  # their older records are kept


NAN_PLUGIN = '''
import torch
from benchbase import hookimpl
from benchbase.capture import Tap
from benchbase.components import Loss


class Exploding(Loss):
    name = "exploding"
    student_taps = (Tap("tokens"),)
    teacher_taps = ()

    def forward(self, student, teacher, inputs):
        return {"boom": student[Tap("tokens")].sum() * float("nan")}


@hookimpl
def benchbase_register_methods(register):
    register("exploding", Exploding)
'''


RAISING_PLUGIN = NAN_PLUGIN.replace("exploding", "raising").replace("Exploding", "Raising").replace(
    'return {"boom": student[Tap("tokens")].sum() * float("nan")}', 'raise RuntimeError("kaboom in the loss")')


def test_raising_method_is_stored_with_its_error_and_step(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "raising.py").write_text(RAISING_PLUGIN)
    args = ["--plugins-dir", str(plugins), "run", "--methods", "raising,feature", *tiny(tmp_path, "suite.references=[]", *CHEAP)]
    assert main(args) == 1  # a row failed; the others ran
    records = {r.method: r for r in ResultsDB(tmp_path / "results.db").records()}
    assert records["raising"].status == "failed" and records["raising"].failed_step == 0
    assert "RuntimeError" in records["raising"].error and "kaboom in the loss" in records["raising"].error
    assert records["feature"].status == "done"
    assert "failed (1/1): RuntimeError" in (tmp_path / "leaderboards" / "digits.md").read_text()


def test_failing_method_is_stored_and_others_finish(tmp_path, capsys):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "exploding.py").write_text(NAN_PLUGIN)
    # the plugin ships no config file: it runs with its constructor's defaults
    args = ["--plugins-dir", str(plugins), "run", "--methods", "exploding,feature",
            *tiny(tmp_path, "suite.references=[]", *CHEAP)]
    assert main(args) == 1
    records = {r.method: r for r in ResultsDB(tmp_path / "results.db").records()}
    assert records["exploding"].status == "failed"
    assert "non-finite loss" in records["exploding"].error and records["exploding"].failed_step == 0
    assert records["feature"].status == "done"
    assert "failed" in (tmp_path / "leaderboards" / "digits.md").read_text()


def test_third_party_plugin_runs_for_real(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "site")))
    assert main(["run", "--methods", "kd_logits", *tiny(tmp_path, "suite.references=[]", *CHEAP)]) == 0
    record = next(r for r in ResultsDB(tmp_path / "results.db").records() if r.method == "kd_logits")
    assert record.status == "done" and record.config["method"]["params"]["tau"] == 4.0
    assert record.versions["plugin:kd_logits"] == "0.3.1"
    steps = (tmp_path / "runs" / "digits").glob("kd_logits-seed0-*/steps.jsonl")
    assert "kl_logits" in next(steps).read_text()


def test_plugins_command_lists_components_and_hooks(capsys):
    assert main(["plugins", "--hooks"]) == 0
    out = capsys.readouterr().out
    assert "mae" in out and "methods: mae" in out and "benchbase_register_methods" in out
    assert "evaluators: fewshot" in out


def test_leaderboard_publishes_regenerates_checks_and_imports(tmp_path, capsys):
    lb, db = tmp_path / "lb", str(tmp_path / "results.db")
    assert main(["run", "--methods", "feature", *instant(tmp_path)]) == 0
    assert not lb.exists()  # a run writes its local table only
    assert main(["leaderboard", "--publish", "--db", db, "--out", str(lb)]) == 0
    written = (lb / "digits.md").read_text()
    assert "| feature" in written and "origin" not in written
    (lb / "digits.md").unlink()
    assert main(["leaderboard", "--out", str(lb)]) == 0  # from the committed records alone
    assert (lb / "digits.md").read_text() == written
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 0
    (lb / "digits.md").write_text(written.replace("feature", "featur3"))
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 1
    # records exported elsewhere merge into the database and its local table; --publish commits them
    other = tmp_path / "other"
    assert main(["run", "--methods", "mae", *instant(other)]) == 0
    exported = str(other / "leaderboards" / "results" / "digits.jsonl")  # that machine's teacher and mae
    capsys.readouterr()
    assert main(["leaderboard", "--db", db, "--import", exported, "--out", str(lb)]) == 0
    assert "imported 2 records, skipped 0 already stored" in capsys.readouterr().out
    assert "| mae" in (tmp_path / "leaderboards" / "digits.md").read_text()
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 1  # still the edited table: nothing published
    assert main(["leaderboard", "--db", db, "--import", exported, "--publish", "--out", str(lb)]) == 0
    out = capsys.readouterr().out
    assert "imported 0 records, skipped 2 already stored" in out
    assert "published digits: 1 records added, 1 replaced by newer runs" in out  # mae; the newer teacher row
    assert "| mae" in (lb / "digits.md").read_text() and "| feature" in (lb / "digits.md").read_text()
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 0
    with sqlite3.connect(tmp_path / "results.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_same_seed_repeats_exactly_and_other_seeds_differ(tmp_path):
    def metrics(home, seed):
        record = next(r for r in ResultsDB(home / "results.db").records() if r.method == "feature" and r.seed == seed)
        return {(m.extras["task"], m.name): (m.value, m.ci95, m.protocol) for m in record.metrics
                if m.name != "images_per_second"}

    cheap = ["suite.references=[]", *CHEAP]  # the run's own randomness is what is tested
    for home in ("a", "b"):
        assert main(["run", "--methods", "feature", *tiny(tmp_path / home, *cheap)]) == 0
    assert metrics(tmp_path / "a", 0) == metrics(tmp_path / "b", 0)
    assert main(["run", "--methods", "feature", *tiny(tmp_path / "a", *cheap, "seed=1")]) == 0
    first, second = metrics(tmp_path / "a", 0), metrics(tmp_path / "a", 1)
    assert first != second
    assert "(seed 1)" in second[("fewshot", "5way-1shot")][2] and "(seed 0)" in first[("fewshot", "5way-1shot")][2]
    runs = tmp_path / "a" / "runs" / "digits"
    students = [next(runs.glob(f"feature-seed{seed}-*")) / "student.pt" for seed in (0, 1)]
    assert students[0].read_bytes() != students[1].read_bytes()  # other initial weights and batches


def test_data_dependent_loss_arguments_come_from_the_distillation_data():
    from types import SimpleNamespace

    from benchbase.core import SupervisedSegmentation
    from benchbase.errors import BenchbaseError
    from benchbase.methods import build_method as build_loss

    data = SimpleNamespace(num_classes=7, ignore_index=255)
    loss = build_loss(SupervisedSegmentation, {"num_classes": None, "ignore_index": None}, data)
    assert (loss.num_classes, loss.ignore_index) == (7, 255)
    kept = build_loss(SupervisedSegmentation, {"num_classes": 3}, SimpleNamespace(num_classes=7, ignore_index=None))
    assert (kept.num_classes, kept.ignore_index) == (3, -100)  # set in the config: kept; no unlabelled value
    with pytest.raises(BenchbaseError, match="needs method.params.num_classes"):
        SupervisedSegmentation()
