"""Weights training never reached: which a TinyMIM student leaves untouched, and where frozen
evaluations then read its features."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from benchbase.capture import Tap
from benchbase.components import Student, Teacher
from benchbase.config import TrainerConfig
from benchbase.data.digits import load_digits_bundle
from benchbase.engine import train
from benchbase.evaluation.classification import FineTune, LinearProbe
from benchbase.evaluation.segmentation import SegmentationProbe
from benchbase.untrained import first_untrained_block, frozen_view
from benchbase_plugins.tinymim import TinyMIMLoss

from conftest import tiny_vit


def test_a_tinymim_student_leaves_its_last_blocks_output_path_untrained_and_is_read_before_it(tmp_path):
    data = load_digits_bundle().split("base_train")
    student = Student(tiny_vit(embed_dim=32, depth=3, num_heads=2, num_classes=10, seed=0))
    teacher = Teacher(tiny_vit(embed_dim=48, depth=4, num_heads=4, num_classes=10, seed=1))
    initial = {name: p.detach().clone() for name, p in student.model.named_parameters()}
    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 1, "batch_size": 256, "progress": False})
    result = train(student, teacher, TinyMIMLoss(), data, trainer, tmp_path / "run", seed=0)
    untrained = set(result.untrained)
    # the relations read the last block's q, k, v: its qkv trains, its output path does not
    last = "blocks.2."
    assert {f"{last}attn.proj.weight", f"{last}norm2.weight", f"{last}mlp.fc1.weight", f"{last}mlp.fc2.bias",
            "norm.weight", "norm.bias", "head.weight"} <= untrained
    assert f"{last}attn.qkv.weight" not in untrained and f"{last}norm1.weight" not in untrained
    assert not any(name.startswith(("blocks.0.", "blocks.1.", "patch_embed.")) for name in untrained)
    for name, p in student.model.named_parameters():  # the names are exactly the weights still at initialisation
        assert torch.equal(p, initial[name]) == (name in untrained), name
    assert first_untrained_block(untrained) == 2

    view, words = frozen_view(student, result.untrained)
    assert len(view.model.blocks) == 2 and len(student.model.blocks) == 3  # the student itself is untouched
    assert words.startswith("frozen features read after block 2 of 3, through the final norm, untrained")
    images = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = view.run(images, [Tap("tokens")])[Tap("tokens")]
        block_1 = student.run(images, [Tap("block", 1)])[Tap("block", 1)]  # the input of the last block
        by_hand = torch.nn.functional.layer_norm(block_1, (32,), eps=1e-6)  # the norm at its identity affine
        assert torch.allclose(tokens, by_hand, atol=1e-5)
        assert view.features(images, "cls").shape == (2, 32)
    assert view.model.blocks[0] is student.model.blocks[0]  # a view: the same weights, nothing copied


def test_only_frozen_feature_evaluators_get_the_view():
    assert LinearProbe.reads_frozen_features and SegmentationProbe(head="linear").reads_frozen_features
    assert not FineTune.reads_frozen_features and not SegmentationProbe(head="decoder").reads_frozen_features
    student = Student(tiny_vit())
    assert frozen_view(student, ["head.weight", "norm.weight"]) == (student, "")  # no block left out
    assert frozen_view(student, []) == (student, "")
