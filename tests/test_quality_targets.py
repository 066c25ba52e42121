"""Issue 22's quality targets, held on the committed records of every suite page (not on new runs):
a table can rank methods only where its teacher scores well above what a model that learned nothing
scores, and where its intervals are narrow enough.

Asserted here for every committed suite: the teacher clears both floors by at least 10 points on
each task's measure, unless the suite file names the task in ``suite.unserved`` with why (and then
the margin must really be short: a declaration that no longer holds fails too); few-shot intervals
of at most ±0.5 points per seed; three seeds in every row but the teacher's; on the few-shot suite,
at least one pair of methods separated by the paired tests on every task; the omniglot teacher as
good as issue 22's plain supervised ViT (90.5 / 96.9, 5-way 1 / 5-shot) within its episodes' 95%
interval.
Not yet asserted, because the committed records do not meet it (issue 22 stays open for it): every
distilled student of the few-shot suite above both floors (SMKD's self-distillation collapses to the
random_init floor, MAE learns little in 4 epochs; see the suite file).
"""

from __future__ import annotations

import math
import re

import pytest

from benchbase.config import compose_config
from benchbase.leaderboard import current_records
from benchbase.notebook import table
from benchbase.plugin_manager import load
from benchbase.results import read_jsonl

from conftest import LEADERBOARDS

SUITES = sorted(p.stem for p in (LEADERBOARDS / "results").glob("*.jsonl") if not p.stem.startswith("ablation-"))
MARGIN = 10.0  # points above the best floor
FEWSHOT_CI = 0.5  # points, the 95% interval of one seed's episodes
MEASURES = {"linear_probe": r"top1", "finetune": r"top1", "segmentation": r"mIoU", "fewshot": r"\d+way-\d+shot",
            "sam_everything": r"mIoU"}
"""The metric(s) that are a task's measure, by evaluator (the other columns are secondary)."""


@pytest.fixture(scope="module")
def dirs() -> list[str]:
    return load().config_dirs()


def measure_columns(frame, task: str, evaluator: str) -> list[str]:
    pattern = re.compile(rf"{re.escape(task)}/{MEASURES[evaluator]}")
    return [c for c in frame.columns if pattern.fullmatch(c)]


@pytest.mark.parametrize("name", SUITES)
def test_the_teacher_clears_both_floors_by_ten_points_on_every_task_it_serves(name, dirs):
    suite = compose_config([f"suite={name}"], dirs).suite
    frame = table(name, leaderboard_dir=LEADERBOARDS).frame
    teacher = frame[frame.role == "teacher"].iloc[0]
    floors = frame[frame.role == "floor"]
    assert set(floors.method) == {"pixels", "random_init"}, name
    assert set(suite.unserved) <= set(suite.tasks), f"{name}: unserved names no task of the suite"
    for task_name, task in suite.tasks.items():
        columns = measure_columns(frame, task_name, task.evaluator)
        assert columns, f"{name}: no {task_name} column in the committed table"
        margins = {c: teacher[c] - floors[c].max() for c in columns}
        assert not any(math.isnan(m) for m in margins.values()), (name, margins)
        if task_name in suite.unserved:
            assert min(margins.values()) < MARGIN, f"{name}: {task_name} is served now; drop it from suite.unserved"
        else:
            assert min(margins.values()) >= MARGIN, (name, task_name, margins)


@pytest.mark.parametrize("name", SUITES)
def test_few_shot_intervals_are_narrow_and_every_row_has_three_seeds(name):
    frame = table(name, leaderboard_dir=LEADERBOARDS).frame
    assert (frame[frame.role != "teacher"].seeds == 3).all(), frame[["method", "seeds"]].to_string()
    for record in current_records(read_jsonl(LEADERBOARDS / "results" / f"{name}.jsonl")):  # the table's
        for metric in record.metrics:
            if re.fullmatch(MEASURES["fewshot"], metric.name):
                assert metric.ci95 <= FEWSHOT_CI, (name, record.method, record.seed, metric.name, metric.ci95)


FEWSHOT_SUITES = [name for name in SUITES if name.startswith("omniglot")]
"""The few-shot suites of issue 22 (SMKD's experiment in miniature) among the committed pages."""


@pytest.mark.parametrize("name", FEWSHOT_SUITES)
def test_the_few_shot_suite_separates_at_least_one_pair_of_methods_on_every_task(name, dirs):
    # ranks come from the paired tests (Holm-corrected): two method rows of different rank are
    # separated by a significant difference, rows no test separates share a rank
    suite = compose_config([f"suite={name}"], dirs).suite
    frame = table(name, leaderboard_dir=LEADERBOARDS).frame
    methods = frame[frame.role == "method"]
    assert len(methods) >= 2, name
    for task_name, task in suite.tasks.items():
        for column in measure_columns(frame, task_name, task.evaluator):
            assert methods[f"{column}_rank"].nunique() > 1, (name, column, methods[["method", f"{column}_rank"]])


PLAIN_VIT = {"fewshot/5way-1shot": 90.5, "fewshot/5way-5shot": 96.9}
"""Issue 22's plain supervised ViT on the omniglot suite's split (its 30-epoch recipe, 2,000 episodes)."""


def test_the_omniglot_teacher_is_as_good_as_the_plain_supervised_vit():
    # "at least as good": the figures are point estimates of another run on other episodes, so
    # the teacher's mean may sit below them by no more than its own 95% interval
    frame = table("omniglot", leaderboard_dir=LEADERBOARDS).frame
    teacher = frame[frame.role == "teacher"].iloc[0]
    for column, target in PLAIN_VIT.items():
        assert teacher[column] + teacher[f"{column}_ci95"] >= target, (column, teacher[column], target)
