"""Validation at load: every registered component is checked against its interface, and how the
loaded plugins and their hooks are reported."""

from __future__ import annotations

import sys
import textwrap

import pytest

from benchbase.cli import main
from benchbase.errors import BenchbaseError
from benchbase.plugin_manager import load

from thirdparty import make_distribution

HEADER = """\
from functools import partial

from torch import nn

from benchbase import hookimpl
from benchbase.components import Evaluator, Loss
"""


def plugin_dir(tmp_path, body: str, name: str = "foo"):
    """A --plugins-dir folder holding one plugin module ``name`` made of HEADER + ``body``."""
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    return folder


def load_error(tmp_path, body: str) -> str:
    with pytest.raises(BenchbaseError) as err:
        load(plugin_dir(tmp_path, body))
    message = str(err.value)
    assert "\n" not in message
    return message


MODULE = "benchbase_dir_plugin_foo"

REJECTED = {
    "loss_not_a_loss": (
        """
        class Bar(nn.Module):
            def forward(self, student, teacher, inputs):
                return {}

        @hookimpl
        def benchbase_register_methods(register):
            register("bar", Bar)
        """,
        f"plugin 'foo' registers method 'bar' ({MODULE}.Bar) which does not subclass benchbase.components.Method",
    ),
    "loss_is_a_function": (
        """
        def bar(student, teacher, inputs):
            return {}

        @hookimpl
        def benchbase_register_methods(register):
            register("bar", bar)
        """,
        f"plugin 'foo' registers method 'bar' ({MODULE}.bar) which does not subclass benchbase.components.Method",
    ),
    "loss_without_forward": (
        """
        class Bar(Loss):
            def compute(self, student, teacher, inputs):
                return {}

        @hookimpl
        def benchbase_register_methods(register):
            register("bar", Bar)
        """,
        f"plugin 'foo' registers method 'bar' ({MODULE}.Bar) which does not implement forward",
    ),
    "evaluator_not_an_evaluator": (
        """
        class Probe:
            def evaluate(self, student, data, device):
                return []

        @hookimpl
        def benchbase_register_evaluators(register):
            register("probe", Probe)
        """,
        f"plugin 'foo' registers evaluator 'probe' ({MODULE}.Probe) which does not subclass "
        "benchbase.components.Evaluator",
    ),
    "evaluator_without_evaluate": (
        """
        class Probe(Evaluator):
            def run(self, student, data, device):
                return []

        @hookimpl
        def benchbase_register_evaluators(register):
            register("probe", Probe)
        """,
        f"plugin 'foo' registers evaluator 'probe' ({MODULE}.Probe) which does not implement evaluate",
    ),
    "student_without_data_argument": (
        """
        def build(cfg):
            pass

        @hookimpl
        def benchbase_register_students(register):
            register("tiny", build)
        """,
        f"plugin 'foo' registers student 'tiny' ({MODULE}.build) whose signature (cfg) cannot be called "
        "as build(cfg, data)",
    ),
    "teacher_not_callable": (
        """
        @hookimpl
        def benchbase_register_teachers(register):
            register("big", "vit_base_patch16_224")
        """,
        "plugin 'foo' registers teacher 'big' (a str instance) which is not callable; expected a function "
        "build(cfg, data)",
    ),
    "dataset_with_two_required_arguments": (
        """
        def build(cfg, split):
            pass

        @hookimpl
        def benchbase_register_datasets(register):
            register("pets", build)
        """,
        f"plugin 'foo' registers dataset 'pets' ({MODULE}.build) whose signature (cfg, split) cannot be "
        "called as build(cfg)",
    ),
    "dataset_with_required_keyword": (
        """
        def build(cfg, *, root):
            pass

        @hookimpl
        def benchbase_register_datasets(register):
            register("pets", partial(build))
        """,
        f"plugin 'foo' registers dataset 'pets' (partial({MODULE}.build)) whose signature (cfg, *, root) "
        "cannot be called as build(cfg)",
    ),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_component_that_does_not_fit_its_interface_is_a_one_line_error(tmp_path, case):
    body, expected = REJECTED[case]
    assert load_error(tmp_path, body) == expected


def test_components_that_fit_their_interfaces_load(tmp_path):
    body = """
    class Bar(Loss):
        def forward(self, student, teacher, inputs):
            return {}

    class Probe(Evaluator):
        def __init__(self, split="test"):
            self.split = split

        def evaluate(self, student, data, device):
            return []

    class Tiny:  # a class is a callable builder too
        def __init__(self, cfg, data):
            self.cfg, self.data = cfg, data

    def build_any(*args, **kwargs):
        pass

    def build_dataset(cfg, name="pets", size=32):
        pass

    @hookimpl
    def benchbase_register_methods(register):
        register("bar", Bar)

    @hookimpl
    def benchbase_register_evaluators(register):
        register("probe", Probe)

    @hookimpl
    def benchbase_register_students(register):
        register("tiny", Tiny)

    @hookimpl
    def benchbase_register_teachers(register):
        register("any", build_any)

    @hookimpl
    def benchbase_register_datasets(register):
        register("pets", partial(build_dataset, size=64))
    """
    bb = load(plugin_dir(tmp_path, body))
    assert bb.infos["foo"].components == {
        "methods": ["bar"], "students": ["tiny"], "teachers": ["any"], "evaluators": ["probe"], "datasets": ["pets"],
    }


def test_installed_distribution_is_validated_and_the_cli_prints_one_line(tmp_path, monkeypatch, capsys):
    source = HEADER + textwrap.dedent("""
        class Bar(nn.Module):
            pass

        @hookimpl
        def benchbase_register_methods(register):
            register("bar", Bar)
        """)
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "site", name="bb_badloss", entry="badloss",
                                                      source=source)))
    try:
        assert main(["plugins"]) == 2
    finally:
        sys.modules.pop("bb_badloss", None)
    err = capsys.readouterr().err
    assert err == ("error: plugin 'badloss' registers method 'bar' (bb_badloss.Bar) which does not subclass "
                   "benchbase.components.Method\n")


def test_plugins_hooks_shows_which_plugin_implements_which_hook(tmp_path, capsys):
    body = """
    @hookimpl
    def benchbase_config_dirs():
        return []
    """
    assert main(["--plugins-dir", str(plugin_dir(tmp_path, body)), "plugins", "--hooks"]) == 0
    out = capsys.readouterr().out
    plugin_table, hook_table = out.split("\n\n")
    assert "hooks" in plugin_table.splitlines()[0]
    foo_row = next(line for line in plugin_table.splitlines() if line.startswith("foo "))
    assert foo_row.rstrip().endswith("benchbase_config_dirs")
    hooks = {line.split()[0]: line.split(None, 1)[1] for line in hook_table.splitlines()[2:]}
    assert set(hooks) == {
        "benchbase_config_dirs", "benchbase_register_datasets", "benchbase_register_evaluators",
        "benchbase_register_methods", "benchbase_register_students", "benchbase_register_teachers",
        "benchbase_register_loggers",
    }
    assert "foo" in hooks["benchbase_config_dirs"].split(", ")
    assert {"core", "mae"} <= set(hooks["benchbase_register_methods"].split(", "))
    assert hooks["benchbase_register_students"] == "core"


def test_a_plugin_using_the_former_hook_name_still_registers_its_method_with_a_warning(tmp_path, capsys):
    body = """
    class Bar(Loss):
        def forward(self, captures, batch):
            return {}

    @hookimpl
    def benchbase_register_losses(register):
        register("bar", Bar)
    """
    with pytest.warns(DeprecationWarning, match="benchbase_register_losses is the former name of benchbase_register_methods"):
        bb = load(plugin_dir(tmp_path, body))
    assert bb.infos["foo"].components == {"methods": ["bar"]} and "foo" in bb.method_plugins()
    assert bb.hook_implementers()["benchbase_register_losses"] == ["foo"]
    assert "benchbase_register_losses" not in load().hook_implementers()  # listed only while implemented
