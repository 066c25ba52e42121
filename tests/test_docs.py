"""The plugin guide: its generated sections match the code, and every hook spec is documented."""

from __future__ import annotations

import fnmatch
import inspect
import types
from pathlib import Path

import pluggy
import pytest

import benchbase
from benchbase import PROJECT_NAME, docs, hookspecs
from benchbase.capture import TAP_SHAPES
from benchbase.cli import main
from benchbase.scaffold import KINDS, scaffold_files


def marked_hookspecs(module: types.ModuleType) -> list[types.FunctionType]:
    """The module's functions carrying pluggy's hookspec marker, found without benchbase.docs."""
    return [f for f in vars(module).values() if inspect.isfunction(f) and hasattr(f, f"{PROJECT_NAME}_spec")]


def test_committed_guide_is_up_to_date(capsys):
    assert main(["docs", "--check"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"{docs.GUIDE}: up to date\n"


def test_guide_ships_with_the_package_and_prints(capsys):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package = Path(benchbase.__file__).parent
    data = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = docs.GUIDE.relative_to(package).as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in data["benchbase"])  # installed with the package
    assert main(["docs"]) == 0
    assert capsys.readouterr().out == docs.GUIDE.read_text()


def test_guide_names_the_public_helpers():
    guide = docs.GUIDE.read_text()
    for helper in docs.HELPERS:
        assert f"`from {helper.__module__} import {helper.__name__}`" in guide
    for heading in ("#### `BenchbaseError(Exception)`", "#### `NotApplicable(BenchbaseError)`",
                    "#### `LabeledImages(Dataset)`", "#### `SegmentationImages(Dataset)`", "#### `DatasetInfo`",
                    "##### `split(name: str) -> LabeledImages | SegmentationImages`"):
        assert heading in guide


@pytest.mark.parametrize("spec", marked_hookspecs(hookspecs), ids=lambda f: f.__name__)
def test_hookspec_documents_args_and_returns(spec):
    doc = inspect.getdoc(spec)
    assert doc, f"hook spec {spec.__name__} has no docstring"
    params = list(inspect.signature(spec).parameters)
    if params:
        assert "\nArgs:\n" in doc, f"hook spec {spec.__name__} has no Args: section"
        args = doc.split("\nArgs:\n", 1)[1]
        for param in params:
            assert f"    {param}: " in args, f"hook spec {spec.__name__} does not document {param!r} under Args:"
    assert "\nReturns:\n" in doc, f"hook spec {spec.__name__} has no Returns: section"
    assert doc.split("\nReturns:\n", 1)[1].strip(), f"hook spec {spec.__name__}'s Returns: section is empty"


def test_every_hookspec_is_found_and_rendered():
    names = [f.__name__ for f in docs.hookspec_functions()]
    assert sorted(names) == sorted(f.__name__ for f in marked_hookspecs(hookspecs))
    assert len(names) == 8 and docs.hookspec_problems() == []  # seven hooks and one former name
    guide = docs.GUIDE.read_text()
    for name in names:
        assert f"### `{name}(" in guide


def test_hookspec_problems_are_reported():
    hookspec = pluggy.HookspecMarker(PROJECT_NAME)
    module = types.ModuleType("specs")
    exec(
        "def benchbase_a(register):\n    pass\n"
        "def benchbase_b(register, extra):\n"
        "    '''B.\n\n    Args:\n        register: the callable.\n\n    Returns:\n        Nothing.\n    '''\n"
        "def benchbase_c() -> list:\n    '''C, but no Returns section.'''\n"
        "def benchbase_d() -> list:\n    '''D.\n\n    Returns:\n        A list.\n    '''\n"
        "def not_a_spec():\n    pass\n",
        vars(module),
    )
    for name in ("benchbase_a", "benchbase_b", "benchbase_c", "benchbase_d"):
        hookspec(getattr(module, name))
    assert docs.hookspec_problems(module) == [
        "hook spec benchbase_a has no docstring",
        "hook spec benchbase_b does not document argument(s) extra under Args:",
        "hook spec benchbase_c does not document what it returns under Returns:",
    ]


def test_guide_covers_the_component_interfaces_and_taps():
    guide = docs.GUIDE.read_text()
    for heading in ("### `Method(Module, ABC)`", "### `Student(VitModel)`", "### `Teacher(VitModel)`",
                    "### `Evaluator(ABC)`", "#### `forward(student: Captures | list[Captures]",
                    "#### `evaluate(student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]`"):
        assert heading in guide
    for kind, shape in TAP_SHAPES.items():
        assert f"| `{kind}` | {shape} |" in guide


def test_stale_guide_is_detected_and_rewritten(tmp_path, capsys):
    guide = tmp_path / "guide.md"
    committed = docs.GUIDE.read_text()
    edited = committed.replace("Register distillation methods.", "Register methods (edited by hand).", 1)
    guide.write_text(edited.replace("## Shipping configs", "## Shipping configs (hand-written, kept)"))
    assert main(["docs", "--check", "--path", str(guide)]) == 1
    assert "is out of date; run `benchbase docs --write`" in capsys.readouterr().err
    assert main(["docs", "--write", "--path", str(guide)]) == 0
    assert capsys.readouterr().out == f"{guide}: updated\n"
    assert main(["docs", "--check", "--path", str(guide)]) == 0
    assert guide.read_text() == committed.replace("## Shipping configs", "## Shipping configs (hand-written, kept)")


def test_guide_without_markers_is_a_one_line_error(tmp_path, capsys):
    guide = tmp_path / "guide.md"
    guide.write_text("# A guide\n")
    assert main(["docs", "--write", "--path", str(guide)]) == 2
    assert capsys.readouterr().err == (
        "error: the guide has no <!-- hookspecs:start --> ... <!-- hookspecs:end --> markers; "
        "add them where section 'hookspecs' goes\n"
    )


def test_docstring_markdown():
    doc = """Summary with :class:`~benchbase.components.Loss` and :func:`benchbase.capture.run_vit`.

    Example::

        x = 1

    Args:
        register: call ``register(name, build)``,
            then return.
        other: second.

    Returns:
        A list of ``str``.
    """
    assert docs.docstring_markdown(doc) == (
        "Summary with `Loss` and `benchbase.capture.run_vit`.\n\nExample:\n\n```\nx = 1\n```\n\n"
        "**Args:**\n\n- `register`: call `register(name, build)`, then return.\n- `other`: second.\n\n"
        "**Returns:**\n\nA list of `str`."
    )


def test_guide_shows_every_kind_of_plugin_as_the_scaffold_writes_it():
    guide = docs.GUIDE.read_text()
    for heading in ("## A loss", "## An evaluator", "## A dataset", "## A student or teacher architecture",
                    "## Suites", "## Errors and exit status"):
        assert f"\n{heading}\n" in guide
    for kind, name in docs.EXAMPLES.items():
        assert kind in KINDS
        section = guide.split(f"<!-- example-{kind}:start -->")[1].split(f"<!-- example-{kind}:end -->")[0]
        module = scaffold_files(name, kind)[f"src/benchbase_{name}/__init__.py"]
        assert f"`src/benchbase_{name}/__init__.py`:\n\n```python\n{module}```" in section
    assert "`src/benchbase_my_knn/conf/suite/my_knn.yaml`:\n\n```yaml\n# @package _global_\n" in guide
