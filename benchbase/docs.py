"""The plugin guide, ``benchbase/guide/writing-a-plugin.md``, and its generated parts.

The guide ships with the package (package data): ``benchbase docs`` prints it. The hook
specifications, the component interfaces and the public helpers are rendered from their
docstrings (and :data:`benchbase.capture.TAP_SHAPES`) between marker comments, so the guide cannot
drift from the code: ``benchbase docs --write`` rewrites them, ``benchbase docs --check`` fails when
the guide is stale or a hook spec is not fully documented. Docstrings are Google style (``Args:``,
``Returns:``) with Sphinx roles; both are turned into Markdown.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

from benchbase import PROJECT_NAME, capture, components, errors, hookspecs, loggers, outcomes
from benchbase.errors import BenchbaseError
from benchbase.evaluation.classification import accuracy_metrics, binomial_ci95
from benchbase.evaluation.features import check_pooling, extract_features, pool_tokens
from benchbase.scaffold import scaffold_files

GUIDE = Path(__file__).resolve().parent / "guide" / "writing-a-plugin.md"
"""The guide, inside the package (installed with it)."""

_SECTION_NAMES = ("Args", "Returns", "Raises")
_ROLE = re.compile(r":(?:class|func|data|mod|meth|attr|exc):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def hookspec_functions(module: ModuleType = hookspecs) -> list[FunctionType]:
    """The functions of ``module`` marked ``@hookspec``, in the order they are defined."""
    marker = f"{PROJECT_NAME}_spec"
    found = [f for f in vars(module).values() if inspect.isfunction(f) and hasattr(f, marker)]
    return sorted(found, key=lambda f: f.__code__.co_firstlineno)


def docstring_sections(doc: str) -> dict[str, str]:
    """A cleaned Google-style docstring split into ``""`` (the description) and its sections."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in inspect.cleandoc(doc).splitlines():
        heading = line.rstrip()[:-1] if line.rstrip().endswith(":") else None
        if heading in _SECTION_NAMES and not line.startswith(" "):
            current = heading
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def _documented_args(args_section: str) -> list[str]:
    """Parameter names of an ``Args:`` section (``name: text`` lines at its first indent)."""
    lines = [line for line in args_section.splitlines() if line.strip()]
    if not lines:
        return []
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    return [line.strip().split(":", 1)[0] for line in lines
            if len(line) - len(line.lstrip()) == indent and ":" in line]


def hookspec_problems(module: ModuleType = hookspecs) -> list[str]:
    """What is missing from the hook specs' docstrings: each must document its Args and Returns."""
    problems = []
    for function in hookspec_functions(module):
        name = function.__name__
        if not (function.__doc__ or "").strip():
            problems.append(f"hook spec {name} has no docstring")
            continue
        sections = docstring_sections(function.__doc__)
        params = list(inspect.signature(function).parameters)
        if params:
            missing = sorted(set(params) - set(_documented_args(sections.get("Args", ""))))
            if missing:
                problems.append(f"hook spec {name} does not document argument(s) {', '.join(missing)} under Args:")
        if not sections.get("Returns", "").strip():
            problems.append(f"hook spec {name} does not document what it returns under Returns:")
    return problems


def _inline(text: str) -> str:
    """Sphinx roles and ``literals`` as Markdown code spans."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return _LITERAL.sub(r"`\1`", text)


def _paragraphs(text: str) -> str:
    """Docstring prose as Markdown; an indented block after a line ending ``::`` becomes a fence."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            out.append(_inline(line.rstrip()[:-1]))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            out.extend(["", "```", *inspect.cleandoc("\n".join(block)).splitlines(), "```", ""])
        else:
            out.append(_inline(line))
            i += 1
    return "\n".join(out).strip("\n")


def _args_list(section: str) -> str:
    """An ``Args:`` section as a Markdown list: ``- `name`: description``."""
    items: list[list[str]] = []
    lines = [line for line in section.splitlines() if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    for line in lines:
        if len(line) - len(line.lstrip()) == indent:
            name, _, rest = line.strip().partition(":")
            items.append([f"- `{name}`:", rest.strip()])
        else:
            items[-1].append(line.strip())
    return "\n".join(_inline(" ".join(part for part in item if part)) for item in items)


def docstring_markdown(doc: str | None) -> str:
    """A Google-style docstring as Markdown (description, then **Args**/**Returns**/**Raises**)."""
    if not doc:
        return ""
    sections = docstring_sections(doc)
    parts = [_paragraphs(sections.pop(""))]
    for name, body in sections.items():
        body = _args_list(body) if name in ("Args", "Raises") else _paragraphs(inspect.cleandoc(body))
        parts.append(f"**{name}:**\n\n{body}")
    return "\n\n".join(p for p in parts if p)


class _Annotation(str):
    """An annotation kept as source text (``from __future__ import annotations``), shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def signature_text(function: Callable[..., Any], skip_self: bool = False) -> str:
    """``name(params) -> return`` with the annotations as written in the source."""
    signature = inspect.signature(function)

    def unquoted(annotation: Any) -> Any:
        return _Annotation(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=unquoted(p.annotation)) for p in signature.parameters.values()]
    if skip_self and params and params[0].name == "self":
        params = params[1:]
    signature = signature.replace(parameters=params, return_annotation=unquoted(signature.return_annotation))
    return f"{function.__name__}{signature}"


def render_hookspecs(module: ModuleType = hookspecs) -> str:
    """The module docstring and every hook spec with its signature and documentation."""
    parts = [docstring_markdown(module.__doc__)]
    for function in hookspec_functions(module):
        parts.append(f"### `{signature_text(function)}`\n\n{docstring_markdown(function.__doc__)}")
    return "\n\n".join(parts)




def _attributes(cls: type) -> list[str]:
    """Annotated class attributes and properties defined by ``cls`` itself, as list items."""
    items = []
    for name, annotation in vars(cls).get("__annotations__", {}).items():
        default = vars(cls).get(name, inspect.Parameter.empty)
        shown = "" if default is inspect.Parameter.empty or inspect.isdatadescriptor(default) else f" = {default!r}"
        items.append(f"- `{name}: {annotation}{shown}`")
    for name, value in vars(cls).items():
        if isinstance(value, property) and not name.startswith("_"):
            returns = inspect.signature(value.fget).return_annotation
            doc = inspect.getdoc(value)
            items.append(f"- `{name}: {returns}` (property)" + (f": {_inline(doc)}" if doc else ""))
    return items


def _methods(cls: type, level: int) -> list[str]:
    """The documented public methods (and constructor) that ``cls`` itself defines."""
    parts = []
    for name, value in vars(cls).items():
        if inspect.isfunction(value) and value.__doc__ and (name == "__init__" or not name.startswith("_")):
            title = signature_text(value, skip_self=True)
            if name == "__init__":
                title = cls.__name__ + title[len("__init__"):]
            parts.append(f"{'#' * level} `{title}`\n\n{docstring_markdown(value.__doc__)}")
    return parts


def render_class(cls: type, level: int = 3) -> str:
    """A class's heading (Markdown ``level``), docstring, own attributes and own documented methods."""
    bases = ", ".join(b.__name__ for b in cls.__bases__ if b is not object)
    title = f"{cls.__name__}({bases})" if bases else cls.__name__
    parts = [f"{'#' * level} `{title}`", docstring_markdown(cls.__doc__)]
    attributes = _attributes(cls)
    if attributes:
        parts.append("\n".join(attributes))
    parts.extend(_methods(cls, level + 1))
    return "\n\n".join(parts)


INTERFACES: tuple[type, ...] = (
    components.Method, components.VitModel, components.Student, components.Teacher, components.Evaluator,
    loggers.Logger,
)
"""The component interfaces (Student and Teacher share :class:`VitModel`)."""

SUPPORTING: tuple[type, ...] = (
    components.StepInputs, capture.ModelInput, capture.Tap, capture.Captures, components.Metric,
    components.DataBundle, components.LabeledImages, components.SegmentationImages, components.DatasetInfo,
    loggers.RunInfo, loggers.StepLog,
)
"""The types those interfaces pass around."""


def render_components(interfaces: Iterable[type] = INTERFACES, supporting: Iterable[type] = SUPPORTING) -> str:
    """The components module docstring (shape legend), the interfaces and the tap shapes."""
    taps = "\n".join(f"| `{kind}` | {_inline(shape)} |" for kind, shape in capture.TAP_SHAPES.items())
    return "\n\n".join([
        docstring_markdown(components.__doc__),
        *(render_class(cls) for cls in interfaces),
        "### Types they pass around",
        *(render_class(cls, level=4) for cls in supporting),
        "### Tensors a loss can ask for\n\n"
        "A `Tap(kind, block)` in `student_taps`/`teacher_taps`; `forward` receives them in a `Captures` "
        "mapping.\n\n| kind | shape and meaning |\n| --- | --- |\n" + taps,
    ])


HELPERS: tuple[Callable[..., Any], ...] = (
    extract_features, pool_tokens, check_pooling, accuracy_metrics, binomial_ci95, components.mean_ci95,
    outcomes.mean_outcomes, outcomes.ratio_outcomes, outcomes.iou_outcomes, outcomes.segment_outcomes,
)
"""The public helpers a plugin may call (evaluators above all); the rest of benchbase may change."""

ERRORS: tuple[type, ...] = (errors.BenchbaseError, errors.NotApplicable)
"""The exceptions a plugin raises to tell the harness something."""


def render_helpers(helpers: Iterable[Callable[..., Any]] = HELPERS, raised: Iterable[type] = ERRORS) -> str:
    """Each helper's signature, module and documentation, then the exceptions plugins raise."""
    parts = [f"### `{signature_text(f)}`\n\n`from {f.__module__} import {f.__name__}`\n\n"
             + docstring_markdown(f.__doc__) for f in helpers]
    parts.append("### Exceptions a plugin raises (`benchbase.errors`)")
    parts.extend(render_class(cls, level=4) for cls in raised)
    return "\n\n".join(parts)


EXAMPLES = {"method": "my_kd", "evaluator": "my_knn", "dataset": "my_data", "model": "my_vit"}
"""The plugin name each kind's example is shown with."""


def render_example(kind: str) -> str:
    """The files ``benchbase new-plugin NAME --kind KIND`` writes into its package (the example's
    module and configs), for the kind's example name."""
    files = {path: text for path, text in scaffold_files(EXAMPLES[kind], kind).items() if path.startswith("src/")}
    return "\n\n".join(f"`{path}`:\n\n```{'python' if path.endswith('.py') else 'yaml'}\n{text}```"
                        for path, text in files.items())


SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "hookspecs": ("benchbase/hookspecs.py", render_hookspecs),
    "components": ("benchbase/components.py, benchbase/capture.py and benchbase/loggers.py", render_components),
    "helpers": ("the docstrings of benchbase.docs.HELPERS and ERRORS", render_helpers),
    **{f"example-{kind}": (f"benchbase/plugin_templates/{kind}.py", partial(render_example, kind))
       for kind in EXAMPLES},
}
"""Generated section name -> (where it comes from, renderer)."""


def render_guide(text: str) -> str:
    """``text`` with every generated section re-rendered between its markers."""
    for name, (source, renderer) in SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, found, rest = text.partition(start)
        if not found or end not in rest:
            raise BenchbaseError(f"the guide has no {start} ... {end} markers; add them where section {name!r} goes")
        _, _, tail = rest.partition(end)
        note = f"<!-- generated from {source} by `benchbase docs --write`; edit the source, not this section -->"
        text = f"{head}{start}\n{note}\n\n{renderer()}\n\n{end}{tail}"
    return text


def read(path: Path = GUIDE) -> str:
    """The guide's text; a missing file is a one-line error."""
    if not path.is_file():
        raise BenchbaseError(f"guide {path} not found; pass --path to a copy of benchbase/guide/writing-a-plugin.md")
    return path.read_text(encoding="utf-8")


def check(path: Path = GUIDE) -> list[str]:
    """Why the guide at ``path`` is stale (empty when it is up to date and the hook specs are documented)."""
    problems = hookspec_problems()
    text = read(path)
    if render_guide(text) != text:
        problems.append(f"{path} is out of date; run `benchbase docs --write`")
    return problems


def write(path: Path = GUIDE) -> bool:
    """Re-render the generated sections of the guide at ``path``; True when the file changed."""
    text = read(path)
    rendered = render_guide(text)
    if rendered != text:
        path.write_text(rendered, encoding="utf-8")
    return rendered != text
