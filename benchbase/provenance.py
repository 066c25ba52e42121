"""What made a run besides its config: the code of its components and its teacher's weights.

A run's config hash names what was asked for and stays stable, so tables keep grouping its rows;
what *made* the run is recorded next to it, in :attr:`benchbase.results.RunRecord.versions`, and
checked before a stored run is reused (see :func:`benchbase.suite.run_method`):

- ``code:<kind>/<name>``: a fingerprint of each registered component involved (the method and its
  stages' methods, recorded as ``code:losses/<name>``; each task's evaluator, the datasets, the student and teacher builders):
  the plugin's distribution and version, and the SHA-256 of the component's source files (see
  :func:`fingerprint`), so that an edited editable install or ``--plugins-dir`` module counts as
  other code even when its version did not change;
- ``teacher``: where the teacher's weights came from, for a recipe teacher its cache key, which
  covers the recipe's code and loss params (:func:`benchbase.teachers.recipe_key`).

A stored run whose entries differ from the current ones is run again, and so is a run stored
before benchbase recorded them (what made it is unknown).
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections.abc import Iterable, Mapping
from functools import partial
from types import CodeType, FunctionType
from typing import Any

from benchbase.plugin_manager import Benchbase

CODE_PREFIX = "code:"
"""Prefix of the ``versions`` keys that hold component fingerprints."""
TEACHER = "teacher"
"""The ``versions`` key that holds the source of the run's teacher weights."""
DIGEST_CHARS = 16
RECORDED_KINDS = {"methods": "losses"}
"""Registry kinds whose fingerprints are recorded under their former name (``code:losses/<name>``
for a method), so that stored runs and cached teachers and stages keep matching."""


INTERFACES = "benchbase.components"
"""The module of the component base classes: harness code, like the engine, not a component's own."""


def _top(name: str) -> str:
    return name.split(".")[0]


def _defining(component: Any) -> list[Any]:
    """What defines ``component``: a class and its bases of the same top-level package (the
    component interfaces left out), or a function (a ``partial``'s)."""
    while isinstance(component, partial):
        component = component.func
    if not inspect.isclass(component):
        return [component]
    top = _top(component.__module__)
    return [c for c in inspect.getmro(component) if _top(c.__module__) == top and c.__module__ != INTERFACES]


def _functions(obj: Any) -> list[FunctionType]:
    """A function itself, or the functions, static/class methods and properties of a class (none
    for other callables, e.g. built-in ones)."""
    if inspect.isfunction(obj):
        return [obj]
    if not inspect.isclass(obj):
        return []
    found = []
    for value in vars(obj).values():
        value = getattr(value, "__func__", value)
        if isinstance(value, property):
            found += [f for f in (value.fget, value.fset, value.fdel) if f is not None]
        elif inspect.isfunction(value):
            found.append(value)
    return found


def _names(code: CodeType) -> set[str]:
    """The global and attribute names ``code`` (and the code nested in it) refers to."""
    return set(code.co_names).union(*(_names(c) for c in code.co_consts if inspect.iscode(c)))


def _module_name(value: Any) -> str | None:
    if inspect.ismodule(value):
        return value.__name__
    if inspect.isclass(value) or inspect.isfunction(value):
        return value.__module__
    return None


def source_files(component: Any) -> list[str]:
    """The source files a component's code comes from: the modules defining it (see
    :func:`_defining`) and the modules of its own package that hold what its code refers to
    directly (a thin builder's implementation, a helper module). Code further away is not covered."""
    defining = _defining(component)
    if not defining:
        return []
    top = _top(defining[0].__module__)
    modules = {sys.modules[obj.__module__] for obj in defining if obj.__module__ in sys.modules}
    for obj in defining:
        namespace = vars(sys.modules[obj.__module__]) if obj.__module__ in sys.modules else {}
        referred = [namespace[n] for f in _functions(obj) for n in _names(f.__code__) if n in namespace]
        referred += list(vars(obj).values()) if inspect.isclass(obj) else []
        names = {_module_name(value) for value in referred}
        modules |= {sys.modules[n] for n in names if n and _top(n) == top and n in sys.modules and n != INTERFACES}
    files = set()
    for module in modules:
        try:
            path = inspect.getsourcefile(module)
        except TypeError:  # a built-in or extension module: no source
            continue
        if path:
            files.add(path)
    return sorted(files)


def source_digest(component: Any) -> str:
    """SHA-256 (first :data:`DIGEST_CHARS` hex digits) of :func:`source_files` and, for a
    ``partial``, its bound arguments; empty when no source file can be read."""
    digest = hashlib.sha256()
    files = source_files(component)
    for path in files:
        try:
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        except OSError:
            return ""
    while isinstance(component, partial):
        digest.update(repr((component.args, sorted(component.keywords.items()))).encode())
        component = component.func
    return digest.hexdigest()[:DIGEST_CHARS] if files else ""


def fingerprint(bb: Benchbase, kind: str, name: str) -> str:
    """``<distribution> <version> sha256:<digest>`` of a registered component; a component of a
    ``--plugins-dir`` module (no distribution) has only its digest."""
    factory = bb.registry.get(kind, name)
    info = bb.infos.get(bb.registry.items[kind][name].plugin)
    parts = [f"{info.distribution} {info.version}"] if info is not None and info.version else []
    digest = source_digest(factory)
    parts += [f"sha256:{digest}"] if digest else []
    return " ".join(parts) or "unknown"


def code_versions(bb: Benchbase, components: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{"code:<kind>/<name>": fingerprint}`` for each (kind, name), sorted."""
    return {f"{CODE_PREFIX}{RECORDED_KINDS.get(kind, kind)}/{name}": fingerprint(bb, kind, name)
            for kind, name in sorted(set(components))}


def suite_components(cfg: Any) -> list[tuple[str, str]]:
    """The components every run of a suite involves: the tasks' evaluators, the datasets (the
    distillation one and the tasks'), the student and teacher builders."""
    tasks = list(cfg.suite.tasks.values())
    return [*(("evaluators", t.evaluator) for t in tasks),
            *(("datasets", d) for d in {cfg.suite.distill.dataset, *(t.dataset for t in tasks)}),
            ("students", cfg.student.arch), ("teachers", cfg.teacher.arch)]


def code_summary(stored: Mapping[str, str]) -> str:
    """The code versions a stored run records, in words: ``benchbase 0.1.0, my-plugin 1.2``
    (distributions), plus ``local code`` for components outside any distribution."""
    names = {"benchbase " + stored["benchbase"]} if "benchbase" in stored else set()
    for key, value in stored.items():
        if key.startswith(CODE_PREFIX):
            dist = value.rsplit(" sha256:", 1)[0] if " sha256:" in value else ""
            names.add(dist or "local code")
    return ", ".join(sorted(names)) or "unknown code"


def changed(stored: Mapping[str, str], current: Mapping[str, str]) -> str:
    """Why a stored run with ``stored`` versions cannot stand for one made now with ``current``
    (one line), or ``""`` when everything in ``current`` matches."""
    if not any(key.startswith(CODE_PREFIX) for key in stored):
        return "it records no code versions (stored before benchbase recorded them), so what made it is unknown"
    diffs = [key for key in current if stored.get(key) != current[key]]
    if not diffs:
        return ""
    key = diffs[0]
    what = "its teacher" if key == TEACHER else f"the code of {key.removeprefix(CODE_PREFIX)}"
    more = f" and {len(diffs) - 1} more" if len(diffs) > 1 else ""
    return f"{what} changed ({stored.get(key, 'not recorded')} -> {current[key]}){more}"
