"""Published episode lists: CSV and JSON files of fixed episodes, scored exactly, and their errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from benchbase.capture import Captures, Tap
from benchbase.components import DataBundle, VitModel
from benchbase.errors import BenchbaseError
from benchbase.evaluation.episode_lists import read_episode_list
from benchbase.evaluation.fewshot import FewShot
from benchbase.outcomes import outcomes_of

from conftest import tensor_images

# 2x2 grayscale patterns; read from a PNG, pixel v becomes (v / 255 - 0.5) / 0.5, so 255 -> 1, 0 -> -1
PATTERNS = {
    "top": [[255, 255], [0, 0]], "top2": [[255, 230], [0, 0]], "top3": [[230, 255], [0, 0]],
    "bottom": [[0, 0], [255, 255]], "bottom2": [[0, 20], [255, 255]], "bottom3": [[20, 0], [255, 255]],
    "left": [[255, 0], [255, 0]], "left2": [[255, 0], [230, 0]], "right": [[0, 255], [0, 255]],
}
# Two hand-made 2-way 1-shot episodes. Cosines: top.bottom = left.right = -1, top.left = 0, and each
# pattern's variants (top2, top3 of top) are within 0.01 of 1 to it, near 0 (±0.05) to the orthogonal one.
# Episode 1: support a=top, b=bottom; queries a: top2 (right), a: bottom2 (wrong: nearest b), b: bottom3.
# Episode 2: support a=left, b=top; queries a: left2 (right), a: right (cosine -1 to a, 0 to b: wrong),
#            b: top2 (right), b: top3 (right).
EPISODES = [
    {"support": {"a": ["top"], "b": ["bottom"]}, "query": {"a": ["top2", "bottom2"], "b": ["bottom3"]}},
    {"support": {"a": ["left"], "b": ["top"]}, "query": {"a": ["left2", "right"], "b": ["top2", "top3"]}},
]
HAND = [2 / 3, 3 / 4]
ORDER = list(PATTERNS)


class PixelModel(VitModel):
    """A model whose class token is the image itself: features = the flattened pixels (pooling cls)."""

    def __init__(self):
        model = nn.Module()
        model.cls_token, model.num_prefix_tokens = nn.Parameter(torch.zeros(1)), 1
        super().__init__(model)

    def _capture(self, inp, taps) -> Captures:
        flat = inp.flatten(1)
        return Captures({Tap("tokens"): torch.stack([flat, flat], dim=1)})


def pattern_tensor(name: str) -> Tensor:
    return (torch.tensor(PATTERNS[name], dtype=torch.float) / 255 - 0.5) / 0.5


def pattern_data() -> DataBundle:
    """The patterns as a split (index i = ORDER[i]) of 2x2 grayscale images, one class each."""
    images = torch.stack([pattern_tensor(name) for name in ORDER]).unsqueeze(1)
    return DataBundle("patterns", {"novel": tensor_images(images, torch.arange(len(ORDER)))}, image_size=2,
                      in_chans=1, num_classes=len(ORDER))


def write_pngs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in PATTERNS.items():
        Image.fromarray(torch.tensor(pixels, dtype=torch.uint8).numpy(), mode="L").save(folder / f"{name}.png")


def as_csv(episodes: list[dict], image) -> str:
    rows = ["episode,set,way,image"]
    for number, episode in enumerate(episodes, 1):
        for kind in ("support", "query"):
            rows += [f"{number},{kind},{way},{image(name)}" for way, names in episode[kind].items() for name in names]
    return "\n".join(rows) + "\n"


def as_json(episodes: list[dict], image) -> str:
    return json.dumps([{kind: {way: [image(n) for n in names] for way, names in episode[kind].items()}
                       for kind in ("support", "query")} for episode in episodes])


def score(path: Path, **params) -> list:
    return FewShot(episodes_file=str(path), pooling="cls", **params).evaluate(
        PixelModel(), pattern_data(), torch.device("cpu"))


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("kind", ["paths", "indices"])
def test_two_hand_made_episodes_give_the_hand_computed_accuracy(tmp_path, fmt, kind):
    write_pngs(tmp_path / "images")
    image = (lambda name: f"images/{name}.png") if kind == "paths" else ORDER.index
    path = tmp_path / f"episodes.{fmt}"
    path.write_text((as_csv if fmt == "csv" else as_json)(EPISODES, image))
    [metric] = score(path)
    assert metric.name == "2way-1shot" and metric.n == 2
    assert metric.value == pytest.approx(100 * sum(HAND) / 2)
    std = math.sqrt(sum((100 * h - metric.value) ** 2 for h in HAND))  # n - 1 = 1
    assert metric.ci95 == pytest.approx(1.96 * std / math.sqrt(2))
    assert {k: metric.extras[k] for k in ("episodes", "queries")} == {"episodes": 2, "queries": "listed"}
    outcomes = outcomes_of(metric.extras)  # per episode: correct and total queries
    assert outcomes.arrays["correct"].tolist() == [2, 3] and outcomes.arrays["total"].tolist() == [3, 4]
    assert metric.protocol.startswith(f"2-way 1-shot, the 2 episodes of episodes.{fmt} (sha256 ")
    assert metric.protocol.endswith("prototype (cosine) classifier" + (", split novel" if kind == "indices" else ""))


def test_episodes_of_other_shapes_are_their_own_metrics_and_root_is_an_option(tmp_path):
    write_pngs(tmp_path / "images")
    three_way = {"support": {"x": ["top", "top2"], "y": ["left", "left2"], "z": ["bottom", "bottom2"]},
                 "query": {"x": ["top3"], "z": ["bottom3"]}}
    path = tmp_path / "lists" / "mixed.json"
    path.parent.mkdir()
    path.write_text(as_json([EPISODES[0], three_way], lambda n: f"{n}.png"))
    metrics = score(path, image_root=str(tmp_path / "images"))
    assert [(m.name, m.n, m.value) for m in metrics] == [
        ("2way-1shot", 1, pytest.approx(100 * HAND[0])), ("3way-2shot", 1, pytest.approx(100.0))]


def bad(folder: Path, name: str, text: str, suffix: str = ".csv") -> Path:
    path = folder / f"{name}{suffix}"
    path.write_text(text)
    return path


def test_errors_name_the_file_and_the_episode(tmp_path):
    write_pngs(tmp_path)
    good = as_csv(EPISODES, lambda name: f"{name}.png")
    cases = {
        bad(tmp_path, "noquery", "".join(line + "\n" for line in good.splitlines() if not line.startswith("2,query"))):
            "episode 2 has no query image; every episode needs at least one",
        bad(tmp_path, "m", good.replace("bottom.png", "missing.png")):
            f"episode 1: image {tmp_path / 'missing.png'} does not exist",
        bad(tmp_path, "h", good.replace("episode,set,way,image", "episode,set,way,file")):
            "no column image; the header must be episode,set,way,image",
        bad(tmp_path, "s", good.replace("1,query,b", "1,test,b")): "line 6: set 'test' is not support or query",
        bad(tmp_path, "u", good + "1,support,a,left.png\n"): r"episode 1 has unequal shots per way \(a: 2, b: 1\)",
        bad(tmp_path, "o", good + "1,query,c,left.png\n"): "episode 1: query way 'c' has no support images",
        bad(tmp_path, "k", good + "1,query,a,3\n"): "episode 1: mixes image paths and split indices",
        bad(tmp_path, "b", good + "2,query,b,left.png\n"): "episode 2: image .*left.png is both a support and",
        bad(tmp_path, "w", "episode,set,way,image\n1,support,a,0\n1,query,a,1\n"):
            "episode 1 has 1 way.s. with support images; an episode needs 2 or more",
        bad(tmp_path, "j", "{not json", ".json"): "not valid JSON",
        bad(tmp_path, "j2", '{"episodes": [{"support": ["a"]}]}', ".json"):
            "episode 1: 'support' must map way labels to lists of images",
        bad(tmp_path, "t", "whatever", ".txt"): "unknown format; use a .csv or .json file",
        tmp_path / "absent.csv": "cannot read episodes file .*absent.csv",
    }
    for path, message in cases.items():
        with pytest.raises(BenchbaseError, match=message) as info:
            read_episode_list(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    outside = bad(tmp_path, "i", as_csv(EPISODES, lambda name: ORDER.index(name) + 4))
    with pytest.raises(BenchbaseError, match=r"episode 2: image index 12 is outside split 'novel' of dataset "
                                             r"'patterns' \(9 images\)"):
        score(outside)
    with pytest.raises(BenchbaseError, match="episodes_file fixes the episodes; drop within_group"):
        FewShot(episodes_file="x.csv", within_group=True)
