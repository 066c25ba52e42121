"""What ``benchbase new-plugin NAME --kind KIND`` writes, one module per kind of plugin.

Each module holds a :class:`PluginTemplate`: a worked example that runs as generated, its configs
and its tests. The plugin guide shows the same files (rendered for an example name by
:mod:`benchbase.docs`), so the guide's examples are the ones the scaffold tests install and run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from string import Template


@dataclass(frozen=True)
class PluginTemplate:
    """The files of one kind of plugin, as ``string.Template`` text over ``$name`` (the plugin's
    name), ``$package`` (``benchbase_NAME``), ``$dist`` (``benchbase-NAME``) and, in the tests,
    ``$tiny_run`` (:attr:`tiny_run` as a Python list).

    Attributes:
        summary: one sentence: what the example is (pyproject's description, the README).
        module: ``src/$package/__init__.py``: the example and its hook implementations.
        configs: path under ``src/$package/conf/`` -> the Hydra config file shipped there.
        tests: ``tests/test_$name.py``: the example against a hand computation, and a tiny run.
        tiny_run: overrides that make the generated end-to-end test a seconds-long CPU run.
        use: the README's shell commands that use the plugin, one a line.
        layout: file -> what it holds, for the README's layout list (may hold the placeholders).
    """

    summary: str
    module: Template
    configs: Mapping[str, Template]
    tests: Template
    tiny_run: tuple[str, ...]
    use: Template
    layout: Mapping[str, str]
