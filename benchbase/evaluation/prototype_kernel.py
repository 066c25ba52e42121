"""The prototype classifier's CPU kernel: every query row is read once and scored where it lies.

Batched PyTorch scoring gathers each query's F feature values into a buffer and multiplies the
buffer by the episode's class means in a separate small product; on a CPU the gather and the
[N·Q, F] x [F, N] products cost several times the arithmetic. This kernel (compiled by numba on
first use, cached on disk) fuses them: for each episode it sums the K support rows of each way into
an [N, F] buffer of unit class directions, then reads the query rows eight at a time (eight
independent memory streams) and keeps each query's best way while the dot products run. No
[E, ...] temporary is made; memory is the features plus O(N·F).

Query norms are left out: they scale all N scores of a query alike, so the argmax is the cosine
classifier's. Ties go to the first way, as ``torch.argmax``. Sums run in float32 in an order the
compiler may reassociate (``fastmath`` reassociation and contraction only), so an exact near-tie can
break differently from another float32 summation order.

Shapes: n images, F feature width, E episodes, N ways, K shots, Q query slots per way (-1 = padding).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FAST = {"reassoc", "contract"}  # lets the compiler vectorise the sums; no NaN or infinity assumptions
_BLOCK = 8  # query rows read together (their loads overlap; 10% faster than 4): x0..x7 below unroll it


@njit(cache=True, fastmath=_FAST, boundscheck=False, nogil=True)
def _unit_class_directions(features: np.ndarray, support: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` [N, F] with each way's sum of its K ``support`` rows [N, K], scaled to unit length."""
    ways, shots = support.shape
    dim = features.shape[1]
    for way in range(ways):
        direction, first = out[way], features[support[way, 0]]
        for f in range(dim):  # an explicit loop: numba's slice assignment copies element by element
            direction[f] = first[f]
        for shot in range(1, shots):
            row = features[support[way, shot]]
            for f in range(dim):
                direction[f] += row[f]
        norm = np.float32(0.0)
        for f in range(dim):
            norm += direction[f] * direction[f]
        scale = np.float32(1.0) / max(np.sqrt(norm), np.float32(1e-12))
        for f in range(dim):
            direction[f] *= scale


@njit(cache=True, fastmath=_FAST, boundscheck=False, nogil=True)
def prototype_accuracy_cpu(features: np.ndarray, support_idx: np.ndarray, query_idx: np.ndarray) -> np.ndarray:
    """[E] float32 fraction of each episode's queries whose most cosine-similar class mean is their own way.

    Args: ``features`` [n, F] float32, C-contiguous; ``support_idx`` [E, N, K] and ``query_idx``
    [E, N, Q] int64 row indices (-1 in ``query_idx`` marks padding). An episode without a query
    scores NaN (0 / 0, as the batched paths).
    """
    episodes, ways, queries = query_idx.shape
    dim = features.shape[1]
    slots = ways * queries
    directions = np.empty((ways, dim), np.float32)
    rows = np.empty(_BLOCK, np.int64)
    best = np.empty(_BLOCK, np.float32)
    choice = np.empty(_BLOCK, np.int64)
    accuracy = np.empty(episodes, np.float32)
    for episode in range(episodes):
        _unit_class_directions(features, support_idx[episode], directions)
        slot_rows = query_idx[episode].reshape(slots)
        correct, valid = 0, 0
        for start in range(0, slots, _BLOCK):
            count = min(_BLOCK, slots - start)
            for b in range(_BLOCK):  # a short last block repeats its last row, whose result is not read
                rows[b] = max(slot_rows[start + min(b, count - 1)], 0)
            x0, x1, x2, x3 = features[rows[0]], features[rows[1]], features[rows[2]], features[rows[3]]
            x4, x5, x6, x7 = features[rows[4]], features[rows[5]], features[rows[6]], features[rows[7]]
            for way in range(ways):
                direction = directions[way]
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
                for f in range(dim):
                    d = direction[f]
                    s0 += x0[f] * d
                    s1 += x1[f] * d
                    s2 += x2[f] * d
                    s3 += x3[f] * d
                    s4 += x4[f] * d
                    s5 += x5[f] * d
                    s6 += x6[f] * d
                    s7 += x7[f] * d
                for b, score in enumerate((s0, s1, s2, s3, s4, s5, s6, s7)):
                    if way == 0 or score > best[b]:
                        best[b], choice[b] = score, way
            for b in range(count):
                if slot_rows[start + b] >= 0:
                    valid += 1
                    correct += choice[b] == (start + b) // queries
        accuracy[episode] = np.float32(correct) / np.float32(valid) if valid else np.float32(np.nan)
    return accuracy
