"""Few-shot episodes: sampling, the batched classifiers, the metric and the FewShot evaluator."""

from __future__ import annotations

import math
import time

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.components import DataBundle, Student
from benchbase.errors import BenchbaseError
from benchbase.evaluation.features import extract_features
from benchbase.evaluation import fewshot
from benchbase.evaluation.fewshot import (
    FewShot,
    _gram_prototype_accuracy,
    _linear_accuracy,
    _prototypes,
    _smallest,
    batched_prototype_accuracy,
    cosine_linear_accuracy,
    logistic_accuracy,
    prototype_accuracy,
    sample_episodes,
    uses_gram,
)

from benchbase.outcomes import outcomes_of
from conftest import tensor_images


def tiny_student() -> Student:
    torch.manual_seed(0)
    return Student(
        timm.create_model(
            "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            num_classes=0,
        )
    )


def bundle(images: Tensor, labels: Tensor, split: str = "novel") -> DataBundle:
    return DataBundle("toy", {split: tensor_images(images, labels)}, image_size=16, in_chans=1, num_classes=0)


def separable_features(labels: Tensor, dim: int = 16, noise: float = 0.05) -> Tensor:
    """One-hot class means (class c -> axis c) plus small Gaussian noise: [n, dim]."""
    generator = torch.Generator().manual_seed(1)
    return F.one_hot(labels, dim).float() + noise * torch.randn(labels.numel(), dim, generator=generator)


def episodes(labels: Tensor, shots: int, queries, count: int, seed: int = 0, ways: int = 5):
    return sample_episodes(labels, ways, shots, queries, count, torch.Generator().manual_seed(seed))


# Uneven classes, labels not contiguous: class 7 has too few images for 5 shots + 15 queries.
SIZES = {0: 30, 2: 25, 3: 40, 4: 20, 5: 33, 7: 12, 9: 21}
LABELS = torch.cat([torch.full((n,), c) for c, n in SIZES.items()])
LABELS = LABELS[torch.randperm(LABELS.numel(), generator=torch.Generator().manual_seed(3))]


def test_episode_structure():
    support, query = episodes(LABELS, shots=5, queries=15, count=300)
    assert support.shape == (300, 5, 5) and query.shape == (300, 5, 15)
    assert support.dtype == query.dtype == torch.long
    for s, q in zip(support, query):
        assert set(s.flatten().tolist()).isdisjoint(q.flatten().tolist())
        assert len(set(s.flatten().tolist())) == 25 and len(set(q.flatten().tolist())) == 75
        way_classes = LABELS[s[:, 0]]
        assert len(set(way_classes.tolist())) == 5  # N distinct classes
        assert 7 not in way_classes.tolist()  # not eligible: 12 < 5 + 15 images
        assert torch.equal(LABELS[s], way_classes[:, None].expand(5, 5))  # K per class, right class
        assert torch.equal(LABELS[q], way_classes[:, None].expand(5, 15))
    used = set(LABELS[support[:, :, 0]].flatten().tolist())
    assert used == {0, 2, 3, 4, 5, 9}  # every eligible class appears, only classes from the labels


def test_same_seed_same_episodes_other_seed_other_episodes():
    first = episodes(LABELS, 1, 15, 50, seed=0)
    second = episodes(LABELS, 1, 15, 50, seed=0)
    other = episodes(LABELS, 1, 15, 50, seed=1)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_all_queries_use_every_remaining_image():
    support, query = episodes(LABELS, shots=1, queries="all", count=100)
    counts = torch.bincount(LABELS)
    assert query.shape == (100, 5, int(counts.max()) - 1)
    for s, q in zip(support, query):
        for way in range(5):
            cls = int(LABELS[s[way, 0]])
            valid = q[way][q[way] >= 0]
            assert (q[way][len(valid):] == -1).all()  # padding only at the end
            assert sorted(valid.tolist() + s[way].tolist()) == (LABELS == cls).nonzero().flatten().tolist()


def test_fast_selection_is_argsort_even_where_keys_tie():
    """Episodes are drawn with topk, yet exactly as the argsort of every key drew them before."""
    keys = torch.randint(0, 6, (400, 3, 40), generator=torch.Generator().manual_seed(0)).float()  # many ties
    keys[:200] = torch.rand(200, 3, 40, generator=torch.Generator().manual_seed(1))  # and rows without any
    for k in (1, 5, 16, 39, 40):
        assert torch.equal(_smallest(keys, k), keys.argsort(dim=-1)[..., :k])


def test_grouped_episodes_never_mix_groups():
    sizes = {"A": 3, "B": 5, "C": 8, "D": 2}  # classes per group; every class has 20 images
    groups = torch.tensor([g for g, count in enumerate(sizes.values()) for _ in range(count)])
    labels = torch.arange(groups.numel()).repeat_interleave(20)
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    support, query = sample_episodes(labels, 5, 2, 10, 400, torch.Generator().manual_seed(1), groups=groups)
    ways = labels[support[:, :, 0]]  # [E, N] the class of every way
    assert (groups[ways] == groups[ways[:, :1]]).all()  # one group per episode
    assert all(len(set(row.tolist())) == 5 for row in ways)
    assert torch.equal(labels[query], ways.unsqueeze(-1).expand_as(query))
    assert set(groups[ways[:, 0]].tolist()) == {1, 2}  # only groups of >= 5 classes, each of them drawn
    # ways up to the group size: 8-way episodes all come from group C and use all of its classes
    support, _ = sample_episodes(labels, 8, 1, 5, 50, torch.Generator().manual_seed(2), groups=groups)
    assert all(sorted(labels[e[:, 0]].tolist()) == list(range(8, 16)) for e in support)
    with pytest.raises(BenchbaseError, match="within one group .* the largest group has 8 such classes"):
        sample_episodes(labels, 9, 1, 5, 50, torch.Generator().manual_seed(2), groups=groups)


def test_fewshot_within_group_on_a_split_with_class_groups():
    data = make_fewshot_data(classes=6)
    data.split("novel").class_groups = ["left", "left", "left", "right", "right", "right"]
    [metric] = FewShot(ways=3, shots=[1], episodes=40, within_group=True).evaluate(
        tiny_student(), data, torch.device("cpu"))
    assert metric.name == "3way-1shot" and metric.n == 40
    assert "40 episodes (seed 0), ways within one class group," in metric.protocol
    with pytest.raises(BenchbaseError, match="few-shot within_group=true needs class groups, but split 'novel' "
                                             "of dataset 'toy' has none"):
        FewShot(within_group=True).evaluate(tiny_student(), make_fewshot_data(), torch.device("cpu"))


def direct_path(features: Tensor, support: Tensor, query: Tensor) -> Tensor:
    """The prototype classifier by batched products of gathered query features (no Gram matrix)."""
    sums, norms = _prototypes(features, support)
    return _linear_accuracy(F.normalize(features, dim=-1), sums, query, norms)


def test_gram_path_equals_direct_path_on_random_features():
    features = torch.randn(LABELS.numel(), 48, generator=torch.Generator().manual_seed(8))
    for shots, queries in [(1, 15), (5, 15), (3, "all")]:
        support, query = episodes(LABELS, shots, queries, 400)
        assert torch.equal(_gram_prototype_accuracy(features, support, query), direct_path(features, support, query))


def test_cpu_kernel_equals_the_batched_paths_on_random_features():
    """The fused CPU kernel against the Gram and direct tensor programs: 5- and 7-way (a 7-way episode
    of 3 queries has 21 slots, so the kernel's last block of 8 rows is short), 1 to 5 shots, padded
    queries (queries="all"), features wider than one vector register and not a multiple of it."""
    features = torch.randn(LABELS.numel(), 50, generator=torch.Generator().manual_seed(10))
    for ways, shots, queries in [(5, 1, 15), (5, 5, 3), (7, 1, 3), (5, 3, "all")]:
        support, query = episodes(LABELS, shots, queries, 300, ways=ways)
        expected = direct_path(features, support, query)
        assert torch.equal(_gram_prototype_accuracy(features, support, query), expected)
        assert torch.equal(prototype_accuracy(features, support, query), expected), (ways, shots, queries)
    # an episode left without a query scores NaN on every path (0 / 0), the others as before
    query[0] = -1
    assert prototype_accuracy(features, support, query)[0].isnan() and direct_path(features, support, query)[0].isnan()
    assert torch.equal(prototype_accuracy(features, support, query)[1:], expected[1:])


def test_paths_are_chosen_by_size_and_small_chunks_change_nothing(monkeypatch):
    assert uses_gram(1000, 384, 10_000, 5, 1, 15) and not uses_gram(12_000, 384, 10_000, 5, 1, 15)
    assert not uses_gram(1000, 384, 20, 5, 1, 15)  # a few episodes: the n² Gram costs more than they do
    assert not uses_gram(1000, 64, 10_000, 5, 5, 15)  # narrow features, 5 shots: direct products are cheaper
    features = torch.randn(LABELS.numel(), 32, generator=torch.Generator().manual_seed(9))
    support, query = episodes(LABELS, 2, "all", 60)
    expected = {path: fn(features, support, query) for path, fn in (
        ("gram", _gram_prototype_accuracy), ("direct", direct_path))}
    monkeypatch.setattr(fewshot, "_CHUNK_ELEMENTS", 5000)  # a few episodes per chunk: memory stays bounded
    monkeypatch.setattr(fewshot, "_CACHE_FLOATS", 700)
    for path, accuracy in expected.items():
        monkeypatch.setattr(fewshot, "_GRAM_MAX_IMAGES", 10**6 if path == "gram" else 0)
        monkeypatch.setattr(fewshot, "_GRAM_GATHER_NS", 0.0)
        assert torch.equal(batched_prototype_accuracy(features, support, query), accuracy)


def test_prototype_separable_is_perfect_and_random_is_chance():
    support, query = episodes(LABELS, shots=1, queries=10, count=500)
    assert torch.equal(prototype_accuracy(separable_features(LABELS), support, query), torch.ones(500))
    random = torch.randn(LABELS.numel(), 64, generator=torch.Generator().manual_seed(2))
    chance = prototype_accuracy(random, support, query).mean()
    assert abs(float(chance) - 0.2) < 0.03


def test_batched_prototype_equals_per_episode_loop():
    features = torch.randn(LABELS.numel(), 24, generator=torch.Generator().manual_seed(4))
    for shots, queries in [(5, 15), (3, "all")]:
        support, query = episodes(LABELS, shots, queries, 80)
        expected = []
        for s, q in zip(support, query):
            prototypes = torch.stack([features[s[way]].mean(dim=0) for way in range(5)])
            correct, total = 0, 0
            for way in range(5):
                for index in q[way][q[way] >= 0].tolist():
                    sims = [F.cosine_similarity(features[index], p, dim=0) for p in prototypes]
                    correct += int(max(range(5), key=lambda j: sims[j]) == way)
                    total += 1
            expected.append(correct / total)
        assert torch.allclose(prototype_accuracy(features, support, query), torch.tensor(expected), atol=1e-6)


def test_other_classifiers_on_separable_and_random_features():
    support, query = episodes(LABELS, shots=5, queries="all", count=40)
    separable = separable_features(LABELS)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(logistic_accuracy(separable, support, query), torch.ones(40))
    linear = cosine_linear_accuracy(separable, support, query, epochs=30, generator=generator)
    assert torch.equal(linear, torch.ones(40))
    random = torch.randn(LABELS.numel(), 32, generator=torch.Generator().manual_seed(5))
    support, query = episodes(LABELS, shots=1, queries=15, count=300)
    assert abs(float(logistic_accuracy(random, support, query).mean()) - 0.2) < 0.04
    linear = cosine_linear_accuracy(random, support, query, epochs=5, generator=generator)
    assert abs(float(linear.mean()) - 0.2) < 0.04


def test_batched_cosine_linear_equals_independent_training():
    """One episode trained alone (distLinear with WeightNorm, torch SGD) gives the batched result."""
    features = torch.randn(LABELS.numel(), 12, generator=torch.Generator().manual_seed(6))
    support, query = episodes(LABELS, shots=2, queries=15, count=3)
    epochs = 20
    batched = cosine_linear_accuracy(features, support, query, epochs, torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)  # replay the batched random stream episode by episode
    inits = (torch.rand(3, 5, 12, generator=generator) * 2 - 1) / math.sqrt(12)
    orders = [torch.rand(3, 10, generator=generator).argsort(dim=1) for _ in range(epochs)]
    normed = features / (features.norm(dim=1, keepdim=True) + 1e-5)
    labels = torch.arange(5).repeat_interleave(2)
    for e in range(3):
        linear = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(12, 5, bias=False), dim=0)
        with torch.no_grad():
            linear.parametrizations.weight.original0.copy_(inits[e].norm(dim=1, keepdim=True))
            linear.parametrizations.weight.original1.copy_(inits[e])
        optimizer = torch.optim.SGD(linear.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
        x = normed[support[e].flatten()]
        for order in orders:
            for start in range(0, 10, 4):
                batch = order[e, start : start + 4]
                loss = F.cross_entropy(2 * linear(x[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            predictions = linear(normed[query[e].flatten()]).argmax(dim=1)
        expected = (predictions == torch.arange(5).repeat_interleave(15)).float().mean()
        assert float(batched[e]) == pytest.approx(float(expected))


def test_ten_thousand_episodes_are_fast():
    labels = torch.arange(10).repeat_interleave(50)
    features = torch.randn(500, 384, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    support, query = episodes(labels, shots=5, queries=15, count=10_000)
    accuracy = prototype_accuracy(features, support, query)
    elapsed = time.perf_counter() - started
    assert accuracy.shape == (10_000,)
    assert elapsed < 20, f"10,000 episodes took {elapsed:.1f} s"


def make_fewshot_data(classes: int = 6, per_class: int = 20) -> DataBundle:
    """Images whose class sets the brightness of one of `classes` horizontal stripes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = 0.1 * torch.randn(labels.numel(), 1, 16, 16, generator=generator)
    for index, label in enumerate(labels.tolist()):
        images[index, 0, label * 16 // classes : (label + 1) * 16 // classes] += 3.0
    return bundle(images, labels)


def test_fewshot_evaluator_metrics():
    data = make_fewshot_data()
    metrics = FewShot(shots=[1, 5], episodes=300).evaluate(tiny_student(), data, torch.device("cpu"))
    assert [m.name for m in metrics] == ["5way-1shot", "5way-5shot"]
    for metric, shots in zip(metrics, (1, 5)):
        outcomes = outcomes_of(metric.extras)
        assert metric.n == 300 and {k: metric.extras[k] for k in ("episodes", "queries")} == {"episodes": 300, "queries": 15}
        assert outcomes.kind == "mean" and outcomes.n == 300 and set(outcomes.arrays["total"].tolist()) == {75}
        assert outcomes.value() == pytest.approx(metric.value, abs=1e-9)  # the stored episodes give the metric
        assert metric.protocol == (
            f"5-way {shots}-shot, 15 queries/class, 300 episodes (seed 0), features cls+attn, "
            "prototype (cosine) classifier, split novel"
        )
        assert 20 < metric.value <= 100


def test_fewshot_ci_and_value_match_a_hand_computation():
    data = make_fewshot_data()
    student = tiny_student()
    [metric] = FewShot(shots=[5], episodes=200, seed=3).evaluate(student, data, torch.device("cpu"))
    features, labels = extract_features(student, data.split("novel"))
    support, query = episodes(labels, shots=5, queries=15, count=200, seed=3)  # the evaluator's episodes
    accuracy = (prototype_accuracy(features, support, query) * 100).double()
    assert metric.value == pytest.approx(float(accuracy.mean()))
    std = math.sqrt(sum((a - accuracy.mean()) ** 2 for a in accuracy.tolist()) / (200 - 1))
    assert metric.ci95 == pytest.approx(1.96 * std / math.sqrt(200))
    assert metric.ci95 > 0


def test_fewshot_other_classifiers_and_all_queries():
    data = make_fewshot_data()
    student = tiny_student()
    evaluator = FewShot(shots=[1], episodes=20, queries="all", classifier="cosine_linear", linear_epochs=3)
    [linear] = evaluator.evaluate(student, data, torch.device("cpu"))
    assert linear.name == "5way-1shot" and linear.n == 20
    assert {k: linear.extras[k] for k in ("episodes", "queries")} == {"episodes": 20, "queries": "all"}
    assert linear.protocol == (
        "5-way 1-shot, all remaining images of each class as queries, 20 episodes (seed 0), features cls+attn, "
        "cosine linear classifier (distLinear, scale 2; SGD lr 0.01, momentum 0.9, dampening 0.9, "
        "weight decay 1e-3, batch 4, 3 epochs), split novel"
    )
    [logistic] = FewShot(shots=3, episodes=10, ways=3, classifier="logistic", pooling="cls").evaluate(
        student, data, torch.device("cpu")
    )
    assert logistic.name == "3way-3shot" and "logistic-regression" in logistic.protocol
    assert "features cls," in logistic.protocol and 0 <= logistic.value <= 100


def test_too_few_classes_or_images_is_a_one_line_error():
    data = make_fewshot_data(classes=4, per_class=20)
    with pytest.raises(BenchbaseError) as info:
        FewShot().evaluate(tiny_student(), data, torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert "split 'novel'" in message and "5 classes of at least 16 images" in message
    assert "0 of 4 classes" not in message and "4 of 4 classes" in message
    assert "images per class 0: 20, 1: 20, 2: 20, 3: 20" in message

    data = make_fewshot_data(classes=6, per_class=18)  # enough for 1 shot + 15 queries, not for 5 shots
    expected = r"5-shot .* 5 classes of at least 20 images, but 0 of 6 classes have that"
    with pytest.raises(BenchbaseError, match=expected):
        FewShot(shots=[1, 5]).evaluate(tiny_student(), data, torch.device("cpu"))


def test_bad_options():
    with pytest.raises(TypeError):
        FewShot(way=5)
    with pytest.raises(BenchbaseError, match="unknown few-shot classifier 'svm'"):
        FewShot(classifier="svm")
    with pytest.raises(BenchbaseError, match="queries"):
        FewShot(queries="some")
    with pytest.raises(BenchbaseError, match="unknown feature pooling"):
        FewShot(pooling="max")


def test_smkd_released_protocol_is_named_and_fixes_queries_and_episodes():
    evaluator = FewShot(protocol="smkd_released", shots=[1])
    assert evaluator.queries == "all" and evaluator.episodes == 10000
    assert evaluator.protocol(1).startswith("smkd_released: 5-way 1-shot, all remaining images")
    with pytest.raises(BenchbaseError, match="unknown few-shot protocol 'nope'"):
        FewShot(protocol="nope")
