"""The leaderboard web site: pages, links, figures, floors and ranks; sorting and filtering in Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchbase.cli import main
from benchbase.components import Metric
from benchbase.outcomes import mean_outcomes
from benchbase.results import RunRecord, write_jsonl

from conftest import LEADERBOARDS

FEWSHOT = "fewshot/5way-1shot"
EPISODES = 40
ROWS = [  # role, method, correct queries of 10 per episode (a constant row: its value is 10x that)
    ("teacher", "teacher", 8), ("floor", "pixels", 5), ("floor", "random_init", 3),
    ("method", "alpha", 7), ("method", "beta", 4), ("method", "gamma", 6),
]


def record(role: str, method: str, correct: int, seed: int) -> RunRecord:
    shots = [correct + (i + seed) % 2 for i in range(EPISODES)]  # a little spread between episodes and seeds
    value = 10.0 * sum(shots) / EPISODES
    metrics = [
        Metric("5way-1shot", value, EPISODES, f"5-way 1-shot, 10 queries, seed {seed}", ci95=1.0,
               extras={"task": "fewshot", "outcomes": mean_outcomes(np.array(shots), 10)}),
        Metric("params_m", 5.0 if role == "teacher" else 1.0 + correct / 10, 1, "parameters, millions",
               extras={"task": "cost"}),
    ]
    return RunRecord(config_hash=f"{role}-{method}-{seed}", suite="demo", method=method, teacher="vit_digits",
                     student="vit_tiny", dataset="digits", seed=seed, status="done", metrics=metrics,
                     config={"suite": {"description": "a demonstration suite"}, "trainer": {"epochs": 3}},
                     device="cpu", created_at="2026-11-01T10:00:00+00:00", role=role)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A leaderboard folder with one suite's records and an attached heat map, and its site."""
    tmp_path = tmp_path_factory.mktemp("site")
    lb = tmp_path / "lb"
    write_jsonl(lb / "results" / "demo.jsonl", [record(*row, seed) for row in ROWS for seed in (0, 1)])
    (lb / "figures" / "demo").mkdir(parents=True)
    shutil.copyfile(LEADERBOARDS / "digits.png",
                    lb / "figures" / "demo" / "heat-map.png")
    assert main(["leaderboard", "--out", str(lb), "--html", str(tmp_path / "site")]) == 0
    assert main(["leaderboard", "--out", str(lb), "--check"]) == 0  # the Markdown tables are as before
    return tmp_path / "site"


def test_pages_show_the_table_floors_ranks_figures_protocols_and_link_each_other(site):
    index = (site / "index.html").read_text()
    assert '<a href="demo.html">demo</a>' in index and "a demonstration suite" in index
    page = (site / "demo.html").read_text()
    assert '<a href="index.html">All leaderboards</a>' in page and 'href="demo.html" aria-current="page"' in page
    rows = re.findall(r'<tr data-role="(\w+)"', page)
    assert rows == ["teacher", "floor", "floor", "method", "method", "method"]
    assert "(#1)" in page and 'class="below"' in page and "▼" in page  # paired ranks and below-floor marks
    assert "Does the teacher clear the floors" in page and "<code>fewshot/5way-1shot</code>: yes" in page
    assert f'<th scope="col" title="5-way 1-shot, 10 queries, seed = the run&#x27;s seed">{FEWSHOT}</th>' in page
    for source in re.findall(r'<img src="([^"]+)"', page):
        assert (site / source).is_file(), source
    assert 'src="figures/demo/heat-map.png"' in page and 'src="demo-params.png"' in page
    assert (site / "demo.csv").read_text().startswith("role,method,")
    assert "<script" in page and (site / "assets" / "leaderboard.js").stat().st_size < 8000


def chromium() -> str:
    """Debian's Chromium, or a skip with the reason (a failure under CI, whose .ci/run installs it)."""
    found = shutil.which("chromium")
    try:
        import playwright  # noqa: F401  (driven below; its own browser downloads are never used)
    except ImportError:
        found = None
    if found is None:
        reason = ("the browser test needs Debian's chromium and playwright "
                  "(apt-get install chromium; pip install -e '.[dev]')")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def test_the_page_sorts_and_filters_in_a_real_browser(site):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((site / "demo.html").as_uri())

            def methods() -> list[str]:
                return page.locator("table.board tbody tr:visible td:nth-child(2)").all_inner_texts()

            assert methods() == ["teacher", "pixels", "random_init", "alpha", "beta", "gamma"]

            header = page.locator(f'table.board th:text-is("{FEWSHOT}")')
            header.click()  # numbers: largest first
            assert methods() == ["teacher", "alpha", "gamma", "pixels", "beta", "random_init"]
            assert header.get_attribute("aria-sort") == "descending"
            header.click()
            assert methods() == ["random_init", "beta", "pixels", "gamma", "alpha", "teacher"]
            page.locator('table.board th:text-is("method")').click()  # text: A to Z
            assert methods() == ["alpha", "beta", "gamma", "pixels", "random_init", "teacher"]

            page.fill("input[type=search]", "FLOOR")  # rows whose text contains it, in any case
            assert methods() == ["pixels", "random_init"] and page.inner_text(".count") == "2 of 6 rows"
            page.fill("input[type=search]", "")
            page.uncheck("input[type=checkbox][value=floor]")
            assert methods() == ["alpha", "beta", "gamma", "teacher"]

            page.click("nav >> text=All leaderboards")
            assert page.title() == "benchbase leaderboards" and page.locator("a[href='demo.html']").count() == 2
            assert errors == []
        finally:
            browser.close()
