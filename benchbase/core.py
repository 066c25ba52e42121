"""The core plugin (entry point ``core``): benchbase's own components, registered through the
same hooks as any plugin.

- students/teachers: ``vit`` (timm VisionTransformer), ``sam`` (segment-anything's ImageEncoderViT),
- datasets: ``digits`` and ``digit_scenes`` (embedded, scikit-learn), ``glyphs`` and ``glyph_scenes``
  (generated procedural characters, the default suite's); on disk: ``imagefolder``,
  ``imagenet``, ``cifar10`` (ImageFolder layout), ``omniglot``, ``camvid``, ``ade20k``,
  ``miniimagenet``, ``tieredimagenet``, ``cifarfs``, ``fc100``; paired frame + event data:
  ``digit_scene_events`` and ``camvid_events`` (SIMULATED events), ``event_recordings`` (.npz),
- evaluators: ``fewshot``, ``linear_probe``, ``finetune``, ``segmentation``, ``sam_everything``
  (SAM's mask decoder on a SAM student's embedding, EventSAM's evaluation; needs a SAM checkpoint),
- loggers: ``jsonl`` (the run folder's ``steps.jsonl``, always on) and ``tensorboard``,
- methods: ``supervised`` (cross-entropy on labels: the teacher recipe's fine-tuning and the
  from-scratch reference row) and ``supervised_segmentation`` (per-pixel cross-entropy: the recipe
  for segmentation suites); neither is a distillation method.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbase import hookimpl
from benchbase.capture import Captures, Tap
from benchbase.components import DataBundle, Method, StepInputs, Student, VitModel
from benchbase.data import ade20k, camvid, digits, events, fewshot_folders, folders, glyphs, omniglot, scenes
from benchbase.data.ade20k import build_ade20k
from benchbase.data.camvid import build_camvid
from benchbase.data.digits import load_digits_bundle
from benchbase.data.events import build_camvid_events, build_digit_scene_events, build_event_recordings
from benchbase.data.fewshot_folders import build_cifarfs, build_fc100, build_miniimagenet, build_tieredimagenet
from benchbase.data.folders import load_image_folder
from benchbase.data.omniglot import build_omniglot
from benchbase.data.scenes import load_digit_scenes
from benchbase.errors import BenchbaseError
from benchbase.evaluation.classification import FineTune, LinearProbe
from benchbase.evaluation.fewshot import FewShot
from benchbase.evaluation.sam_masks import SamEverything
from benchbase.evaluation.segmentation import SegmentationProbe
from benchbase.loggers import StepsFile, TensorBoard
from benchbase.models import build_vit, input_channels
from benchbase.sam import SamStudent, build_sam_encoder


def random_shifts(images: Tensor, pixels: int) -> Tensor:
    """Each image translated by its own random whole-pixel offset in [-pixels, pixels] on each axis
    (torch's global generator), the edge pixels repeated into the uncovered border."""
    if pixels <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])


class Supervised(Method):
    """Cross-entropy of the student's logits with the labels; no teacher.

    ``label_smoothing`` as ``F.cross_entropy``'s; ``shift`` > 0 translates each training image by a
    random whole number of pixels up to ``shift`` on each axis (the Omniglot suite's augmentation)."""

    uses_teacher = False
    student_taps = (Tap("logits"),)

    def __init__(self, label_smoothing: float = 0.0, shift: int = 0):
        super().__init__()
        if shift < 0:
            raise BenchbaseError(f"supervised: shift={shift}; use 0 (none) or a number of pixels")
        self.label_smoothing, self.shift = label_smoothing, int(shift)

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        return super().make_inputs(random_shifts(images, self.shift), labels)

    def forward(self, student: Captures, teacher: None, inputs: StepInputs) -> dict[str, Tensor]:
        logits = student[Tap("logits")]
        return {"ce": F.cross_entropy(logits, inputs.labels, label_smoothing=self.label_smoothing)}


class SupervisedSegmentation(Method):
    """Per-pixel cross-entropy of a 1x1 head on the final tokens, upsampled to the label maps.

    Trains a SAM (or ViT) encoder on a segmentation split (labels [B, H, W]); the teacher recipe's
    fine-tuning for segmentation suites. Not a distillation method.
    """

    uses_teacher = False
    student_taps = (Tap("tokens"),)

    def __init__(self, num_classes: int | None = None, ignore_index: int = -100):
        """``num_classes`` (and ``ignore_index``) left unset come from the distillation data
        (:func:`benchbase.methods.build_method`)."""
        super().__init__()
        if num_classes is None or num_classes < 1:
            raise BenchbaseError("supervised_segmentation needs method.params.num_classes >= 1 (the harness fills it "
                                 "from the distillation data)")
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def setup(self, student: Student, teacher: None) -> None:
        self.head = nn.Conv2d(student.token_width, self.num_classes, 1)
        self.prefix = student.num_prefix_tokens

    def forward(self, student: Captures, teacher: None, inputs: StepInputs) -> dict[str, Tensor]:
        tokens = student[Tap("tokens")][:, self.prefix:]  # [B, N, C]
        side = math.isqrt(tokens.shape[1])
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        logits = F.interpolate(self.head(grid), size=inputs.labels.shape[-2:], mode="bilinear", align_corners=False)
        return {"ce": F.cross_entropy(logits, inputs.labels.long(), ignore_index=self.ignore_index)}


def _with_input(model: VitModel, cfg: Any, data: DataBundle) -> VitModel:
    model.input_slice = data.channels(cfg.get("input"))
    return model


def build_vit_student(cfg: Any, data: DataBundle) -> Student:
    return _with_input(Student(build_vit(cfg, data, pretrained=cfg.get("pretrained", False))), cfg, data)


def build_vit_teacher(cfg: Any, data: DataBundle, pretrained: bool = False) -> Student:
    """A timm ViT teacher's network (timm's pretrained weights with ``pretrained``, for
    ``teacher.source=timm``); the harness fills and freezes it."""
    return _with_input(Student(build_vit(cfg, data, pretrained=pretrained)), cfg, data)


def build_sam(cfg: Any, data: DataBundle) -> nn.Module:
    """SAM's image encoder: ``cfg.model`` is the preset (vit_b, vit_l, vit_h, tiny); sizes and
    ``params`` (window_size, global_attn_indexes, out_chans) override it."""
    sizes = {key: cfg.get(key) for key in ("embed_dim", "depth", "num_heads", "patch_size")}
    return build_sam_encoder(cfg.model, img_size=data.image_size, in_chans=input_channels(cfg, data),
                             **sizes, **dict(cfg.get("params") or {}))


def build_sam_student(cfg: Any, data: DataBundle) -> Student:
    return _with_input(SamStudent(build_sam(cfg, data)), cfg, data)


def build_digits(cfg: Any) -> DataBundle:
    params = dict(cfg.get("params") or {})
    return load_digits_bundle(image_size=cfg.get("image_size") or 16, **params)


def build_digit_scenes(cfg: Any) -> DataBundle:
    params = dict(cfg.get("params") or {})
    return load_digit_scenes(image_size=cfg.get("image_size") or 32, **params)


@hookimpl
def benchbase_register_students(register):
    register("vit", build_vit_student)
    register("sam", build_sam_student)


@hookimpl
def benchbase_register_teachers(register):
    register("vit", build_vit_teacher)
    register("sam", build_sam_student)  # a SAM teacher's network is a SAM student's, frozen by the harness


@hookimpl
def benchbase_register_methods(register):
    register("supervised", Supervised)
    register("supervised_segmentation", SupervisedSegmentation)


@hookimpl
def benchbase_register_evaluators(register):
    register("fewshot", FewShot)
    register("linear_probe", LinearProbe)
    register("finetune", FineTune)
    register("segmentation", SegmentationProbe)
    register("sam_everything", SamEverything)


@hookimpl
def benchbase_register_datasets(register):
    register("digits", build_digits, info=digits.INFO)
    register("digit_scenes", build_digit_scenes, info=scenes.INFO)
    register("glyphs", glyphs.build_glyphs, info=glyphs.INFO)
    register("glyph_scenes", glyphs.build_glyph_scenes, info=glyphs.SCENES_INFO)
    register("imagefolder", load_image_folder, info=folders.IMAGE_FOLDER_INFO)
    register("imagenet", partial(load_image_folder, name="imagenet", default_size=224), info=folders.IMAGE_FOLDER_INFO)
    register("cifar10", partial(load_image_folder, name="cifar10", default_size=32), info=folders.IMAGE_FOLDER_INFO)
    register("omniglot", build_omniglot, info=omniglot.INFO)
    register("camvid", build_camvid, info=camvid.INFO)
    register("ade20k", build_ade20k, info=ade20k.INFO)
    register("miniimagenet", build_miniimagenet, info=fewshot_folders.INFO)
    register("tieredimagenet", build_tieredimagenet, info=fewshot_folders.INFO)
    register("cifarfs", build_cifarfs, info=fewshot_folders.INFO)
    register("fc100", build_fc100, info=fewshot_folders.INFO)
    register("digit_scene_events", build_digit_scene_events, info=events.DIGIT_SCENE_EVENTS_INFO)
    register("camvid_events", build_camvid_events, info=events.CAMVID_EVENTS_INFO)
    register("event_recordings", build_event_recordings, info=events.RECORDING_INFO)


@hookimpl
def benchbase_register_loggers(register):
    register("jsonl", StepsFile)
    register("tensorboard", TensorBoard)
