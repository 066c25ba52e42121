"""A method's one home: its composed config, checked params, construction and run identity.

A *method* is a registered :class:`~benchbase.components.Method` class plus its config file
``method/<name>.yaml``. :class:`Methods` holds the suite's overrides and the loaded plugins and
answers everything about a method that the layers above the per-step core ask: its config
(composed once per role, with the method's protocol applied: the teacher stage it distils and its
own trainer and student settings, see :func:`with_protocol`), its ``method.params`` checked against
the constructor, the built method, whether it runs on a student architecture, and the params and
trainer settings the teacher recipe builds its methods with. The identities that name runs and
caches live here too: :func:`run_identity` (what a run's config hash covers), :func:`recipe_identity`
and :meth:`Methods.recipe_key` (the recipe teacher's cache key). Suite, stages, teachers, ablation and plugin tools call it directly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from benchbase.components import DataBundle, Method
from benchbase.config import compose_config, config_hash, suite_setting, trainer_identity, without_later_recipe_keys
from benchbase.errors import BenchbaseError
from benchbase.provenance import code_versions

if TYPE_CHECKING:
    from benchbase.plugin_manager import Benchbase

KIND = "methods"
"""The registry kind of methods (stored fingerprints name it ``code:losses/<name>``: see
:data:`benchbase.provenance.RECORDED_KINDS`)."""

DATA_ARGS = ("num_classes", "ignore_index", "image_mean", "image_std")
"""Method constructor arguments that, left unset by the config, come from the distillation data
(the :class:`~benchbase.components.DataBundle` fields of the same names)."""

RECIPE_TRAINER_KEYS = ("lr", "batch_size", "epochs")
"""Trainer keys the recipe sets itself (``teacher.recipe.*``); the others come from ``trainer``."""

PROTOCOL_GROUPS = ("trainer", "student")
"""The groups a method's config may set for its runs (``method.trainer``, ``method.student``)."""

RECIPE_LEAVES_OUT = (*RECIPE_TRAINER_KEYS, "lr_scaling")
"""Keys of a pre-training method's ``method.trainer`` the teacher recipe does not take: it sets its
own absolute lr, batch size and epochs (``teacher.recipe.*``)."""

TEACHER_STAGES = ("finetune", "pretrain")
"""Values of ``method.teacher_stage``: the recipe stage whose weights teach the method."""


def without_method_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` less the ``method.*`` ones (those configure the methods, not the suite)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("method.")]


def init_keys(cls: type) -> list[str]:
    """The keyword arguments of ``cls``'s constructor: the keys of ``method.params``."""
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


class Methods:
    """The registered methods as a suite's ``overrides`` configure them (``bb``: the loaded plugins)."""

    def __init__(self, bb: Benchbase, overrides: Sequence[str]) -> None:
        self.bb = bb
        self.overrides = list(overrides)
        self._configs: dict[tuple[str, str], DictConfig] = {}

    def method_class(self, name: str) -> type[Method]:
        """The class registered as method ``name``; an unknown name is a one-line error."""
        return self.bb.registry.get(KIND, name)

    def config(self, name: str, role: str = "method") -> DictConfig:
        """The config of method ``name``: the suite's overrides (``method.*`` ones only in role
        ``method``) with ``method=<name>``, the method's protocol applied (:func:`with_protocol`).
        Composed once per (name, role); each call returns a copy the caller may change."""
        if (name, role) not in self._configs:
            cls = self.method_class(name)
            overrides = self.overrides if role == "method" else without_method_overrides(self.overrides)
            try:
                cfg = compose_config([*overrides, f"method={name}"], self.bb.config_dirs(), self.bb.registry.names(KIND))
            except BenchbaseError as exc:
                if "method.params." not in str(exc):
                    raise
                raise BenchbaseError(f"{exc} (valid keys for {name}: {', '.join(init_keys(cls))})") from None
            self._configs[(name, role)] = with_protocol(cfg)
        return copy.deepcopy(self._configs[(name, role)])

    def params(self, cfg: DictConfig, name: str | None = None) -> dict[str, Any]:
        """``cfg.method.params`` checked against the constructor of method ``name`` (default
        ``cfg.method.name``): an unknown key is a one-line error."""
        return checked_params(cfg, self.method_class(name or cfg.method.name))

    def recipe_params(self, name: str) -> dict[str, Any]:
        """The params the teacher recipe builds method ``name`` with (its config file's)."""
        return self.params(self.config(name, "recipe"), name)

    def build(self, name: str, params: dict[str, Any], data: DataBundle) -> Method:
        """Method ``name`` built with ``params`` (see :func:`build_method`)."""
        return build_method(self.method_class(name), params, data)

    def identity_params(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` of method ``name`` as run hashes name them (see :func:`identity_params`)."""
        return identity_params(self.method_class(name), params)

    def compatible(self, names: Sequence[str], arch: str, explicit: bool) -> tuple[list[str], list[tuple[str, str]]]:
        """Methods of ``names`` that work with ``student.arch`` ``arch``, and the others with the
        arch they need. With ``explicit`` (methods asked for by name), one that cannot run on this
        student is a one-line error."""
        keep, skipped = [], []
        for name in names:
            needed = getattr(self.method_class(name), "student_arch", None)
            if needed in (None, arch):
                keep.append(name)
            elif explicit:
                raise BenchbaseError(
                    f"method {name!r} needs student.arch={needed}, but this suite's student is {arch}; "
                    f"run it with a suite built for {needed} students"
                )
            else:
                skipped.append((name, needed))
        return keep, skipped

    def recipe_trainer(self, name: str) -> dict[str, Any]:
        """The trainer settings of pre-training method ``name``'s protocol that the teacher recipe
        takes (``method.trainer`` less :data:`RECIPE_LEAVES_OUT`), e.g. MAE's betas and clipping."""
        protocol = OmegaConf.to_container(self.config(name, "recipe").method.trainer, resolve=True)
        return {k: v for k, v in protocol.items() if k not in RECIPE_LEAVES_OUT}

    def recipe_plan(self, recipe: Any, data: DataBundle) -> list[tuple[str, str, dict, int, dict]]:
        """(stage, method name, params, epochs, trainer settings) of the teacher recipe: the
        pre-training method (unless ``none``) with its protocol's trainer settings, then fine-tuning
        with ``teacher.recipe.finetune_trainer``. Fine-tuning ``sam`` (SAM's promptable training)
        is built with ``method/sam.yaml``'s params under ``teacher.recipe.finetune_params``, the
        data's unlabelled value and, unless set, the data's classes named ``background`` as its
        background; its trainer is its protocol's under ``finetune_trainer``."""
        stages = []
        if not has_finetuning(recipe) and not has_pretraining(recipe):
            raise BenchbaseError("teacher.recipe trains nothing (finetune_method=none and no pre-training); set "
                                 "teacher.recipe.pretrain_method and pretrain_epochs, or a finetune_method")
        if has_pretraining(recipe):
            name = recipe.pretrain_method
            stages.append(("pretrain", name, self.recipe_params(name), recipe.pretrain_epochs,
                           self.recipe_trainer(name)))
        if not has_finetuning(recipe):
            return stages
        ignore = -100 if data.ignore_index is None else data.ignore_index
        trainer = dict(recipe.get("finetune_trainer") or {})
        if recipe.finetune_method == "supervised":
            finetune: dict = dict(recipe.get("finetune_params") or {})
        elif recipe.finetune_method == "supervised_segmentation":
            finetune = {"num_classes": data.num_classes, "ignore_index": ignore}
        elif recipe.finetune_method == "sam":
            finetune = {**self.recipe_params("sam"), **(recipe.get("finetune_params") or {}), "ignore_index": ignore}
            if finetune.get("background") is None:
                finetune["background"] = background_labels(data)
            trainer = {**self.recipe_trainer("sam"), **trainer}
        else:
            raise BenchbaseError(f"teacher.recipe.finetune_method={recipe.finetune_method!r}; use supervised, "
                                 "supervised_segmentation, sam or none")
        stages.append(("finetune", recipe.finetune_method, finetune, recipe.finetune_epochs, trainer))
        return stages

    def recipe_key(self, cfg: Any, data: DataBundle) -> str:
        """The cache key of a recipe teacher: everything that determines its weights.

        That is :func:`recipe_identity`, every trainer setting the recipe uses (``precision``
        included; not the run-only ones), each recipe stage's method with the params it is built
        with (``method/<pretrain_method>.yaml``'s, e.g. MAE's mask ratio, decoder and ``norm_pix``),
        and the code of those methods, of the teacher builder and of the distillation dataset."""
        trainer = OmegaConf.to_container(suite_trainer(cfg), resolve=True)
        stages = self.recipe_plan(cfg.teacher.recipe, data)
        components = [(KIND, name) for _, name, *_ in stages]
        components += [("teachers", cfg.teacher.arch), ("datasets", cfg.suite.distill.dataset)]
        return config_hash({
            "recipe": recipe_identity(cfg),
            "trainer": trainer_identity(trainer, RECIPE_TRAINER_KEYS),
            # a stage's trainer settings only where it has some: recipes without them keep their keys
            "stages": [[stage, name, params, epochs, *([trainer] if trainer else [])]
                       for stage, name, params, epochs, trainer in stages],
            "code": code_versions(self.bb, components),
        })


SUITE_CHANGES = ("protocols", "deviations")
"""The suite keys that change a method's config for its runs, in the order they are merged:
``suite.protocols.<name>`` (the method's own protocol at the suite's scale), then
``suite.deviations.<name>`` (what the suite changes of it to fit its machine)."""


SUITE_OWN = "suite"
"""A deviation's value that keeps the suite's own setting for the method, e.g.
``suite.deviations.smkd.trainer: {lr: suite}``: SMKD then trains at the suite's lr, not its paper's."""


def with_protocol(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its method's protocol applied: the suite's protocol and deviations for the method
    (``suite.protocols.<name>``, then ``suite.deviations.<name>``) merged over ``method``, then
    ``method.trainer`` and ``method.student`` over the suite's ``trainer`` and ``student``; the
    suite's values they replace are kept in ``method.suite_values`` (tables group runs by the
    suite's setting). A value :data:`SUITE_OWN` (``suite``) keeps the suite's setting of that key.
    Unknown keys are one-line errors."""
    name = cfg.method.name
    for key in SUITE_CHANGES:
        change = (cfg.suite.get(key) or {}).get(name)
        if not change:
            continue
        try:  # keys the method's file leaves out of params, trainer and student may be set too (checked as any)
            with open_dict(cfg.method.params), open_dict(cfg.method.trainer), open_dict(cfg.method.student):
                cfg.method = OmegaConf.merge(cfg.method, change)
        except Exception as exc:
            raise BenchbaseError(f"suite.{key}.{name}: {str(exc).splitlines()[0]}; its keys are those of a "
                                 "method config (params, trainer, student, teacher_stage)") from None
    replaced: dict[str, Any] = {}
    for group in PROTOCOL_GROUPS:
        changes = OmegaConf.to_container(cfg.method[group], resolve=True)
        changes = {k: v for k, v in (changes or {}).items() if v != SUITE_OWN}  # kept at the suite's value
        if not changes:
            continue
        unknown = [k for k in changes if k not in cfg[group]]
        if unknown:
            raise BenchbaseError(f"method.{group}.{unknown[0]} ({name}): {group} has no key {unknown[0]!r}; "
                                 f"method.{group} takes the keys of the {group} group")
        replaced[group] = {k: OmegaConf.to_container(cfg[group], resolve=True)[k] for k in changes}
        with open_dict(cfg[group]):  # new keys inside a free-form dict (student.params) are the protocol's to add
            cfg[group] = OmegaConf.merge(cfg[group], changes)
    cfg.method.suite_values = replaced
    return cfg


def suite_trainer(cfg: Any) -> DictConfig:
    """The suite's trainer of run config ``cfg`` (what a recipe teacher trains with): ``cfg.trainer``
    with the values its method's protocol replaced put back (``method.suite_values.trainer``). Only
    those two nodes are resolved, not the whole config (this runs for every run's identity)."""
    method = cfg.get("method")
    replaced = method.get("suite_values") if method is not None else None
    plain = {"trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
             "method": {"suite_values": OmegaConf.to_container(replaced, resolve=True) if replaced else {}}}
    return OmegaConf.create(suite_setting(plain, "trainer"))


def background_labels(data: DataBundle) -> list[int]:
    """The labels of ``data``'s classes named ``background`` (any case): the digit and glyph scenes'
    0, none of CamVid's, whose unlabelled pixels carry ``ignore_index`` instead."""
    classes = next(iter(data.splits.values())).classes
    return [index for index, name in enumerate(classes) if name.lower() == "background"]


def has_pretraining(recipe: Any) -> bool:
    """Whether teacher recipe ``recipe`` has a pre-training stage."""
    return recipe.pretrain_method != "none" and recipe.pretrain_epochs > 0


def has_finetuning(recipe: Any) -> bool:
    """Whether teacher recipe ``recipe`` has a fine-tuning stage (``finetune_method: none`` is a
    recipe of pre-training only, e.g. TinyMIM's MAE-pretrained teacher)."""
    return recipe.finetune_method != "none"


def recipe_stage(recipe: Any, stage: str) -> str:
    """The stage of ``recipe`` whose weights ``stage`` names: ``finetune`` (the whole recipe) is
    ``pretrain`` in a recipe without fine-tuning."""
    return "pretrain" if stage == "finetune" and not has_finetuning(recipe) else stage


def asked_teacher_stage(cfg: Any) -> str:
    """``method.teacher_stage`` of run config ``cfg`` (``finetune`` without a method); an unknown
    value is a one-line error."""
    method = cfg.get("method")
    asked = method.get("teacher_stage", "finetune") if method is not None else "finetune"
    if asked not in TEACHER_STAGES:
        raise BenchbaseError(f"method.teacher_stage={asked!r}; use {' or '.join(TEACHER_STAGES)}")
    return asked


def teacher_stage(cfg: Any) -> str | None:
    """The recipe stage whose weights teach a run of ``cfg``: ``method.teacher_stage`` when the
    suite's recipe has that stage, else the whole recipe's last (``finetune``, or ``pretrain`` for a
    recipe without fine-tuning); None for a teacher no recipe trains (a checkpoint or timm teacher
    teaches as it is given)."""
    asked = asked_teacher_stage(cfg)
    if cfg.teacher.source != "recipe":
        return None
    recipe = cfg.teacher.recipe
    return recipe_stage(recipe, "pretrain" if asked == "pretrain" and has_pretraining(recipe) else "finetune")


def checked_params(cfg: DictConfig, cls: type) -> dict[str, Any]:
    """``cfg.method.params`` checked against ``cls``'s constructor: an unknown key is a one-line error."""
    params = OmegaConf.to_container(cfg.method.params, resolve=True) or {}
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        valid = init_keys(cls)
        for key in params:
            if key not in valid:
                raise BenchbaseError(
                    f"unknown config key 'method.params.{key}' in group 'method' ({cfg.method.name}); "
                    f"valid keys: {', '.join(valid) or 'none'}"
                )
    return params


def build_method(cls: type[Method], params: dict[str, Any], data: DataBundle) -> Method:
    """``cls(**params)``, with :data:`DATA_ARGS` the constructor takes and the config leaves
    unset (or null) filled from ``data``: its class count, unlabelled value (-100 if none) and the
    per-channel mean and std its images were normalised with (None where it declares none)."""
    accepted = inspect.signature(cls.__init__).parameters
    filled = {k: getattr(data, k) for k in DATA_ARGS if k in accepted and params.get(k) is None}  # only these
    if "ignore_index" in filled and filled["ignore_index"] is None:
        filled["ignore_index"] = -100
    return cls(**{**params, **filled})


def identity_params(cls: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of method ``cls`` as run hashes name them: without the params of
    :attr:`~benchbase.components.Method.later_params` that are at the value listed there, so that
    runs stored before those params existed keep their names."""
    later = cls.later_params
    return {k: v for k, v in params.items() if not (k in later and v == later[k])}


def run_identity(cfg: DictConfig, role: str, name: str, params: dict, seed: int,
                 stage_keys: Sequence[str] = ()) -> dict[str, Any]:
    """What names one run of ``cfg`` (its config hash is the hash of this): role, method, params
    (as :func:`identity_params` names them), seed, student, teacher (:func:`teacher_identity`),
    trainer (less the run-only keys), the suite's distillation and tasks, their datasets' configs,
    and the keys of its stages."""
    container = OmegaConf.to_container(cfg, resolve=True)
    datasets = {cfg.suite.distill.dataset} | {t.dataset for t in cfg.suite.tasks.values()}
    chain = {"stages": list(stage_keys)} if stage_keys else {}  # runs without stages keep their hashes
    return {
        **chain,
        "role": role,
        "method": name,
        "params": params,
        "seed": seed,
        "student": container["student"],
        "teacher": teacher_identity(cfg, container["teacher"]),
        "trainer": trainer_identity(container["trainer"]),
        "suite": {k: container["suite"][k] for k in ("distill", "tasks")},
        "data": {k: v for k, v in container["data"].items() if k in datasets},
    }


def teacher_identity(cfg: DictConfig, teacher: dict[str, Any]) -> Any:
    """The teacher as a run's hash names it: its config, or for a recipe teacher the recipe's
    identity and, when set, ``distill_drop_path`` and a teacher stage other than ``finetune`` (left
    out at their defaults, so those runs keep their hashes)."""
    if cfg.teacher.source != "recipe":
        return without_later_recipe_keys(teacher)
    rate = teacher.get("distill_drop_path")
    named = {"recipe": recipe_identity(cfg), "distill_drop_path": rate} if rate else recipe_identity(cfg)
    stage = teacher_stage(cfg)
    return named if stage == "finetune" else {"teacher": named, "stage": stage}


def recipe_identity(cfg: Any) -> str:
    """The recipe teacher as run config hashes name it: its config, the distillation data and the
    main trainer settings. Kept as it was so that stored runs keep their hashes; what else made the
    teacher is in :meth:`Methods.recipe_key`, which a run records and checks (see
    :mod:`benchbase.provenance`).

    ``teacher.distill_drop_path`` is left out: it changes how the trained teacher teaches, not
    the teacher itself."""
    teacher = without_later_recipe_keys(OmegaConf.to_container(cfg.teacher, resolve=True))
    teacher.pop("distill_drop_path", None)
    trainer = suite_trainer(cfg)  # a DictConfig, as always: its lists keep hashing as they did
    return config_hash({
        "teacher": teacher,
        "distill": OmegaConf.to_container(cfg.suite.distill, resolve=True),
        "data": OmegaConf.to_container(cfg.data.get(cfg.suite.distill.dataset, {}), resolve=True),
        "trainer": {k: trainer[k] for k in ("min_lr", "weight_decay", "betas", "warmup_epochs", "clip_grad")},
    })
