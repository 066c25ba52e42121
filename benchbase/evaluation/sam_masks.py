"""SAM's "segment everything" on a student's image embedding, scored by EventSAM's segment metric.

EventSAM evaluates its event encoder inside SAM: the student's embedding goes through SAM's own
prompt encoder and mask decoder, prompted by a grid of points (``SamAutomaticMaskGenerator``),
the masks are cleaned up, painted into one segment map and every ground-truth segment is matched
with its best predicted segment (research notes 3.2-3.3). :class:`SamEverything` does that with
segment-anything's own ``SamAutomaticMaskGenerator``, ``PromptEncoder`` and ``MaskDecoder``; only
the image embedding comes from the student (:class:`EmbeddingPredictor`).

The prompt encoder and mask decoder weights come from a full SAM checkpoint (``prompt_encoder.*``
and ``mask_decoder.*``, their sizes read from it): the task's ``checkpoint``, or else the suite
teacher's own file (``teacher.checkpoint``, or the cached ``teacher.pt`` of a recipe teacher trained
by SAM's promptable training, ``teacher.recipe.finetune_method: sam``), which the harness hands
over as ``teacher_checkpoint``. Numbers are only meaningful with trained SAM weights and a student
whose neck matches the checkpoint's width; the tests run the plumbing with a small random SAM and
report nothing from it.

Shapes: C = stacked image channels, H×W = image and label size, h×w = the student's token grid,
E = the student's neck channels (SAM's prompt embedding width), M = masks of one image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import ImageEncoderViT
from segment_anything.utils.amg import batched_mask_to_box
from torchvision.ops import batched_nms

from benchbase.capture import Tap
from benchbase.components import DataBundle, Evaluator, Metric, VitModel
from benchbase.errors import BenchbaseError
from benchbase.evaluation.segments import GT_MIN_AREA, SegmentMetricAccumulator, averaged
from benchbase.outcomes import KEY as OUTCOMES
from benchbase.models import read_state_dict
from benchbase.sam import pad_to_size, token_grid

_PARTS = ("prompt_encoder.", "mask_decoder.")
MASKS_FOUND = "masks"
"""Metric extras key: how many masks the generator kept over the scored images (a result of the
model, so it stays out of the protocol, which every row of a column shares)."""
SAM_DECODER_SIZES = {"decoder_depth": 2, "decoder_mlp_dim": 2048, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
                     "mask_in_chans": 16}
"""The prompt encoder's and mask decoder's sizes in segment-anything's ``build_sam._build_sam``."""
_SIZE_TENSORS = {  # each decoder size of _build_sam and the tensor (and axis) that shows it
    "decoder_mlp_dim": ("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0),
    "iou_head_hidden_dim": ("mask_decoder.iou_prediction_head.layers.0.weight", 0),
    "mask_in_chans": ("prompt_encoder.mask_downscaling.3.weight", 0),
}


def decoder_sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The sizes of the prompt encoder and mask decoder a SAM checkpoint's tensors hold (all but the
    head count, which no tensor shows): ``decoder_depth``, ``decoder_mlp_dim``, ``iou_head_depth``,
    ``iou_head_hidden_dim`` and ``mask_in_chans``; those it lacks are left out."""
    sizes = {name: int(state[key].shape[axis]) for name, (key, axis) in _SIZE_TENSORS.items() if key in state}
    for name, prefix, suffix in (("decoder_depth", "mask_decoder.transformer.layers.", ""),
                                 ("iou_head_depth", "mask_decoder.iou_prediction_head.layers.", ".weight")):
        found = {key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix) and key.endswith(suffix)}
        if found:
            sizes[name] = len(found)
    return sizes


def sam_prompt_and_decoder(
    checkpoint: str | Path, embed_dim: int, grid: tuple[int, int], img_size: int, decoder_depth: int | None = None,
    decoder_mlp_dim: int | None = None, decoder_heads: int = 8, iou_head_depth: int | None = None,
    iou_head_hidden_dim: int | None = None, mask_in_chans: int | None = None,
) -> tuple[PromptEncoder, MaskDecoder]:
    """SAM's prompt encoder and mask decoder for an encoder of ``img_size`` pixels, an h×w ``grid``
    and ``embed_dim`` = E output channels, filled from ``checkpoint``'s ``prompt_encoder.*`` and
    ``mask_decoder.*`` tensors. Sizes left None are the checkpoint's (:func:`decoder_sizes`; SAM's
    ``build_sam._build_sam`` sizes where it holds none); ``decoder_heads`` (SAM's 8) shows in no
    tensor and must be given when the checkpoint's decoder has other heads."""
    state = read_state_dict(checkpoint)
    given = {"decoder_depth": decoder_depth, "decoder_mlp_dim": decoder_mlp_dim, "iou_head_depth": iou_head_depth,
             "iou_head_hidden_dim": iou_head_hidden_dim, "mask_in_chans": mask_in_chans}
    size = {**SAM_DECODER_SIZES, **decoder_sizes(state), **{k: v for k, v in given.items() if v is not None}}
    prompt = PromptEncoder(embed_dim=embed_dim, image_embedding_size=grid, input_image_size=(img_size, img_size),
                           mask_in_chans=size["mask_in_chans"])
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=embed_dim, iou_head_depth=size["iou_head_depth"],
        iou_head_hidden_dim=size["iou_head_hidden_dim"],
        transformer=TwoWayTransformer(depth=size["decoder_depth"], embedding_dim=embed_dim,
                                      mlp_dim=size["decoder_mlp_dim"], num_heads=decoder_heads),
    )
    for prefix, module in zip(_PARTS, (prompt, decoder)):
        part = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        own = module.state_dict()
        wrong = sorted(k for k in own if k not in part or part[k].shape != own[k].shape)
        if wrong:
            raise BenchbaseError(
                f"checkpoint {checkpoint} has no {prefix}* tensors that fit a {embed_dim}-channel SAM "
                f"{prefix[:-1]} ({', '.join(wrong[:3])}); give a full SAM checkpoint of the student's size or "
                "set the decoder sizes of the sam_everything task"
            )
        module.load_state_dict(part, strict=False)
    return prompt, decoder


class EmbeddingPredictor(SamPredictor):
    """A ``SamPredictor`` whose image embedding is a student's neck output.

    ``set_image`` takes the student's own input as an [H, W, C] float array (the dataset's
    normalised channels, stacked frame + events; the student reads its modality's channels), resizes
    its longer side to the encoder's ``img_size`` (bilinear, as SAM's ``ResizeLongestSide``), pads
    it bottom/right and stores the ``tokens`` tap as ``features`` [1, E, h, w]. SAM's pixel
    normalisation is not applied: the data are normalised already (EventSAM normalises its voxel
    images with the same ImageNet statistics). With ``output_size`` set (a label map's size), SAM
    upsamples its masks to that size instead of the image's, as it returns masks at a downsized
    image's original resolution.
    """

    def __init__(self, sam: Sam, student: VitModel):
        super().__init__(sam)
        self.student = student
        self.output_size: tuple[int, int] | None = None  # masks at this size (a label map's), else the image's

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        height, width = image.shape[:2]
        tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=self.device)
        tensor = tensor.permute(2, 0, 1)[None]
        size = self.transform.get_preprocess_shape(height, width, self.transform.target_length)
        if size != (height, width):
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        self.reset_image()
        self.original_size, self.input_size = self.output_size or (height, width), size
        encoder: ImageEncoderViT = self.model.image_encoder
        tokens = self.student.run(pad_to_size(tensor, encoder.img_size), [Tap("tokens")])[Tap("tokens")]
        self.features = tokens.transpose(1, 2).reshape(1, tokens.shape[-1], *token_grid(encoder))
        self.is_image_set = True


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> np.ndarray:
    """SAM's small-region clean-up of one [H, W] bool mask, with scipy instead of OpenCV:
    ``mode="holes"`` fills 8-connected holes under ``area`` pixels, ``"islands"`` removes
    8-connected islands under ``area`` (keeping the largest when all are small)."""
    working = ~mask if mode == "holes" else mask
    regions, count = ndimage.label(working, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(regions.reshape(-1), minlength=count + 1)[1:]  # [count]
    small = np.flatnonzero(sizes < area) + 1
    if small.size == 0:
        return mask
    if mode == "holes":
        return mask | np.isin(regions, small)
    kept = np.flatnonzero(sizes >= area) + 1
    return np.isin(regions, kept if kept.size else [int(np.argmax(sizes)) + 1])


def mask_box(mask: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1] (inclusive pixel indices) of a non-empty [H, W] bool mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes of inclusive pixel indices."""
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]) + 1, 0, None).prod()
    area_a, area_b = (a[2:] - a[:2] + 1).prod(), (b[2:] - b[:2] + 1).prod()
    return float(inter / (area_a + area_b - inter))


def clean_small_regions(masks: list[np.ndarray], area: int, nms_threshold: float) -> list[np.ndarray]:
    """SAM's clean-up of generated [H, W] bool masks: holes, then islands, under ``area`` pixels
    are removed; then box NMS at ``nms_threshold`` (SAM's max of its box and crop NMS thresholds),
    preferring masks the clean-up left unchanged (score 1) over changed ones (score 0)."""
    if area <= 0 or not masks:
        return list(masks)
    cleaned, scores = [], []
    for mask in masks:
        new = remove_small_regions(remove_small_regions(mask, area, "holes"), area, "islands")
        cleaned.append(new)
        scores.append(float(np.array_equal(new, mask)))
    boxes = batched_mask_to_box(torch.as_tensor(np.stack(cleaned))).float()
    keep = batched_nms(boxes, torch.tensor(scores), torch.zeros(len(cleaned)), iou_threshold=nms_threshold)
    return [cleaned[i] for i in keep.tolist()]


def drop_repeated_masks(masks: list[np.ndarray], box_iou_threshold: float) -> list[np.ndarray]:
    """EventSAM's ``remove_repeat_mask``: from the largest mask down, a mask whose box centre lies
    in the box of a kept (larger) mask and whose box IoU with it exceeds ``box_iou_threshold`` is
    dropped. Returns the kept [H, W] masks, largest first."""
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for mask in sorted(masks, key=lambda m: -int(m.sum())):
        box = mask_box(mask)
        centre = (box[:2] + box[2:]) / 2
        if any((big[:2] <= centre).all() and (centre <= big[2:]).all() and box_iou(box, big) > box_iou_threshold
               for _, big in kept):
            continue
        kept.append((mask, box))
    return [mask for mask, _ in kept]


def paint_segments(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """EventSAM's ``obtain_mask_image`` as segment ids: masks painted from the largest to the
    smallest over a background segment; returns [H, W] int64 ids 0..S-1 of the visible segments
    (the background, where visible, is one of them)."""
    painted = np.zeros(shape, dtype=np.int64)
    for index, mask in enumerate(sorted(masks, key=lambda m: -int(m.sum())), start=1):
        painted[mask] = index
    return np.unique(painted, return_inverse=True)[1].reshape(shape)


class SamEverything(Evaluator):
    """EventSAM's "segment everything" evaluation of a SAM-encoder student (research notes 3.2).

    For each image of ``test_split`` (at most ``max_images``): segment-anything's
    ``SamAutomaticMaskGenerator`` prompts SAM's prompt encoder and mask decoder (from
    ``checkpoint``; left unset, from ``teacher_checkpoint``, the suite teacher's file, which the
    harness fills: ``teacher.checkpoint`` or a recipe teacher's ``teacher.pt``, a full SAM
    checkpoint when the recipe is ``sam``) with a ``points_per_side``² grid of points on the student's embedding
    (:class:`EmbeddingPredictor`), keeping masks with predicted IoU above ``pred_iou_thresh`` and
    stability above ``stability_score_thresh``, box NMS at ``box_nms_thresh``, one crop layer.
    Each mask then loses holes and islands under ``min_mask_region_area`` pixels, followed by SAM's
    NMS pass over the cleaned masks (:func:`clean_small_regions`, SAM's own clean-up), masks under ``min_mask_area`` pixels are dropped and
    repeats removed (EventSAM's post-processing, ``repeat_box_iou``), and the rest are painted into
    one segment map, scored against the connected regions of the label map.

    Defaults are EventSAM's ``predict_mask.py`` settings (64 points per side, thresholds 0.75,
    region area 900, mask area 144, repeat box IoU 0.1); the decoder sizes are the checkpoint's
    (``decoder_heads``, which no tensor shows, SAM's 8). Each image is read as scored
    (``evaluation_item``: short side at the image size, label map at its own resolution) and its
    masks are made at the label map's size. Pixel areas are absolute, or with ``reference_area``
    given for frames of that many pixels (EventSAM's DAVIS346 frames: 346 x 260 = 89,960) and
    scaled to each label map's pixel count, so that smaller images keep the same share. Metrics (percent): ``mIoU``, ``aIoU``, ``precision``, ``recall`` (EventSAM's
    mIoU, aIoU, mP, mR) over every ground-truth segment of the split.
    """

    name = "sam_everything"

    def __init__(
        self, checkpoint: str | None = None, test_split: str = "test", max_images: int | None = None,
        points_per_side: int = 64, points_per_batch: int = 64, pred_iou_thresh: float = 0.75,
        stability_score_thresh: float = 0.75, box_nms_thresh: float = 0.7, min_mask_region_area: int = 900,
        min_mask_area: int = 144, repeat_box_iou: float = 0.1, decoder_depth: int | None = None,
        decoder_mlp_dim: int | None = None, decoder_heads: int = 8, iou_head_depth: int | None = None,
        iou_head_hidden_dim: int | None = None, mask_in_chans: int | None = None, teacher_checkpoint: str | None = None,
        reference_area: int | None = None,
    ):
        if points_per_side < 1 or (max_images is not None and max_images < 1):
            raise BenchbaseError(f"sam_everything needs points_per_side >= 1 and max_images >= 1; got "
                                 f"{points_per_side} and {max_images}")
        if reference_area is not None and reference_area < 1:
            raise BenchbaseError(f"sam_everything: reference_area={reference_area}; give the pixels of the frames the "
                                 "areas are for (EventSAM's 89960), or null for absolute areas")
        self.reference_area = reference_area
        self.checkpoint, self.teacher_checkpoint = checkpoint, teacher_checkpoint
        self.test_split, self.max_images = test_split, max_images
        self.generator_args = {
            "points_per_side": points_per_side, "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
            "box_nms_thresh": box_nms_thresh, "crop_n_layers": 0, "output_mode": "binary_mask",
        }
        self.min_mask_region_area, self.min_mask_area, self.repeat_box_iou = (
            min_mask_region_area, min_mask_area, repeat_box_iou)
        self.decoder_args = {"decoder_depth": decoder_depth, "decoder_mlp_dim": decoder_mlp_dim,
                             "decoder_heads": decoder_heads, "iou_head_depth": iou_head_depth,
                             "iou_head_hidden_dim": iou_head_hidden_dim, "mask_in_chans": mask_in_chans}

    def areas(self, pixels: int) -> tuple[int, int]:
        """(region area, mask area) thresholds for a label map of ``pixels`` pixels."""
        scale = 1.0 if self.reference_area is None else pixels / self.reference_area
        return round(self.min_mask_region_area * scale), round(self.min_mask_area * scale)

    def masks(self, generator: SamAutomaticMaskGenerator, image: torch.Tensor,
              size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """The cleaned-up, de-duplicated bool masks of one [C, H', W'] image, at ``size`` (a label
        map's [H, W]; None: the image's), largest first."""
        generator.predictor.output_size = size
        found = [record["segmentation"] for record in generator.generate(image.permute(1, 2, 0).cpu().numpy())]
        region_area, mask_area = self.areas(int(np.prod(size or image.shape[-2:])))
        masks = clean_small_regions(found, region_area, max(generator.box_nms_thresh, generator.crop_nms_thresh))
        return drop_repeated_masks([m for m in masks if m.sum() >= max(mask_area, 1)], self.repeat_box_iou)

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        encoder = student.export()  # the pixels floor has none: NotApplicable
        if not isinstance(encoder, ImageEncoderViT):
            raise BenchbaseError(
                f"sam_everything runs SAM's mask decoder on a SAM image encoder; this model is "
                f"{type(encoder).__name__} (use a student with arch sam)"
            )
        checkpoint = self.checkpoint or self.teacher_checkpoint
        if not checkpoint:
            raise BenchbaseError(
                "the sam_everything task needs a SAM checkpoint whose prompt encoder and mask decoder read the "
                "student's embedding: set params.checkpoint=PATH or use a teacher with one (teacher.source=checkpoint, "
                "or a recipe with teacher.recipe.finetune_method=sam)"
            )
        grid = token_grid(encoder)
        prompt, decoder = sam_prompt_and_decoder(checkpoint, student.token_width, grid, encoder.img_size,
                                                 **self.decoder_args)
        sam = Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).to(device)
        generator = SamAutomaticMaskGenerator(sam, **self.generator_args)
        generator.predictor = EmbeddingPredictor(sam, student)
        test_set = data.split(self.test_split)
        count = len(test_set) if self.max_images is None else min(self.max_images, len(test_set))
        accumulator = SegmentMetricAccumulator(ignore_index=data.ignore_index)
        was_training, masks_found = student.training, 0
        student.eval()
        try:
            for index in range(count):
                image, label = test_set.evaluation_item(index)
                masks = self.masks(generator, image, tuple(label.shape))
                masks_found += len(masks)
                accumulator.update_segments(paint_segments(masks, tuple(label.shape)), label, test_set.sequence(index))
        finally:
            student.train(was_training)
        return self._metrics(accumulator, count, masks_found, data)

    def _metrics(self, accumulator: SegmentMetricAccumulator, images: int, masks: int, data: DataBundle
                 ) -> list[Metric]:
        result = accumulator.compute()
        args = self.generator_args
        scaled = "" if self.reference_area is None else (
            f" (areas for {self.reference_area}-pixel frames, scaled to each label map's pixels)")
        source = (Path(self.checkpoint).name if self.checkpoint
                  else f"the suite teacher's checkpoint ({Path(self.teacher_checkpoint).name})")
        protocol = (
            f"SAM segment everything (EventSAM's evaluation): SAM prompt encoder + mask decoder from "
            f"{source} on the student's image embedding, {args['points_per_side']}x"
            f"{args['points_per_side']} point grid, predicted IoU > {args['pred_iou_thresh']:g}, stability > "
            f"{args['stability_score_thresh']:g}, box NMS {args['box_nms_thresh']:g}, holes/islands under "
            f"{self.min_mask_region_area} px removed, masks under {self.min_mask_area} px dropped{scaled}, repeats "
            f"(box IoU > {self.repeat_box_iou:g}) dropped, painted largest first, masks made at each label map's "
            f"resolution; test split {self.test_split} "
            f"(n={images} images); EventSAM segment metric as released against 8-connected regions "
            f"of equal label (at least {GT_MIN_AREA} px; predicted segments too), {averaged(result)}"
        )
        return [
            Metric(name=key, value=100 * result[key], n=result["count"], protocol=f"{protocol}; {what}",
                   extras={OUTCOMES: accumulator.outcomes(key, arrays_of=None if key == "mIoU" else "mIoU"),
                           MASKS_FOUND: masks})
            for key, what in (("mIoU", "mean matched IoU"), ("aIoU", "matched IoU weighted by ground-truth area"),
                              ("precision", "mean |gt ∩ pred| / |pred| (mP)"),
                              ("recall", "mean |gt ∩ pred| / |gt| (mR)"))
        ]
