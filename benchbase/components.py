"""The four component interfaces of a distillation benchmark: Teacher, Student, Method, Evaluator.

Plugins register implementations through the hooks in :mod:`benchbase.hookspecs`. Tensor shapes
use B = batch, C = channels, H/W = image height/width, N = patches, T = tokens (prefix + patches),
D = embedding width; in attention shapes H = heads (see :data:`benchbase.capture.TAP_SHAPES`).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from benchbase.capture import Captures, ModelInput, Tap, run_vit
from benchbase.pooling import check_class_token, feature_taps, pool_tokens, token_grid


def read_channels(images: Tensor, input_slice: tuple[int, int] | None) -> Tensor:
    """The channels of ``images`` [B, C, H, W] a network with ``input_slice`` reads: all of them
    without a slice, or with (start, stop) and C another count, [B, stop - start, H, W] (one
    modality of stacked frame + event images). A pixel target (MAE's) is built from these."""
    if input_slice is None:
        return images
    start, stop = input_slice
    return images if images.shape[1] == stop - start else images[:, start:stop]


class VitModel(nn.Module):
    """A timm ``VisionTransformer`` plus the capture API; the wrapped model stays unmodified.

    ``model`` is the plain timm model, ``run(inp, taps)`` returns the requested tensors.
    """

    checkpoint_loader: ClassVar[Callable[[nn.Module, str], None] | None] = None
    """How the architecture loads a checkpoint file of its own format into ``model`` (SAM's full
    checkpoints); None: a state dict of ``model`` (:func:`benchbase.models.load_weights`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.input_slice: tuple[int, int] | None = None
        """Channels [start, stop) this model reads when fed images that stack several modalities
        (e.g. the frame for a teacher, the events for a student); None reads every channel."""

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def token_width(self) -> int:
        """Width of the final ``tokens`` tap (the embedding width; SAM: its neck's channels)."""
        return self.embed_dim

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        return self.model.blocks[-1].attn.num_heads

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    @property
    def num_patches(self) -> int:
        return self.model.patch_embed.num_patches

    @property
    def num_prefix_tokens(self) -> int:
        return self.model.num_prefix_tokens

    def run(self, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
        """Forward ``inp`` ([B, C, H, W] or a :class:`ModelInput`) and capture ``taps``.

        With ``input_slice`` set, stacked images (more channels than the slice) are cut to it.
        """
        if self.input_slice is not None:
            images = inp.images if isinstance(inp, ModelInput) else inp
            read = self.channels_read(images)
            if read is not images:
                inp = replace(inp, images=read) if isinstance(inp, ModelInput) else read
        return self._capture(inp, taps)

    def channels_read(self, images: Tensor) -> Tensor:
        """The channels of ``images`` this network reads (see :func:`read_channels`)."""
        return read_channels(images, self.input_slice)

    def _capture(self, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
        """The architecture's capture; a wrapper for another architecture overrides this."""
        return run_vit(self.model, inp, taps)

    def export(self) -> nn.Module:
        """The network as a plain timm/torch model (what fine-tuning evaluators copy and train)."""
        return self.model

    @property
    def has_drop_path(self) -> bool:
        """Whether the architecture's blocks take a stochastic-depth rate (timm ViT blocks do)."""
        return hasattr(self.model, "blocks")

    def as_teacher(self, source: str = "") -> Teacher:
        """This network frozen as a :class:`Teacher` of its architecture, reading the same channels;
        ``source`` says where its weights came from."""
        teacher = Teacher(self.model, source)
        teacher.input_slice = self.input_slice
        return teacher

    def features(self, images: Tensor, pooling: str) -> Tensor:
        """One frozen feature vector per image ([B, C, H, W] -> [B, F]), pooled from the final
        tokens as :func:`benchbase.pooling.pool_tokens` describes."""
        check_class_token(getattr(self.model, "cls_token", None) is not None, pooling)
        captured = self.run(images, feature_taps(pooling))
        return pool_tokens(captured[Tap("tokens")], captured.get(Tap("attn", -1)), self.num_prefix_tokens, pooling)

    def patch_grid(self, images: Tensor) -> Tensor:
        """Final-norm patch tokens on the patch grid: [B, C, H', W'] normalised images (S x S, or
        any size the model accepts) -> [B, D, h, w], (h, w) = (H' // patch, W' // patch)."""
        tokens = self.run(images, [Tap("tokens")])[Tap("tokens")][:, self.num_prefix_tokens :]  # [B, h·w, D]
        return token_grid(tokens, images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)


class Student(VitModel):
    """The model being trained (a timm ViT by default)."""


class Teacher(VitModel):
    """A frozen model run in inference mode.

    It only runs as deep as the deepest tensor any loss asks of it (see :func:`run_vit`).
    ``source`` says where the weights came from (checkpoint path, timm name or recipe hash).
    """

    def __init__(self, model: nn.Module, source: str = ""):
        super().__init__(model)
        self.source = source
        self.train(False)
        self.model.requires_grad_(False)
        # found once, not on every training step: the stochastic-depth modules teaching() enables
        self._drop_paths = [m for m in self.model.modules() if type(m).__name__ == "DropPath"]

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    @contextlib.contextmanager
    def teaching(self) -> Iterator[None]:
        """While the teacher produces a step's targets: its stochastic-depth modules (timm
        ``DropPath``, present when ``teacher.distill_drop_path`` > 0, TinyMIM's Table 13) drop
        paths; everything else stays in eval mode. Outside it the teacher is deterministic. The
        modules are those the model had when it became a teacher."""
        for module in self._drop_paths:
            module.train(True)
        try:
            yield
        finally:
            for module in self._drop_paths:
                module.train(False)

    def run(self, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
        """Forward under ``torch.inference_mode`` (no autograd state); the captures are returned
        as ordinary tensors so losses may use them as targets."""
        with torch.inference_mode():
            out = super().run(inp, taps)
        return Captures({tap: tensor.clone() for tap, tensor in out.items()})


@dataclass
class StepInputs:
    """What a loss asks the harness to feed both models in one step.

    ``student``/``teacher`` are one :class:`ModelInput` or a list of them (views); the harness
    returns captures in the same structure. ``labels`` is [B] long. ``extras`` holds anything the
    loss needs again in ``forward`` (e.g. MAE's shuffle order).
    """

    student: ModelInput | list[ModelInput]
    teacher: ModelInput | list[ModelInput] | None
    labels: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module, ABC):
    """A distillation method: its objective and everything around it that one training step needs.

    A method declares the tensors it needs (``student_taps``, ``teacher_taps``), builds both
    models' inputs from a batch (``make_inputs``), returns its terms by name from ``forward``
    (the total is their sum; every term is logged), may own parameters (projection heads,
    decoders: build them in ``setup``), may change or drop its gradients before each update
    (``before_update``), may act after each optimiser step (``after_step``) and may report what
    it saw while training (``training_summary``).
    Constructor keyword arguments are the method's config keys (``method.params``); those named
    ``num_classes``, ``ignore_index``, ``image_mean`` or ``image_std``, when the config leaves them
    unset, come from the distillation data (:data:`benchbase.methods.DATA_ARGS`). A param added
    after runs of the method were stored goes in ``later_params`` with the value that computes
    what those runs did, so that they keep their config hashes.
    """

    uses_teacher: ClassVar[bool] = True
    student_arch: ClassVar[str | None] = None  # the student.arch it needs (None: any)
    reads_sources: ClassVar[bool] = False
    """Whether the method trains on the data's source images (:meth:`DataBundle.source_split`) and
    cuts its model-sized crops from them itself, as SMKD's multi-crop cuts 224- and 96-px crops from
    480-px images; a method that does not trains on the splits at the models' ``image_size``."""
    student_taps: Sequence[Tap] = ()
    teacher_taps: Sequence[Tap] = ()
    later_params: ClassVar[Mapping[str, Any]] = {}
    """Params added after runs of the method were stored, each with the value that computes what
    those runs did: a param at that value is left out of run hashes, so the stored runs keep their
    names (see :func:`benchbase.methods.identity_params`)."""
    recipe_only: ClassVar[bool] = False
    """Whether the method only trains teachers (a ``teacher.recipe`` stage, e.g. SAM's promptable
    training): it is no distillation method, so a plugin of such methods alone is not run as one."""

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Called once before training, before the optimiser is built: size heads to the models."""

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """Inputs for one step from a batch ([B, C, H, W] images, [B] labels): the same view for both."""
        view = ModelInput(images)
        return StepInputs(student=view, teacher=view if self.uses_teacher else None, labels=labels)

    @abstractmethod
    def forward(
        self, student: Captures | list[Captures], teacher: Captures | list[Captures] | None, inputs: StepInputs
    ) -> dict[str, Tensor]:
        """Loss terms by name, each a scalar tensor."""

    def before_update(self, epoch: int) -> None:
        """Called in every step after the backward pass and gradient clipping, before the optimiser
        applies the gradients, in epoch ``epoch`` (0-based). A method may change its gradients here
        or drop them (``param.grad = None``: the optimiser leaves that parameter alone this step), as
        DINO, iBOT and SMKD drop their head's last layer's during the first epoch."""

    def after_step(self, student: Student, progress: float) -> None:
        """Called after every optimiser step; ``progress`` runs from 0 to 1 over training."""

    def recipe_checkpoint(self, student: Student) -> dict[str, Tensor] | None:
        """What a recipe teacher this method trained is cached as: None (the default) caches the
        trained network alone; a method whose own modules belong with it returns the whole
        checkpoint (SAM's training: ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*``),
        which the architecture's ``checkpoint_loader`` must read back into the network."""
        return None

    def training_summary(self) -> list[Metric]:
        """Statistics the method gathered over its training steps (e.g. EventSAM's spread of token
        importance weights), stored with the run's metrics under the task ``train`` and shown in
        its table; none by default. A run resumed after its last step has none to report."""
        return []

    def evaluation_model(self, student: Student) -> Student:
        """The model that is scored and exported after training: ``student`` itself by default.

        A loss that keeps a better model of its own (e.g. an EMA teacher that the paper's released
        evaluation scores) returns a :class:`Student` view of it; evaluators and ``student.pt``
        then use that view.
        """
        return student


Loss = Method
"""The former name of :class:`Method`, kept for plugins that subclass ``Loss``."""


@dataclass
class Metric:
    """One measured number and how it was measured.

    ``ci95`` is the half-width of a 95% confidence interval where the value is a mean over
    episodes (or seeds); ``n`` is the number of samples (images, pixels or episodes) behind it;
    ``protocol`` describes exactly how it was produced so tables never mix protocols.
    """

    name: str
    value: float
    n: int
    protocol: str
    ci95: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def mean_ci95(values: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal-approximation interval, 1.96·std/sqrt(n)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.numel() < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(unbiased=True) / math.sqrt(values.numel()))


class LabeledImages(Dataset):
    """A classification split: ``split[i]`` is a ([C, H, W] float image, int label) pair.

    Images are already resized to the bundle's ``image_size`` and normalised; ``targets`` holds
    every item's label (in item order) so evaluators can group images by class without reading
    them, and ``classes`` names them (label ``k`` is ``classes[k]``). ``class_groups``, where the
    classes come in groups (Omniglot's characters in alphabets), names the group of each class
    (aligned with ``classes``); few-shot episodes can then be drawn within one group
    (``within_group``). None when the classes carry no group.
    """

    targets: Sequence[int]
    classes: Sequence[str]
    class_groups: Sequence[str] | None = None


class SegmentationImages(Dataset):
    """A segmentation split: ``split[i]`` is a ([C, H, W] float image, [H, W] long label map) pair.

    Label values index ``classes``; pixels equal to the bundle's ``ignore_index`` carry no label.
    A label map may be smaller or larger than its image (evaluators upsample to it).

    Items are what training (and distillation) reads: images at the bundle's ``image_size``.
    Scoring reads :meth:`evaluation_item`: the image with its short side at ``image_size`` and its
    aspect ratio kept, and the label map at its original resolution, never resized.
    """

    classes: Sequence[str]

    def evaluation_item(self, index: int) -> tuple[Tensor, Tensor]:
        """([C, h, w] float image whose short side is the bundle's ``image_size``, aspect ratio
        kept; [H, W] long label map at its original resolution). By default the item itself: an
        in-memory split stores its images at the model's size and its labels at their own size."""
        return self[index]

    def resized_shape(self, index: int) -> tuple[int, int]:
        """(h, w) of :meth:`evaluation_item`'s image (datasets read from files answer from the header)."""
        return tuple(self.evaluation_item(index)[0].shape[-2:])

    def sequence(self, index: int) -> str | None:
        """The recording (video sequence) image ``index`` comes from, e.g. CamVid's ``0001TP``, for
        metrics averaged per sequence (EventSAM's segment metric); None: the image stands alone."""
        return None


@dataclass
class DataBundle:
    """Named splits of one dataset plus what models need to know about its images.

    Classification splits are :class:`LabeledImages`; segmentation splits are
    :class:`SegmentationImages` (``ignore_index`` is then the unlabelled value, e.g. CamVid's 11).
    ``image_mean`` and ``image_std`` are the per-channel statistics the images were normalised with
    (one value per channel: ``image · std + mean`` are the pixels in [0, 1]), so that a method can
    act on pixel values (colour jitter, solarisation); None where the loader does not declare them
    (e.g. stacked frame + event channels). ``sources``, where the loader has them, are the splits'
    images at their source size (e.g. SMKD's 480-px miniImageNet copies, against the models'
    ``image_size`` of 224), from which a method that cuts its own crops trains
    (:attr:`Method.reads_sources`); None: the splits are the sources.
    """

    name: str
    splits: Mapping[str, LabeledImages | SegmentationImages]
    image_size: int
    in_chans: int
    num_classes: int
    description: str = ""
    ignore_index: int | None = None
    input_channels: dict[str, int] | None = None  # stacked modalities in channel order, e.g. {"frame": 1, "events": 3}
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    sources: Mapping[str, LabeledImages] | None = None

    def channels(self, group: str | None) -> tuple[int, int] | None:
        """The [start, stop) channel range of modality ``group`` in the stacked images (None: all)."""
        if group is None or not self.input_channels:
            return None
        start = 0
        for name, count in self.input_channels.items():
            if name == group:
                return start, start + count
            start += count
        raise KeyError(f"dataset {self.name!r} stacks {list(self.input_channels)}, not {group!r}")

    def split(self, name: str) -> LabeledImages | SegmentationImages:
        """The split called ``name``: a :class:`LabeledImages` for classification data, a
        :class:`SegmentationImages` for segmentation data.

        Raises:
            BenchbaseError: the dataset has no such split; the message lists the ones it has.
        """
        from benchbase.errors import BenchbaseError

        if name not in self.splits:
            raise BenchbaseError(
                f"dataset {self.name!r} has no split {name!r}; available: {', '.join(self.splits)}"
            )
        return self.splits[name]

    def source_split(self, name: str) -> LabeledImages | SegmentationImages:
        """The split called ``name`` at its source size (``sources``), or :meth:`split` without sources."""
        return self.split(name) if self.sources is None else self.sources[name]


DATASET_KINDS = {"classification": LabeledImages, "segmentation": SegmentationImages}
"""What the splits of each kind of dataset are."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset declares when it is registered (``register(name, build, info=...)``), so that
    ``benchbase datasets`` lists it without reading any data.

    ``splits`` maps each split's name to what it holds (and what suites use it for); ``layout`` is
    what ``data.<name>.root`` must hold, None for a dataset that needs no path (embedded or
    generated: the listing then loads it to count its items); ``kind`` is ``classification``
    (splits are :class:`LabeledImages`) or ``segmentation`` (:class:`SegmentationImages`).
    """

    splits: Mapping[str, str]
    layout: str | None = None
    kind: str = "classification"

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"DatasetInfo kind {self.kind!r}; use one of {', '.join(DATASET_KINDS)}")


class Evaluator(ABC):
    """Turns a trained student plus data into metrics.

    Constructor keyword arguments are the task's config keys. ``evaluate`` receives the student
    (call ``student.run`` for features, ``student.export()`` for the plain model) and the task's
    data, and returns :class:`Metric` objects, each with its protocol description.
    """

    name: ClassVar[str]

    reads_frozen_features: ClassVar[bool] = True
    """True (the default) for an evaluator that reads the student's features as they are (few-shot,
    linear probe, segmentation probe): it is handed a view that stops before any block training
    never reached (:mod:`benchbase.untrained`). False for one that fine-tunes the network, which
    trains those weights itself and gets the whole student."""

    @abstractmethod
    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        """Metrics of ``student`` on ``data``."""
