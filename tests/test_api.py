"""The public API for plugin authors is declared in one module, and the built-in plugins and the
plugin templates use only it."""

from __future__ import annotations

import ast
from pathlib import Path

import benchbase.api
from benchbase.plugin_templates import dataset, evaluator, method, model

ROOT = Path(__file__).resolve().parents[1]

DECLARED = {
    "hookimpl", "Register",
    "Method", "Loss", "StepInputs", "Captures", "ModelInput", "Tap", "run_vit",
    "VitModel", "Student", "Teacher", "SamStudent", "SamTeacher", "pad_to_size", "sam_attention",
    "window_attention_to_dense", "read_channels", "set_block_heads", "sincos_pos_embed",
    "Evaluator", "Metric", "accuracy_metrics", "check_pooling", "extract_features",
    "connected_segments", "GT_MIN_AREA",
    "DataBundle", "DatasetInfo", "LabeledImages", "TensorImages",
    "Logger", "RunInfo", "StepLog",
    "BenchbaseError", "distributed",
    "load_plugins", "Methods", "load_teacher", "FIGURES_DIR", "ResultsDB", "run_cli",
}


def test_the_api_declares_exactly_its_names_and_each_resolves():
    assert len(benchbase.api.__all__) == len(set(benchbase.api.__all__))
    assert set(benchbase.api.__all__) == DECLARED
    for name in benchbase.api.__all__:
        assert getattr(benchbase.api, name) is not None, name


def _benchbase_imports(source: str) -> list[str]:
    """The benchbase modules ``source`` imports from (``benchbase`` itself included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "benchbase":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "benchbase"]
    return found


def test_built_in_plugins_and_plugin_templates_import_benchbase_only_through_the_api():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "plugins").glob("*.py"))}
    for template in (dataset, evaluator, method, model):
        files = {"module": template.TEMPLATE.module, "tests": template.TEMPLATE.tests}
        for part, text in files.items():
            sources[f"{template.__name__}:{part}"] = text.safe_substitute(name="x", package="benchbase_x",
                                                                          dist="benchbase-x", tiny_run="[]")
    for where, source in sources.items():
        assert set(_benchbase_imports(source)) <= {"benchbase.api"}, where
