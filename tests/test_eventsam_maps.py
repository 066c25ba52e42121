"""EventSAM's token-importance heat maps: the drawn maps are the loss's own weights, written as a PNG."""

from __future__ import annotations

import torch
from PIL import Image

from benchbase.sam import SamStudent, SamTeacher, build_sam_encoder
from benchbase_plugins.eventsam import EventSAMLoss
from benchbase_plugins.eventsam_maps import (
    importance_maps, importance_spread, main, save_importance_figure, spread_table,
)

ARCH = {"depth": 4, "global_attn_indexes": (1, 3), "window_size": 3}


def test_maps_are_the_losses_token_weights_on_the_token_grid():
    torch.manual_seed(0)
    teacher, student = SamTeacher(build_sam_encoder("tiny", **ARCH)), SamStudent(build_sam_encoder("tiny", in_chans=2, **ARCH))
    images = torch.randn(3, 5, 64, 64)
    for importance in ("released_code", "paper"):
        loss = EventSAMLoss(distilled_blocks=[0, 1, 3], layer_weights=[1.0, 1.0, 1.0], importance=importance)
        loss.setup(student, teacher)
        maps = importance_maps(loss, teacher, images)
        weights = loss.token_weights(teacher.run(images[:, :3], loss.teacher_taps))
        assert set(maps) == {0, 1, 3}
        for block, values in maps.items():
            assert values.shape == (3, 4, 4)
            torch.testing.assert_close(values.reshape(3, 16), weights[block])


def test_spread_measures_how_far_the_weights_and_the_loss_are_from_uniform():
    """beta = 0 makes every weight 1 (the uniform loss exactly); a teacher whose attention singles
    out one key column gives weights far from 1 and a loss that differs from the uniform one."""
    torch.manual_seed(0)
    images = torch.randn(2, 5, 64, 64)
    params = {"event_channels": 2, "distilled_blocks": [0, 1, 3], "layer_weights": [1.0, 1.0, 0.1]}
    teacher = SamTeacher(build_sam_encoder("tiny", **ARCH))

    def student():
        return SamStudent(build_sam_encoder("tiny", in_chans=2, **ARCH))

    flat = importance_spread({**params, "beta": 0.0}, student(), teacher, images)
    assert [(r["importance"], r["block"]) for r in flat] == [("released_code", 0), ("released_code", 1),
                                                              ("paper", 0), ("paper", 1)]
    assert all(r["std"] == 0 and r["mean"] == 1 and r["loss_change_vs_uniform"] == 0 for r in flat)
    with torch.no_grad():  # sharpened queries and keys: each query attends to a few tokens
        for block in teacher.model.blocks:
            block.attn.qkv.weight.mul_(20.0)
    peaked = importance_spread({**params, "beta": 0.5}, student(), teacher, images, ["released_code"])
    assert [r["block"] for r in peaked] == [0, 1]
    assert all(r["std"] > 0.1 and r["p95"] - r["p5"] > 0.2 for r in peaked)  # far from uniform
    assert peaked[0]["loss_change_vs_uniform"] > 0.01  # and the loss changes with them
    table = spread_table(peaked)
    assert table.splitlines()[0].startswith("importance") and len(table.splitlines()) == 1 + len(peaked)


def test_the_figure_is_a_png_with_a_row_per_image(tmp_path):
    sizes = {}
    for rows in (1, 3):
        maps = {"a": torch.rand(rows, 4, 4), "b": torch.rand(rows, 4, 4)}
        path = save_importance_figure(torch.randn(rows, 1, 32, 32), torch.randn(rows, 3, 32, 32), maps,
                                      tmp_path / f"{rows}.png", "t")
        with Image.open(path) as image:
            assert image.format == "PNG"
            sizes[rows] = image.size
    assert sizes[1][0] == sizes[3][0] and sizes[3][1] > 2 * sizes[1][1]  # same columns, a row per image


def test_the_command_draws_the_suites_teacher_importance(tmp_path, capsys):
    out = tmp_path / "maps.png"
    assert main(["--images", "2", "--out", str(out), "suite=eventsam", "teacher.recipe.finetune_epochs=1",
                 "trainer.progress=false", "+data.digit_scene_events.params.n_train=16",
                 "+data.digit_scene_events.params.n_test=4", f"home={tmp_path}"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (tmp_path / "teachers").is_dir()  # the suite's recipe teacher, cached
    with Image.open(out) as image:
        assert image.format == "PNG"
