"""Plugin discovery: built-ins through entry points, third-party distributions, broken plugins."""

from __future__ import annotations

import sys

import pytest

from benchbase.errors import BenchbaseError
from benchbase.plugin_manager import load

from thirdparty import make_distribution


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    def add(root):
        monkeypatch.syspath_prepend(str(root))
        return root
    yield add
    for mod in [m for m in sys.modules if m.startswith("bb_")]:
        del sys.modules[mod]


def test_builtin_plugins_found_through_entry_points():
    bb = load()
    assert {"core", "cls_token", "feature", "mae"} <= set(bb.infos)
    assert bb.infos["mae"].distribution == "benchbase"
    assert bb.infos["mae"].components == {"methods": ["mae"]}
    assert "benchbase_register_methods" in bb.infos["mae"].hooks
    assert set(bb.method_plugins()) >= {"cls_token", "feature", "mae"}
    assert "core" not in bb.method_plugins()
    assert {"fewshot", "linear_probe"} <= set(bb.registry.names("evaluators"))
    assert {"digits", "digit_scenes", "imagefolder", "omniglot", "camvid"} <= set(bb.registry.names("datasets", "core"))


def test_third_party_distribution_is_listed_and_selectable(tmp_path, on_path):
    on_path(make_distribution(tmp_path / "site"))
    bb = load()
    info = bb.infos["kd_logits"]
    assert (info.distribution, info.version) == ("bb_kd_logits", "0.3.1")
    assert bb.select_methods(["kd_logits"]) == ["kd_logits"]
    assert any(d.endswith("kd_logits_conf") for d in bb.config_dirs())


def test_unknown_plugin_lists_available_names():
    with pytest.raises(BenchbaseError) as err:
        load().select_methods(["nope"])
    message = str(err.value)
    assert "unknown plugin 'nope'" in message and "mae" in message and "\n" not in message


def test_broken_plugin_is_reported_and_others_load(tmp_path, on_path):
    on_path(make_distribution(tmp_path / "site", name="bb_broken", entry="broken",
                              source="raise ImportError('missing dependency xyz')\n"))
    with pytest.warns(UserWarning, match="'broken' failed to load"):
        bb = load()
    assert "missing dependency xyz" in bb.infos["broken"].error
    assert "mae" in bb.method_plugins()
    with pytest.raises(BenchbaseError, match="plugin 'broken' failed to load"):
        bb.select_methods(["broken"])


def test_load_plugins_env_limits_plugins(monkeypatch):
    monkeypatch.setenv("BENCHBASE_LOAD_PLUGINS", "mae")
    assert load().method_plugins() == ["mae"]
    monkeypatch.setenv("BENCHBASE_LOAD_PLUGINS", "")
    bb = load()
    assert bb.method_plugins() == [] and "core" in bb.infos


def test_unknown_hook_is_rejected(tmp_path, on_path):
    source = "from benchbase import hookimpl\n@hookimpl\ndef benchbase_register_lossez(register):\n    pass\n"
    on_path(make_distribution(tmp_path / "site", name="bb_typo", entry="typo", source=source))
    with pytest.raises(BenchbaseError, match="unknown hook"):
        load()


def test_duplicate_component_names_are_an_error(tmp_path, on_path):
    source = ("from benchbase import hookimpl\nfrom benchbase_plugins.mae import MAELoss as MAE\n"
              "@hookimpl\ndef benchbase_register_methods(register):\n    register('mae', MAE)\n")
    on_path(make_distribution(tmp_path / "site", name="bb_dup", entry="dup", source=source))
    with pytest.raises(BenchbaseError, match="registered by both"):
        load()
