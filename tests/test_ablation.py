"""Named ablations: `benchbase ablate NAME` runs a spec's variants and renders the paper-layout table."""

from __future__ import annotations

import textwrap

import pandas as pd

from benchbase import leaderboard
from benchbase.leaderboard import sweep_points
from benchbase.cli import main
from benchbase.results import ResultsDB, read_jsonl
from test_run import CHEAP, tiny

PLUGIN = '''
from pathlib import Path

from benchbase import hookimpl


@hookimpl
def benchbase_config_dirs():
    return [str(Path(__file__).parent / "conf")]
'''

SPEC = """
name: tiny
title: Smooth-L1 beta
paper: "a paper, Table 1"
method: feature
overrides: [suite.tasks.fewshot.params.episodes=40]
columns: [target, beta]
metrics: [fewshot/5way-1shot, top1/top1]
plot: beta
variants:
  - {values: {target: teacher}, role: teacher}
  - {values: {target: none}, method: supervised, role: reference}
  - {values: {target: features, beta: 2.0}}
  - {values: {target: features, beta: 0.5}, overrides: [method.params.beta=0.5]}
"""


def plugins_with_spec(tmp_path, spec: str = SPEC):
    folder = tmp_path / "plugins"
    (folder / "conf" / "ablation").mkdir(parents=True)
    (folder / "ablations.py").write_text(PLUGIN)
    name = next(line.split(":", 1)[1].strip() for line in spec.splitlines() if line.startswith("name:"))
    (folder / "conf" / "ablation" / f"{name}.yaml").write_text(textwrap.dedent(spec))
    return folder


def test_ablation_runs_variants_and_writes_a_regenerable_table(tmp_path, capsys):
    plugins = plugins_with_spec(tmp_path)
    assert main(["--plugins-dir", str(plugins), "ablate", "--list"]) == 0
    assert "tiny" in capsys.readouterr().out
    assert main(["--plugins-dir", str(plugins), "ablate", "tiny", *tiny(tmp_path, *CHEAP, floors=True)]) == 0
    assert not (tmp_path / "lb").exists()  # the local table only, without --publish
    board = tmp_path / "leaderboards"
    table = (board / "ablation-tiny.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in lines[0].split("|")[1:5]] == ["target", "beta", "fewshot/5way-1shot", "top1/top1"]
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "teacher", "floor: pixels", "floor: random_init", "none", "features", "features"]
    assert "a paper, Table 1" in table and "`method.params.beta=0.5`" in table
    assert (board / "ablation-tiny.png").stat().st_size > 0
    records = read_jsonl(board / "results" / "ablation-tiny.jsonl")
    assert [r.config["ablation"]["variant"] for r in records] == [-2, -1, 0, 1, 2, 3]  # floors first
    assert {r.method for r in records} == {"teacher", "pixels", "random_init", "supervised", "feature"}
    assert all(r.status == "done" and r.suite == "ablation-tiny" for r in records)
    # variants live under the ablation's own suite name, out of the suite's main table
    db = ResultsDB(tmp_path / "results.db")
    assert {r.suite for r in db.records()} == {"ablation-tiny"}
    stored = len(db.records())

    # a second ablate reuses every run and publishes them: tables regenerated from those records alone
    assert main(["--plugins-dir", str(plugins), "ablate", "--publish", "tiny", *tiny(tmp_path, *CHEAP, floors=True)]) == 0
    assert len(db.records()) == stored
    assert read_jsonl(tmp_path / "lb" / "results" / "ablation-tiny.jsonl") == records
    assert leaderboard.check(tmp_path / "lb") == []
    published = (tmp_path / "lb" / "ablation-tiny.md").read_text()
    assert "origin" not in published and "Local table" not in published
    assert [line.split("|")[1] for line in published.splitlines() if line.startswith("| ")] == \
        [line.split("|")[1] for line in lines]
    assert "| local " in lines[1] and "Local table" in table

    # a spec changed since, rerun in another setting and published: the table takes the new spec's
    # layout, not that of the older records that stay in the committed file
    plugins = plugins_with_spec(tmp_path / "changed", SPEC.replace("metrics: [fewshot/5way-1shot, top1/top1]",
                                                                   "metrics: [top1/top1]"))
    assert main(["--plugins-dir", str(plugins), "ablate", "--publish", "tiny",
                 *tiny(tmp_path, *CHEAP, "trainer.epochs=0", floors=True)]) == 0
    header = next(line for line in (tmp_path / "lb" / "ablation-tiny.md").read_text().splitlines() if line.startswith("| "))
    assert [c.strip() for c in header.split("|")[1:4]] == ["target", "beta", "top1/top1"]


def test_unknown_ablation_and_bad_spec_are_one_line_errors(tmp_path, capsys):
    plugins = plugins_with_spec(tmp_path, SPEC.replace("plot: beta", "plot: gamma"))
    assert main(["--plugins-dir", str(plugins), "ablate", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown ablation 'nope'; available: " in err and ", tiny," in err and len(err.splitlines()) == 1
    assert main(["--plugins-dir", str(plugins), "ablate", "tiny", *tiny(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "plot 'gamma' is not one of its columns" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results.db").exists()


def test_a_suite_table_keeps_rows_reused_from_an_ablation(tmp_path):
    # the ablation stores the supervised reference first (under its own suite name); the suite's
    # own run reuses it by config hash and still shows it as its reference row
    spec = SPEC.replace("overrides: [suite.tasks.fewshot.params.episodes=40]", "overrides: []")
    plugins = plugins_with_spec(tmp_path, spec)
    assert main(["--plugins-dir", str(plugins), "ablate", "tiny", *tiny(tmp_path, *CHEAP)]) == 0
    assert main(["--plugins-dir", str(plugins), "run", "--methods", "feature", *tiny(tmp_path, *CHEAP)]) == 0
    rows = [line.split("|")[2].strip() for line in (tmp_path / "leaderboards" / "digits.md").read_text().splitlines()
            if line.startswith("| ") and "method" not in line.split("|")[2]]
    assert rows == ["teacher", "supervised", "feature"]
    records = read_jsonl(tmp_path / "leaderboards" / "results" / "digits.jsonl")
    assert {r.suite for r in records} == {"digits"} and len(records) == 3


def test_a_curve_follows_the_rows_that_differ_only_in_its_column():
    df = pd.DataFrame({"weights": ["importance", "uniform", "importance", "importance", "importance"],
                       "beta": ["0.5", "-", "0.25", "0.5", "1.0"],
                       "blocks": ["global", "global", "global", "last only", "global"],
                       "mIoU": [1.0, 2.0, 3.0, 4.0, 5.0]})
    points = sweep_points(df, "beta", ["weights", "beta", "blocks"])
    assert sorted((x, row["mIoU"]) for x, row in points) == [(0.25, 3.0), (0.5, 1.0), (1.0, 5.0)]
    assert sweep_points(df, "beta", ["beta"]) and sweep_points(df.iloc[[1]], "beta", ["beta"]) == []


def test_a_curve_skips_the_rows_without_a_metric(tmp_path):
    from benchbase.plots import curve_plot

    rows = [pd.Series({"m": value, "m_ci95": 0.5, "n": other, "n_ci95": float("nan")})
            for value, other in ((1.0, float("nan")), (2.0, 3.0), (4.0, float("nan")))]
    path = curve_plot(list(zip((0.25, 0.5, 1.0), rows)), ["m", "n"], "beta", "a curve", tmp_path / "curve.png")
    assert path.stat().st_size > 0  # column n has one point, the others none: drawn, not a failure
