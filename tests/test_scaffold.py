"""``benchbase new-plugin``: the generated project installs, is discovered, and its tests pass."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from benchbase.cli import main
from benchbase.config import compose_config
from benchbase.scaffold import TINY_RUN, scaffold_files


def test_generated_plugin_installs_and_its_own_tests_pass(tmp_path, capsys):
    assert main(["new-plugin", "kd_scaffold_demo", "--dir", str(tmp_path / "work")]) == 0
    project = tmp_path / "work" / "benchbase-kd-scaffold-demo"
    assert f"created {project}" in capsys.readouterr().out
    pyproject = (project / "pyproject.toml").read_text()
    assert '[project.entry-points.benchbase]\nkd_scaffold_demo = "benchbase_kd_scaffold_demo"\n' in pyproject
    assert 'dependencies = ["benchbase>=' in pyproject
    # a real install (wheel build with the project's own pyproject), into a folder put on the path
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(project)],
        capture_output=True, text=True, timeout=120,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "benchbase_kd_scaffold_demo" / "conf" / "method" / "kd_scaffold_demo.yaml").is_file()
    path = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True, text=True, timeout=240,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert "2 passed" in tests.stdout


def test_generated_files():
    files = scaffold_files("my_kd")
    assert sorted(files) == [
        "README.md", "pyproject.toml", "src/benchbase_my_kd/__init__.py",
        "src/benchbase_my_kd/conf/method/my_kd.yaml", "tests/test_my_kd.py",
    ]
    assert 'name = "benchbase-my-kd"' in files["pyproject.toml"]
    config = files["src/benchbase_my_kd/conf/method/my_kd.yaml"]
    assert config.endswith("name: my_kd\nparams:\n  tau: 4.0\n  alpha: 0.1\n")
    for source in ("src/benchbase_my_kd/__init__.py", "tests/test_my_kd.py"):
        compile(files[source], source, "exec")


def test_tiny_run_overrides_are_valid_config_keys(tmp_path):
    cfg = compose_config([*TINY_RUN, f"home={tmp_path}", f"leaderboard_dir={tmp_path}/lb"])
    assert (cfg.trainer.epochs, cfg.teacher.recipe.pretrain_epochs, cfg.teacher.recipe.finetune_epochs) == (1, 1, 1)
    assert cfg.suite.tasks.fewshot.params.episodes == 50 and cfg.suite.tasks.segmentation.params.epochs == 1
    assert list(cfg.suite.references) == [] and cfg.trainer.progress is False
    generated = ast.parse(scaffold_files("x")["tests/test_x.py"])
    value = next(node.value for node in generated.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TINY_RUN")
    assert ast.literal_eval(value) == list(TINY_RUN)  # the generated test runs exactly these


@pytest.mark.parametrize("name, message", [
    ("3x", "plugin name '3x' is not a valid Python identifier; use letters, digits and underscores, "
           "not starting with a digit (e.g. my_kd)"),
    ("my-kd", "plugin name 'my-kd' is not a valid Python identifier; use letters, digits and underscores, "
              "not starting with a digit (e.g. my_kd)"),
    ("class", "plugin name 'class' is a Python keyword; pick another name (e.g. class_kd)"),
    ("mae", "a plugin named 'mae' is already installed (benchbase); pick another name"),
])
def test_bad_name_is_a_one_line_error(tmp_path, capsys, name, message):
    assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_not_overwritten(tmp_path, capsys):
    existing = tmp_path / "benchbase-my-kd"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["new-plugin", "my_kd", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {existing} already exists; remove it or pass another --dir\n"
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
