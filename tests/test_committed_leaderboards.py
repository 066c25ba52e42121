"""The tables committed in leaderboards/ are exactly what their committed run records produce."""

from __future__ import annotations

from pathlib import Path

from benchbase.leaderboard import RESULTS_DIR, check
from benchbase.results import read_jsonl

LEADERBOARDS = Path(__file__).resolve().parents[1] / "leaderboards"


def test_every_committed_table_is_generated_from_its_records():
    records = sorted((LEADERBOARDS / RESULTS_DIR).glob("*.jsonl"))
    assert records, "leaderboards/results/ holds no run records"
    for path in records:
        runs = read_jsonl(path)
        assert runs and all(r.suite == path.stem for r in runs)
        assert (LEADERBOARDS / f"{path.stem}.md").exists() and (LEADERBOARDS / f"{path.stem}.csv").exists()
    assert check(LEADERBOARDS) == []
