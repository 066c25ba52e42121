"""N-way K-shot episodic evaluation on frozen features (SMKD's few-shot protocol).

Episodes are drawn once from the split's labels with a seeded generator, so every model is scored
on the same episodes; the prototype and cosine-linear classifiers score all episodes as batched
tensor programs.

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

from benchbase.components import DataBundle, Evaluator, Metric, VitModel, mean_ci95
from benchbase.errors import BenchbaseError
from benchbase.evaluation.features import check_pooling, extract_features
from benchbase.outcomes import KEY as OUTCOMES
from benchbase.outcomes import mean_outcomes

Queries = int | Literal["all"]

CLASSIFIERS = ("prototype", "logistic", "cosine_linear")

_SAMPLE_CHUNK = 1024  # episodes sampled per generator call (bounds the [chunk, N, max class size] keys)
_CHUNK_ELEMENTS = 1 << 24  # gathered feature values per chunk of episodes (64 MiB of float32)


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


def sample_episodes(
    labels: Tensor, ways: int, shots: int, queries: Queries, episodes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw ``episodes`` N-way K-shot episodes.

    Each episode picks ``ways`` distinct classes uniformly among the classes with at least
    ``shots + queries`` images (``shots + 1`` for ``queries="all"``), then, per class, ``shots``
    support and ``queries`` query images uniformly without replacement, so support and query never
    share an image. With ``queries="all"`` every remaining image of the class is a query.
    Way ``j`` of an episode is the class of ``support[e, j]``.

    Args:
        labels: [n] class labels of the images.
        generator: CPU generator; the same seed gives the same episodes.

    Returns:
        ([E, N, K] long support indices, [E, N, Q] long query indices, -1 marking padding) into
        ``labels``.

    Raises:
        BenchbaseError: fewer than ``ways`` classes have enough images.
    """
    if labels.numel() == 0:
        raise BenchbaseError(f"{ways}-way episodes need labelled images, but there are none")
    classes, members, counts = _class_members(labels.cpu())
    needed = shots + (1 if queries == "all" else queries)
    eligible = counts >= needed
    if int(eligible.sum()) < ways:
        query_text = "at least 1 query" if queries == "all" else f"{queries} queries"
        raise BenchbaseError(
            f"{ways}-way {shots}-shot episodes with {query_text} per class need {ways} classes of at least "
            f"{needed} images, but {int(eligible.sum())} of {classes.numel()} classes have that "
            f"({_describe_sizes(classes, counts)})"
        )
    counts = counts[eligible]
    members = members[eligible, : int(counts.max())]
    taken = members.shape[1] if queries == "all" else needed
    support, query = [], []
    for start in range(0, episodes, _SAMPLE_CHUNK):
        chunk = min(_SAMPLE_CHUNK, episodes - start)
        classes = torch.rand(chunk, counts.numel(), generator=generator).argsort(dim=1)[:, :ways]  # [e, N]
        keys = torch.rand(chunk, ways, members.shape[1], generator=generator)
        keys.masked_fill_(torch.arange(members.shape[1]) >= counts[classes].unsqueeze(-1), 2.0)  # padding last
        picked = keys.argsort(dim=-1)[..., :taken]  # [e, N, taken] positions within each class
        index = torch.gather(members[classes], 2, picked)  # padding positions hold -1
        support.append(index[..., :shots])
        query.append(index[..., shots:])
    return torch.cat(support), torch.cat(query)


def _episode_chunks(episodes: int, per_episode: int, budget: int = _CHUNK_ELEMENTS) -> Iterator[slice]:
    """Consecutive slices of episodes holding at most ``budget`` values of ``per_episode`` each."""
    size = max(1, budget // max(1, per_episode))
    for start in range(0, episodes, size):
        yield slice(start, min(start + size, episodes))


def _linear_accuracy(inputs: Tensor, weights: Tensor, query_idx: Tensor) -> Tensor:
    """Accuracy per episode of a linear classifier over the queries.

    Args:
        inputs: [n, F] classifier inputs of every image.
        weights: [E, N, F] class weights of each episode; a query's prediction is the argmax of
            its N scores ``weights[e] @ inputs[query]``.
        query_idx: [E, N, Q] query indices into ``inputs``, -1 marking padding.

    Returns:
        [E] fraction of each episode's (non-padding) queries predicted as their own way.
    """
    episodes, ways, queries = query_idx.shape
    query_idx = query_idx.to(inputs.device)
    truth = torch.arange(ways, device=inputs.device).view(1, -1, 1)
    accuracy = torch.empty(episodes, device=inputs.device)
    for part in _episode_chunks(episodes, ways * queries * inputs.shape[1]):
        index = query_idx[part]
        scores = torch.einsum("enqf,emf->enqm", inputs[index.clamp(min=0)], weights[part])
        valid = index >= 0
        correct = (scores.argmax(dim=-1) == truth) & valid
        accuracy[part] = correct.sum(dim=(1, 2)) / valid.sum(dim=(1, 2))
    return accuracy


def prototype_accuracy(features: Tensor, support_idx: Tensor, query_idx: Tensor) -> Tensor:
    """Prototype classifier: each query goes to the class whose mean support feature is most cosine-similar.

    Args:
        features: [n, F] features.
        support_idx: [E, N, K] support indices into ``features``.
        query_idx: [E, N, Q] query indices, -1 marking padding.

    Returns:
        [E] accuracy of each episode over its queries, in [0, 1].
    """
    features = features.float()
    support_idx = support_idx.to(features.device)
    episodes, ways, shots = support_idx.shape
    prototypes = torch.empty(episodes, ways, features.shape[1], device=features.device)
    for part in _episode_chunks(episodes, ways * shots * features.shape[1]):
        prototypes[part] = F.normalize(features[support_idx[part]].mean(dim=2), dim=-1)
    return _linear_accuracy(F.normalize(features, dim=-1), prototypes, query_idx)


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
    One :class:`Metric` per K, named ``"{ways}way-{K}shot"``: mean episode accuracy in percent with
    ci95 = 1.96·std/sqrt(episodes); each episode's correct and total queries are kept as its
    outcomes (:mod:`benchbase.outcomes`) for paired tests between models.
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

    def protocol(self, shots: int) -> str:
        """The human-readable protocol of the ``shots``-shot metric."""
        queries = "all remaining images of each class as queries" if self.queries == "all" else (
            f"{self.queries} queries/class"
        )
        classifier = {
            "prototype": "prototype (cosine) classifier",
            "logistic": "logistic-regression classifier (scikit-learn lbfgs, C=1, L2-normalised features)",
            "cosine_linear": (
                "cosine linear classifier (distLinear, scale 2; SGD lr 0.01, momentum 0.9, dampening 0.9, "
                f"weight decay 1e-3, batch 4, {self.linear_epochs} epochs)"
            ),
        }[self.classifier]
        name = "" if self.named == "standard" else f"{self.named}: "
        return (
            f"{name}{self.ways}-way {shots}-shot, {queries}, {self.episodes} episodes (seed {self.seed}), "
            f"features {self.pooling}, {classifier}, split {self.split}"
        )

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        dataset = data.split(self.split)
        labels = torch.as_tensor(list(dataset.targets), dtype=torch.long)
        episodes: dict[int, tuple[Tensor, Tensor]] = {}
        for shots in self.shots:  # sample first: a split too small for the protocol fails before any forward pass
            generator = torch.Generator().manual_seed(self.seed)
            try:
                episodes[shots] = sample_episodes(labels, self.ways, shots, self.queries, self.episodes, generator)
            except BenchbaseError as err:
                raise BenchbaseError(f"few-shot split {self.split!r} of dataset {data.name!r}: {err}") from None
        features, _ = extract_features(student, dataset, self.pooling, self.batch_size, device)
        features = features.to(device)
        metrics = []
        for shots, (support, query) in episodes.items():
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
            metrics.append(
                Metric(
                    name=f"{self.ways}way-{shots}shot",
                    value=value,
                    n=self.episodes,
                    protocol=self.protocol(shots),
                    ci95=ci95,
                    extras={"episodes": self.episodes, "queries": self.queries,
                            OUTCOMES: mean_outcomes(correct, total)},
                )
            )
        return metrics
