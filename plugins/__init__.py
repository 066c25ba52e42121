"""benchbase's built-in baseline methods, each a plugin module in the ``benchbase`` entry-point group.

* :mod:`.cls_token`: TinyMIM's class-token distillation (Eq. 6), or DeiT-style logit distillation.
* :mod:`.feature`: Feature Distillation (Wei et al. 2022; TinyMIM Eq. 7-8).
* :mod:`.mae`: MAE pixel reconstruction (He et al. 2021), which needs no teacher.

Installed as ``benchbase_plugins``; the methods' default configs live in ``conf/method``.
"""

from pathlib import Path

from benchbase.api import hookimpl

CONF_DIR = Path(__file__).parent / "conf"
"""Hydra config folder of these plugins (``method/<name>.yaml``, ``ablation/<name>.yaml``)."""


@hookimpl
def benchbase_config_dirs() -> list[str]:
    """:data:`CONF_DIR`, declared once for every plugin of this package: each plugin module imports
    this implementation, so that it finds its configs however many of them load."""
    return [str(CONF_DIR)]
