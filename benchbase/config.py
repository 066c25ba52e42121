"""Structured configs (validated dataclasses) and Hydra composition with plugin config dirs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf

from benchbase.errors import BenchbaseError

CONF_DIR = Path(__file__).parent / "conf"


@dataclass
class TrainerConfig:
    """Optimisation of one distillation run (AdamW, linear warm-up then cosine decay)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None  # cosine schedule of the weight decay to this value (DINO, iBOT, SMKD)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    clip_grad: Optional[float] = 3.0
    clip_grad_mode: str = "global"  # global: one norm over all gradients; per_parameter: each its own (DINO, SMKD)
    lr_scaling: str = "none"  # none: lr as given; linear: lr is the base lr at batch 256 (lr x batch / 256, MAE's rule)
    schedule: str = "cosine"  # cosine: warm-up then cosine to min_lr; exponential: warm-up then lr x gamma^k (EventSAM)
    gamma: float = 0.9  # schedule=exponential: the factor, applied after every gamma_every-th epoch (0, g, 2g, ...)
    gamma_every: int = 1
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    progress: bool = True
    compile: bool = False  # torch.compile the transformer blocks that no tap of the loss reads
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune | ...
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: a quick check without codegen)
    sync_every: Optional[int] = None  # steps between reads of the loss terms to the host (None: 1 on CPU, 25 on CUDA)


LATER_TRAINER_DEFAULTS = {"lr_scaling": "none", "weight_decay_end": None, "clip_grad_mode": "global",
                          "schedule": "cosine", "gamma": 0.9, "gamma_every": 1}
"""Trainer keys added after runs were stored, with the value they had then: left out of run hashes
and recipe keys at that value, so stored runs and cached teachers keep their names."""

RUN_ONLY_TRAINER_KEYS = ("progress", "device", "num_workers", "compile", "compile_mode", "compile_backend",
                         "sync_every")
"""Trainer keys that change how a run executes but not what it computes (left out of run hashes).

``compile*`` belong here for the reason ``device`` does: a compiled block computes the same
function, and only the order of float operations (kernel fusion) differs. ``sync_every`` only
decides how often the host waits for the device to read the loss terms (every step is still
checked and logged)."""


LATER_RECIPE_KEYS = ("finetune_params", "finetune_trainer")
"""``teacher.recipe`` keys added after runs were stored: left out of hashes while empty."""


def trainer_identity(trainer: dict[str, Any], leave_out: Sequence[str] = ()) -> dict[str, Any]:
    """The trainer settings as run hashes and cache keys name them: without the run-only keys,
    ``leave_out``, and the :data:`LATER_TRAINER_DEFAULTS` at their defaults."""
    def at_former_default(key: str, value: Any) -> bool:
        return key in LATER_TRAINER_DEFAULTS and value == LATER_TRAINER_DEFAULTS[key]

    return {k: v for k, v in trainer.items()
            if k not in (*RUN_ONLY_TRAINER_KEYS, *leave_out) and not at_former_default(k, v)}


def without_later_recipe_keys(teacher: dict[str, Any] | None) -> dict[str, Any] | None:
    """A teacher config (a plain dict) as hashes and table settings name it: its recipe's
    :data:`LATER_RECIPE_KEYS` (added after runs were stored) left out when empty, so those keep
    their names."""
    recipe = (teacher or {}).get("recipe")
    if isinstance(recipe, dict) and any(k in recipe and not recipe[k] for k in LATER_RECIPE_KEYS):
        teacher = {**teacher, "recipe": {k: v for k, v in recipe.items() if k not in LATER_RECIPE_KEYS or v}}
    return teacher


def suite_setting(config: dict, group: str) -> dict:
    """The suite's ``trainer`` or ``student`` settings in a resolved run ``config`` (a plain dict):
    the run's own, with the values its method's protocol replaced put back (``method.suite_values``,
    see :func:`benchbase.methods.with_protocol`)."""
    replaced = ((config.get("method") or {}).get("suite_values") or {}).get(group) or {}
    return {**(config.get(group) or {}), **replaced}


@dataclass
class ModelConfig:
    """A ViT: a timm model name plus size overrides (None keeps timm's value)."""

    arch: str = "vit"
    model: str = "vit_tiny_patch16_224"
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    patch_size: Optional[int] = None
    mlp_ratio: Optional[float] = None
    drop_path: float = 0.0  # stochastic depth rate (the last block's under the linear schedule)
    drop_path_schedule: str = "linear"  # linear: timm's ramp from 0 to drop_path over depth; constant: every block
    checkpoint: Optional[str] = None  # path to a state dict (weights_only)
    pretrained: bool = False  # timm pretrained weights (needs the hub)
    input: Optional[str] = None  # the modality it reads from stacked data (e.g. frame, events)
    params: dict[str, Any] = field(default_factory=dict)  # architecture-specific options


@dataclass
class RecipeConfig:
    """The suite's teacher recipe: MAE pre-training, then supervised fine-tuning, cached."""

    pretrain_method: str = "mae"  # "none" skips pre-training
    pretrain_epochs: int = 40
    finetune_method: str = "supervised"  # supervised (class labels), supervised_segmentation (label maps), sam, or none (pre-training only)
    finetune_epochs: int = 30
    # the fine-tuning method's params (e.g. supervised's label_smoothing, shift); left out of hashes when empty
    finetune_params: dict[str, Any] = field(default_factory=dict)
    # trainer settings of the fine-tuning stage over the suite trainer's (e.g. its own warmup_epochs),
    # beside lr, batch_size and epochs above; left out of hashes when empty
    finetune_trainer: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    batch_size: int = 64


@dataclass
class TeacherConfig(ModelConfig):
    """Where the teacher comes from: ``recipe`` (trained by the harness), ``checkpoint`` or ``timm``."""

    source: str = "recipe"
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    distill_drop_path: float = 0.0  # stochastic depth of the frozen teacher while it teaches (every block)


@dataclass
class StageConfig:
    """One training stage run (and cached) before a method's final run; see :mod:`benchbase.stages`.

    ``params`` update ``method.params`` for this stage, ``trainer`` and ``student`` update those
    groups; ``method`` names another registered loss (default: the method's own); ``then`` is how
    the next stage uses this one: ``continue`` (student weights and loss state), ``init`` (student
    weights) or ``teach`` (its student becomes the next teacher).
    """

    name: str = ""
    method: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    then: str = "continue"


@dataclass
class MethodConfig:
    """A distillation method: the registered loss name, its keyword arguments and optional stages."""

    name: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)
    stages: list[StageConfig] = field(default_factory=list)
    # which weights of a recipe teacher teach it: finetune (the whole recipe) or pretrain (after the
    # recipe's pre-training stage only, e.g. TinyMIM's MAE-pretrained teacher); see benchbase.teachers
    teacher_stage: str = "finetune"
    # the paper's trainer and student settings, over the suite's for this method's runs (e.g. MAE's
    # AdamW betas 0.9/0.95 and no clipping); a suite that cannot keep one names it in suite.deviations
    trainer: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    # set by benchbase.methods.with_protocol: the suite's trainer/student values the protocol replaced
    suite_values: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """One evaluation task of a suite: an evaluator on a dataset, with its keyword arguments."""

    evaluator: str = MISSING
    dataset: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillDataConfig:
    dataset: str = MISSING
    split: str = "train"


@dataclass
class SuiteConfig:
    """Which data a run distils on and which tasks score it, over which seeds."""

    name: str = MISSING
    description: str = ""
    distill: DistillDataConfig = field(default_factory=DistillDataConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    references: list[str] = field(default_factory=lambda: ["supervised"])  # reference rows (from scratch)
    floors: list[str] = field(default_factory=lambda: ["pixels", "random_init"])  # benchbase.floors.FLOORS
    # per method name, the method's own protocol at this suite's scale where its method file holds
    # values scaled to the small suites (SMKD's paper head and trainer on its few-shot suites; keys
    # as deviations, merged over method/<name>.yaml before them), printed on the table
    protocols: dict[str, Any] = field(default_factory=dict)
    # per method name, what this suite changes of the method's own protocol to fit its machine
    # ({params, trainer, student, teacher_stage}, merged over method/<name>.yaml), printed on the table
    deviations: dict[str, Any] = field(default_factory=dict)
    # per task name, why this suite's teacher cannot serve it: its score is not 10 points above both
    # floors (a model that learned nothing), so the task cannot tell methods apart here (issue 22's
    # quality target; tests/test_quality_targets.py holds every committed suite to it)
    unserved: dict[str, str] = field(default_factory=dict)
    # what this suite scales down from the papers' protocols to fit its machine (data, sizes, epochs,
    # heads), one line each, printed on the table; not part of a run's identity
    scaled: list[str] = field(default_factory=list)


@dataclass
class DatasetConfig:
    """Where a dataset lives and how its images are prepared."""

    root: Optional[str] = None
    image_size: Optional[int] = None
    on_corrupt: str = "error"  # error | skip
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    batch_size: int = 256


@dataclass
class BenchbaseConfig:
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: Optional[MethodConfig] = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: dict[str, DatasetConfig] = field(default_factory=dict)
    seed: int = 0
    home: str = "${oc.env:BENCHBASE_HOME,.benchbase}"  # results database, run folders, teacher cache
    db: str = "${home}/results.db"
    leaderboard_dir: str = "leaderboards"
    # experiment loggers besides steps.jsonl (always on), e.g. [tensorboard, mlflow]: benchbase.loggers
    logger: list[str] = field(default_factory=list)


def _register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="benchbase_schema", node=BenchbaseConfig)


def _exception_chain_text(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _one_line(exc: Exception, overrides: Sequence[str]) -> str:
    text = _exception_chain_text(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, re.M)
        return f"unknown {group} option {option!r}; available: {', '.join(options) or 'none'}"
    key = re.search(r"Key '([^']+)' not in '([^']+)'", text)
    full_key = re.search(r"full_key: (\S+)", text)
    if key:
        where = full_key.group(1) if full_key else key.group(1)
        group = where.split(".")[0]
        return (f"unknown config key {where!r} in group {group!r} ({key.group(2)}); "
                f"check the spelling or see `benchbase run --cfg job`")
    cannot = re.search(r"Could not override '([^']+)'", text)
    if cannot and "To append to your config use" in text:
        where = cannot.group(1)
        return (f"unknown config key {where!r} in group {where.split('.')[0]!r}; "
                f"check the spelling or see `benchbase run --cfg job`")
    conv = re.search(r"Value '([^']*)' (?:of type '[^']*' )?could not be converted to (\w+)", text)
    if conv:
        where = full_key.group(1) if full_key else "?"
        return (f"wrong type for config key {where!r} in group {where.split('.')[0]!r}: "
                f"{conv.group(1)!r} is not a valid {conv.group(2)}")
    if "is not a ListConfig, list or tuple" in text and full_key:
        where = full_key.group(1)
        given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == where), "...")
        return f"config key {where!r} takes a list; write {where}=[{given}]"
    first = next((line for line in text.splitlines() if line.strip()), text)
    return f"bad configuration ({' '.join(overrides)}): {first}"


def register_configs(config_dirs: Sequence[str] = (), methods: Sequence[str] = ()) -> list[str]:
    """Store benchbase's schema in Hydra's ConfigStore, with an empty ``method`` option for each of
    ``methods`` that ships no ``method/<name>.yaml``; return the overrides that add ``config_dirs``
    to Hydra's search path (none without dirs)."""
    _register_schemas()
    cs = ConfigStore.instance()
    for name in methods:
        if not any((Path(d) / "method" / f"{name}.yaml").exists() for d in [CONF_DIR, *config_dirs]):
            cs.store(group="method", name=name, node=MethodConfig(name=name))
    searchpath = ",".join(f"file://{Path(d).resolve()}" for d in config_dirs)
    return [f"hydra.searchpath=[{searchpath}]"] if searchpath else []


def compose_config(
    overrides: Sequence[str] = (), config_dirs: Sequence[str] = (), methods: Sequence[str] = ()
) -> DictConfig:
    """Compose benchbase's config with ``overrides`` and the plugins' config dirs.

    ``methods`` are registered method names: one that ships no ``method/<name>.yaml`` still composes
    (``method=<name>`` with empty params, i.e. the loss's constructor defaults).
    Raises :class:`BenchbaseError` with one line naming the key or group on unknown keys, unknown
    group options and wrong types.
    """
    all_overrides = list(overrides) + register_configs(config_dirs, methods)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=all_overrides)
        # touch every value so interpolation errors surface here
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:
        raise BenchbaseError(_one_line(exc, overrides)) from exc
    finally:
        GlobalHydra.instance().clear()
    return cfg


def config_hash(cfg: DictConfig | dict) -> str:
    """A stable short hash of a config (resolved, keys sorted)."""
    import hashlib
    import json

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    blob = json.dumps(container, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
