"""Shared fixtures: tiny timm ViTs and the real data sets of ../shared/data, extracted once."""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import timm
import torch

from benchbase.components import Student, Teacher
from benchbase.data.tensors import TensorImages

# The tests' models are tiny: one thread is faster than two and keeps timings steady when other
# processes share the cores; subprocesses started by tests inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def tiny_vit(embed_dim: int = 32, depth: int = 3, num_heads: int = 2, num_classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, num_classes=num_classes,
    )


def tensor_images(images: torch.Tensor, labels: torch.Tensor) -> TensorImages:
    """An in-memory dataset of ([n, C, H, W] images, [n] labels) with classes named by number."""
    return TensorImages(images, labels, [str(c) for c in range(int(labels.max()) + 1)])


@pytest.fixture
def student() -> Student:
    return Student(tiny_vit())


@pytest.fixture
def teacher() -> Teacher:
    return Teacher(tiny_vit(embed_dim=48, depth=4, num_heads=4, seed=1))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""The shared real data sets (never part of the project; the product never needs them)."""

LEADERBOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
"""The committed tables and their run records (``results/*.jsonl``)."""


@pytest.fixture(scope="session")
def camvid_root(tmp_path_factory) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"the shared test data folder {DATA} is absent")
    root = tmp_path_factory.mktemp("camvid")
    with tarfile.open(DATA / "camvid-240x180.tar") as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.fixture(scope="session")
def camvid_few_root(camvid_root, tmp_path_factory) -> Path:
    """CamVid with the first 40 images of each split: its list files cut, the image folders linked.
    For end-to-end runs, whose subject is the pipeline rather than the full splits."""
    root = tmp_path_factory.mktemp("camvid_few") / "CamVid"
    root.mkdir()
    for entry in (camvid_root / "CamVid").iterdir():
        if entry.suffix == ".txt":
            (root / entry.name).write_text("\n".join(entry.read_text().splitlines()[:40]) + "\n")
        else:
            (root / entry.name).symlink_to(entry, target_is_directory=True)
    return root.parent


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """200 images of each CIFAR-10 class (extracting all 50,000 takes ~30 s)."""
    if not DATA.is_dir():
        pytest.skip(f"the shared test data folder {DATA} is absent")
    root, kept = tmp_path_factory.mktemp("cifar10"), Counter()

    def first_200(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if member.isfile():
            kept[member.name.split("/")[1]] += 1
            if kept[member.name.split("/")[1]] > 200:
                return None
        return tarfile.data_filter(member, path)

    with tarfile.open(DATA / "cifar10-train.tar.gz") as archive:
        archive.extractall(root, filter=first_200)
    return root
