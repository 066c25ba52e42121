"""The plugin manager: finding, loading and listing plugins, and the registry of what they register.

Owns :class:`Benchbase` (the loaded plugins, bound to the name ``bb`` throughout the harness), its
:class:`Registry` of components by kind and name, and the checks a registered component must pass.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from benchbase import PROJECT_NAME, hookspecs
from benchbase.components import DatasetInfo, Evaluator, Method
from benchbase.errors import BenchbaseError
from benchbase.loggers import Logger, logger_names

__all__ = ["COMPONENT_KINDS", "CORE_PLUGIN", "Benchbase", "PluginInfo", "Registered", "Registry", "check_component",
           "load"]

COMPONENT_KINDS = ("methods", "students", "teachers", "evaluators", "datasets", "loggers")
SINGULAR = {"methods": "method", "students": "student", "teachers": "teacher", "evaluators": "evaluator",
            "datasets": "dataset", "loggers": "logger"}
CORE_PLUGIN = "core"
"""The entry-point name of benchbase's own components (module :mod:`benchbase.core`)."""

USED_AS = {"methods": "--methods or suite.references", "students": "student.arch", "teachers": "teacher.arch",
           "evaluators": "a suite task's `evaluator`", "datasets": "a suite's `dataset`",
           "loggers": "logger=[...]"}
"""Where a registered component of each kind is named to be used."""

_BASE_CLASSES: dict[str, type] = {"methods": Method, "evaluators": Evaluator, "loggers": Logger}
"""Component kinds registered as classes: the base class each must subclass (and complete)."""
_BUILD_ARGS: dict[str, tuple[str, ...]] = {"students": ("cfg", "data"), "teachers": ("cfg", "data"),
                                           "datasets": ("cfg",)}
"""Component kinds registered as builders: the positional arguments the harness calls them with."""
FORMER_HOOKS = {"methods": ("benchbase_register_losses",)}
"""Former names of a kind's registration hook, still called (pluggy warns when a plugin implements one)."""


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin: entry-point name, distribution, version, what it provides."""

    name: str
    module: str
    distribution: str = ""
    version: str = ""
    error: str = ""
    components: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)


@dataclass
class Registered:
    """A registered component: the object itself, the plugin that registered it and, for a
    dataset, what it declared about itself (:class:`~benchbase.components.DatasetInfo`)."""

    name: str
    factory: Any
    plugin: str
    info: DatasetInfo | None = None


class Registry:
    """All components of the loaded plugins, by kind and name."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Registered]] = {kind: {} for kind in COMPONENT_KINDS}

    def add(self, kind: str, name: str, factory: Any, plugin: str, info: DatasetInfo | None = None) -> None:
        existing = self.items[kind].get(name)
        if existing is not None and existing.plugin != plugin:
            raise BenchbaseError(
                f"{SINGULAR[kind]} {name!r} is registered by both plugin {existing.plugin!r} and plugin "
                f"{plugin!r}; uninstall one or disable it with BENCHBASE_LOAD_PLUGINS"
            )
        self.items[kind][name] = Registered(name, factory, plugin, info)

    def get(self, kind: str, name: str) -> Any:
        """The factory registered as ``name``; a one-line error lists the alternatives."""
        try:
            return self.items[kind][name].factory
        except KeyError:
            available = ", ".join(sorted(self.items[kind])) or "none"
            raise BenchbaseError(
                f"unknown {SINGULAR[kind]} {name!r}; available: {available}"
            ) from None

    def names(self, kind: str, plugin: str | None = None) -> list[str]:
        return sorted(n for n, r in self.items[kind].items() if plugin is None or r.plugin == plugin)


class Benchbase:
    """The plugin manager, the loaded plugins and their registry."""

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]):
        self.pm = pm
        self.infos = infos
        self.registry = Registry()
        for kind in COMPONENT_KINDS:
            hooks = [getattr(pm.hook, name) for name in (f"benchbase_register_{kind}", *FORMER_HOOKS.get(kind, ()))]
            for impl in (impl for hook in hooks for impl in hook.get_hookimpls()):
                plugin = pm.get_name(impl.plugin)

                def register(name: str, factory: Any, info: DatasetInfo | None = None,
                             _kind: str = kind, _plugin: str = plugin) -> None:
                    check_component(_kind, name, factory, _plugin, info)
                    self.registry.add(_kind, name, factory, _plugin, info)

                impl.function(register=register)
        for info in infos.values():
            if info.error:
                continue
            info.components = {
                kind: self.registry.names(kind, info.name)
                for kind in COMPONENT_KINDS
                if self.registry.names(kind, info.name)
            }
            plugin = pm.get_plugin(info.name)
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])

    def hook_implementers(self) -> dict[str, list[str]]:
        """Every hook spec (sorted) and the names of the plugins that implement it (sorted); a
        former hook name (:data:`FORMER_HOOKS`) only while some plugin still implements it."""
        former = {name for names in FORMER_HOOKS.values() for name in names}
        implementers = {
            name: sorted(self.pm.get_name(impl.plugin) for impl in caller.get_hookimpls())
            for name, caller in sorted(vars(self.pm.hook).items())
            if isinstance(caller, pluggy.HookCaller) and caller.spec is not None
        }
        return {name: plugins for name, plugins in implementers.items() if plugins or name not in former}

    def config_dirs(self) -> list[str]:
        """The plugins' config folders (``benchbase_config_dirs``), each once, in hook order."""
        return list(dict.fromkeys(d for dirs in self.pm.hook.benchbase_config_dirs() for d in dirs))

    def method_plugins(self) -> list[str]:
        """Plugins that register at least one distillation method (not only teacher-recipe methods,
        :attr:`~benchbase.components.Method.recipe_only`), excluding the harness's own core plugin."""
        return sorted(
            name for name, info in self.infos.items()
            if name != CORE_PLUGIN and not info.error
            and any(not self.registry.get("methods", method).recipe_only for method in info.components.get("methods", ()))
        )

    def select_methods(self, plugins: Iterable[str] | None) -> list[str]:
        """Method names of the chosen method plugins (all method plugins when ``plugins`` is None)."""
        available = self.method_plugins()
        chosen = available if plugins is None else list(plugins)
        methods: list[str] = []
        for name in chosen:
            if name not in available:
                info = self.infos.get(name)
                if info is not None and info.error:
                    raise BenchbaseError(f"plugin {name!r} failed to load: {info.error}")
                recipe = info.components.get("methods", []) if info is not None and name != CORE_PLUGIN else []
                if recipe:  # a plugin of teacher-recipe methods only (method_plugins lists the others)
                    raise BenchbaseError(f"plugin {name!r} registers only teacher-recipe methods ({', '.join(recipe)}); "
                                         f"name them in teacher.recipe.finetune_method, not in --methods")
                if info is not None and info.components:
                    provides = "; ".join(f"{kind} {', '.join(names)} (name them in {USED_AS[kind]})"
                                         for kind, names in info.components.items())
                    raise BenchbaseError(
                        f"plugin {name!r} is not a method plugin: it registers {provides}; --methods selects "
                        f"method plugins: {', '.join(available) or 'none'}"
                    )
                raise BenchbaseError(
                    f"unknown plugin {name!r}; available: {', '.join(available) or 'none'} "
                    f"(see `benchbase plugins`)"
                )
            methods.extend(self.registry.names("methods", name))
        return methods

    def logger_classes(self, names: Iterable[str]) -> dict[str, type[Logger]]:
        """The registered logger classes of ``jsonl`` (always on) and ``names`` (the config's
        ``logger`` list), each once; an unknown name is a one-line error listing the known ones."""
        return {name: self.registry.get("loggers", name) for name in logger_names(names)}

    def plugin_versions(self) -> dict[str, str]:
        return {n: i.version for n, i in self.infos.items() if not i.error}


def _describe(obj: Any) -> str:
    """``module.qualname`` of a registered object (``partial(...)`` around a partial's function)."""
    if isinstance(obj, partial):
        return f"partial({_describe(obj.func)})"
    qualname = getattr(obj, "__qualname__", None)
    if qualname is None:
        return f"a {type(obj).__name__} instance"
    return f"{getattr(obj, '__module__', '?')}.{qualname}"


def check_component(kind: str, name: str, factory: Any, plugin: str, info: Any = None) -> None:
    """Check that ``factory`` fits the interface of its ``kind`` (see :mod:`benchbase.hookspecs`).

    Methods, evaluators and loggers must be concrete subclasses of :class:`~benchbase.components.Method`,
    :class:`~benchbase.components.Evaluator` and :class:`~benchbase.loggers.Logger`; students and
    teachers must be callables that accept ``build(cfg, data)``, datasets ``build(cfg)``. Only a
    dataset may come with ``info``, a :class:`~benchbase.components.DatasetInfo`.

    Raises:
        BenchbaseError: one line naming the plugin, the component and what is wrong.
    """
    what = f"plugin {plugin!r} registers {SINGULAR[kind]} {name!r} ({_describe(factory)})"
    if info is not None and (kind != "datasets" or not isinstance(info, DatasetInfo)):
        fix = "pass a benchbase.components.DatasetInfo" if kind == "datasets" else "only a dataset takes info"
        raise BenchbaseError(f"{what} with info of type {type(info).__name__}; {fix}")
    base = _BASE_CLASSES.get(kind)
    if base is not None:
        if not (inspect.isclass(factory) and issubclass(factory, base)):
            raise BenchbaseError(f"{what} which does not subclass {base.__module__}.{base.__name__}")
        missing = sorted(getattr(factory, "__abstractmethods__", ()))
        if missing:
            raise BenchbaseError(f"{what} which does not implement {', '.join(missing)}")
        return
    args = _BUILD_ARGS[kind]
    call = f"build({', '.join(args)})"
    if not callable(factory):
        raise BenchbaseError(f"{what} which is not callable; expected a function {call}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some C callables carry no signature: nothing to check
        return
    try:
        signature.bind(*args)
    except TypeError:
        bare = signature.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
        raise BenchbaseError(f"{what} whose signature {bare} cannot be called as {call}") from None


def _load_dir_plugins(directory: Path) -> list[tuple[str, ModuleType]]:
    if not directory.is_dir():
        raise BenchbaseError(f"--plugins-dir {directory} is not a directory; pass a folder of .py files")
    modules = []
    for path in sorted(directory.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"benchbase_dir_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append((path.stem, module))
    return modules


def load(plugins_dir: str | Path | None = None) -> Benchbase:
    """Build the plugin manager from the ``benchbase`` entry points (and ``plugins_dir``).

    ``BENCHBASE_LOAD_PLUGINS`` (comma-separated entry-point names) limits which installed plugins
    load; the core plugin always loads. A plugin that fails to import is recorded with its error
    and a warning, and the others still load.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    only = os.environ.get("BENCHBASE_LOAD_PLUGINS")
    allowed = None if only is None else {n.strip() for n in only.split(",") if n.strip()} | {CORE_PLUGIN}
    infos: dict[str, PluginInfo] = {}
    for ep in sorted(entry_points(group=PROJECT_NAME), key=lambda e: e.name):
        if ep.name in infos or (allowed is not None and ep.name not in allowed):
            continue
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "", dist.version if dist else "")
        infos[ep.name] = info
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not stop the others
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"benchbase plugin {ep.name!r} failed to load: {info.error}", stacklevel=2)
    if plugins_dir is not None:
        for name, module in _load_dir_plugins(Path(plugins_dir)):
            infos[name] = PluginInfo(name, module.__file__ or name, "(plugins-dir)", "")
            pm.register(module, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise BenchbaseError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from None
    return Benchbase(pm, infos)
