"""DINO's photometric augmentation of multi-crop views, for a whole batch of crops at once.

DINO (Caron et al., ICCV 2021, ``main_dino.py::DataAugmentationDINO``), and iBOT and SMKD after it,
treat every crop, after its random resized crop and flip, with:

1. colour jitter with probability 0.8 (torchvision's ``ColorJitter(0.4, 0.4, 0.2, 0.1)``):
   brightness and contrast factors uniform in [0.6, 1.4], a saturation factor in [0.8, 1.2] and a
   hue shift in [-0.1, 0.1] of a turn, the four applied in a random order (``ColorJitter`` draws
   one order per call and DINO calls it once per crop, so each crop has its own);
2. grayscale with probability 0.2 (the luma on all three channels);
3. Gaussian blur with probability 1.0 on the first global crop, 0.1 on the second and 0.5 on
   every local crop, σ uniform in [0.1, 2.0] px of DINO's 224-px global and 96-px local crops;
4. solarisation with probability 0.2 on the second global crop only (PIL's ``solarize``: values
   of 128 and above, of 255, become 255 minus themselves).

Each crop draws its own choices (a Bernoulli mask and factors per image); every operation runs
on the whole batch, on the crops' device, with no loop over images. All randomness comes from
torch's global (CPU) generator, one draw per view, like the crops and masks of :mod:`.smkd_parts`,
so the views are reproducible and the same on any device.

Where this differs from DINO's PIL pipeline:

* the operations act on float pixels in [0, 1] (the normalised crops times the data's std plus
  its mean, clamped to [0, 1]; normalised again afterwards), with the semantics of torchvision's
  tensor functions: no rounding to 8 bits, contrast blends with the float mean of the luma (PIL
  rounds it to an integer), hue is shifted in float HSV;
* the blur is an exact separable Gaussian truncated at 4σ with reflected borders (PIL's
  approximates a Gaussian with box filters), and σ is scaled with the crop: σ · side / 224 on
  global crops and σ · side / 96 on local ones, so that a crop of ``side`` px is blurred as much,
  relative to its size, as DINO's (at 224 px the kernel is 17 px; torchvision ports often use 23);
* solarisation inverts values ≥ 0.5, which on 8-bit values is PIL's threshold of 128 exactly;
* on 1-channel (grayscale) images, saturation, hue and grayscale are left out: on a gray RGB
  image they change nothing, so the rest (brightness, contrast, blur, solarisation) is what DINO
  does to gray images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

JITTER_PROB, GRAYSCALE_PROB = 0.8, 0.2
BRIGHTNESS, CONTRAST, SATURATION, HUE = (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)
BLUR_SIGMA = (0.1, 2.0)  # px at DINO's crop size (ViewAugmentation.dino_size)
BLUR_TRUNCATE = 4.0  # kernel radius in units of the largest σ
SOLARIZE_THRESHOLD = 0.5
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2 weights of R, G, B, as torchvision's rgb_to_grayscale
DRAWS = 13  # uniform draws per crop: jitter, 4 factors, 4 order keys, grayscale, blur, σ, solarisation


@dataclass(frozen=True)
class ViewAugmentation:
    """What DINO does to one kind of view besides the jitter and grayscale that every view gets.

    ``blur_prob`` and ``solarize_prob`` are per crop; ``dino_size`` is the side of DINO's crops of
    this kind (px), at which the blur's σ range is given.
    """

    blur_prob: float
    solarize_prob: float
    dino_size: int


DINO_GLOBAL = (ViewAugmentation(1.0, 0.0, 224), ViewAugmentation(0.1, 0.2, 224))
"""The first and the second global view."""
DINO_LOCAL = ViewAugmentation(0.5, 0.0, 96)
"""Every local view."""


@dataclass(frozen=True)
class PhotometricDraws:
    """The random choices for B crops of one view (all on the crops' device).

    ``jitter``, ``grayscale``, ``blur``, ``solarize``: [B] bool, whether the crop gets that
    operation; ``factors``: [B, 4] brightness, contrast and saturation factors and hue shift;
    ``order``: [B, 4] long, a permutation of 0..3 per crop (the jitter operations, indices into
    ``factors``, in the order they are applied); ``sigma``: [B] blur σ in px at DINO's crop size.
    """

    jitter: Tensor
    factors: Tensor
    order: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor


def _between(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    """``u`` (uniform in [0, 1)) mapped to uniform in [bounds[0], bounds[1])."""
    return bounds[0] + (bounds[1] - bounds[0]) * u


def draw(batch: int, view: ViewAugmentation, device: torch.device) -> PhotometricDraws:
    """DINO's choices for ``batch`` crops of ``view``: one [batch, :data:`DRAWS`] uniform draw from
    torch's global generator, moved to ``device``."""
    u = torch.rand(batch, DRAWS).to(device)
    factors = torch.stack([_between(u[:, 1 + i], bounds) for i, bounds in
                           enumerate((BRIGHTNESS, CONTRAST, SATURATION, HUE))], dim=1)
    return PhotometricDraws(
        jitter=u[:, 0] < JITTER_PROB, factors=factors, order=u[:, 5:9].argsort(dim=1),
        grayscale=u[:, 9] < GRAYSCALE_PROB, blur=u[:, 10] < view.blur_prob, sigma=_between(u[:, 11], BLUR_SIGMA),
        solarize=u[:, 12] < view.solarize_prob,
    )


def augment(crops: Tensor, draws: PhotometricDraws, view: ViewAugmentation, mean: Tensor, std: Tensor) -> Tensor:
    """DINO's photometric augmentation of ``view`` on normalised crops, as ``draws`` chose it.

    Args:
        crops: [B, C, h, w] crops normalised with ``mean`` and ``std``; C is 3 (RGB) or 1.
        draws: the choices for the B crops (:func:`draw`).
        mean, std: [1, C, 1, 1] the data's normalisation (pixels in [0, 1] = crops · std + mean).

    Returns:
        [B, C, h, w], normalised as ``crops``.
    """
    pixels = (crops * std + mean).clamp(0, 1)
    return (photometric(pixels, draws, view) - mean) / std


def photometric(pixels: Tensor, draws: PhotometricDraws, view: ViewAugmentation) -> Tensor:
    """[B, C, h, w] pixels in [0, 1] after the operations ``draws`` chose, in DINO's order: jitter,
    grayscale, blur, solarisation (C = 1: no saturation, hue or grayscale)."""
    pixels = colour_jitter(pixels, draws.jitter, draws.factors, draws.order)
    if pixels.shape[1] == 3:
        pixels = masked(draws.grayscale, grayscale(pixels), pixels)
    if view.blur_prob:
        side = min(pixels.shape[-2:])
        scale = side / view.dino_size  # σ drawn at DINO's crop size, applied at this one
        radius = max(1, min(math.ceil(BLUR_TRUNCATE * BLUR_SIGMA[1] * scale), side - 1))  # reflection needs < side
        pixels = masked(draws.blur, gaussian_blur(pixels, draws.sigma * scale, radius), pixels)
    if view.solarize_prob:
        pixels = masked(draws.solarize, solarize(pixels), pixels)
    return pixels


def masked(mask: Tensor, changed: Tensor, pixels: Tensor) -> Tensor:
    """``changed`` [B, C, h, w] where ``mask`` [B] is True, else ``pixels``."""
    return torch.where(mask.view(-1, 1, 1, 1), changed, pixels)


def colour_jitter(pixels: Tensor, apply: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """torchvision's ``ColorJitter`` on the crops where ``apply`` [B] is True, with each crop's own
    ``factors`` [B, 4] and ``order`` [B, 4] (see :class:`PhotometricDraws`); pixels [B, C, h, w] in [0, 1].

    At each of the 4 steps every operation runs on the whole batch and each crop keeps the result
    of the operation its order puts there (16 batch passes, no indexing that waits for the device).
    On 1-channel crops only brightness and contrast run, in the order drawn.
    """
    operations = JITTER if pixels.shape[1] == 3 else JITTER[:2]
    for step in range(order.shape[1]):
        for index, operation in enumerate(operations):
            chosen = apply & (order[:, step] == index)
            pixels = masked(chosen, operation(pixels, factors[:, index]), pixels)
    return pixels


def _per_image(values: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1]."""
    return values.view(-1, 1, 1, 1)


def _blend(pixels: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """ratio · pixels + (1 - ratio) · other, clamped to [0, 1]; ``ratio`` [B]."""
    ratio = _per_image(ratio)
    return (ratio * pixels + (1 - ratio) * other).clamp(0, 1)


def luma(pixels: Tensor) -> Tensor:
    """[B, 3, h, w] RGB -> [B, 1, h, w] luma (:data:`LUMA`); a 1-channel image is its own."""
    if pixels.shape[1] == 1:
        return pixels
    r, g, b = pixels.unbind(dim=1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def brightness(pixels: Tensor, factor: Tensor) -> Tensor:
    """Each crop times its ``factor`` [B], clamped to [0, 1]."""
    return (pixels * _per_image(factor)).clamp(0, 1)


def contrast(pixels: Tensor, factor: Tensor) -> Tensor:
    """Each crop blended by ``factor`` [B] with the mean of its luma."""
    return _blend(pixels, luma(pixels).mean(dim=(1, 2, 3), keepdim=True), factor)


def saturation(pixels: Tensor, factor: Tensor) -> Tensor:
    """Each RGB crop blended by ``factor`` [B] with its luma."""
    return _blend(pixels, luma(pixels), factor)


def hue(pixels: Tensor, shift: Tensor) -> Tensor:
    """Each RGB crop's hue turned by ``shift`` [B] (fractions of a turn, in [-0.5, 0.5])."""
    turns, sat, value = rgb_to_hsv(pixels)
    return hsv_to_rgb((turns + shift.view(-1, 1, 1)) % 1.0, sat, value)


JITTER = (brightness, contrast, saturation, hue)
"""The jitter operations, in the column order of :attr:`PhotometricDraws.factors`."""


def rgb_to_hsv(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[B, 3, h, w] RGB in [0, 1] -> hue (in turns, [0, 1)), saturation and value, each [B, h, w].

    Gray pixels (no chroma) have hue 0; where several channels share the maximum, red counts
    before green before blue (torchvision's convention).
    """
    r, g, b = rgb.unbind(dim=1)
    value = rgb.amax(dim=1)
    chroma = value - rgb.amin(dim=1)
    sat = chroma / torch.where(value > 0, value, torch.ones_like(value))
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sector = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return (sector / 6) % 1.0, sat, value


def hsv_to_rgb(turns: Tensor, sat: Tensor, value: Tensor) -> Tensor:
    """Hue (``turns``, in [0, 1)), saturation and value [B, h, w] -> [B, 3, h, w] RGB: channel R, G, B
    is value · (1 - sat · clamp(min(k, 4 - k), 0, 1)) with k = (n + 6 · turns) mod 6 for n = 5, 3, 1."""
    n = torch.tensor([5.0, 3.0, 1.0], dtype=turns.dtype, device=turns.device).view(1, 3, 1, 1)
    k = (n + 6 * turns.unsqueeze(1)) % 6
    return value.unsqueeze(1) * (1 - sat.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def grayscale(pixels: Tensor) -> Tensor:
    """[B, 3, h, w] RGB -> its luma on all three channels."""
    return luma(pixels).expand_as(pixels)


def gaussian_blur(pixels: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Each crop of ``pixels`` [B, C, h, w] blurred by a Gaussian of its own std ``sigma`` [B] (px),
    truncated at ``radius`` px (< h, w), the borders reflected: torchvision's ``gaussian_blur`` with
    kernel size 2 · radius + 1, per crop, as two 1-D passes of one grouped convolution each."""
    batch, channels, height, width = pixels.shape
    offsets = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # [B·C, 2r + 1]
    groups = batch * channels
    flat = F.pad(pixels.reshape(1, groups, height, width), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(groups, 1, 1, -1), groups=groups)  # along the rows
    flat = F.conv2d(flat, kernel.view(groups, 1, -1, 1), groups=groups)  # along the columns
    return flat.view(batch, channels, height, width)


def solarize(pixels: Tensor) -> Tensor:
    """Values at or above :data:`SOLARIZE_THRESHOLD` inverted (1 - x), the others kept."""
    return torch.where(pixels >= SOLARIZE_THRESHOLD, 1 - pixels, pixels)
