"""The leaderboards as a static web site: ``benchbase leaderboard --html DIR``.

One page per suite and ablation whose records are in ``<leaderboard folder>/results/*.jsonl`` (the
records the Markdown tables are generated from), plus ``index.html`` linking them all. A page says
what its Markdown page says (it is rendered from it: floor verdicts, figures, legend, paired tests,
protocols, provenance, row notes), with the table as HTML that a few kB of vanilla JavaScript
(``site_assets/``, copied to ``DIR/assets/``) makes sortable (click a column header) and filterable
(by text, and by row role: teacher, floor, reference, method). Floor rows are set apart, cells show
their paired rank ``(#k)`` and the ``▼`` below-floor mark as on the Markdown page. Figures are the
PNGs the Markdown page embeds, copied next to the page; each table is also offered as CSV. No server
and no network are needed to view it: open ``DIR/index.html``.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from benchbase.errors import BenchbaseError
from benchbase.leaderboard import (
    BELOW_SUFFIX,
    CI_SUFFIX,
    RESULTS_DIR,
    _formatted,
    is_ablation,
    page_figures,
    shown_records,
    table_frame,
    write_table,
)
from benchbase.results import RunRecord, read_jsonl, write_text_atomic

ASSETS = ("leaderboard.js", "leaderboard.css")
"""The files of ``benchbase/site_assets`` every page loads (from ``DIR/assets/``)."""
INDEX = "index.html"


@dataclass
class Page:
    """One table's page: its file stem, kind (``suite`` or ``ablation``), title, the suite's
    description, and the rows, runs and dates its table shows."""

    stem: str
    kind: str
    title: str
    description: str
    rows: int
    runs: int
    dates: str


def write_site(out_dir: str | os.PathLike[str], site_dir: str | os.PathLike[str]) -> list[Path]:
    """Write the site of every table whose records are in ``<out_dir>/results/*.jsonl`` into
    ``site_dir`` (created); returns the files written, ``index.html`` first."""
    out, site = Path(out_dir), Path(site_dir)
    files = sorted((out / RESULTS_DIR).glob("*.jsonl"))
    if not files:
        raise BenchbaseError(f"no records in {out / RESULTS_DIR}; publish some with `benchbase run --publish` "
                             "or `benchbase leaderboard --publish`")
    (site / "assets").mkdir(parents=True, exist_ok=True)
    written = [site / INDEX]
    for name in ASSETS:
        target = site / "assets" / name
        target.write_bytes(resources.files("benchbase").joinpath("site_assets", name).read_bytes())
        written.append(target)
    pages: list[tuple[Page, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            records = read_jsonl(path)
            page, body, copied = _render(records, path.stem, out, site, Path(tmp))
            pages.append((page, body))
            written += copied
    pages.sort(key=lambda p: (p[0].kind != "suite", p[0].stem))
    nav = [page for page, _ in pages]
    for page, body in pages:
        target = site / f"{page.stem}.html"
        write_text_atomic(target, _document(page.title, _nav(nav, page.stem) + body))
        written.append(target)
    write_text_atomic(site / INDEX, _document("benchbase leaderboards", _nav(nav, None) + _index(nav)))
    return written


def _render(records: list[RunRecord], stem: str, out: Path, site: Path, tmp: Path) -> tuple[Page, str, list[Path]]:
    """A page's summary, its body HTML and the files copied into ``site`` (CSV, figures).

    The Markdown page and its plots are written to ``tmp`` exactly as ``benchbase leaderboard``
    writes them; the body is that page with its table made interactive."""
    ablation = is_ablation(records)
    md, csv, *drawn = write_table(records, tmp, stem, out)
    df = table_frame(records)
    copied = [site / f"{stem}.csv"]
    shutil.copyfile(csv, copied[0])
    for figure in page_figures(drawn, tmp, stem, out):
        source = tmp / figure if (tmp / figure).exists() else out / figure
        target = site / figure
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(target)
    lines = md.read_text(encoding="utf-8").splitlines()
    title = next((line[2:] for line in lines if line.startswith("# ")), stem)
    download = f'<p class="download">Download: <a href="{html.escape(stem)}.csv">{html.escape(stem)}.csv</a></p>'
    body = _markdown_html(lines, _table_html(df) + download)
    shown = shown_records(records)
    dates = sorted(r.created_at[:10] for r in shown)
    latest = max(shown, key=lambda r: r.created_at)
    description = "" if ablation else str((latest.config.get("suite") or {}).get("description", ""))
    page = Page(stem, "ablation" if ablation else "suite", title, description, len(df), len(shown),
                dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
    return page, body, copied


def _number(value: object) -> str:
    """A numeric cell's sort key for ``data-value`` (empty where missing or not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(number) if math.isfinite(number) else ""


def _table_html(df: pd.DataFrame) -> str:
    """The table of ``df`` (a :func:`~benchbase.leaderboard.metric_frame`) as the Markdown page shows
    its cells, with each row's role and each metric cell's number for sorting."""
    shown = _formatted(df)
    protocols = df.attrs.get("protocols") or {}
    floors = df.attrs.get("floors") or {}
    roles = df.attrs.get("roles") or [""] * len(df)
    head = []
    for column in shown.columns:
        tip = f' title="{html.escape(protocols[column])}"' if column in protocols else ""
        head.append(f'<th scope="col"{tip}>{html.escape(str(column))}</th>')
    numeric = [column for column in shown.columns if column + CI_SUFFIX in df.columns or column == "seeds"]
    body = []
    for i, role in enumerate(roles):
        cells = []
        for column in shown.columns:
            attrs = f' data-value="{_number(df[column].iat[i])}"' if column in numeric else ""
            if column + BELOW_SUFFIX in df.columns and bool(df[column + BELOW_SUFFIX].iat[i]):
                name, best = floors[column]
                floor = f"{html.escape(name)} {best:.1f}"
                attrs += f' class="below" title="95% interval not above the best floor ({floor})"'
            cells.append(f"<td{attrs}>{html.escape(str(shown[column].iat[i]))}</td>")
        body.append(f'<tr data-role="{html.escape(role)}" class="role-{html.escape(role)}">{"".join(cells)}</tr>')
    return (f'<div class="board-wrap"><table class="board"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>\n{chr(10).join(body)}\n</tbody></table></div>')


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_ORDERED = re.compile(r"^\d+\. ")


def _inline(text: str) -> str:
    """Escaped text with Markdown's code spans, bold and links as HTML."""
    text = _CODE.sub(r"<code>\1</code>", html.escape(text, quote=False))
    return _LINK.sub(r'<a href="\2">\1</a>', _BOLD.sub(r"<strong>\1</strong>", text))


_BLOCKS = {"p": ("<p>", "<br>", "</p>"), "figures": ('<div class="figures">', "\n", "</div>"),
           "ul": ("<ul><li>", "</li><li>", "</li></ul>"), "ol": ("<ol><li>", "</li><li>", "</li></ol>")}
"""How a group of Markdown lines is wrapped: (opening, between lines, closing)."""


def _markdown_html(lines: list[str], table: str) -> str:
    """The Markdown that :func:`benchbase.leaderboard.markdown_page` writes, as HTML, its table
    replaced by ``table``: headings, lists, images, ``<details>`` and one paragraph per line group."""
    parts: list[str] = []
    group: list[str] = []  # the open group of lines: its kind (a key of _BLOCKS), then its items

    def close() -> None:
        if group:
            opening, between, closing = _BLOCKS[group[0]]
            parts.append(opening + between.join(group[1:]) + closing)
            group.clear()

    def add(kind: str, item: str) -> None:
        if group and group[0] != kind:
            close()
        if not group:
            group.append(kind)
        group.append(item)

    for line in lines:
        if line.startswith("|"):  # the table: one block of lines
            close()
            if table not in parts:
                parts.append(table)
        elif not line.strip():
            close()
        elif line.startswith("#"):
            close()
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith(("<details>", "</details>")):
            close()
            parts.append(line)  # written by the leaderboard itself, not user text
        elif image := _IMAGE.match(line):
            source = html.escape(image[2])
            add("figures", f'<a href="{source}"><img src="{source}" alt="{html.escape(image[1])}"></a>')
        elif line.startswith("- "):
            add("ul", _inline(line[2:]))
        elif _ORDERED.match(line):
            add("ol", _inline(_ORDERED.sub("", line, count=1)))
        else:
            add("p", _inline(line))
    close()
    return "\n".join(parts)


def _nav(pages: list[Page], current: str | None) -> str:
    """Links to the index and every page, the current one marked."""
    links = [f'<a href="{INDEX}"' + (' aria-current="page"' if current is None else "") + ">All leaderboards</a>"]
    for page in pages:
        mark = ' aria-current="page"' if page.stem == current else ""
        links.append(f'<a href="{html.escape(page.stem)}.html"{mark}>{html.escape(page.stem)}</a>')
    return f'<nav>{" ".join(links)}</nav>\n'


def _index(pages: list[Page]) -> str:
    """The index page's body: every suite and ablation with what it holds."""
    rows = "\n".join(
        f'<tr data-role="{page.kind}"><td><a href="{html.escape(page.stem)}.html">{html.escape(page.stem)}</a></td>'
        f"<td>{page.kind}</td><td>{html.escape(page.title if page.kind == 'ablation' else page.description)}</td>"
        f'<td data-value="{page.rows}">{page.rows}</td><td data-value="{page.runs}">{page.runs}</td>'
        f"<td>{html.escape(page.dates)}</td></tr>"
        for page in pages
    )
    head = "".join(f'<th scope="col">{name}</th>' for name in ("page", "kind", "what", "rows", "runs", "dates (UTC)"))
    return ("<h1>benchbase leaderboards</h1>\n<p>Every table generated from the stored run records, one page per "
            "suite and ablation. Click a column header to sort; type to filter.</p>\n"
            f'<div class="board-wrap"><table class="board"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{rows}\n</tbody></table></div>")


def _document(title: str, body: str) -> str:
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="stylesheet" href="assets/leaderboard.css">\n'
            '<script src="assets/leaderboard.js" defer></script>\n'
            f"</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")
