"""The README quotes the papers' numbers only as leaderboards/reported/ records them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "### The papers' numbers next to the small suites"


def test_the_papers_numbers_next_to_the_small_suites_are_those_of_the_reported_records():
    text = (ROOT / "README.md").read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0].split("\nDatasets are read lazily", 1)[0]
    with open(ROOT / "leaderboards" / "reported" / "papers.csv", newline="") as handle:
        reported = {row["value"] for row in csv.DictReader(handle)}
    quoted = re.findall(r"\b\d+\.\d+\b", section)
    assert quoted, "the section quotes no number"
    assert not [number for number in quoted if number not in reported], "numbers not in papers.csv"
