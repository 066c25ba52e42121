"""Saved students keep each block's head count, so a head-aligned TinyMIM student can be a teacher."""

from __future__ import annotations

import torch

from benchbase.capture import Tap
from benchbase.components import Student, Teacher
from benchbase.models import load_weights, save_weights
from benchbase_plugins.tinymim import TinyMIMLoss

from conftest import tiny_vit


def test_head_aligned_student_round_trips_with_its_head_counts(tmp_path, images):
    student = Student(tiny_vit(embed_dim=32, depth=3, num_heads=2))
    TinyMIMLoss().setup(student, Teacher(tiny_vit(embed_dim=48, depth=4, num_heads=4, seed=1)))
    assert [b.attn.num_heads for b in student.model.blocks] == [2, 2, 4]
    save_weights(student.export(), tmp_path / "student.pt")
    rebuilt = tiny_vit(embed_dim=32, depth=3, num_heads=2, seed=7)  # built from the plain config
    load_weights(rebuilt, tmp_path / "student.pt")
    assert [b.attn.num_heads for b in rebuilt.blocks] == [2, 2, 4]
    as_teacher = Teacher(rebuilt)
    out = as_teacher.run(images, [Tap("attn", -1), Tap("tokens")])
    assert out[Tap("attn", -1)].shape == (3, 4, 17, 17)
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(out[Tap("tokens")], student.run(images, [Tap("tokens")])[Tap("tokens")])
