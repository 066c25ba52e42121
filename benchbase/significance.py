"""Which differences between table rows are real: paired tests on the same episodes and images.

Every row of a table is scored on the same samples for a given seed (the same few-shot episodes,
the same test images), and each metric keeps its per-sample outcomes (:mod:`benchbase.outcomes`).
Two rows are compared on the seeds both ran, pairing their outcomes sample by sample:

- a mean of per-sample scores (few-shot accuracy per episode, top-k hit per image): a paired
  t-test on the per-sample differences, stratified by seed (the difference is the mean over seeds
  of each seed's mean difference; its variance the sum of the seeds' variances of the mean / S²);
- a ratio of sums, a mean IoU or a segment metric (pixel accuracy, mIoU, EventSAM's seg_mIoU,
  seg_aIoU, seg_precision, seg_recall): a paired bootstrap over test images
  (:data:`BOOTSTRAP` resamples, the same resampled images for both rows; per resample the
  difference is averaged over seeds) gives the standard error of the difference, and p is the
  two-sided normal p of Δ / SE (a bootstrap z-test: unlike counting resamples, its p-values are
  not floored at 1/resamples, which Holm's correction over many pairs would make unreachable).

All pairs of a column are corrected together with Holm's step-down method at level :data:`ALPHA`.
A row's rank is 1 + the number of rows significantly better than it, so rows no test separates from
those above them share a rank. The tests measure evaluation noise given the trained models (which
episodes and images were drawn), not the spread over training seeds (the ± of a cell).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from benchbase.outcomes import Outcomes

ALPHA = 0.05
"""Family-wise error rate of the pairwise tests of one column (Holm-corrected)."""

BOOTSTRAP = 2000
"""Resamples of the paired bootstrap (ratio and IoU metrics)."""

BOOTSTRAP_SEED = 0
"""The bootstrap's random seed: a table regenerates identically from its records."""

METHOD = (
    "paired tests on the same episodes / test images, pooled over the seeds both rows ran: t-test on "
    "per-sample differences for means (few-shot, top-k), paired bootstrap over test images "
    f"(z-test with the standard error of {BOOTSTRAP} resamples) for ratios, mIoU and segment metrics; "
    f"Holm-corrected over all pairs of the column, α = {ALPHA}; they measure evaluation noise given the trained "
    "students, not the spread over training seeds (the ± of a cell)"
)
"""How ranks are computed, as printed under every table."""

RowOutcomes = Mapping[int, Outcomes]
"""One row's outcomes of one column, by seed."""


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` against row ``b`` on one column: ``delta`` = a - b (metric units), its p-value
    before and after the Holm correction, and whether the difference is significant."""

    a: Hashable
    b: Hashable
    delta: float
    p: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


def _paired_seeds(a: RowOutcomes, b: RowOutcomes) -> list[int]:
    """The seeds where both rows have outcomes of the same kind over the same number of samples."""
    return [s for s in sorted(set(a) & set(b)) if a[s].kind == b[s].kind and a[s].n == b[s].n]


def paired_test(a: RowOutcomes, b: RowOutcomes, rng: np.random.Generator | None = None,
                memo: dict | None = None) -> tuple[float, float] | None:
    """(delta = a - b in metric units, two-sided p) over the seeds both rows ran, or None without any.

    See the module docstring for the tests; ``rng`` drives the bootstrap (default: seeded with
    :data:`BOOTSTRAP_SEED`). ``memo`` (default-seeded bootstrap only) keeps each run's resampled
    values for the caller's next tests, while the caller holds the outcomes.
    """
    seeds = _paired_seeds(a, b)
    if not seeds:
        return None
    if a[seeds[0]].kind == "mean":
        return _t_test([a[s] for s in seeds], [b[s] for s in seeds])
    return _bootstrap([a[s] for s in seeds], [b[s] for s in seeds], rng, memo)


def _t_test(a: list[Outcomes], b: list[Outcomes]) -> tuple[float, float]:
    means, variances, dof = [], [], 0
    for x, y in zip(a, b):
        diff = 100 * (x.arrays["correct"] / x.arrays["total"] - y.arrays["correct"] / y.arrays["total"])
        means.append(diff.mean())
        variances.append(diff.var(ddof=1) / diff.size if diff.size > 1 else 0.0)
        dof += diff.size - 1
    delta = float(np.mean(means))
    se = math.sqrt(sum(variances)) / len(means)
    if se == 0 or dof == 0:
        return delta, 1.0 if delta == 0 else 0.0
    return delta, float(2 * stats.t.sf(abs(delta) / se, dof))


def _resample_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """[BOOTSTRAP, n] resampling counts of n samples (each row a multinomial draw summing to n)."""
    return rng.multinomial(n, np.full(n, 1 / n), size=BOOTSTRAP).astype(np.float64)


CACHED_WEIGHTS_MAX = 4000
"""Samples (summed over seeds) up to which :func:`_seeded_weights` keeps its draws (64 MB each)."""


def _seeded_weights(sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The resampling counts a generator seeded with :data:`BOOTSTRAP_SEED` draws for samples of
    ``sizes`` in turn: every default-seeded test draws exactly these, so a table draws them once
    (kept for the last few sizes when they are small)."""
    return (_cached_draws if sum(sizes) <= CACHED_WEIGHTS_MAX else _draws)(sizes)


def _draws(sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    weights = tuple(_resample_weights(rng, n) for n in sizes)
    for w in weights:
        w.setflags(write=False)
    return weights


_cached_draws = functools.lru_cache(maxsize=4)(_draws)


def _bootstrap(a: list[Outcomes], b: list[Outcomes], rng: np.random.Generator | None,
               memo: dict | None = None) -> tuple[float, float]:
    delta = float(np.mean([x.value() - y.value() for x, y in zip(a, b)]))
    resampled = np.zeros(BOOTSTRAP)
    sizes = tuple(x.n for x in a)
    draws = _seeded_weights(sizes) if rng is None else [_resample_weights(rng, x.n) for x in a]
    memo = memo if rng is None and memo is not None else {}

    def values(run: Outcomes, i: int) -> np.ndarray:  # a run's [R] resampled values under draw i
        key = (id(run), sizes, i)  # the seeded draws depend only on the sizes and the position
        if key not in memo:
            memo[key] = run.value(draws[i])
        return memo[key]

    for i, (x, y) in enumerate(zip(a, b)):  # draws[i]: [R, n] counts
        resampled += (values(x, i) - values(y, i)) / len(a)
    resampled = resampled[np.isfinite(resampled)]
    se = float(resampled.std(ddof=1)) if resampled.size > 1 else 0.0
    if se == 0:
        return delta, 1.0 if delta == 0 else 0.0
    return delta, float(2 * stats.norm.sf(abs(delta) / se))


def bootstrap_ci95(outcomes: Outcomes, rng: np.random.Generator | None = None) -> float:
    """Half-width of the 95% percentile-bootstrap interval of one run's metric over its samples
    (the mean of the distances from the value to the 2.5th and 97.5th percentiles)."""
    weights = _seeded_weights((outcomes.n,))[0] if rng is None else _resample_weights(rng, outcomes.n)
    values = outcomes.value(weights)
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float((high - low) / 2)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare_rows(rows: Mapping[Hashable, RowOutcomes]) -> list[Comparison]:
    """Every pair of rows with paired outcomes, Holm-corrected together; ``a`` is the row with the
    higher value of each pair."""
    keys = [k for k, outcomes in rows.items() if outcomes]
    tested, memo = [], {}  # memo: each run's bootstrap values, computed once for all its pairs
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            result = paired_test(rows[first], rows[second], memo=memo)
            if result is not None:
                delta, p = result
                a, b = (first, second) if delta >= 0 else (second, first)
                tested.append(Comparison(a, b, abs(delta), p))
    adjusted = holm([c.p for c in tested])
    return [Comparison(c.a, c.b, c.delta, c.p, q) for c, q in zip(tested, adjusted)]


def ranks(rows: Mapping[Hashable, RowOutcomes], comparisons: list[Comparison]) -> dict[Hashable, int]:
    """Each row with outcomes: 1 + the number of rows significantly better (higher) than it."""
    return {key: 1 + sum(c.significant and c.b == key for c in comparisons) for key, outcomes in rows.items() if outcomes}
