"""Hook specifications: the whole contract between benchbase and its plugins.

A plugin is a module (or object) with functions marked ``@benchbase.hookimpl`` whose names are
the hooks below. It is found through the ``benchbase`` entry-point group::

    [project.entry-points.benchbase]
    my_method = "my_package.my_method"

Every ``benchbase_register_*`` hook is called once, when the plugin manager is built, with a
``register(name, factory)`` callable (in the style of llm's ``register_models``). Names are global:
two plugins registering the same name is an error that names both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from benchbase import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

Register = Callable[[str, Any], None]


@hookspec
def benchbase_register_methods(register: Register) -> None:
    """Register distillation methods.

    Args:
        register: call ``register(name, method_class)`` for each method. ``method_class`` subclasses
            :class:`benchbase.components.Method`; its constructor keyword arguments are the keys of
            ``method.params`` in the method's config (``conf/method/<name>.yaml``).

    Returns:
        Nothing. Called once when the plugin manager loads plugins; ``benchbase run --methods P``
        runs the methods that plugin ``P`` registered (every method plugin's without ``--methods``).
    """


@hookspec(warn_on_impl=DeprecationWarning(
    "benchbase_register_losses is the former name of benchbase_register_methods; rename the hook implementation"))
def benchbase_register_losses(register: Register) -> None:
    """The former name of :func:`benchbase_register_methods`, still called (pluggy warns once per plugin).

    Args:
        register: as for :func:`benchbase_register_methods`.

    Returns:
        Nothing; rename the implementation to ``benchbase_register_methods``.
    """


@hookspec
def benchbase_register_students(register: Register) -> None:
    """Register student architectures.

    Args:
        register: call ``register(name, build)``, where ``build(cfg, data)`` takes the ``student``
            config group (a mapping) and the distillation :class:`~benchbase.components.DataBundle`
            and returns a :class:`benchbase.components.Student` with fresh weights.

    Returns:
        Nothing. Called once when the plugin manager loads plugins; ``student.arch`` selects one.
    """


@hookspec
def benchbase_register_teachers(register: Register) -> None:
    """Register teacher architectures.

    Args:
        register: call ``register(name, build)``, where ``build(cfg, data)`` takes the ``teacher``
            config group and the distillation data and returns the same kind of object as a
            student builder: a :class:`benchbase.components.Student` (or a subclass for another
            architecture) with fresh weights. The harness loads a checkpoint into it
            (in the format of :attr:`~benchbase.components.VitModel.checkpoint_loader`), a timm pretrained name
            (``build(cfg, data, pretrained=True)``) or runs the suite's teacher recipe on it, then
            freezes it (:meth:`~benchbase.components.VitModel.as_teacher`).

    Returns:
        Nothing. Called once when the plugin manager loads plugins; ``teacher.arch`` selects one.
    """


@hookspec
def benchbase_register_evaluators(register: Register) -> None:
    """Register evaluation protocols.

    Args:
        register: call ``register(name, evaluator_class)``; the class subclasses
            :class:`benchbase.components.Evaluator` and takes a suite task's keys as keyword
            arguments.

    Returns:
        Nothing. Called once when the plugin manager loads plugins; a suite task's
        ``evaluator`` key selects one.
    """


@hookspec
def benchbase_register_datasets(register: Register) -> None:
    """Register datasets.

    Args:
        register: call ``register(name, build, info=DatasetInfo(...))``, where ``build(cfg)`` takes
            the dataset's config (``data.<name>``: at least ``root`` for on-disk data) and returns a
            :class:`benchbase.components.DataBundle` of named splits, and the optional ``info``
            (a :class:`benchbase.components.DatasetInfo`) declares its splits, what they hold and
            the layout ``data.<name>.root`` must have, for ``benchbase datasets``.

    Returns:
        Nothing. Called once when the plugin manager loads plugins; suites name datasets.
    """


@hookspec
def benchbase_register_loggers(register: Register) -> None:
    """Register experiment loggers (trackers such as TensorBoard, MLflow, W&B).

    Args:
        register: call ``register(name, logger_class)``; the class subclasses
            :class:`benchbase.loggers.Logger` and is constructed without arguments for each run. It
            receives the run's config when training starts, every step's loss terms, learning rate
            and throughput, the evaluation metrics and the run's end (rank 0 only under torchrun).

    Returns:
        Nothing. Called once when the plugin manager loads plugins; the ``logger`` config key
        (``logger=[tensorboard,NAME]``) selects loggers by name. One that fails to start is a
        one-line warning and the run goes on without it.
    """


@hookspec
def benchbase_config_dirs() -> list[str]:
    """Directories of Hydra config files that this plugin ships.

    Returns:
        Absolute paths of folders laid out like benchbase's own ``conf/`` (``method/NAME.yaml``,
        ``suite/NAME.yaml``, ...). They join Hydra's search path before the configs are composed,
        so ``method=NAME`` finds the plugin's defaults. Called each time a config is composed.
    """
