"""N-way K-shot episodic evaluation on frozen features (SMKD's few-shot protocol).

Episodes are drawn once from the split's labels with a seeded generator, so every model is scored
on the same episodes (or read from a published episode list, see
:mod:`benchbase.evaluation.episode_lists`); the prototype classifier scores all episodes in one fused
CPU kernel (:mod:`benchbase.evaluation.prototype_kernel`; batched tensor programs on other devices),
the cosine-linear classifier as batched tensor programs.

Shapes: n = images, F = feature width, E = episodes, N = ways, K = shots, Q = queries per class
(with ``queries="all"``, Q is the largest number of remaining images of any class and shorter
query lists are padded with -1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from benchbase.components import DataBundle, Evaluator, LabeledImages, Metric, VitModel, mean_ci95
from benchbase.data.folders import LazyImages
from benchbase.errors import BenchbaseError
from benchbase.evaluation.episode_lists import EpisodeList, read_episode_list
from benchbase.evaluation.features import check_pooling, extract_features
from benchbase.evaluation.prototype_kernel import prototype_accuracy_cpu
from benchbase.outcomes import KEY as OUTCOMES
from benchbase.outcomes import mean_outcomes

Queries = int | Literal["all"]

CLASSIFIERS = ("prototype", "logistic", "cosine_linear")

_SAMPLE_CHUNK = 1024  # episodes sampled per generator call (bounds the [chunk, N, max class size] keys)
_CHUNK_ELEMENTS = 1 << 24  # values per chunk of episodes (64 MiB of float32): bounds every [e, ...] temporary
_CACHE_FLOATS = 1 << 18  # feature values gathered per step of a linear scorer (1 MiB: stays in a core's L2 cache)
_GRAM_MAX_IMAGES = 4096  # the Gram path's [n, n] matrix stays within 64 MiB
# Costs of the batched paths in nanoseconds, measured on one core of the development machine (only their
# ratios matter):
_MATMUL_NS = 0.026  # a multiply-add of a large matrix product (the Gram matrix)
_GRAM_SLOT_NS, _GRAM_GATHER_NS = 100.0, 26.0  # the Gram path, per query and per scalar it gathers (N·K per query)
_DIRECT_SLOT_NS, _DIRECT_FLOAT_NS = 245.0, 1.8  # the direct path, per query and per feature value (F per query)


def _class_members(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Image indices of every class.

    Args:
        labels: [n] class labels.

    Returns:
        ([C] class labels in ascending order; [C, M] long indices of each class's images, padded
        with -1 where a class has fewer than M = the largest class size; [C] long class sizes).
    """
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(labels.numel()) - starts[inverse[order]]
    members = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.long)
    members[inverse[order], position] = order
    return classes, members, counts


def _describe_sizes(classes: Tensor, counts: Tensor) -> str:
    """``label: images`` for every class, or the range of class sizes when there are many classes."""
    if classes.numel() > 20:
        return f"{classes.numel()} classes of {int(counts.min())} to {int(counts.max())} images"
    return "images per class " + ", ".join(f"{int(c)}: {int(k)}" for c, k in zip(classes, counts))


def _smallest(keys: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` smallest ``keys`` along the last dimension, smallest first.

    Exactly ``keys.argsort(dim=-1)[..., :k]``, found with ``topk`` (which does not sort the whole
    row): rows where two of the k + 1 smallest keys are equal are sorted by ``argsort`` itself, so
    its order among equal keys is kept.
    """
    if k + 1 >= keys.shape[-1]:
        return keys.argsort(dim=-1)[..., :k]
    values, picked = keys.topk(k + 1, dim=-1, largest=False, sorted=True)
    tied = (values[..., 1:] == values[..., :-1]).any(dim=-1)
    if tied.any():
        picked[tied] = keys[tied].argsort(dim=-1)[..., : k + 1]
    return picked[..., :k]


def _group_choice(groups: Tensor, ways: int, chunk: int, generator: torch.Generator) -> Tensor:
    """``ways`` distinct classes per episode, all of one group.

    Args:
        groups: [C] group id of each eligible class.

    Returns:
        [chunk, N] positions into ``groups``: each episode's group is drawn uniformly among the
        groups of at least ``ways`` classes, then ``ways`` of its classes uniformly.
    """
    _, members, counts = _class_members(groups)
    members, counts = members[counts >= ways], counts[counts >= ways]
    chosen = torch.randint(counts.numel(), (chunk,), generator=generator)  # [e] a group per episode
    keys = torch.rand(chunk, members.shape[1], generator=generator)
    keys.masked_fill_(torch.arange(members.shape[1]) >= counts[chosen].unsqueeze(-1), 2.0)  # padding last
    return torch.gather(members[chosen], 1, _smallest(keys, ways))


def sample_episodes(
    labels: Tensor,
    ways: int,
    shots: int,
    queries: Queries,
    episodes: int,
    generator: torch.Generator,
    groups: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``episodes`` N-way K-shot episodes.

    Each episode picks ``ways`` distinct classes uniformly among the classes with at least
    ``shots + queries`` images (``shots + 1`` for ``queries="all"``), then, per class, ``shots``
    support and ``queries`` query images uniformly without replacement, so support and query never
    share an image. With ``queries="all"`` every remaining image of the class is a query.
    Way ``j`` of an episode is the class of ``support[e, j]``.

    With ``groups``, each episode's classes come from one group (e.g. one Omniglot alphabet): the
    group is drawn uniformly among the groups with at least ``ways`` eligible classes, then
    ``ways`` of its eligible classes uniformly.

    Args:
        labels: [n] class labels of the images.
        generator: CPU generator; the same seed gives the same episodes.
        groups: [L] long group id of each class label (``groups[label]``), L > the largest label.

    Returns:
        ([E, N, K] long support indices, [E, N, Q] long query indices, -1 marking padding) into
        ``labels``.

    Raises:
        BenchbaseError: fewer than ``ways`` classes (of one group, with ``groups``) have enough images.
    """
    if labels.numel() == 0:
        raise BenchbaseError(f"{ways}-way episodes need labelled images, but there are none")
    classes, members, counts = _class_members(labels.cpu())
    needed = shots + (1 if queries == "all" else queries)
    eligible = counts >= needed
    query_text = "at least 1 query" if queries == "all" else f"{queries} queries"
    if int(eligible.sum()) < ways:
        raise BenchbaseError(
            f"{ways}-way {shots}-shot episodes with {query_text} per class need {ways} classes of at least "
            f"{needed} images, but {int(eligible.sum())} of {classes.numel()} classes have that "
            f"({_describe_sizes(classes, counts)})"
        )
    eligible_groups = None if groups is None else groups.cpu()[classes[eligible]]
    if eligible_groups is not None:
        largest = int(torch.unique(eligible_groups, return_counts=True)[1].max())
        if largest < ways:
            raise BenchbaseError(
                f"{ways}-way {shots}-shot episodes within one group with {query_text} per class need a group of "
                f"{ways} classes of at least {needed} images, but the largest group has {largest} such classes"
            )
    counts = counts[eligible]
    members = members[eligible, : int(counts.max())]
    taken = members.shape[1] if queries == "all" else needed
    support, query = [], []
    for start in range(0, episodes, _SAMPLE_CHUNK):
        chunk = min(_SAMPLE_CHUNK, episodes - start)
        if eligible_groups is None:
            classes = _smallest(torch.rand(chunk, counts.numel(), generator=generator), ways)  # [e, N]
        else:
            classes = _group_choice(eligible_groups, ways, chunk, generator)
        keys = torch.rand(chunk, ways, members.shape[1], generator=generator)
        keys.masked_fill_(torch.arange(members.shape[1]) >= counts[classes].unsqueeze(-1), 2.0)  # padding last
        picked = _smallest(keys, taken)  # [e, N, taken] positions within each class
        index = torch.gather(members[classes], 2, picked)  # padding positions hold -1
        support.append(index[..., :shots])
        query.append(index[..., shots:])
    return torch.cat(support), torch.cat(query)


def _episode_chunks(episodes: int, per_episode: int, budget: int = _CHUNK_ELEMENTS) -> Iterator[slice]:
    """Consecutive slices of episodes holding at most ``budget`` values of ``per_episode`` each."""
    size = max(1, budget // max(1, per_episode))
    for start in range(0, episodes, size):
        yield slice(start, min(start + size, episodes))


def _linear_accuracy(inputs: Tensor, weights: Tensor, query_idx: Tensor, scales: Tensor | None = None) -> Tensor:
    """Accuracy per episode of a linear classifier over the queries.

    The query features are gathered a step of episodes at a time into one reused buffer (on the
    CPU, of the size of a core's cache) and scored by a batched matrix product, so no
    [E, N, Q, F] copy is ever made.

    Args:
        inputs: [n, F] classifier inputs of every image.
        weights: [E, N, F] class weights of each episode; a query's prediction is the argmax of
            its N scores ``weights[e] @ inputs[query]`` (divided by ``scales[e]`` if given).
        query_idx: [E, N, Q] query indices into ``inputs``, -1 marking padding.
        scales: [E, N] divisors of each class's scores (the norms of unnormalised class means).

    Returns:
        [E] fraction of each episode's (non-padding) queries predicted as their own way.
    """
    episodes, ways, queries = query_idx.shape
    slots, dim = ways * queries, inputs.shape[1]
    query_idx = query_idx.to(inputs.device).reshape(episodes, slots)
    truth = torch.arange(ways, device=inputs.device).repeat_interleave(queries)  # [N·Q] way of each query slot
    accuracy = torch.empty(episodes, device=inputs.device)
    budget = _CACHE_FLOATS if inputs.device.type == "cpu" else _CHUNK_ELEMENTS  # a GPU wants few large steps
    step = max(1, min(episodes, budget // (slots * dim)))
    gathered = torch.empty(step * slots, dim, device=inputs.device)
    for part in _episode_chunks(episodes, slots * ways):
        index = query_idx[part]
        flat = index.clamp(min=0)
        scores = torch.empty(index.shape[0], slots, ways, device=inputs.device)  # [e, N·Q, N]
        classes = weights[part].transpose(1, 2)  # [e, F, N]
        for inner in _episode_chunks(index.shape[0], slots * dim, budget):
            count = (inner.stop - inner.start) * slots
            queries_f = torch.index_select(inputs, 0, flat[inner].flatten(), out=gathered[:count])
            torch.bmm(queries_f.view(-1, slots, dim), classes[inner], out=scores[inner])
        if scales is not None:
            scores /= scales[part].unsqueeze(1)
        valid = index >= 0
        accuracy[part] = ((scores.argmax(dim=-1) == truth) & valid).sum(dim=1) / valid.sum(dim=1)
    return accuracy


def _prototypes(features: Tensor, support_idx: Tensor) -> tuple[Tensor, Tensor]:
    """([E, N, F] sums of each episode's [E, N, K] support ``features`` per way, [E, N] their norms):
    the class means' directions, which cosines need, without dividing every feature value."""
    episodes, ways, shots = support_idx.shape
    sums = F.embedding_bag(support_idx.reshape(episodes * ways, shots), features, mode="sum")  # gathers and sums
    return sums.view(episodes, ways, -1), sums.norm(dim=-1).clamp_min(1e-12).view(episodes, ways)


def _gram_prototype_accuracy(features: Tensor, support_idx: Tensor, query_idx: Tensor) -> Tensor:
    """:func:`prototype_accuracy` from one Gram matrix G = X·Xᵀ of the [n, F] features.

    The cosine of query q to the mean of support set S is Σ_{s∈S} G[q, s] / (‖x_q‖·√(Σ_{s,s'∈S}
    G[s, s'])); ‖x_q‖ is the same for every way, so the argmax needs only gathers of scalars of G
    (N·Q·N·K + N·K·K per episode).
    """
    gram = (features @ features.T).flatten()  # [n·n], n² < 2³¹ (see uses_gram): int32 positions
    n = features.shape[0]
    episodes, ways, shots = support_idx.shape
    queries = query_idx.shape[2]
    support_idx = support_idx.to(features.device, torch.int32)
    query_idx = query_idx.to(features.device, torch.int32)
    truth = torch.arange(ways, device=features.device).repeat_interleave(queries)  # [N·Q]
    accuracy = torch.empty(episodes, device=features.device)
    for part in _episode_chunks(episodes, ways * queries * ways * shots):
        support = support_idx[part]  # [e, N, K]
        query = query_idx[part].flatten(1)  # [e, N·Q]
        count = support.shape[0]
        pairs = query.clamp(min=0).unsqueeze(-1) * n + support.view(count, 1, -1)  # [e, N·Q, N·K]
        dots = gram.index_select(0, pairs.flatten()).view(count, -1, ways, shots).sum(dim=-1)  # [e, N·Q, N]
        within = (support.unsqueeze(-1) * n + support.unsqueeze(-2)).flatten()  # [e·N·K·K]
        norms = gram.index_select(0, within).view(count, ways, -1).sum(dim=-1).sqrt()  # [e, N]: ‖Σ_k x_k‖
        valid = query >= 0
        correct = ((dots / norms.unsqueeze(1)).argmax(dim=-1) == truth) & valid
        accuracy[part] = correct.sum(dim=1) / valid.sum(dim=1)
    return accuracy


def uses_gram(images: int, dim: int, episodes: int, ways: int, shots: int, queries: int) -> bool:
    """Whether :func:`batched_prototype_accuracy` scores through the Gram matrix rather than batched products.

    By the costs of the two tensor programs measured on one CPU core (the CPU itself now takes the
    fused kernel; no accelerator was measured): the Gram path pays n²·F multiply-adds for the matrix,
    then per query slot (E·N·Q of them) a fixed cost and N·K scalar gathers; the direct path pays
    per query slot a fixed cost and the gather and products of its F feature values. The Gram path
    wins for small splits, many episodes, wide features and few shots. Splits of more than
    :data:`_GRAM_MAX_IMAGES` images always take the direct path (bounded memory).
    """
    if images > _GRAM_MAX_IMAGES:
        return False
    slots = episodes * ways * queries
    gram = _MATMUL_NS * images * images * dim + slots * (_GRAM_SLOT_NS + _GRAM_GATHER_NS * ways * shots)
    return gram < slots * (_DIRECT_SLOT_NS + _DIRECT_FLOAT_NS * dim)


def prototype_accuracy(features: Tensor, support_idx: Tensor, query_idx: Tensor) -> Tensor:
    """Prototype classifier: each query goes to the class whose mean support feature is most cosine-similar.

    On the CPU by the fused kernel (:func:`~benchbase.evaluation.prototype_kernel.prototype_accuracy_cpu`:
    each query row read once, no gathered copies); on other devices by batched tensor programs
    (:func:`batched_prototype_accuracy`). All give the same predictions up to float rounding of
    exact near-ties.

    Args:
        features: [n, F] features.
        support_idx: [E, N, K] support indices into ``features``.
        query_idx: [E, N, Q] query indices, -1 marking padding.

    Returns:
        [E] accuracy of each episode over its queries, in [0, 1].
    """
    features = features.float()
    if features.device.type == "cpu":
        return torch.from_numpy(prototype_accuracy_cpu(
            features.contiguous().numpy(), support_idx.to(torch.int64).contiguous().numpy(),
            query_idx.to(torch.int64).contiguous().numpy()))
    return batched_prototype_accuracy(features, support_idx, query_idx)


def batched_prototype_accuracy(features: Tensor, support_idx: Tensor, query_idx: Tensor) -> Tensor:
    """:func:`prototype_accuracy` as batched tensor programs on any device (an accelerator's path):
    through one Gram matrix of the features where that is cheaper (:func:`uses_gram`), otherwise by
    batched products of the query features with each episode's class means. Same shapes."""
    features = features.float()
    episodes, ways, queries = query_idx.shape
    if uses_gram(features.shape[0], features.shape[1], episodes, ways, support_idx.shape[2], queries):
        return _gram_prototype_accuracy(features, support_idx, query_idx)
    support_idx = support_idx.to(features.device)
    normed = F.normalize(features, dim=-1)
    accuracy = []
    for part in _episode_chunks(episodes, ways * features.shape[1]):  # bounds the [e, N, F] class sums
        sums, norms = _prototypes(features, support_idx[part])
        accuracy.append(_linear_accuracy(normed, sums, query_idx[part], norms))
    return torch.cat(accuracy) if accuracy else torch.empty(0, device=features.device)


def logistic_accuracy(features: Tensor, support_idx: Tensor, query_idx: Tensor) -> Tensor:
    """Per-episode logistic regression (scikit-learn lbfgs, C=1) on L2-normalised support features.

    Shapes as in :func:`prototype_accuracy`; returns [E] accuracies in [0, 1].
    """
    normed = F.normalize(features.float(), dim=-1).cpu().numpy()
    support_idx, query_idx = support_idx.cpu().numpy(), query_idx.cpu().numpy()
    _, ways, shots = support_idx.shape
    support_labels = np.repeat(np.arange(ways), shots)
    query_labels = np.broadcast_to(np.arange(ways)[:, None], query_idx.shape[1:])
    accuracy = []
    for support, query in zip(support_idx, query_idx):
        classifier = LogisticRegression(max_iter=1000).fit(normed[support.reshape(-1)], support_labels)
        valid = query >= 0
        accuracy.append(float(np.mean(classifier.predict(normed[query[valid]]) == query_labels[valid])))
    return torch.tensor(accuracy)


def cosine_linear_accuracy(
    features: Tensor,
    support_idx: Tensor,
    query_idx: Tensor,
    epochs: int = 301,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SMKD's ``classifier`` evaluation: a cosine linear classifier (``distLinear``) per episode.

    Scores are 2 · g_c · cos(x, v_c) with weight-normalised class weights (direction v_c [F],
    learnable norm g_c, no bias). Each episode's classifier is trained on its N·K support features
    with cross-entropy and SGD (lr 0.01, momentum 0.9, dampening 0.9, weight decay 1e-3) on
    mini-batches of 4 in a fresh random order every epoch, for ``epochs`` epochs, then scores its
    queries. All episodes train at once as one program over [E, N, F] parameters; SGD acts
    elementwise and the loss is a sum of per-episode losses, so this equals E independent runs.

    Shapes as in :func:`prototype_accuracy`; ``generator`` (CPU) drives the initialisation and the
    mini-batch order. Returns [E] accuracies in [0, 1].
    """
    device = features.device
    episodes, ways, shots = support_idx.shape
    dim = features.shape[1]
    support_size = ways * shots
    inputs = features.float()
    inputs = inputs / (inputs.norm(dim=-1, keepdim=True) + 1e-5)  # distLinear's input normalisation
    support_labels = torch.arange(ways, device=device).repeat_interleave(shots)  # [N·K]
    weights = torch.empty(episodes, ways, dim, device=device)
    bound = 1 / math.sqrt(dim)  # nn.Linear's default initialisation
    # per episode: the support features plus parameters, gradients, momenta and temporaries
    for part in _episode_chunks(episodes, (support_size + 8 * ways) * dim, budget=_CHUNK_ELEMENTS * 2):
        count = part.stop - part.start
        support = inputs[support_idx[part].to(device).reshape(count, support_size)]  # [e, N·K, F]
        direction = (torch.rand(count, ways, dim, generator=generator) * 2 * bound - bound).to(device)
        gain = direction.norm(dim=-1, keepdim=True)  # WeightNorm starts from the initial row norms
        direction.requires_grad_(True)
        gain.requires_grad_(True)
        optimizer = torch.optim.SGD([direction, gain], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
        for _ in range(epochs):
            order = torch.rand(count, support_size, generator=generator).argsort(dim=1).to(device)
            for start in range(0, support_size, 4):
                batch = order[:, start : start + 4]  # [e, b]
                x = torch.gather(support, 1, batch.unsqueeze(-1).expand(-1, -1, dim))  # [e, b, F]
                scale = 2 * gain / direction.norm(dim=-1, keepdim=True)  # [e, N, 1]
                logits = (x @ direction.transpose(1, 2)) * scale.transpose(1, 2)  # [e, b, N]
                loss = F.cross_entropy(logits.flatten(0, 1), support_labels[batch].flatten(), reduction="none")
                optimizer.zero_grad()
                loss.view(count, -1).mean(dim=1).sum().backward()  # each episode's mean over its batch
                optimizer.step()
        with torch.no_grad():
            weights[part] = 2 * gain * direction / direction.norm(dim=-1, keepdim=True)
    return _linear_accuracy(inputs, weights, query_idx)


NAMED_PROTOCOLS: dict[str, dict[str, Queries]] = {
    "standard": {},  # the given queries and episodes (suites use 15 queries, 2,000 episodes)
    "smkd_released": {"queries": "all", "episodes": 10000},  # SMKD's fseval.py: every other image, 10,000 episodes
}
"""Named few-shot protocols and the settings they fix."""


class FewShot(Evaluator):
    """N-way K-shot accuracy on a split's frozen features (default: SMKD's prototype protocol).

    Features of ``split`` are extracted once; for each K in ``shots``, ``episodes`` episodes are
    drawn from a generator seeded with ``seed`` (identical for every model) and scored with
    ``classifier``: ``"prototype"`` (cosine to class means), ``"logistic"`` (scikit-learn logistic
    regression per episode) or ``"cosine_linear"`` (SMKD's distLinear, ``linear_epochs`` epochs).
    ``queries="all"`` uses every remaining image of each class as a query; ``protocol="smkd_released"``
    is SMKD's released evaluation (all remaining images as queries, 10,000 episodes).
    ``within_group=True`` draws each episode's classes within one class group of the split (its
    ``class_groups``, e.g. Omniglot's alphabets), ``ways`` up to the group size.
    ``episodes_file`` scores exactly the episodes of a published list instead (CSV or JSON, see
    :mod:`benchbase.evaluation.episode_lists`; relative image paths start at ``image_root``,
    default the file's folder); ``ways``, ``shots``, ``queries`` and ``episodes`` then come from
    the file.
    One :class:`Metric` per K (per (N, K) of a file), named ``"{ways}way-{K}shot"``: mean episode
    accuracy in percent with ci95 = 1.96·std/sqrt(episodes); each episode's correct and total
    queries are kept as its outcomes (:mod:`benchbase.outcomes`) for paired tests between models.
    """

    name = "fewshot"

    def __init__(
        self,
        split: str = "novel",
        ways: int = 5,
        shots: int | Sequence[int] = (1, 5),
        queries: Queries = 15,
        episodes: int = 2000,
        seed: int = 0,
        pooling: str = "cls+attn",
        classifier: str = "prototype",
        batch_size: int = 256,
        linear_epochs: int = 301,
        protocol: str = "standard",
        within_group: bool = False,
        episodes_file: str | None = None,
        image_root: str | None = None,
    ):
        if protocol not in NAMED_PROTOCOLS:
            raise BenchbaseError(f"unknown few-shot protocol {protocol!r}; available: {', '.join(NAMED_PROTOCOLS)}")
        queries = NAMED_PROTOCOLS[protocol].get("queries", queries)
        episodes = NAMED_PROTOCOLS[protocol].get("episodes", episodes)
        check_pooling(pooling)
        if classifier not in CLASSIFIERS:
            raise BenchbaseError(
                f"unknown few-shot classifier {classifier!r}; available: {', '.join(CLASSIFIERS)}"
            )
        self.shots = (shots,) if isinstance(shots, int) else tuple(shots)
        if queries != "all" and not (isinstance(queries, int) and queries >= 1):
            raise BenchbaseError(f"few-shot queries must be a positive integer or 'all', not {queries!r}")
        if ways < 2 or episodes < 2 or not self.shots or min(self.shots) < 1 or linear_epochs < 1:
            raise BenchbaseError(
                f"few-shot needs ways >= 2, episodes >= 2, shots >= 1 and linear_epochs >= 1; got ways={ways}, "
                f"episodes={episodes}, shots={list(self.shots)}, linear_epochs={linear_epochs}"
            )
        if episodes_file is not None and (within_group or protocol != "standard"):
            raise BenchbaseError("few-shot episodes_file fixes the episodes; drop within_group and protocol")
        self.split = split
        self.ways = ways
        self.queries = queries
        self.episodes = episodes
        self.seed = seed
        self.pooling = pooling
        self.classifier = classifier
        self.batch_size = batch_size
        self.linear_epochs = linear_epochs
        self.named = protocol
        self.within_group = within_group
        self.episodes_file = episodes_file
        self.image_root = image_root

    def protocol(self, shots: int, listed: EpisodeList | None = None, ways: int = 0) -> str:
        """The human-readable protocol of the ``shots``-shot metric (``ways``-way episodes of
        ``listed``, when they come from an episode list)."""
        classifier = {
            "prototype": "prototype (cosine) classifier",
            "logistic": "logistic-regression classifier (scikit-learn lbfgs, C=1, L2-normalised features)",
            "cosine_linear": (
                "cosine linear classifier (distLinear, scale 2; SGD lr 0.01, momentum 0.9, dampening 0.9, "
                f"weight decay 1e-3, batch 4, {self.linear_epochs} epochs)"
            ),
        }[self.classifier]
        if listed is not None:
            count = listed.shapes[(ways, shots)][0].shape[0]
            seed = f" (seed {self.seed})" if self.classifier == "cosine_linear" else ""
            source = "" if listed.images is not None else f", split {self.split}"
            return (
                f"{ways}-way {shots}-shot, the {count} episodes of {listed.path.name} (sha256 {listed.digest[:16]})"
                f"{seed}, features {self.pooling}, {classifier}{source}"
            )
        queries = "all remaining images of each class as queries" if self.queries == "all" else (
            f"{self.queries} queries/class"
        )
        name = "" if self.named == "standard" else f"{self.named}: "
        grouped = ", ways within one class group" if self.within_group else ""
        return (
            f"{name}{self.ways}-way {shots}-shot, {queries}, {self.episodes} episodes (seed {self.seed}){grouped}, "
            f"features {self.pooling}, {classifier}, split {self.split}"
        )

    def _drawn(self, dataset: LabeledImages, data: DataBundle) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
        """The seeded episodes for every K, keyed (N, K); a split too small for them fails here."""
        labels = torch.as_tensor(list(dataset.targets), dtype=torch.long)
        groups, names = None, getattr(dataset, "class_groups", None)  # a plugin's split may not subclass LabeledImages
        if self.within_group:
            if names is None:
                raise BenchbaseError(
                    f"few-shot within_group=true needs class groups, but split {self.split!r} of dataset "
                    f"{data.name!r} has none (a dataset names them in its split's class_groups, e.g. Omniglot's "
                    "alphabets); drop within_group"
                )
            groups = torch.as_tensor(np.unique(list(names), return_inverse=True)[1], dtype=torch.long)
        episodes = {}
        for shots in self.shots:
            generator = torch.Generator().manual_seed(self.seed)
            try:
                episodes[(self.ways, shots)] = sample_episodes(
                    labels, self.ways, shots, self.queries, self.episodes, generator, groups
                )
            except BenchbaseError as err:
                raise BenchbaseError(f"few-shot split {self.split!r} of dataset {data.name!r}: {err}") from None
        return episodes

    def _listed(self, data: DataBundle) -> tuple[LabeledImages, EpisodeList]:
        """The images an episode list indexes (its files, prepared as the split's images are when the
        split is read from files too, e.g. through SMKD's evaluation view; or the split) and the list itself."""
        listed = read_episode_list(self.episodes_file, self.image_root)
        if listed.images is None:
            dataset = data.split(self.split)
            listed.check_indices(len(dataset), f"split {self.split!r} of dataset {data.name!r}")
            return dataset, listed
        files, split = [(file, 0) for file in listed.images], data.splits.get(self.split)
        if isinstance(split, LazyImages):
            return split.reading(files, ["episode image"]), listed
        return LazyImages(files, ["episode image"], data.image_size, data.in_chans), listed

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        listed = None
        if self.episodes_file is None:  # sample first: a split too small for the protocol fails before any forward pass
            dataset = data.split(self.split)
            episodes = self._drawn(dataset, data)
        else:
            dataset, listed = self._listed(data)
            episodes = listed.shapes
        features, _ = extract_features(student, dataset, self.pooling, self.batch_size, device)
        features = features.to(device)
        metrics = []
        for (ways, shots), (support, query) in episodes.items():
            if self.classifier == "prototype":
                accuracy = prototype_accuracy(features, support, query)
            elif self.classifier == "logistic":
                accuracy = logistic_accuracy(features, support, query)
            else:
                generator = torch.Generator().manual_seed(self.seed)
                accuracy = cosine_linear_accuracy(features, support, query, self.linear_epochs, generator)
            total = (query >= 0).sum(dim=(1, 2))  # [E] queries of each episode
            correct = torch.round(accuracy.cpu().double() * total)  # exact: accuracy is correct / total
            value, ci95 = mean_ci95(correct / total * 100)
            count = support.shape[0]
            metrics.append(
                Metric(
                    name=f"{ways}way-{shots}shot",
                    value=value,
                    n=count,
                    protocol=self.protocol(shots, listed, ways),
                    ci95=ci95,
                    extras={"episodes": count, "queries": self.queries if listed is None else "listed",
                            OUTCOMES: mean_outcomes(correct, total)},
                )
            )
        return metrics
