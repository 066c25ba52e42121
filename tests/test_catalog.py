"""What is installed: `benchbase datasets` (splits, sizes, required paths) and the suites that
`benchbase run --help` lists, plugin suites included."""

from __future__ import annotations

import sys

import pytest

from benchbase.cli import main
from benchbase.components import DatasetInfo
from benchbase.errors import BenchbaseError
from benchbase.evaluation.fewshot import FewShot
from benchbase.plugin_manager import check_component

from thirdparty import make_distribution

UNDECLARED = '''
import torch
from benchbase import hookimpl
from benchbase.components import DataBundle
from benchbase.data.tensors import TensorImages


def build(cfg):
    images = TensorImages(torch.zeros(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 0, 1]), ["a", "b"])
    return DataBundle("mine", {"all": images}, image_size=4, in_chans=1, num_classes=2)


@hookimpl
def benchbase_register_datasets(register):
    register("mine", build)
'''


def listing(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_datasets_lists_splits_sizes_and_paths_without_reading_data_on_disk(capsys):
    out = listing(capsys, "datasets", "data.omniglot.root=/nowhere")
    assert "digits [core] classification: embedded, needs no path\n  base_train  631   5  digits 0-4, 70%" in out
    assert "\n  novel       896  10  digits 5-9, every image (few-shot episodes" in out
    assert ("camvid [core] segmentation: data.camvid.root=PATH must hold CamVid/{train,val,test}/ and "
            "CamVid/{train,val,test}annot/ (SegNet's layout)\n  train  train/ and trainannot/ (367 frames") in out
    assert "omniglot [core] classification: data.omniglot.root=/nowhere\n  base " in out  # a path that is not read
    assert "segmentation splits are SegmentationImages: split[i] = (image [C, H, W] float, label map [H, W] long)" in out


def test_dataset_named_is_loaded_with_its_real_sizes(capsys):
    out = listing(capsys, "datasets", "digits", "data.digits.image_size=8")
    assert "  1 channel, 8x8 images, 5 classes\n" in out
    assert "base_train      631          5  digits 0-4, 70% of each class" in out


def test_undeclared_dataset_is_listed_and_loads_on_request(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(UNDECLARED)
    out = listing(capsys, "--plugins-dir", str(tmp_path), "datasets")
    assert ("mine [mine]: splits and paths not declared at registration\n"
            "  `benchbase datasets mine` loads it to list its splits\n") in out
    out = listing(capsys, "--plugins-dir", str(tmp_path), "datasets", "mine")
    assert "\nall            6          2\n" in out


def test_dataset_info_must_be_a_dataset_info(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(UNDECLARED.replace('register("mine", build)',
                                                         'register("mine", build, info={"splits": {}})'))
    assert main(["--plugins-dir", str(tmp_path), "datasets"]) == 2
    assert capsys.readouterr().err == (
        "error: plugin 'mine' registers dataset 'mine' (benchbase_dir_plugin_mine.build) with info of type dict; "
        "pass a benchbase.components.DatasetInfo\n")


def test_run_help_lists_the_installed_suites_with_plugin_ones(tmp_path, monkeypatch, capsys):
    site = make_distribution(tmp_path / "site", name="bb_kd_suite")  # a module no other test imported
    (site / "kd_logits_conf" / "suite").mkdir()
    (site / "kd_logits_conf" / "suite" / "kd-suite.yaml").write_text(
        "# @package _global_\ndefaults: [digits, _self_]\nsuite:\n  name: kd-suite\n  description: digits, KD's own\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "suites installed (suite=NAME" in out
    assert "\n  digits          scikit-learn digits (8x8 upscaled to 16x16)" in out
    assert "\n  kd-suite        digits, KD's own\n" in out
    assert "\n  cifar           CIFAR-10 fine-tuned top-1 and CamVid fine-tuned mIoU (TinyMIM's experiment) from an MAE teacher\n" in out
    sys.modules.pop("bb_kd_suite", None)


def test_only_a_dataset_takes_info_and_its_kind_is_checked():
    with pytest.raises(BenchbaseError, match="registers evaluator 'x' .* with info of type DatasetInfo; only a dataset"):
        check_component("evaluators", "x", FewShot, "p", DatasetInfo(splits={}))
    with pytest.raises(ValueError, match="DatasetInfo kind 'detection'; use one of classification, segmentation"):
        DatasetInfo(splits={}, kind="detection")
