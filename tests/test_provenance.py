"""What made a run: code fingerprints, the reuse check and its messages, stage cache keys."""

from __future__ import annotations

import json
import sqlite3
import sys
from functools import partial

from benchbase.cli import main
from benchbase.plugin_manager import load
from benchbase.provenance import changed, code_summary, fingerprint, source_digest, source_files
from benchbase.results import ResultsDB
from benchbase.suite import _plan, suite_context

from test_run import instant
from thirdparty import make_distribution

PLUGIN = '''
from benchbase import hookimpl
from benchbase.capture import Tap
from benchbase.components import Loss


class TokenMSE(Loss):
    name = "tokmse"
    student_taps = (Tap("tokens"),)
    teacher_taps = ()

    def forward(self, student, teacher, inputs):
        return {"mse": student[Tap("tokens")].pow(2).mean()}


@hookimpl
def benchbase_register_methods(register):
    register("tokmse", TokenMSE)
'''


def plugin_dir(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "tokmse.py").write_text(PLUGIN)
    return folder


def test_fingerprint_names_the_distribution_and_the_source(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "site")))
    bb = load(plugin_dir(tmp_path))
    installed = fingerprint(bb, "methods", "kd_logits")
    assert installed.startswith("bb_kd_logits 0.3.1 sha256:") and len(installed.split("sha256:")[1]) == 16
    assert fingerprint(bb, "methods", "feature").startswith("benchbase 0.1.0 sha256:")
    assert fingerprint(bb, "methods", "tokmse").startswith("sha256:")  # --plugins-dir: no distribution
    assert code_summary({"benchbase": "0.1.0", "code:losses/kd_logits": installed,
                         "code:losses/tokmse": fingerprint(bb, "methods", "tokmse")}) == \
        "bb_kd_logits 0.3.1, benchbase 0.1.0, local code"


def test_source_digest_follows_the_files_a_component_comes_from(tmp_path, monkeypatch):
    package = tmp_path / "pkg_fp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def scale(x):\n    return 2 * x\n")
    (package / "other.py").write_text("UNRELATED = 1\n")
    (package / "base.py").write_text("class Base:\n    pass\n")
    (package / "loss.py").write_text("from pkg_fp.base import Base\nfrom pkg_fp.helpers import scale\n\n\n"
                                     "class Thing(Base):\n    def f(self, x):\n        return scale(x)\n\n\n"
                                     "def build(cfg, size=1):\n    return size\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from pkg_fp.loss import Thing, build

    assert [p.rsplit("/", 1)[1] for p in source_files(Thing)] == ["base.py", "helpers.py", "loss.py"]
    before = source_digest(Thing)
    (package / "other.py").write_text("UNRELATED = 2\n")
    assert source_digest(Thing) == before  # a module it does not use
    (package / "helpers.py").write_text("def scale(x):\n    return 3 * x\n")
    assert source_digest(Thing) != before  # a module it imports: read from disk, no reload needed
    assert source_digest(partial(build, size=2)) != source_digest(partial(build, size=3))
    assert source_digest(len) == ""  # no source: the distribution's version alone speaks for it
    # a thin builder covers its implementation, not every module its own module imports (evaluators);
    # the component interfaces are the harness's, like the engine
    from benchbase.core import Supervised, build_digits

    assert [p.rsplit("/", 2)[-2:] for p in source_files(build_digits)] == [["benchbase", "core.py"],
                                                                          ["data", "digits.py"]]
    assert not any(p.endswith("components.py") for p in source_files(Supervised))
    for name in ("pkg_fp.loss", "pkg_fp.helpers", "pkg_fp.base", "pkg_fp"):
        sys.modules.pop(name, None)


def test_changed_says_why_in_one_line():
    current = {"teacher": "recipe:b", "code:losses/x": "d 1.0 sha256:2", "code:evaluators/y": "d 1.0 sha256:3"}
    assert changed(current, current) == ""
    assert changed({**current, "code:losses/old": "gone"}, current) == ""  # only what runs now counts
    assert "records no code versions" in changed({"benchbase": "0.1.0", "teacher": "recipe:b"}, current)
    assert changed({**current, "teacher": "recipe:a"}, current) == "its teacher changed (recipe:a -> recipe:b)"
    both = changed({**current, "code:losses/x": "d 0.9 sha256:1", "code:evaluators/y": "d 0.9"}, current)
    assert both == "the code of losses/x changed (d 0.9 sha256:1 -> d 1.0 sha256:2) and 1 more"


def test_a_stored_run_is_reused_visibly_and_run_again_when_its_code_changed(tmp_path, capsys):
    plugins = plugin_dir(tmp_path)
    args = ["--plugins-dir", str(plugins), "run", "--methods", "tokmse", *instant(tmp_path, "trainer.epochs=1")]
    assert main(args) == 0
    db = ResultsDB(tmp_path / "results.db")
    first = next(r for r in db.records() if r.method == "tokmse")
    assert first.versions["code:losses/tokmse"].startswith("sha256:")
    assert {"code:evaluators/linear_probe", "code:datasets/digits", "code:students/vit", "code:teachers/vit"} \
        <= set(first.versions) and first.versions["teacher"].startswith("recipe:")
    capsys.readouterr()

    assert main(args) == 0  # unchanged: reused, and said so with its date and versions
    when = first.created_at[:16].replace("T", " ")
    assert f"tokmse seed 0: reusing the run stored {when} UTC (made by benchbase 0.1.0, local code" in \
        capsys.readouterr().out

    (plugins / "tokmse.py").write_text(PLUGIN.replace("pow(2).mean()", "abs().mean()"))
    assert main(args) == 0  # edited: run again, the old record superseded and kept
    out, err = capsys.readouterr()
    assert "tokmse seed 0: running again, the stored run of" in out
    assert "is stale: the code of losses/tokmse changed (sha256:" in out
    # its folder (named by the unchanged config hash) holds the old code's finished checkpoint: set aside, not resumed
    (folder,) = [f for f in (tmp_path / "runs" / "digits").glob("tokmse-seed0-*") if ".set-aside-" not in f.name]
    assert "training afresh, not resuming the checkpoint in its folder: the code of losses/tokmse changed" in out
    assert "from its checkpoint" not in err and (folder.parent / f"{folder.name}.set-aside-1" / "checkpoint.pt").is_file()
    made = json.loads((folder / "made.json").read_text())
    assert made["code:losses/tokmse"] != first.versions["code:losses/tokmse"]
    history = [r for r in db.records(superseded=True) if r.method == "tokmse"]
    assert len(history) == 2 and history[0] == first
    assert db.find(first.config_hash) == history[1] != first

    with sqlite3.connect(db.path) as conn:  # a record from before code versions were stored
        versions = {k: v for k, v in history[1].versions.items() if not k.startswith("code:")}
        conn.execute("UPDATE runs SET versions = ? WHERE id = (SELECT MAX(id) FROM runs)", (json.dumps(versions),))
    assert main(args) == 0
    assert "running again, the stored run of" in capsys.readouterr().out
    assert len([r for r in db.records(superseded=True) if r.method == "tokmse"]) == 3


def _stage_caches(tmp_path, stages: str, recipe_params: dict | None = None) -> list[tuple[str, str]]:
    """(key, cache) of each stage of feature with ``stages``, planned as a run of the suite plans them."""
    ctx = suite_context(load(tmp_path / "plugins"), ["suite=digits", f"home={tmp_path}", f"method.stages={stages}"])
    if recipe_params is not None:
        ctx.methods.recipe_params = lambda name: recipe_params
    return [(s.key, s.cache) for s in _plan(ctx, ctx.methods.config("feature"), 0)]


def test_stage_cache_keys_cover_params_teacher_and_code_while_run_hashes_stay(tmp_path):
    plugin_dir(tmp_path)
    chain = "[{name:a,method:tokmse,then:init},{name:b,then:init,params:{beta:1.0}}]"
    (a, b) = _stage_caches(tmp_path, chain)
    assert a[0] != a[1]  # a cache key is more than the stage's key in the run's config hash
    (_, b_beta) = _stage_caches(tmp_path, chain.replace("beta:1.0", "beta:3.0"))
    assert b_beta[0] != b[0] and b_beta[1] != b[1]  # a stage param: another stage, another run

    ctx = suite_context(load(tmp_path / "plugins"), ["suite=digits", f"home={tmp_path}"])
    mae = ctx.methods.recipe_params("mae")
    (a_teacher, b_teacher) = _stage_caches(tmp_path, chain, {**mae, "mask_ratio": 0.5})
    assert a_teacher[0] == a[0] and b_teacher[0] == b[0]  # same run hashes: the teacher is checked on reuse
    assert a_teacher[1] != a[1] and b_teacher[1] != b[1]  # but another cache

    (tmp_path / "plugins" / "tokmse.py").write_text(PLUGIN + "\n# edited\n")
    (a_code, b_code) = _stage_caches(tmp_path, chain)
    assert (a_code[0], b_code[0]) == (a[0], b[0])
    assert a_code[1] != a[1] and b_code[1] != b[1]  # the first stage's code: both caches are new
