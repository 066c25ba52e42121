"""SAM's promptable training (Kirillov et al. 2023, "Segment Anything", section 3 and appendix A)
as a teacher recipe stage: ``teacher.recipe.finetune_method: sam``.

Trains a SAM image encoder (the recipe's network, :class:`benchbase.api.SamStudent`) end to end
with segment-anything's own ``PromptEncoder`` and ``MaskDecoder`` (``TwoWayTransformer``), which this
method owns, sized to the encoder: the prompt embedding width is the neck's channels, the image
embedding is the encoder's token grid and point coordinates are in its input pixels. The cached
teacher is a full SAM checkpoint (:meth:`SamTraining.recipe_checkpoint`), so the teacher's frozen
prompt encoder and mask decoder can read any embedding of its width (the ``sam_everything``
evaluator takes them from it).

One step, for every image of the batch (:mod:`.sam_parts` holds the parts):

* **Masks.** The instances of the image's semantic label map: the 8-connected components of each
  label other than ``background`` and ``ignore_index``, at least ``min_area`` pixels (12: the
  ground-truth segments EventSAM's metric scores); up to ``masks_per_image`` of them at random
  (SAM: 64 masks per GPU). Pixels labelled ``ignore_index`` count as outside every mask.
* **First prompt.** With probability ``point_probability`` (SAM: 0.5) one foreground point drawn
  uniformly from the mask, else its bounding box moved by Gaussian noise of standard deviation
  ``box_noise`` (10%) of the box's side, at most ``box_noise_max`` pixels (20).
* **Iterations.** Each later iteration feeds the previous iteration's mask logits back as the mask
  prompt (unthresholded, low resolution) and, in ``correction_points`` of them, adds one point drawn
  uniformly from the error region of the previous prediction: positive where it missed the mask,
  negative where it spilled over. Two more iterations add no point, one at a random place among the
  corrections and one at the end. SAM runs 8 corrections (11 iterations); ``method/sam.yaml`` keeps
  them. Where several masks are predicted, the one of highest predicted IoU is fed back and
  sampled from. The image embedding is computed once; every iteration's loss reaches the encoder.
* **Outputs.** A prompt of one point (the first iteration of a point prompt) gets SAM's 3 masks and
  only the one of lowest mask loss is trained; every other prompt gets the single-mask output.
* **Loss.** Mask loss = 20 · focal (alpha 0.25, gamma 2, mean over pixels) + dice, on the logits
  upsampled to the label map; the IoU head's prediction for each returned mask is regressed (MSE)
  onto that mask's IoU with the ground truth (logits > 0), weight 1. Terms ``focal`` (already x20),
  ``dice`` and ``iou`` are averaged over masks and iterations.

Not SAM's: the data (frames of small suites, instances from semantic label maps rather than SA-1B's
masks), the encoder's size and its random initialisation (SAM starts from MAE), the trainer (the
recipe's lr, batch and epochs; ``method/sam.yaml`` sets SAM's AdamW weight decay 0.1 and betas, not
its step schedule or layer-wise decay) and the decoder's widths, which ``method/sam.yaml`` scales
to the neck (SAM's are the constructor defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor

from benchbase.api import BenchbaseError, Captures, Method, ModelInput, Register, SamStudent, StepInputs, Tap, hookimpl

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)
from .sam_parts import (
    DICE_WEIGHT,
    FOCAL_WEIGHT,
    MIN_AREA,
    correction_points,
    decode,
    dice_loss,
    focal_loss,
    instance_masks,
    iteration_schedule,
    mask_iou,
    noisy_boxes,
    uniform_pixels,
)

TOKENS = Tap("tokens")
TERMS = ("focal", "dice", "iou")


class SamTraining(Method):
    """SAM's training of an image encoder with its own prompt encoder and mask decoder (module docstring).

    Args:
        ignore_index: the label of unlabelled pixels (the harness fills the data's).
        background: labels that make no instances (the recipe fills the data's classes named
            ``background``).
        masks_per_image: at most this many masks of an image are prompted in a step.
        min_area: instances of fewer pixels are dropped.
        point_probability: probability that a mask's first prompt is a point (else a box).
        box_noise: the box noise's standard deviation as a fraction of the box's side.
        box_noise_max: the largest standard deviation of the box noise, in label-map pixels.
        correction_points: iterations that add a point from the error region (two more add none).
        decoder_depth, decoder_mlp_dim, decoder_heads: the ``TwoWayTransformer``'s blocks, MLP width
            and heads.
        iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP's layers and width.
        mask_in_chans: the prompt encoder's hidden channels for mask prompts.
    """

    name = "sam"
    uses_teacher = False
    student_arch = "sam"
    recipe_only = True
    student_taps = (TOKENS,)

    def __init__(
        self, ignore_index: int = -100, background: Sequence[int] | None = None, masks_per_image: int = 64,
        min_area: int = MIN_AREA, point_probability: float = 0.5, box_noise: float = 0.1,
        box_noise_max: float = 20.0, correction_points: int = 8, decoder_depth: int = 2,
        decoder_mlp_dim: int = 2048, decoder_heads: int = 8, iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256, mask_in_chans: int = 16,
    ):
        super().__init__()
        if masks_per_image < 1 or correction_points < 0 or not 0 <= point_probability <= 1:
            raise BenchbaseError(f"sam: masks_per_image={masks_per_image}, correction_points={correction_points}, "
                                 f"point_probability={point_probability}; use >= 1, >= 0 and a probability")
        self.ignore_index, self.background = ignore_index, tuple(background or ())
        self.masks_per_image, self.min_area = masks_per_image, min_area
        self.point_probability, self.box_noise, self.box_noise_max = point_probability, box_noise, box_noise_max
        self.correction_points = correction_points
        self.decoder_sizes = {"depth": decoder_depth, "mlp_dim": decoder_mlp_dim, "num_heads": decoder_heads}
        self.iou_head_depth, self.iou_head_hidden_dim, self.mask_in_chans = (
            iou_head_depth, iou_head_hidden_dim, mask_in_chans)

    def setup(self, student: SamStudent, teacher: None) -> None:
        """Build the prompt encoder and mask decoder for the encoder's neck width, grid and image size."""
        if not isinstance(student, SamStudent):
            raise BenchbaseError(f"sam trains a SAM image encoder, not a {type(student.model).__name__}; "
                                 "use teacher.arch=sam")
        width, self.grid, self.image_size = student.token_width, student.grid, student.model.img_size
        device = student.model.patch_embed.proj.weight.device
        self.prompt_encoder = PromptEncoder(embed_dim=width, image_embedding_size=self.grid,
                                            input_image_size=(self.image_size, self.image_size),
                                            mask_in_chans=self.mask_in_chans).to(device)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3, transformer_dim=width, iou_head_depth=self.iou_head_depth,
            iou_head_hidden_dim=self.iou_head_hidden_dim,
            transformer=TwoWayTransformer(embedding_dim=width, **self.decoder_sizes),
        ).to(device)

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """The images as they are, and in ``extras`` the prompted masks of the batch: ``masks``
        [P, H, W] bool, ``image`` [P] (the batch index of each mask's image) and ``box`` [P] bool
        (whether its first prompt is a box). ``labels`` are [B, H, W] label maps."""
        masks, owners = [], []
        for index, label_map in enumerate(labels.cpu().numpy()):
            found = instance_masks(label_map, self.background, self.ignore_index, self.min_area)
            chosen = torch.randperm(len(found))[:self.masks_per_image].sort().values.numpy()
            masks.append(found[chosen])
            owners += [index] * len(chosen)
        extras = {
            "masks": torch.from_numpy(np.concatenate(masks)).to(labels.device),
            "image": torch.tensor(owners, dtype=torch.long, device=labels.device),
            "box": torch.rand(len(owners), device=labels.device) >= self.point_probability,
        }
        return StepInputs(student=ModelInput(images), teacher=None, labels=labels, extras=extras)

    def forward(self, student: Captures, teacher: None, inputs: StepInputs) -> dict[str, Tensor]:
        tokens = student[TOKENS]  # [B, N, E]
        embeddings = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)  # [B, E, h, w]
        masks, owner, box = (inputs.extras[key] for key in ("masks", "image", "box"))
        sums = tokens.new_zeros(len(TERMS)) + 0 * tokens.sum()  # no masks in the batch: a zero loss
        for boxed in (False, True):
            chosen = box == boxed
            if chosen.any():
                sums = sums + self.interact(embeddings[owner[chosen]], masks[chosen], boxed)
        count = max(1, masks.shape[0]) * (self.correction_points + 3)
        return {name: value / count for name, value in zip(TERMS, sums.unbind())}

    def interact(self, embeddings: Tensor, target: Tensor, boxed: bool) -> Tensor:
        """Every iteration of SAM's interactive training for masks that share a first-prompt kind:
        ``embeddings`` [P, E, h, w] (each mask's image), ``target`` [P, H, W] bool, first prompt a
        box (``boxed``) or a point. Returns the sums over masks and iterations of the weighted focal,
        dice and IoU terms, [3]."""
        count, (height, width) = target.shape[0], target.shape[-2:]
        scale = target.new_tensor([self.image_size / width, self.image_size / height], dtype=torch.float)
        rows = torch.arange(count, device=target.device)
        image_pe = self.prompt_encoder.get_dense_pe()
        boxes = noisy_boxes(target, self.box_noise, self.box_noise_max) * scale.repeat(2) if boxed else None
        if boxed:
            points, labels = scale.new_zeros(count, 0, 2), scale.new_zeros(count, 0)
        else:
            points, labels = uniform_pixels(target)[0][:, None], scale.new_ones(count, 1)
        mask_input, previous, sums = None, None, []
        for new_point in [False, *iteration_schedule(self.correction_points)]:
            if new_point:
                point, label = correction_points(previous, target)
                points, labels = torch.cat([points, point[:, None]], 1), torch.cat([labels, label[:, None]], 1)
            multimask = not boxed and points.shape[1] == 1 and mask_input is None
            sparse, dense = self.prompt_encoder(points=(points * scale, labels) if points.shape[1] else None,
                                                boxes=boxes, masks=mask_input)
            logits, iou_pred = decode(self.mask_decoder, embeddings, image_pe, sparse, dense)
            returned = slice(1, None) if multimask else slice(0, 1)
            logits, iou_pred = logits[:, returned], iou_pred[:, returned].float()  # [P, K, 4h, 4w], [P, K]
            full = logits.float() if logits.shape[-2:] == (height, width) else F.interpolate(
                logits.float(), size=(height, width), mode="bilinear", align_corners=False)  # sums over pixels in fp32
            targets = target[:, None].expand_as(full)
            focal, dice = focal_loss(full, targets), dice_loss(full, targets)  # [P, K]
            best = (FOCAL_WEIGHT * focal + DICE_WEIGHT * dice).detach().argmin(1)
            predicted = full.detach() > 0
            iou = F.mse_loss(iou_pred, mask_iou(predicted, targets), reduction="none").mean(1)
            sums.append(torch.stack([FOCAL_WEIGHT * focal[rows, best].sum(), DICE_WEIGHT * dice[rows, best].sum(),
                                     iou.sum()]))
            fed_back = iou_pred.detach().argmax(1)
            mask_input, previous = logits[rows, fed_back, None].detach(), predicted[rows, fed_back]
        return torch.stack(sums).sum(0)

    def recipe_checkpoint(self, student: SamStudent) -> dict[str, Tensor]:
        """The trained SAM as segment-anything's checkpoints hold it: ``image_encoder.*``,
        ``prompt_encoder.*`` and ``mask_decoder.*`` tensors (what ``build_sam`` loads)."""
        sam = Sam(image_encoder=student.model, prompt_encoder=self.prompt_encoder, mask_decoder=self.mask_decoder)
        return {key: value.detach().cpu() for key, value in sam.state_dict().items()}


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(SamTraining.name, SamTraining)
