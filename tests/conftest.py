"""Shared fixtures: tiny timm ViTs and a temporary benchbase home."""

from __future__ import annotations

import timm
import pytest
import torch

from benchbase.components import Student, Teacher


def tiny_vit(embed_dim: int = 32, depth: int = 3, num_heads: int = 2, num_classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, num_classes=num_classes,
    )


@pytest.fixture
def student() -> Student:
    return Student(tiny_vit())


@pytest.fixture
def teacher() -> Teacher:
    return Teacher(tiny_vit(embed_dim=48, depth=4, num_heads=4, seed=1))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
