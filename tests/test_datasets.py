"""On-disk dataset loaders: real data from ../shared/data (Omniglot, CamVid, CIFAR-10) and tiny
fixtures written here (ADE20K, the few-shot layouts, broken files)."""

from __future__ import annotations

import io
import re
import shutil
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchbase.data.ade20k import build_ade20k
from benchbase.data.camvid import build_camvid
from benchbase.data.fewshot_folders import (
    build_cifarfs, build_fc100, build_miniimagenet, build_tieredimagenet,
)
from benchbase.data.folders import IMAGENET_MEAN, IMAGENET_STD, ResizeCrop, load_image_folder
from benchbase.data.omniglot import build_omniglot
from benchbase.errors import BenchbaseError
from benchbase.evaluation.fewshot import sample_episodes

from conftest import DATA
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared test data folder {DATA} is absent")

FEWSHOT = {  # builder: (default image size, base/val/novel class counts)
    build_miniimagenet: (84, (64, 16, 20)),
    build_tieredimagenet: (84, (351, 97, 160)),
    build_cifarfs: (32, (64, 16, 20)),
    build_fc100: (32, (60, 20, 20)),
}
ALL_BUILDERS = [build_omniglot, build_camvid, build_ade20k, *FEWSHOT, load_image_folder]


def cfg(root: Path | str | None, **params) -> dict:
    return {"root": None if root is None else str(root), "image_size": None, "on_corrupt": "error", "params": params}


def png_bytes(size: tuple[int, int] = (6, 5), mode: str = "RGB", value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode != "RGB" else (value, 50, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def named(path: Path | str) -> str:
    """A regular expression matching ``path`` literally."""
    return re.escape(str(path))


def class_folders(root: Path, counts: tuple[int, ...], folders=("train", "val", "test"), images: int = 2) -> None:
    """``root/<folder>/<class>/<i>.png`` with ``counts`` classes per folder (class names unique overall)."""
    data = png_bytes()
    for folder, count in zip(folders, counts):
        for c in range(count):
            for i in range(images):
                write(root / folder / f"{folder}_c{c:03d}" / f"{i}.png", data)


# ---------------------------------------------------------------- real data: Omniglot, CamVid, CIFAR-10

@needs_data
def test_omniglot_small_splits_from_zips():
    bundle = build_omniglot(cfg(DATA / "omniglot"))
    base, novel = bundle.splits["base"], bundle.splits["novel"]
    assert len(base.classes) + len(novel.classes) == 242
    assert len(base) + len(novel) == 4840
    assert set(base.classes).isdisjoint(novel.classes)
    alphabets = lambda split: {name.split("/")[0] for name in split.classes}  # noqa: E731
    assert alphabets(base).isdisjoint(alphabets(novel)) and len(alphabets(base) | alphabets(novel)) == 8
    assert len(alphabets(base)) == 5  # round(0.6 * 8)
    assert all(count == 20 for count in Counter(base.targets + [t + 1000 for t in novel.targets]).values())
    train, test = bundle.splits["base_train"], bundle.splits["base_test"]
    assert len(train) + len(test) == len(base) and set(train.samples).isdisjoint(test.samples)
    assert Counter(train.targets) == Counter({label: 15 for label in range(len(base.classes))})
    assert bundle.num_classes == len(base.classes) and bundle.in_chans == 1 and bundle.image_size == 28
    image, label = novel[0]
    assert image.shape == (1, 28, 28) and label == 0 and image.min() == -1.0 and image.max() == 1.0
    assert "Greek/character01" in base.classes + novel.classes
    assert novel.class_groups == [name.split("/")[0] for name in novel.classes]  # alphabets are the groups


@needs_data
def test_omniglot_episodes_within_one_alphabet():
    novel = build_omniglot(cfg(DATA / "omniglot")).splits["novel"]
    alphabets = sorted(set(novel.class_groups))
    groups = torch.tensor([alphabets.index(a) for a in novel.class_groups])
    labels = torch.tensor(novel.targets)
    ways = min(Counter(novel.class_groups).values())  # every alphabet can host episodes of this size
    support, query = sample_episodes(labels, ways, 1, 5, 300, torch.Generator().manual_seed(0), groups=groups)
    drawn = groups[labels[support[:, :, 0]]]
    assert (drawn == drawn[:, :1]).all() and set(drawn[:, 0].tolist()) == set(range(len(alphabets)))


@needs_data
def test_omniglot_split_options():
    root = DATA / "omniglot"
    again = build_omniglot(cfg(root))
    assert again.splits["base"].classes == build_omniglot(cfg(root)).splits["base"].classes  # deterministic
    other = build_omniglot(cfg(root, split_seed=3, base_fraction=0.25))
    assert len({c.split("/")[0] for c in other.splits["base"].classes}) == 2
    named = build_omniglot(cfg(root, base_alphabets=["Greek", "Latin"], in_chans=3))
    assert {c.split("/")[0] for c in named.splits["base"].classes} == {"Greek", "Latin"}
    assert len(named.splits["base"]) == 480 + 520 and len(named.splits["novel"]) == 4840 - 1000
    assert named.splits["base"][0][0].shape == (3, 28, 28)
    only = build_omniglot(cfg(root, sources=["images_background_small1"], novel_alphabets=["Korean"]))
    assert len(only.splits["base"]) + len(only.splits["novel"]) == 2720 and len(only.splits["novel"]) == 800
    with pytest.raises(BenchbaseError, match="unknown Omniglot alphabet.*Klingon"):
        build_omniglot(cfg(root, base_alphabets=["Klingon"]))
    with pytest.raises(BenchbaseError, match="params.sources names images_evaluation"):
        build_omniglot(cfg(root, sources=["images_evaluation"]))
    with pytest.raises(BenchbaseError, match="unknown key.*base_fractoin"):
        build_omniglot(cfg(root, base_fractoin=0.5))


@needs_data
def test_omniglot_rotations_make_each_quarter_turn_of_a_base_character_its_own_class():
    """``rotations: 4`` (Vinyals et al.'s / Snell et al.'s practice): every base image and its three
    turns, exact ``rot90``s, as four classes; the per-character split as without turns; novel unturned."""
    root = DATA / "omniglot"
    plain, turned = build_omniglot(cfg(root)), build_omniglot(cfg(root, rotations=4))
    for split in ("base", "base_train", "base_test"):
        before, after = plain.splits[split], turned.splits[split]
        assert len(after) == 4 * len(before) and len(after.classes) == 4 * len(before.classes)
        assert after.targets == [4 * t + r for t in before.targets for r in range(4)]
        assert after.class_groups == [g for g in before.class_groups for _ in range(4)]
        for index in (0, len(before) - 1):
            image, label = before[index]
            for r in range(4):
                rotated, rotated_label = after[4 * index + r]
                assert rotated_label == 4 * label + r and after.classes[rotated_label].startswith(before.classes[label])
                assert torch.equal(rotated, torch.rot90(image, r, dims=(-2, -1)))
    first = plain.splits["base"].classes[0]
    assert turned.splits["base"].classes[:4] == [first + s for s in ("", "/rot90", "/rot180", "/rot270")]
    assert turned.num_classes == 4 * plain.num_classes == 4 * 152
    novel, plain_novel = turned.splits["novel"], plain.splits["novel"]
    assert novel.classes == plain_novel.classes and novel.targets == plain_novel.targets
    assert torch.equal(novel[0][0], plain_novel[0][0])
    with pytest.raises(BenchbaseError, match="rotations=3"):
        build_omniglot(cfg(root, rotations=3))


@needs_data
def test_omniglot_folder_and_zip_mixed(tmp_path):
    """An extracted source and a zipped one give the same deduplicated 242 characters."""
    with zipfile.ZipFile(DATA / "omniglot" / "images_background_small1.zip") as archive:
        archive.extractall(tmp_path)
    shutil.copy(DATA / "omniglot" / "images_background_small2.zip", tmp_path)
    bundle = build_omniglot(cfg(tmp_path, base_fraction=0.5))
    assert len(bundle.splits["base"].classes) + len(bundle.splits["novel"].classes) == 242
    assert len(bundle.splits["base"]) + len(bundle.splits["novel"]) == 4840
    greek = next(s for s, _ in bundle.splits["base"].samples + bundle.splits["novel"].samples if "Greek" in str(s))
    assert isinstance(greek, Path)  # the folder source (small1) wins over the zip for shared alphabets


def test_camvid(camvid_root):
    bundle = build_camvid(cfg(camvid_root))
    assert {name: len(split) for name, split in bundle.splits.items()} == {"train": 367, "val": 101, "test": 233}
    assert bundle.num_classes == 11 and bundle.ignore_index == 11 and bundle.in_chans == 3
    assert bundle.splits["train"].classes[0] == "Sky" and bundle.splits["train"].classes[10] == "Bicyclist"
    seen = set()
    for split in bundle.splits.values():
        for index in range(0, len(split), 40):
            image, label = split[index]
            assert image.shape == (3, 224, 224) and image.dtype == torch.float32
            assert label.shape == (224, 224) and label.dtype == torch.long
            seen |= set(label.unique().tolist())
    assert seen <= set(range(12)) and {0, 1, 3, 11} <= seen
    small = build_camvid({**cfg(camvid_root / "CamVid", label_size=45), "image_size": 64})
    image, label = small.splits["val"][0]
    assert image.shape == (3, 64, 64) and label.shape == (45, 45)
    # each frame's recording, for metrics averaged per sequence (EventSAM's): the file name's prefix
    test = bundle.splits["test"]
    assert {test.sequence(i) for i in range(len(test))} == {"0001TP", "Seq05VD"}
    assert test.sequence(0) == test.pairs[0][0].stem.rsplit("_", 1)[0]


def test_cifar10_image_folder(cifar_root):
    bundle = load_image_folder({**cfg(cifar_root), "image_size": 32})
    train = bundle.splits["train"]
    assert list(bundle.splits) == ["train"] and bundle.num_classes == 10 and len(train.classes) == 10
    assert train.classes[0] == "airplane" and len(train) == 2000
    assert Counter(train.targets) == Counter({label: 200 for label in range(10)})
    image, label = train[1999]
    assert image.shape == (3, 32, 32) and label == 9


def test_a_minival_split_comes_from_train_and_never_from_the_held_out_images(cifar_root):
    base = {**cfg(cifar_root, holdout_fraction=0.2), "image_size": 32}
    held = load_image_folder(base).splits["val"]
    bundle = load_image_folder({**base, "params": {"holdout_fraction": 0.2, "minival_fraction": 0.25}})
    train, val, minival = (bundle.splits[k] for k in ("train", "val", "minival"))
    assert (len(train), len(val), len(minival)) == (1200, 400, 400)
    assert Counter(minival.targets) == Counter({label: 40 for label in range(10)})  # a share of every class
    files = {name: {path for path, _ in split.samples} for name, split in bundle.splits.items()}
    assert files["val"] == {path for path, _ in held.samples}  # the scored images do not move
    assert not files["minival"] & (files["train"] | files["val"]) and not files["train"] & files["val"]
    with pytest.raises(BenchbaseError, match="minival_fraction=1.5; use a fraction between 0 and 1"):
        load_image_folder({**base, "params": {"minival_fraction": 1.5}})


# ---------------------------------------------------------------- tiny fixtures: ADE20K, few-shot layouts

def ade_fixture(root: Path, label_value: int = 3) -> Path:
    ade = root / "ADEChallengeData2016"
    for folder, count in (("training", 3), ("validation", 2)):
        for i in range(count):
            name = f"ADE_{folder}_{i:08d}"
            save(Image.new("RGB", (10, 8), (i * 40, 20, 30)), ade / "images" / folder / f"{name}.jpg")
            label = Image.new("L", (10, 8), label_value)
            label.putpixel((0, 0), 0)
            label.putpixel((1, 0), 150)
            save(label, ade / "annotations" / folder / f"{name}.png")
    return ade


def test_ade20k(tmp_path):
    ade_fixture(tmp_path)
    bundle = build_ade20k({**cfg(tmp_path, label_size=10), "image_size": 20})
    assert {name: len(split) for name, split in bundle.splits.items()} == {"train": 3, "val": 2}
    assert bundle.num_classes == 150 == len(bundle.splits["train"].classes) and bundle.ignore_index == 255
    image, label = bundle.splits["val"][1]
    assert image.shape == (3, 20, 20) and label.shape == (10, 10)
    assert label[0, 0] == 255 and label[0, 1] == 149 and label[5, 5] == 2  # reduce_zero_label
    assert build_ade20k(cfg(tmp_path / "ADEChallengeData2016")).splits["train"][0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("builder", list(FEWSHOT), ids=lambda b: b.__name__)
def test_fewshot_class_split_folders(tmp_path, builder):
    size, counts = FEWSHOT[builder]
    class_folders(tmp_path, counts, images=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # standard class counts: no warning
        bundle = builder(cfg(tmp_path))
    assert [len(bundle.splits[s].classes) for s in ("base", "val", "novel")] == list(counts)
    assert len(bundle.splits["base"]) == 4 * counts[0] and bundle.num_classes == counts[0]
    assert len(bundle.splits["base_train"]) == 3 * counts[0] and len(bundle.splits["base_test"]) == counts[0]
    assert set(bundle.splits) == {"base", "val", "novel", "base_train", "base_test"}
    assert bundle.image_size == size and bundle.splits["novel"][0][0].shape == (3, size, size)


def test_fewshot_unusual_counts_warn(tmp_path):
    class_folders(tmp_path, (3, 2), folders=("train", "test"))
    with pytest.warns(UserWarning, match="3/0/2 base/val/novel classes; the standard split has 60/20/20"):
        bundle = build_fc100(cfg(tmp_path, in_chans=1))
    assert "val" not in bundle.splits and bundle.splits["base"][0][0].shape == (1, 32, 32)


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A hand-made RGB image of random pixels, ``size`` = (width, height)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_resize_crop_is_torchvisions_resize_then_centre_crop():
    from torchvision import transforms

    view = ResizeCrop(resize=20, crop=14)
    for size in ((31, 23), (23, 31), (20, 20)):  # wider, taller, square: the short side goes to 20
        image = noise_image(size)
        reference = transforms.Compose([transforms.Resize(20, interpolation=transforms.InterpolationMode.BICUBIC),
                                        transforms.CenterCrop(14)])
        viewed = view(image)
        assert viewed.size == (14, 14) and viewed.tobytes() == reference(image).tobytes()


def test_fewshot_sources_and_smkds_evaluation_view(tmp_path):
    """source_size: every split again at the source size (the bundle's ``sources``); eval_resize and
    eval_crop: every split but base read through the view, from the square source image."""
    from torchvision.transforms import functional as TF

    for split, count in (("train", 3), ("test", 2)):
        for c in range(count):
            for i in range(4):
                save(noise_image((40, 30), seed=100 * c + i), tmp_path / split / f"{split}{c}" / f"{i}.png")
    params = {"source_size": 48, "eval_resize": 40, "eval_crop": 32}
    with pytest.warns(UserWarning, match="base/val/novel classes"):
        bundle = build_fc100({**cfg(tmp_path, **params), "image_size": 16})
    assert bundle.image_size == 16 and bundle.splits["base"][0][0].shape == (3, 16, 16)  # what models read
    assert bundle.source_split("base")[0][0].shape == (3, 48, 48)
    assert bundle.sources["base"].targets == bundle.splits["base"].targets  # the same images, at their source size
    for split in ("novel", "base_train", "base_test"):
        assert bundle.splits[split][0][0].shape == (3, 32, 32)
    image = Image.open(tmp_path / "test" / "test0" / "0.png").convert("RGB").resize((48, 48), Image.BILINEAR)
    expected = TF.center_crop(TF.resize(image, 40, TF.InterpolationMode.BICUBIC), 32)
    expected = TF.normalize(TF.pil_to_tensor(expected).float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(bundle.splits["novel"][0][0], expected)
    assert bundle.description.endswith("16x16; sources 48x48; splits but base resized to 40 and centre-cropped to 32")
    with pytest.warns(UserWarning):
        plain = build_fc100({**cfg(tmp_path), "image_size": 16})  # unset: every split as before, no sources
    assert plain.sources is None and plain.source_split("base") is plain.splits["base"]
    assert plain.splits["novel"][0][0].shape == (3, 16, 16) and plain.description.endswith("16x16")


@pytest.mark.parametrize("params, message", [
    ({"eval_resize": 40}, "data.fc100.params sets only one of eval_resize and eval_crop; set both"),
    ({"eval_resize": 20, "eval_crop": 32}, "data.fc100.params.eval_crop=32 with eval_resize=20; the centre crop must"),
    ({"source_size": 0}, "data.fc100.params.source_size=0; give the side of the square source images"),
])
def test_fewshot_source_and_view_errors_are_one_line(tmp_path, params, message):
    class_folders(tmp_path, (2, 2), folders=("train", "test"))
    with pytest.raises(BenchbaseError, match=f"^{re.escape(message)}"):
        build_fc100(cfg(tmp_path, **params))


def test_miniimagenet_csv_layout(tmp_path):
    data = png_bytes((12, 12))
    for split, count in (("train", 64), ("val", 16), ("test", 20)):
        rows = ["filename,label"]
        for c in range(count):
            for i in range(3):
                name = f"n{split}{c:03d}{i:05d}.jpg"
                write(tmp_path / "images" / name, data)
                rows.append(f"{name},n{split}{c:03d}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = build_miniimagenet(cfg(tmp_path))
    assert [len(bundle.splits[s].classes) for s in ("base", "val", "novel")] == [64, 16, 20]
    assert len(bundle.splits["novel"]) == 60 and bundle.splits["base"].classes[0] == "ntrain000"
    assert bundle.splits["base"][0][0].shape == (3, 84, 84)
    (tmp_path / "images" / "ntest01900002.jpg").unlink()
    with pytest.raises(BenchbaseError, match=r"1 image\(s\) listed in .*test.csv are not in .*images.*ntest01900002"):
        build_miniimagenet(cfg(tmp_path))


def test_camvid_pairs_by_name_and_segnet_lists(tmp_path):
    camvid = tmp_path / "CamVid"
    for split in ("train", "test"):
        for i in range(2):
            save(Image.new("RGB", (12, 9)), camvid / split / f"f{i}.png")
            save(Image.new("L", (12, 9), 11), camvid / f"{split}annot" / f"f{i}.png")
    (camvid / "test.txt").write_text("/SegNet/CamVid/test/f1.png /SegNet/CamVid/testannot/f1.png\n")
    bundle = build_camvid(cfg(tmp_path))
    assert {name: len(split) for name, split in bundle.splits.items()} == {"train": 2, "test": 1}
    assert bundle.splits["test"].pairs == [(camvid / "test" / "f1.png", camvid / "testannot" / "f1.png")]
    assert (bundle.splits["train"][1][1] == 11).all()
    (camvid / "test.txt").write_text("test/f9.png testannot/f9.png\n")
    with pytest.raises(BenchbaseError, match=r"test.txt line 1: test/f9.png not found"):
        build_camvid(cfg(tmp_path))
    (camvid / "test.txt").unlink()
    (camvid / "trainannot" / "f1.png").unlink()
    missing = r"1 image\(s\) in .*train have no label in .*trainannot \(first: f1.png\)"
    with pytest.raises(BenchbaseError, match=missing):
        build_camvid(cfg(tmp_path))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.__name__)
def test_missing_root_and_root_is_a_file(tmp_path, builder):
    with pytest.raises(BenchbaseError, match=r"needs a path: pass data\.\w+\.root=PATH"):
        builder(cfg(None))
    with pytest.raises(BenchbaseError, match=f"root={named(tmp_path / 'nope')} does not exist"):
        builder(cfg(tmp_path / "nope"))
    file = write(tmp_path / "file.txt", b"x")
    with pytest.raises(BenchbaseError, match=f"root={named(file)} is a file, not a folder"):
        builder(cfg(file))
    with pytest.raises(BenchbaseError, match=f"^{named(tmp_path)} has no .*; expected"):  # a folder without the layout
        builder(cfg(tmp_path))


def test_omniglot_alphabets_are_class_groups_of_every_split(tmp_path):
    for alphabet, characters in (("A", 3), ("B", 2), ("C", 4)):
        for c in range(1, characters + 1):
            for i in range(4):
                write(tmp_path / "images_background" / alphabet / f"character{c:02d}" / f"{i}.png",
                      png_bytes((105, 105), "1", 1))
    bundle = build_omniglot(cfg(tmp_path, base_alphabets=["A"]))
    for split in bundle.splits.values():
        assert split.class_groups == [name.split("/")[0] for name in split.classes]
    assert bundle.splits["novel"].class_groups == ["B"] * 2 + ["C"] * 4


def test_empty_class_folders(tmp_path):
    class_folders(tmp_path / "fs", (2, 1, 1))
    (tmp_path / "fs" / "val" / "empty").mkdir()
    with pytest.raises(BenchbaseError, match=f"class folder {named(tmp_path / 'fs' / 'val' / 'empty')} has no images"):
        build_cifarfs(cfg(tmp_path / "fs"))
    omniglot = tmp_path / "omniglot" / "images_background"
    for alphabet in ("A", "B"):
        write(omniglot / alphabet / "character01" / "1.png", png_bytes((105, 105), "1", 1))
    (omniglot / "B" / "character02").mkdir()
    with pytest.raises(BenchbaseError, match=f"character folder {named(omniglot)}/B/character02 has no images"):
        build_omniglot(cfg(tmp_path / "omniglot"))


@pytest.mark.filterwarnings("ignore:.*base/val/novel classes")
def test_corrupt_and_truncated_images(tmp_path):
    class_folders(tmp_path, (2, 1, 1), images=3)
    garbage = write(tmp_path / "train" / "train_c000" / "garbage.png", b"not a png at all")
    truncated = tmp_path / "test" / "test_c000" / "truncated.png"
    write(truncated, png_bytes((64, 64), "RGB")[:60])
    bundle = build_miniimagenet(cfg(tmp_path))
    index = bundle.splits["base"].samples.index((garbage, 0))
    with pytest.raises(BenchbaseError, match=f"cannot read image {named(garbage)} .*on_corrupt=skip"):
        bundle.splits["base"][index]
    with pytest.raises(BenchbaseError, match=f"cannot read image {named(truncated)}"):
        bundle.splits["novel"][len(bundle.splits["novel"]) - 1]
    skipping = build_miniimagenet({**cfg(tmp_path), "on_corrupt": "skip"})
    assert skipping.splits["base"].skipped == [garbage] and len(skipping.splits["base"]) == 6
    assert skipping.splits["novel"].skipped == [truncated] and len(skipping.splits["novel"]) == 3
    assert all(image.shape == (3, 84, 84) for image, _ in skipping.splits["base"])
    with pytest.raises(BenchbaseError, match="on_corrupt='ignore'; use error or skip"):
        build_miniimagenet({**cfg(tmp_path), "on_corrupt": "ignore"})


def test_corrupt_image_inside_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        for alphabet in ("A", "B"):
            archive.writestr(f"images_background/{alphabet}/character01/1.png", png_bytes((105, 105), "1", 1))
        archive.writestr("images_background/B/character01/2.png", b"garbage")
    bundle = build_omniglot(cfg(tmp_path, base_alphabets=["A"]))
    assert bundle.splits["base"][0][0].shape == (1, 28, 28)
    bad = f"{tmp_path / 'images_background.zip'}/images_background/B/character01/2.png"
    with pytest.raises(BenchbaseError, match=f"cannot read image {named(bad)}"):
        bundle.splits["novel"][1]
    skipping = build_omniglot({**cfg(tmp_path, base_alphabets=["A"]), "on_corrupt": "skip"})
    assert len(skipping.splits["novel"]) == 1 and [str(s) for s in skipping.splits["novel"].skipped] == [bad]
    write(tmp_path / "images_evaluation.zip", b"not a zip")
    with pytest.raises(BenchbaseError, match=f"cannot read zip archive {named(tmp_path / 'images_evaluation.zip')}"):
        build_omniglot(cfg(tmp_path))


def test_label_of_the_wrong_size(tmp_path):
    ade = ade_fixture(tmp_path)
    wrong = ade / "annotations" / "validation" / "ADE_validation_00000001.png"
    Image.new("L", (7, 8), 1).save(wrong)
    bundle = build_ade20k(cfg(tmp_path))
    mismatch = f"label map {named(wrong)} is 7x8 but its image .*ADE_validation_00000001.jpg is 10x8"
    with pytest.raises(BenchbaseError, match=mismatch):
        bundle.splits["val"][1]
    skipping = build_ade20k({**cfg(tmp_path), "on_corrupt": "skip"})
    assert len(skipping.splits["val"]) == 1 and skipping.splits["val"].skipped[0][1] == wrong
    Image.new("RGB", (10, 8)).save(wrong)
    with pytest.raises(BenchbaseError, match=f"label map {named(wrong)} is a RGB image; expected a single-channel PNG"):
        bundle.splits["val"][1]
