"""Deprecated module name: the plugin manager is :mod:`benchbase.plugin_manager`.

Kept so that code written against ``benchbase.plugins`` (``load``, ``Benchbase``) still imports;
it warns once and re-exports the manager's public names.
"""

import warnings

from benchbase.plugin_manager import *  # noqa: F401,F403
from benchbase.plugin_manager import __all__  # noqa: F401

warnings.warn("benchbase.plugins is deprecated; import from benchbase.plugin_manager (or benchbase.api)",
              DeprecationWarning, stacklevel=2)
