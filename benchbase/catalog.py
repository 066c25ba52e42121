"""What is installed, listed without running anything: the suites ``benchbase run --help`` names,
and the datasets ``benchbase datasets`` describes (their splits, sizes and the paths they need).

Listing datasets reads no data from disk: a dataset's splits and layout come from the
:class:`~benchbase.components.DatasetInfo` it declared when it was registered, and only the
datasets that need no path (embedded or generated, cheap to build) are loaded to count their
items. ``benchbase datasets NAME`` loads that one dataset with its configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from benchbase.components import DATASET_KINDS, DataBundle
from benchbase.config import CONF_DIR, DatasetConfig
from benchbase.plugin_manager import Benchbase, Registered
from benchbase.tasks import one_line

ITEMS = {"classification": "(image [C, H, W] float, label int)",
         "segmentation": "(image [C, H, W] float, label map [H, W] long)"}
"""What one item of a split of each dataset kind is."""


def suite_descriptions(config_dirs: Sequence[str]) -> dict[str, str]:
    """Every installed suite, ``suite/NAME.yaml`` in benchbase's config dir or a plugin's (the first
    one found wins, as in Hydra's search path), and its ``suite.description``."""
    found: dict[str, str] = {}
    for folder in [CONF_DIR, *map(Path, config_dirs)]:
        for path in sorted((folder / "suite").glob("*.yaml")):
            if path.stem in found:
                continue
            try:
                suite = OmegaConf.to_container(OmegaConf.load(path), resolve=False).get("suite") or {}
                found[path.stem] = str(suite.get("description", ""))
            except Exception as exc:  # a broken file is listed, not fatal to the listing
                found[path.stem] = f"(cannot read {path}: {one_line(exc)})"
    return found


def suites_text(config_dirs: Sequence[str]) -> str:
    """One indented line per installed suite: its name and description."""
    suites = suite_descriptions(config_dirs)
    width = max(map(len, suites), default=0)
    return "\n".join(f"  {name:<{width}}  {description}".rstrip() for name, description in suites.items())


def load_dataset(bb: Benchbase, cfg: DictConfig, name: str) -> DataBundle:
    """The dataset ``name`` as ``cfg.data.<name>`` configures it (defaults when it is absent)."""
    return bb.registry.get("datasets", name)(cfg.data.get(name) or OmegaConf.structured(DatasetConfig))


def _header(registered: Registered, cfg: DictConfig) -> str:
    """``name [plugin] kind: where its data comes from`` (embedded, its configured root, or the
    layout the root it needs must hold)."""
    info, name = registered.info, registered.name
    if info is None:
        return f"{name} [{registered.plugin}]: splits and paths not declared at registration"
    root = (cfg.data.get(name) or {}).get("root")
    if info.layout is None:
        where = "embedded, needs no path"
    else:
        where = f"data.{name}.root={root}" if root else f"data.{name}.root=PATH must hold {info.layout}"
    return f"{name} [{registered.plugin}] {info.kind}: {where}"


def legend() -> str:
    """What the splits of each kind of dataset yield."""
    return "\n".join(f"{kind} splits are {DATASET_KINDS[kind].__name__}: split[i] = {items}"
                     for kind, items in ITEMS.items())


def _split_rows(registered: Registered, data: DataBundle | None) -> list[list[object]]:
    """[split, items, classes, what it holds] for the declared splits and any others loaded."""
    declared = dict(registered.info.splits) if registered.info else {}
    names = list(declared) + [s for s in (data.splits if data else {}) if s not in declared]
    rows = []
    for split in names:
        if data is None:
            items, classes = "", ""
        elif split in data.splits:
            items, classes = len(data.splits[split]), len(getattr(data.splits[split], "classes", ()))
        else:
            items, classes = "absent", ""
        rows.append([split, items, classes, declared.get(split, "")])
    return rows


def dataset_listing(bb: Benchbase, cfg: DictConfig) -> str:
    """Every registered dataset: where its data comes from and its splits, with their sizes for the
    datasets that need no path."""
    blocks = []
    for name in bb.registry.names("datasets"):
        registered = bb.registry.items["datasets"][name]
        embedded = registered.info is not None and registered.info.layout is None
        data = load_dataset(bb, cfg, name) if embedded else None
        rows = _split_rows(registered, data)
        if data is None:
            rows = [[split, holds] for split, _, _, holds in rows]
        table = tabulate(rows, tablefmt="plain") if rows else f"`benchbase datasets {name}` loads it to list its splits"
        blocks.append(_header(registered, cfg) + "".join(f"\n  {line}" for line in table.splitlines()))
    return "\n".join([*blocks, "", legend()])


def dataset_details(bb: Benchbase, cfg: DictConfig, name: str) -> str:
    """The dataset ``name`` loaded as configured: its description, images, and every split's size."""
    data = load_dataset(bb, cfg, name)
    registered = bb.registry.items["datasets"][name]
    channels = f"{data.in_chans} channel{'s' if data.in_chans != 1 else ''}"
    lines = [
        _header(registered, cfg),
        f"  {data.description}" if data.description else None,
        f"  {channels}, {data.image_size}x{data.image_size} images, {data.num_classes} classes"
        + (f", unlabelled value {data.ignore_index}" if data.ignore_index is not None else ""),
        tabulate(_split_rows(registered, data), headers=["split", "items", "classes", "holds"], tablefmt="simple"),
        "",
        legend(),
    ]
    return "\n".join(line for line in lines if line is not None)
