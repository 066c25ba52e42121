"""benchbase: a plugin-based benchmark suite for knowledge distillation on vision transformers.

Plugins mark their hook implementations with :data:`hookimpl`::

    from benchbase import hookimpl

    @hookimpl
    def benchbase_register_methods(register):
        register("my_loss", MyLoss)
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT_NAME = "benchbase"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl def benchbase_register_methods(register): ...``."""

try:
    __version__ = version(PROJECT_NAME)
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["PROJECT_NAME", "hookimpl", "__version__"]
