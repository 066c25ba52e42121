"""Token-importance heat maps of EventSAM's loss over the frames of a suite's test images.

    python -m benchbase_plugins.eventsam_maps suite=eventsam [--images 6] [--out PATH] [overrides]

The suite's teacher (the cached recipe teacher, trained first if missing) sees each test frame;
the loss's own importance function (:meth:`EventSAMLoss.token_weights`) turns its attention into
the weights w_s [h, w] of every distilled block s, for the released single-matrix importance and
the paper's product of attention matrices (``method.params.*`` overrides set the other options,
e.g. β). The last block's weights are 1 everywhere by definition and are not drawn. One PNG:
a row per image (the frame, the student's event input, then one heat map per importance and
block over the frame), and below it how far the weights are from uniform
(:func:`importance_spread`: per block their mean, spread and percentiles, and how much they change
the loss against uniform weights), also printed to stderr; written to
``<leaderboard_dir>/figures/<suite>/eventsam-importance.png`` by default, where the suite's
leaderboard page embeds it (:data:`benchbase.leaderboard.FIGURES_DIR`).
Shapes: B images, C_f frame / C_e event channels, S image size, h×w token grid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from benchbase.api import (  # noqa: E402
    FIGURES_DIR,
    BenchbaseError,
    Methods,
    SamStudent,
    SamTeacher,
    load_plugins,
    load_teacher,
)

from .eventsam import EventSAMLoss  # noqa: E402

IMPORTANCES = ("released_code", "paper")
"""The importance functions drawn: the released single matrix and the paper's product."""


def importance_maps(loss: EventSAMLoss, teacher: SamTeacher, images: Tensor) -> dict[int, Tensor]:
    """The loss's token weights of stacked ``images`` [B, C_f + C_e, S, S] as maps {block: [B, h, w]}."""
    inputs = loss.make_inputs(images, torch.zeros(images.shape[0], dtype=torch.long))
    weights = loss.token_weights(teacher.run(inputs.teacher, loss.teacher_taps))
    return {block: w.reshape(w.shape[0], *loss.grid) for block, w in weights.items()}


def loss_total(loss: EventSAMLoss, student: SamStudent, teacher: SamTeacher, images: Tensor) -> float:
    """The loss (sum of its block terms) of stacked ``images`` [B, C_f + C_e, S, S], no gradients."""
    inputs = loss.make_inputs(images, torch.zeros(images.shape[0], dtype=torch.long))
    with torch.no_grad():
        terms = loss(student.run(inputs.student, loss.student_taps), teacher.run(inputs.teacher, loss.teacher_taps),
                     inputs)
    return float(sum(terms.values()))


def importance_spread(params: dict, student: SamStudent, teacher: SamTeacher, images: Tensor,
                      importances: Sequence[str] = IMPORTANCES) -> list[dict]:
    """How far each importance function's weights are from uniform, on ``images``: per importance
    and non-final distilled block, the mean, standard deviation, 5th and 95th percentiles of w over
    every image and token, and once per importance the relative change of the whole loss against
    uniform weights (|L_w - L_1| / L_1), for ``student`` as ``params`` initialise it (with
    ``init_from_teacher``, the released start: the teacher's copy reading the events)."""
    uniform = EventSAMLoss(**{**params, "importance": "uniform"})
    uniform.setup(student, teacher)  # initialises the student once, as training would
    base = loss_total(uniform, student, teacher, images)
    rows = []
    for importance in importances:
        loss = EventSAMLoss(**{**params, "importance": importance, "init_from_teacher": False})
        loss.setup(student, teacher)
        change = abs(loss_total(loss, student, teacher, images) - base) / max(base, 1e-12)
        for block, values in importance_maps(loss, teacher, images).items():
            if block == loss.depth - 1:  # 1 everywhere by definition
                continue
            w = values.flatten().float()
            rows.append({"importance": importance, "block": block, "mean": float(w.mean()), "std": float(w.std()),
                         "p5": float(w.quantile(0.05)), "p95": float(w.quantile(0.95)),
                         "loss_change_vs_uniform": change})
    return rows


def spread_table(rows: Sequence[dict]) -> str:
    """``rows`` of :func:`importance_spread` as a plain-text table."""
    lines = ["importance     block   mean    std     p5     p95   loss vs uniform"]
    lines += [f"{r['importance']:<14} {r['block']:>5} {r['mean']:6.3f} {r['std']:6.3f} {r['p5']:6.3f} {r['p95']:6.3f}"
              f"   {100 * r['loss_change_vs_uniform']:+.1f}%" for r in rows]
    return "\n".join(lines)


def _gray(images: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H, W] channel mean rescaled to [0, 1] per image, for display."""
    gray = images.float().mean(1)
    low, high = gray.amin((1, 2), keepdim=True), gray.amax((1, 2), keepdim=True)
    return (gray - low) / (high - low).clamp_min(1e-8)


def save_importance_figure(frames: Tensor, events: Tensor, maps: dict[str, Tensor], path: Path, title: str,
                           caption: str = "") -> Path:
    """Draw a row per image: ``frames`` [B, C_f, H, W], ``events`` [B, C_e, H, W] (summed absolute
    values), then each map of ``maps`` {column title: [B, h, w]} upsampled (nearest) over the frame,
    with one colour scale per column; ``caption`` (monospaced) below. Writes and returns ``path``."""
    count = frames.shape[0]
    columns = 2 + len(maps)
    fig, axes = plt.subplots(count, columns, figsize=(2.2 * columns, 2.2 * count + 1.0), squeeze=False,
                             layout="constrained")
    gray, activity = _gray(frames).numpy(), events.abs().sum(1).numpy()
    size = tuple(frames.shape[-2:])
    for row in range(count):
        axes[row, 0].imshow(gray[row], cmap="gray")
        axes[row, 1].imshow(activity[row], cmap="magma")
    for column, (name, values) in enumerate(maps.items(), start=2):
        upsampled = F.interpolate(values[:, None].float(), size=size, mode="nearest")[:, 0].numpy()
        low, high = float(values.min()), float(values.max())
        for row in range(count):
            axes[row, column].imshow(gray[row], cmap="gray")
            image = axes[row, column].imshow(upsampled[row], cmap="inferno", alpha=0.65, vmin=low, vmax=high)
        fig.colorbar(image, ax=axes[:, column].tolist(), shrink=0.8, location="bottom")
    for column, name in enumerate(["frame (teacher)", "events (student)", *maps]):
        axes[0, column].set_title(name, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(title, fontsize=9)
    if caption:
        fig.supxlabel(caption, fontsize=7, family="monospace", ha="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Compose the suite (``overrides``), load its teacher, draw the first ``--images`` test images."""
    parser = argparse.ArgumentParser(prog="python -m benchbase_plugins.eventsam_maps", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6, help="test images drawn (default 6)")
    parser.add_argument("--split", default="test", help="the split of the suite's distillation data (default test)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default <leaderboard_dir>/figures/<suite>/eventsam-importance.png, shown on the suite's page)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. suite=eventsam method.params.beta=0.3")
    args = parser.parse_args(argv)
    bb = load_plugins()
    methods = Methods(bb, args.overrides)
    cfg = methods.config("eventsam")
    if cfg.student.arch != "sam" or cfg.teacher.arch != "sam":
        raise BenchbaseError("eventsam importance maps need a suite with SAM students and teachers, e.g. suite=eventsam")
    data = bb.registry.get("datasets", cfg.suite.distill.dataset)(cfg.data.get(cfg.suite.distill.dataset) or {})
    teacher = load_teacher(methods, cfg, data, Path(cfg.home))
    student: SamStudent = bb.registry.get("students", "sam")(cfg.student, data)
    split = data.split(args.split)
    images = torch.stack([split[i][0] for i in range(min(args.images, len(split)))])
    params = methods.params(cfg, "eventsam")
    maps: dict[str, Tensor] = {}
    for importance in IMPORTANCES:
        loss = EventSAMLoss(**{**params, "importance": importance, "init_from_teacher": False})
        loss.setup(student, teacher)
        for block, values in importance_maps(loss, teacher, images).items():
            if block != loss.depth - 1:  # the last block's weights are 1 by definition
                maps[f"{importance} w, block {block}"] = values
    frames = images[:, : loss.frame_channels]
    events = images[:, loss.frame_channels:]
    spread = spread_table(importance_spread(params, student, teacher, images))
    out = args.out or Path(cfg.leaderboard_dir) / FIGURES_DIR / cfg.suite.name / "eventsam-importance.png"
    title = (f"EventSAM token importance (teacher attention, beta={loss.beta:g}) on {data.name} "
             f"{args.split} images; teacher {teacher.source}")
    caption = f"spread of w over these images (loss vs uniform: the student as initialised)\n{spread}"
    print(spread, file=sys.stderr)
    print(save_importance_figure(frames, events, maps, out, title, caption))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchbaseError as exc:
        sys.exit(f"error: {exc}")
