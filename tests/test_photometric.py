"""DINO's photometric augmentation (plugins/photometric.py) against torchvision per image, its
probabilities per view, SMKD's ``photometric`` option, and the data's normalisation it relies on."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import timm
import torch
from benchbase_plugins.photometric import (
    BLUR_SIGMA,
    BRIGHTNESS,
    CONTRAST,
    DINO_GLOBAL,
    DINO_LOCAL,
    DRAWS,
    HUE,
    SATURATION,
    PhotometricDraws,
    augment,
    draw,
    gaussian_blur,
    photometric,
    solarize,
)
from benchbase_plugins.smkd import SMKDLoss
from benchbase_plugins.smkd_parts import ibot_masks
from benchbase_plugins.views import random_resized_crops
from omegaconf import open_dict
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from benchbase.components import DataBundle, Student
from benchbase.data.digits import load_digits_bundle
from benchbase.data.folders import IMAGENET_MEAN, IMAGENET_STD, load_image_folder
from benchbase.data.tensors import TensorImages
from benchbase.errors import BenchbaseError
from benchbase.methods import Methods, build_method, identity_params, run_identity
from benchbase.plugin_manager import load
from benchbase.stages import plan

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
TORCHVISION_JITTER = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
SMALL_HEAD = {"head_hidden": 24, "head_bottleneck": 8, "head_out": 16, "local_crops": 2}


def fixed_draws(batch: int, **chosen: torch.Tensor) -> PhotometricDraws:
    """Draws that choose nothing (factors 1, hue 0, σ 1, order 0..3) but what ``chosen`` sets."""
    none = torch.zeros(batch, dtype=torch.bool)
    fields = {"jitter": none, "factors": torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(batch, 1),
              "order": torch.arange(4).repeat(batch, 1), "grayscale": none, "blur": none,
              "sigma": torch.ones(batch), "solarize": none}
    return PhotometricDraws(**{**fields, **chosen})


def pixels(batch: int = 6, channels: int = 3, size: int = 9, seed: int = 0) -> torch.Tensor:
    """[batch, channels, size, size] uniform pixels in [0, 1], with some gray and saturated ones."""
    x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, :] = x[:, :1, 0, :]  # a gray row: equal channels
    x[:, :, 1, :3] = torch.tensor([1.0, 0.0, 0.0])[:channels].view(channels, 1)  # pure red
    return x


# ------------------------------------------------------------------- the operations, per image


def test_batched_jitter_equals_torchvision_per_image_in_each_crops_order():
    """With p=1 (jitter on every crop) and fixed factors, each crop of the normalised batch,
    un-normalised, equals torchvision's functions applied to it alone in its own order."""
    x = pixels()
    order = torch.stack([torch.tensor(p) for p in itertools.permutations(range(4))][::4])  # 6 distinct orders
    factors = torch.tensor([[0.6, 1.4, 0.8, -0.1], [1.4, 0.6, 1.2, 0.1], [0.9, 1.1, 1.0, 0.05],
                            [1.2, 0.7, 0.85, -0.03], [0.75, 1.3, 1.15, 0.0], [1.0, 0.95, 0.8, 0.08]])
    draws = fixed_draws(6, jitter=torch.ones(6, dtype=torch.bool), factors=factors, order=order)
    out = augment((x - MEAN) / STD, draws, DINO_GLOBAL[0], MEAN, STD) * STD + MEAN
    for i in range(6):
        expected = x[i]
        for op in order[i].tolist():
            expected = TORCHVISION_JITTER[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-6, rtol=0)
    # and the order matters: applied in another order, a crop comes out otherwise
    swapped = fixed_draws(6, jitter=torch.ones(6, dtype=torch.bool), factors=factors, order=order.flip(1))
    assert not torch.allclose(augment((x - MEAN) / STD, swapped, DINO_GLOBAL[0], MEAN, STD) * STD + MEAN, out)


def test_jitter_leaves_the_crops_it_did_not_draw():
    x = pixels()
    jitter = torch.tensor([True, False, True, False, False, True])
    draws = fixed_draws(6, jitter=jitter, factors=torch.tensor([[1.3, 0.7, 1.2, 0.1]]).repeat(6, 1))
    out = photometric(x, draws, DINO_GLOBAL[1])
    assert torch.equal(out[~jitter], x[~jitter]) and not torch.allclose(out[jitter], x[jitter])


def test_grayscale_blur_and_solarisation_equal_torchvision_per_image():
    x = pixels()
    gray = torch.tensor([True, False, False, True, False, False])
    out = photometric(x, fixed_draws(6, grayscale=gray), DINO_GLOBAL[1])
    torch.testing.assert_close(out[gray], TF.rgb_to_grayscale(x[gray], num_output_channels=3))
    assert torch.equal(out[~gray], x[~gray])
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    blurred = gaussian_blur(x, sigma, radius=4)
    for i in range(6):
        torch.testing.assert_close(blurred[i], TF.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2))
    assert torch.equal(solarize(x), TF.solarize(x, threshold=0.5))


def test_solarisation_inverts_exactly_the_pixels_at_or_above_one_half():
    values = torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.75, 1.0]).view(1, 1, 1, 6).repeat(2, 3, 2, 1)
    chosen = torch.tensor([True, False])
    out = photometric(values, fixed_draws(2, solarize=chosen), DINO_GLOBAL[1])
    assert torch.equal(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.4999, 0.5, 0.25, 0.0]))
    assert torch.equal(out[1], values[1])
    # 8-bit values: PIL's ImageOps.solarize threshold 128 inverts 128..255 and keeps 0..127
    eight_bit = torch.arange(256.0).view(1, 1, 1, 256) / 255
    flipped = solarize(eight_bit) != eight_bit
    assert flipped[..., 128:].all() and not flipped[..., :128].any()
    # solarisation only where DINO has it: the first global and the local views never solarise
    always = torch.ones(2, dtype=torch.bool)
    for view in (DINO_GLOBAL[0], DINO_LOCAL):
        assert torch.equal(photometric(values, fixed_draws(2, solarize=always), view), values)


def test_blur_sigma_scales_with_the_crop_and_the_view():
    """σ is drawn at DINO's crop side (224 global, 96 local) and scaled to the crop's side."""
    x = pixels(batch=2, size=16)
    draws = fixed_draws(2, blur=torch.tensor([True, False]), sigma=torch.tensor([2.0, 2.0]))
    out = photometric(x, draws, DINO_LOCAL)
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0], [3, 3], [2.0 * 16 / 96] * 2))
    assert torch.equal(out[1], x[1])
    out = photometric(x, draws, DINO_GLOBAL[0])
    torch.testing.assert_close(out[0], TF.gaussian_blur(x[0], [3, 3], [2.0 * 16 / 224] * 2))


def test_normalisation_round_trips_when_nothing_is_drawn():
    x = pixels()
    normalised = (x - MEAN) / STD
    out = augment(normalised, fixed_draws(6), DINO_GLOBAL[1], MEAN, STD)
    torch.testing.assert_close(out, normalised, atol=1e-6, rtol=0)


def test_grayscale_data_leaves_the_colour_operations_out():
    """1-channel crops: brightness and contrast in their drawn order; saturation, hue and
    grayscale (drawn with extreme values) change nothing."""
    x = pixels(channels=1)
    order = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2], [3, 1, 2, 0], [0, 3, 2, 1]])
    factors = torch.tensor([[1.3, 0.7, 0.8, 0.1]]).repeat(6, 1)
    everything = torch.ones(6, dtype=torch.bool)
    out = photometric(x, fixed_draws(6, jitter=everything, grayscale=everything, factors=factors, order=order),
                      DINO_GLOBAL[1])
    for i in range(6):
        expected = x[i]
        for op in (op for op in order[i].tolist() if op < 2):
            expected = TORCHVISION_JITTER[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------- the draws


@pytest.mark.parametrize(("view", "blur", "solar"), [(DINO_GLOBAL[0], 1.0, 0.0), (DINO_GLOBAL[1], 0.1, 0.2),
                                                     (DINO_LOCAL, 0.5, 0.0)])
def test_draw_frequencies_and_ranges_are_dinos(view, blur, solar):
    torch.manual_seed(0)
    n = 40_000
    draws = draw(n, view, torch.device("cpu"))
    for mask, p in ((draws.jitter, 0.8), (draws.grayscale, 0.2), (draws.blur, blur), (draws.solarize, solar)):
        assert abs(mask.float().mean().item() - p) < 0.01
    for column, (low, high) in enumerate((BRIGHTNESS, CONTRAST, SATURATION, HUE)):
        values = draws.factors[:, column]
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
    assert BLUR_SIGMA[0] <= draws.sigma.min() and draws.sigma.max() <= BLUR_SIGMA[1]
    assert torch.equal(draws.order.sort(dim=1).values, torch.arange(4).expand(n, 4))  # permutations
    assert abs((draws.order[:, 0] == 3).float().mean().item() - 0.25) < 0.01  # hue first a quarter of the time
    assert len({tuple(row) for row in draws.order[:2000].tolist()}) == 24


def test_one_draw_per_view_from_the_global_generator():
    torch.manual_seed(3)
    first = draw(5, DINO_LOCAL, torch.device("cpu"))
    torch.manual_seed(3)
    u = torch.rand(5, DRAWS)
    assert torch.equal(first.jitter, u[:, 0] < 0.8) and torch.equal(first.blur, u[:, 10] < 0.5)


# ------------------------------------------------------------------------------ SMKD's option


def rgb_student() -> Student:
    torch.manual_seed(0)
    return Student(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=3, embed_dim=32,
                                     depth=2, num_heads=2, num_classes=5))


def test_smkd_augments_each_view_as_dino_on_colour_data():
    """``auto`` on RGB data: each global view gets its own DINO recipe, the local views theirs,
    drawn view by view (crop, photometric choices, masks); forward and backward run."""
    student = rgb_student()
    loss = SMKDLoss(**SMALL_HEAD, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    loss.setup(student, None)
    assert loss.photometric == "dino"
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    torch.manual_seed(4)
    inputs = loss.make_inputs(images, labels)
    torch.manual_seed(4)
    expected, masks = [], []
    for view in DINO_GLOBAL:
        crops = random_resized_crops(images, (16, 16), loss.global_crop_scale)
        expected.append(augment(crops, draw(4, view, crops.device), view, MEAN, STD))
        masks.append(ibot_masks(4, (4, 4), loss.mask_prob, loss.mask_ratio))
    local = []
    for _ in range(2):
        crops = random_resized_crops(images, (8, 8), loss.local_crop_scale)
        local.append(augment(crops, draw(4, DINO_LOCAL, crops.device), DINO_LOCAL, MEAN, STD))
    torch.testing.assert_close(inputs.student[0].images, torch.cat(expected))
    assert torch.equal(inputs.student[0].mask, torch.cat(masks))
    torch.testing.assert_close(inputs.student[1].images, torch.cat(local))
    captures = [student.run(view, loss.student_taps) for view in inputs.student]
    sum(loss(captures, None, inputs).values()).backward()
    assert student.model.patch_embed.proj.weight.grad is not None


def test_smkd_photometric_choices_by_data():
    """auto: DINO's augmentation on 3-channel data only; dino: on 1-channel data too; none: never.
    Where it does not apply, the views are what they were before the option (same draws)."""
    gray = {"image_mean": (0.5,), "image_std": (0.5,)}
    rgb = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    cases = [("auto", rgb, "dino"), ("auto", gray, "none"), ("auto", {}, "none"),
             ("dino", rgb, "dino"), ("dino", gray, "dino"), ("none", rgb, "none")]
    for choice, data, resolved in cases:
        assert SMKDLoss(photometric=choice, **data).photometric == resolved, (choice, data)
    student = Student(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1,
                                        embed_dim=32, depth=2, num_heads=2))
    images = torch.randn(3, 1, 16, 16)
    views = []
    for params in ({}, gray, {**gray, "photometric": "dino"}):
        loss = SMKDLoss(**SMALL_HEAD, **params)
        loss.setup(student, None)
        torch.manual_seed(1)
        views.append(loss.make_inputs(images, torch.arange(3)).student[0].images)
    assert torch.equal(views[0], views[1]) and not torch.allclose(views[0], views[2])


def test_smkd_photometric_errors_are_one_line():
    with pytest.raises(BenchbaseError, match=r"unknown photometric 'colour'; expected one of auto, dino, none"):
        SMKDLoss(photometric="colour")
    with pytest.raises(BenchbaseError, match="photometric=dino needs the mean and std"):
        SMKDLoss(photometric="dino")
    with pytest.raises(BenchbaseError, match="one value per channel"):
        SMKDLoss(image_mean=IMAGENET_MEAN, image_std=(0.5,))
    with pytest.raises(BenchbaseError, match="1- or 3-channel images, not 4"):
        SMKDLoss(photometric="dino", image_mean=(0.5,) * 4, image_std=(0.5,) * 4)
    loss = SMKDLoss(**SMALL_HEAD, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    loss.setup(rgb_student(), None)
    with pytest.raises(BenchbaseError, match="images have 1 channels but image_mean and image_std have 3"):
        loss.make_inputs(torch.randn(2, 1, 16, 16), torch.arange(2))


def test_the_harness_fills_the_normalisation_from_the_data_and_auto_keeps_run_hashes():
    data = DataBundle("rgb", {"train": TensorImages(torch.zeros(2, 3, 16, 16), torch.arange(2), ["a", "b"])},
                      16, 3, 2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    loss = build_method(SMKDLoss, {"photometric": "auto"}, data)
    assert loss.photometric == "dino" and torch.equal(loss.pixel_mean, MEAN) and torch.equal(loss.pixel_std, STD)
    assert "pixel_mean" not in loss.state_dict()  # loss states saved before the option still load
    assert identity_params(SMKDLoss, {"photometric": "auto", "lambda1": 1.0}) == {"lambda1": 1.0}
    assert identity_params(SMKDLoss, {"photometric": "dino"}) == {"photometric": "dino"}
    # the default suite's SMKD run (1-channel digits) is named as it was before the option existed
    methods = Methods(load(), [])
    cfg = methods.config("smkd")

    def identity(photometric: str | None) -> dict:
        changed = cfg.copy()
        with open_dict(changed.method.params):
            if photometric is None:
                del changed.method.params["photometric"]
            else:
                changed.method.params.photometric = photometric
        params = methods.params(changed, "smkd")
        keys = [s.key for s in plan(methods, changed, 0)]
        return run_identity(changed, "method", "smkd", methods.identity_params("smkd", params), 0, keys)

    assert cfg.method.params.photometric == "auto"
    assert identity("auto") == identity(None) != identity("dino")


# --------------------------------------------------------------------- the data's normalisation


def test_image_folder_bundles_carry_their_normalisation(tmp_path: Path):
    for c, colour in enumerate(((200, 30, 90), (10, 250, 128))):
        folder = tmp_path / "train" / f"class{c}"
        folder.mkdir(parents=True)
        Image.new("RGB", (5, 5), colour).save(folder / "0.png")
    rgb = load_image_folder({"root": str(tmp_path), "image_size": 5})
    assert rgb.image_mean == IMAGENET_MEAN and rgb.image_std == IMAGENET_STD
    image, _ = rgb.splits["train"][0]
    pixels = image * torch.tensor(rgb.image_std).view(3, 1, 1) + torch.tensor(rgb.image_mean).view(3, 1, 1)
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([200, 30, 90]) / 255)
    gray = load_image_folder({"root": str(tmp_path), "image_size": 5, "params": {"in_chans": 1}})
    assert gray.image_mean == (0.5,) and gray.image_std == (0.5,)


def test_standardised_bundles_carry_the_statistics_they_were_standardised_with():
    """The digits are standardised with their training split's statistics: un-normalised, the
    images are the raw [0, 1] ink again."""
    digits = load_digits_bundle()
    mean, std = (torch.tensor(stats).view(1, -1, 1, 1) for stats in (digits.image_mean, digits.image_std))
    pixels = digits.splits["base_train"].images * std + mean
    assert len(digits.image_mean) == 1 and abs(pixels.min().item()) < 1e-5 and abs(pixels.max().item() - 1) < 1e-5
