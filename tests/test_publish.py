"""The publish model: runs write local tables; the committed records change only on --publish
(a union) or --prune, and a fresh clone's run never drops one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchbase.cli import main
from benchbase.errors import BenchbaseError
from benchbase.leaderboard import local_records, merge_records, prune, publish, write_local
from benchbase.results import ResultsDB, read_jsonl

from conftest import LEADERBOARDS
from test_leaderboard import run
from test_run import instant


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_clone_runs_and_publishes_without_losing_a_committed_record(tmp_path, capsys):
    lb = tmp_path / "clone" / "leaderboards"
    (lb / "results").mkdir(parents=True)  # the committed default table (the others alike, slower to check)
    for name in ("results/digits.jsonl", "digits.md", "digits.csv", "digits.png", "digits-params.png"):
        shutil.copy(LEADERBOARDS / name, lb / name)
    committed = tree(lb)
    original = read_jsonl(lb / "results" / "digits.jsonl")
    home_a, home_b = tmp_path / "clone" / ".benchbase", tmp_path / "elsewhere"

    # a run writes its local table in the home; the committed folder is left byte for byte
    assert main(["run", "--methods", "feature", *instant(home_a, f"leaderboard_dir={lb}")]) == 0
    assert tree(lb) == committed
    out = capsys.readouterr().out
    assert f"{lb}/ is unchanged; --publish merges these runs" in out
    local = (home_a / "leaderboards" / "digits.md").read_text()
    assert "Local table" in local and "| local " in local
    assert f"{len(original)} more records are not shown (another setting" in local  # the committed 30-epoch runs

    # --publish adds the runs to the committed records: every one of those stays
    assert main(["leaderboard", "--publish", "--db", str(home_a / "results.db"), "--out", str(lb)]) == 0
    assert "published digits: 2 records added, 0 replaced" in capsys.readouterr().out
    after_a = read_jsonl(lb / "results" / "digits.jsonl")
    assert after_a[:len(original)] == original and len(after_a) == len(original) + 2
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 0

    # another machine with the same setting: its local table merges the committed rows, marked
    assert main(["run", "--methods", "mae", *instant(home_b, f"leaderboard_dir={lb}")]) == 0
    rows = {line.split("|")[2].strip(): line.split("|")[-2].strip()
            for line in (home_b / "leaderboards" / "digits.md").read_text().splitlines() if line.startswith("| ")}
    assert rows == {"method": "origin", "teacher": "local", "feature": "committed", "mae": "local"}
    before_publish = tree(lb)
    assert main(["run", "--publish", "--methods", "mae", *instant(home_b, f"leaderboard_dir={lb}")]) == 0
    assert "published digits: 1 records added, 1 replaced by newer runs" in capsys.readouterr().out
    published = tree(lb)
    assert published != before_publish
    after_b = read_jsonl(lb / "results" / "digits.jsonl")
    assert after_b[:len(original)] == original and len(after_b) == len(original) + 3  # the teacher row replaced
    # publishing again changes no byte
    assert main(["leaderboard", "--publish", "--db", str(home_b / "results.db"), "--out", str(lb)]) == 0
    assert "published digits: 0 records added, 0 replaced" in capsys.readouterr().out
    assert tree(lb) == published
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 0

    # only --prune removes committed records, and it names each
    assert main(["leaderboard", "--prune", "digits", "hidden", "--out", str(lb)]) == 0
    out = capsys.readouterr().out
    assert out.count("removed ") == len(original)
    assert all(f"removed {r.config_hash} {r.method} seed {r.seed}" in out for r in original)
    assert {r.method for r in read_jsonl(lb / "results" / "digits.jsonl")} == {"teacher", "feature", "mae"}
    assert main(["leaderboard", "--prune", "digits", "0000000000000000", "--out", str(lb)]) == 2
    assert "no record of config hash '0000000000000000'" in capsys.readouterr().err
    assert main(["leaderboard", "--check", "--out", str(lb)]) == 0


def test_the_union_adds_and_replaces_by_newer_records_only():
    old = run("a", 0, 1.0, created_at="2024-05-01T10:00:00+00:00")
    other = run("b", 0, 2.0)
    other.config_hash = "hb"
    newer = run("a", 0, 3.0, created_at="2024-06-01T10:00:00+00:00")
    merge = merge_records([old, other], [newer])
    assert merge.records == [newer, other] and (merge.added, merge.replaced) == (0, 1)
    assert merge_records([newer, other], [old]).records == [newer, other]  # an older record never replaces
    assert merge_records(merge.records, [newer]) == (merge.records, 0, 0)  # idempotent
    in_variant = [run("a", 0, 1.0) for _ in range(2)]  # one run filling two variants of an ablation
    for index, record in enumerate(in_variant):
        record.config = {**record.config, "ablation": {"variant": index}}
    assert merge_records([], in_variant).records == in_variant


def test_a_newer_record_of_the_same_config_supersedes_the_older_in_tables(tmp_path):
    db = ResultsDB(tmp_path / "results.db")
    older, newer = run("a", 0, 1.0), run("a", 0, 2.0, created_at="2024-06-01T10:00:00+00:00")
    db.save(older)
    db.save(newer)
    assert db.records(superseded=True) == [older, newer]  # the older one is still in the database
    local = local_records(db, tmp_path / "local")["default"]
    assert local == [newer]
    write_local(local, tmp_path / "lb", tmp_path / "local", "default")
    csv = (tmp_path / "local" / "default.csv").read_text()
    assert "2.0" in csv and ",1.0," not in csv
    publish([older], tmp_path / "lb", "default")
    assert publish(local, tmp_path / "lb", "default").replaced == 1
    assert read_jsonl(tmp_path / "lb" / "results" / "default.jsonl") == [newer]


def test_prune_refuses_to_empty_a_table_and_needs_records(tmp_path):
    with pytest.raises(BenchbaseError, match="no committed records"):
        prune(tmp_path, "default", ["hidden"])
    publish([run("a", 0, 1.0)], tmp_path, "default")
    with pytest.raises(BenchbaseError, match="would remove every record"):
        prune(tmp_path, "default", [run("a", 0, 1.0).config_hash])
    assert len(read_jsonl(tmp_path / "results" / "default.jsonl")) == 1
