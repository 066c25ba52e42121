"""The command line's parsing: flags anywhere among the overrides, --methods and its alias --plugins,
and what a plugin that is not a method plugin tells `--methods`."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from benchbase.cli import build_parser, main, parse

KNN_PLUGIN = '''
from benchbase import hookimpl
from benchbase.components import Evaluator


class Knn(Evaluator):
    name = "knn"

    def evaluate(self, model, data, device):
        return []


@hookimpl
def benchbase_register_evaluators(register):
    register("knn", Knn)
'''


@pytest.mark.parametrize("argv", [
    ["run", "trainer.epochs=1", "--plugins", "feature", "--cfg", "job", "seed=3"],
    ["run", "--methods", "feature", "trainer.epochs=1", "--cfg", "job", "seed=3"],
    ["run", "trainer.epochs=1", "--cfg", "job", "seed=3", "--plugins", "feature"],
])
def test_flags_anywhere_among_the_overrides(argv):
    args = parse(build_parser(), argv)
    assert (args.plugins, args.cfg, args.overrides) == (["feature"], "job", ["trainer.epochs=1", "seed=3"])


def test_the_former_spelling_plugins_still_selects_methods_with_a_note(capsys):
    args = parse(build_parser(), ["run", "--plugins", "feature,mae", "seed=3"])
    assert args.plugins == ["feature", "mae"]
    assert capsys.readouterr().err == "note: --plugins is now --methods (the old spelling still works)\n"
    parse(build_parser(), ["run", "--methods", "feature"])
    assert capsys.readouterr().err == ""


def test_benchbase_options_after_the_command(tmp_path):
    args = parse(build_parser(), ["run", "a=1", "--debug", "--plugins-dir", str(tmp_path), "b=2",
                                  f"--plugins-dir={tmp_path}"])
    assert (args.debug, args.plugins_dir, args.overrides) == (True, str(tmp_path), ["a=1", "b=2"])


def test_cfg_job_after_the_overrides_prints_them_composed(capsys):
    assert main(["run", "trainer.epochs=7", "--cfg", "job", "seed=3"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert (cfg.trainer.epochs, cfg.seed) == (7, 3)


@pytest.mark.parametrize("argv", [["run", "a=1", "--bogus", "b=2"], ["plugins", "extra=1"]])
def test_unknown_flags_and_stray_words_stay_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "unrecognized arguments:" in capsys.readouterr().err


def test_methods_names_an_evaluator_plugin(tmp_path, capsys):
    (tmp_path / "knn.py").write_text(KNN_PLUGIN)
    code = main(["--plugins-dir", str(tmp_path), "run", "--methods", "knn", f"home={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: plugin 'knn' is not a method plugin: it registers evaluators knn (name them in "
                          "a suite task's `evaluator`); --methods selects method plugins: ")
    assert "mae" in err
