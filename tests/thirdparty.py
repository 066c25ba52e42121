"""Helpers that build a third-party plugin as an installed distribution in a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN_SOURCE = '''
"""A third-party method: Hinton-style logit distillation, shipped with its own config."""
from pathlib import Path

import torch.nn.functional as F

from benchbase import hookimpl
from benchbase.capture import Tap
from benchbase.components import Loss

CONF = Path(__file__).parent / "kd_logits_conf"


class LogitKD(Loss):
    name = "kd_logits"
    student_taps = (Tap("logits"),)
    teacher_taps = (Tap("logits"),)

    def __init__(self, tau: float = 4.0):
        super().__init__()
        self.tau = tau

    def forward(self, student, teacher, inputs):
        s, t = student[Tap("logits")], teacher[Tap("logits")]
        kl = F.kl_div(F.log_softmax(s / self.tau, -1), F.softmax(t / self.tau, -1), reduction="batchmean")
        return {"kl_logits": kl * self.tau**2}


@hookimpl
def benchbase_register_methods(register):
    register("kd_logits", LogitKD)


@hookimpl
def benchbase_config_dirs():
    return [str(CONF)]
'''


def make_distribution(root: Path, name: str = "bb_kd_logits", entry: str = "kd_logits",
                      source: str = PLUGIN_SOURCE, version: str = "0.3.1") -> Path:
    """Write module ``name`` and a ``<name>-<version>.dist-info`` with a benchbase entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(source)
    conf = root / "kd_logits_conf" / "method"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"{entry}.yaml").write_text("name: kd_logits\nparams:\n  tau: 4.0\n")
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [benchbase]
        {entry} = {name}
        """))
    return root
