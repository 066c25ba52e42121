"""Hydra composition: defaults, plugin config dirs, validation errors as one line."""

from __future__ import annotations

import pytest

from benchbase.config import compose_config
from benchbase.errors import BenchbaseError
from benchbase.plugin_manager import load


@pytest.fixture(scope="module")
def dirs():
    return load().config_dirs()


def test_defaults_and_plugin_method_configs(dirs):
    cfg = compose_config([], dirs)
    assert cfg.suite.name == "glyphs" and cfg.method is None
    cfg = compose_config(["method=feature", "trainer.epochs=3", "seed=1", "student=vit_tiny"], dirs)
    assert cfg.method.name == "feature" and cfg.method.params.beta == 2.0
    assert cfg.trainer.epochs == 3 and cfg.seed == 1 and cfg.student.model == "vit_tiny_patch16_224"


@pytest.mark.parametrize("override, expected", [
    (["trainer.epochz=3"], "unknown config key 'trainer.epochz' in group 'trainer'"),
    (["trainer.epochs=abc"], "wrong type for config key 'trainer.epochs' in group 'trainer'"),
    (["student=vit_huge"], "unknown student option 'vit_huge'; available:"),
    (["method=nope"], "unknown method option 'nope'; available:"),
])
def test_errors_are_one_line_naming_key_and_group(dirs, override, expected):
    with pytest.raises(BenchbaseError) as err:
        compose_config(override, dirs)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
