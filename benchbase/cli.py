"""The ``benchbase`` command line: run suites, list plugins, regenerate leaderboards, write plugins."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchbase import __version__
from benchbase.errors import BenchbaseError
from benchbase.scaffold import FORMER_KINDS, KINDS

RUN_EPILOG = """\
overrides are Hydra's KEY=VALUE syntax on the composed config (see --cfg job); flags may come anywhere:
  benchbase run                                   the embedded default suite, every method plugin
  benchbase run --methods mae,feature trainer.epochs=3 seed=1
  benchbase run --methods cls_token student=vit_tiny teacher.source=checkpoint teacher.checkpoint=t.pt
  benchbase run -m --methods feature method.params.beta=1.0,2.0      a sweep: one suite per value
  python -m benchbase.launch -m hydra/launcher=slurm method=feature seed=0,1   each job on a cluster
  benchbase run trainer.epochs=1 --cfg job        print the composed config and exit

config groups: suite, student, teacher, method, trainer, eval, data (dataset paths: data.<name>.root=PATH).
suites installed (suite=NAME, e.g. suite=omniglot data.omniglot.root=DIR; `benchbase datasets` lists
every dataset's splits and the path it needs):
{suites}
Results go to the database at `db` (default .benchbase/results.db); a run with the same config is
reused (unless --force, or unless the code or teacher that made it changed; each reuse is printed).
The table is printed and written to the run home ($BENCHBASE_HOME/leaderboards/, with the committed
records); leaderboards/ changes only with --publish, which merges the runs into its records.
Exit status: 0 every row done; 1 a row failed (a method, or a task's evaluator on any row, teacher and
floors included: its status says why, and the other rows and tasks still ran); 2 a usage or
configuration error, found before anything ran.
"""

EVAL_EPILOG = """\
MODEL is a stored run (its folder, its student.pt, or its config hash), a checkpoint file with its
architecture in the student config, timm:NAME or sam:PRESET with --weights FILE (never downloaded),
or pixels (the image itself as the features: the floor a learned model must beat):
  benchbase eval .benchbase/runs/glyphs/feature-seed0-1a2b3c4d5e6f7a8b     every task of the run's suite
  benchbase eval 1a2b3c4d fewshot suite.tasks.fewshot.params.episodes=10000  a stored run by config hash
  benchbase eval ckpt.pth fewshot student=vit_tiny suite=omniglot data.omniglot.root=DIR
  benchbase eval --weights vit_s16.pth timm:vit_small_patch16_224 fewshot suite=omniglot data.omniglot.root=DIR
  benchbase eval --weights sam_vit_b_01ec64.pth sam:vit_b suite=eventsam
  benchbase eval pixels fewshot suite=omniglot data.omniglot.root=DIR
  benchbase eval ckpt.pth fewshot '+suite.tasks.fewshot.params.episodes_file=test_episodes.csv'
  benchbase eval ckpt.pth omni20 suite=omniglot data.omniglot.root=DIR suite.tasks.omni20.evaluator=fewshot \\
      suite.tasks.omni20.dataset=omniglot +suite.tasks.omni20.params.ways=20 +suite.tasks.omni20.params.within_group=true

TASK names tasks of the suite (default: all); a task inline is suite.tasks.NAME.evaluator=E
suite.tasks.NAME.dataset=D with +suite.tasks.NAME.params.KEY=VALUE. A stored run starts from its own
suite, data and seed; other models from the default suite (suite=... picks another). One record per
seed of the suite (role eval, with the model's provenance) goes to the results database; a stored
record with the same config hash is reused unless --force. With --row the records are a row of the
suite's table (where the tasks and protocols match the suite's runs) the next time it is written,
and stay one (--force replaces them).
"""


EXIT_FAILED_ROWS = 1
"""Exit status of a run in which a row failed (a method, or a task's evaluator on any row);
user errors exit with 2 before anything runs."""


def run_epilog() -> str:
    """:data:`RUN_EPILOG` with the suites installed now (benchbase's and the plugins')."""
    from benchbase.catalog import suites_text
    from benchbase.plugin_manager import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken plugin is reported by the commands that use plugins
        try:
            config_dirs = load().config_dirs()
        except BenchbaseError:
            config_dirs = []
    return RUN_EPILOG.replace("{suites}", suites_text(config_dirs))


class _RunHelp(argparse.Action):
    """``run -h``: the help, its epilog listing the installed suites (found when it is asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.epilog = run_epilog()
        parser.print_help()
        parser.exit()


class _DeprecatedSpelling(argparse.Action):
    """An option kept under its former name: it stores its value as the new one does and says once,
    on stderr, which name to use."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now --methods (the old spelling still works)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


PUBLISH_HELP = ("merge the runs into the committed records (leaderboard_dir/results/, default leaderboards/) "
                "and rewrite those tables; records are added or replaced by newer runs, never removed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchbase",
        description="Benchmark knowledge-distillation methods for vision transformers under one protocol.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `benchbase run` (embedded glyphs, no download), then `benchbase plugins`.",
    )
    parser.add_argument("--version", action="version", version=f"benchbase {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--plugins-dir", metavar="DIR", help="also load plugins from the .py files in DIR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a suite (teacher, methods x seeds, tasks) and write its table",
                         formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    run.add_argument("-h", "--help", action=_RunHelp, help="show this help (and the installed suites) and exit")
    run.add_argument("--methods", dest="plugins", type=_split, metavar="A,B",
                     help="methods to run (default: every installed method); evaluator, dataset and model "
                          "plugins are used by naming their components in a suite or config")
    run.add_argument("--plugins", dest="plugins", type=_split, metavar="A,B", action=_DeprecatedSpelling,
                     help="the former spelling of --methods (still accepted, with a note)")
    run.add_argument("--force", action="store_true", help="rerun even if an identical run is stored")
    run.add_argument("--publish", action="store_true", help=PUBLISH_HELP)
    run.add_argument("-m", "--multirun", action="store_true", help="sweep comma-separated override values")
    run.add_argument("--cfg", choices=["job"], help="print the composed config and exit")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")

    datasets = sub.add_parser(
        "datasets", help="list the datasets: their splits, sizes and the paths they need",
        description="Without NAME: every registered dataset, what its splits hold, their sizes where the "
                    "dataset needs no path (those are loaded), and the layout data.<name>.root must hold. "
                    "With NAME: that dataset loaded as configured, with its splits' real sizes and classes.",
        epilog="examples:\n  benchbase datasets\n  benchbase datasets digits\n"
               "  benchbase datasets camvid data.camvid.root=DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets.add_argument("name", nargs="?", metavar="NAME", help="the dataset to load and describe")
    datasets.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides (e.g. data.NAME.root)")

    ev = sub.add_parser("eval", help="score a model on suite tasks without training and store the records",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EVAL_EPILOG)
    ev.add_argument("--weights", metavar="FILE", help="the weights of a timm:NAME or sam:PRESET model")
    ev.add_argument("--name", metavar="LABEL", help="the row label (default: from the model)")
    ev.add_argument("--row", action="store_true",
                    help="show the records as a row of the suite's table where tasks and protocols match")
    ev.add_argument("--force", action="store_true", help="evaluate again even if an identical record is stored")
    ev.add_argument("model", metavar="MODEL", help="stored run, checkpoint, timm:NAME, sam:PRESET or pixels (see below)")
    ev.add_argument("items", nargs="*", metavar="TASK|KEY=VALUE", help="tasks to run and Hydra overrides")

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--hooks", action="store_true", help="show which plugin implements which hook")
    plugins.add_argument("--json", action="store_true", help="print JSON")

    board = sub.add_parser(
        "leaderboard", help="regenerate every table from the committed run records",
        description="Committed tables are generated from the run records in <out>/results/*.jsonl, never edited "
                    "by hand; those records change only with --publish (added or replaced by newer runs) and "
                    "--prune. Local tables ($BENCHBASE_HOME/leaderboards/) merge them with a database's runs.",
    )
    board.add_argument("--out", default="leaderboards", help="committed leaderboard folder (default: %(default)s)")
    board.add_argument("--db", nargs="?", const="", metavar="PATH",
                       help="write the local tables of every suite in a results database (default path: the "
                            "config's `db`, $BENCHBASE_HOME/results.db); ablation tables are written by "
                            "`benchbase ablate NAME`")
    board.add_argument("--import", dest="import_file", metavar="FILE",
                       help="merge records exported elsewhere (JSON lines) into the database; records "
                            "already stored (same config hash and time) are skipped; then as --db")
    board.add_argument("--publish", action="store_true",
                       help="merge into the committed records the records of --import FILE, or else the current "
                            "runs of every suite in the database, and rewrite those tables")
    board.add_argument("--prune", nargs="+", metavar=("NAME", "HASH"),
                       help="remove from <out>/results/NAME.jsonl the records of these config hashes, or with "
                            "`hidden` those its table does not show, listing each; then rewrite its table")
    board.add_argument("--check", action="store_true",
                       help="exit 1 if a committed table differs from what its records produce")
    board.add_argument("--html", metavar="DIR",
                       help="also write the committed tables (of --out) as a static web site into DIR "
                            "(sortable, filterable; open DIR/index.html, no server needed)")

    ablate = sub.add_parser(
        "ablate", help="run a named ablation (a paper's ablation table) and write its table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every variant of an ablation spec (ablation/NAME.yaml in benchbase's or a plugin's "
                    "config dir) over the suite's seeds, store the runs (identical runs are reused) and write "
                    "leaderboards/ablation-NAME.md, .csv (and a PNG curve) from them.",
        epilog="examples:\n  benchbase ablate --list\n  benchbase ablate tinymim-relations\n"
               "  benchbase ablate eventsam-beta 'suite.seeds=[0,1,2]' trainer.epochs=5",
    )
    ablate.add_argument("name", nargs="?", metavar="NAME", help="the ablation to run")
    ablate.add_argument("--list", action="store_true", help="list the installed ablations and exit")
    ablate.add_argument("--force", action="store_true", help="rerun even if an identical run is stored")
    ablate.add_argument("--publish", action="store_true", help=PUBLISH_HELP)
    ablate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides applied to every variant")

    new = sub.add_parser(
        "new-plugin", help="create a complete plugin project to start from (a method, evaluator, dataset or model)",
        description="Write benchbase-NAME/: pyproject.toml with the `benchbase` entry point, a worked example of "
                    "the kind asked for, its configs, a README and tests that pass as generated. Kinds: method "
                    "(Hinton logit distillation; `loss` is its former name), evaluator (weighted k-NN top-1, with a suite extending the "
                    "default one), dataset (images listed in a CSV file, with a suite on it), model (a ViT with a "
                    "convolutional stem as student and teacher, with their configs).",
    )
    new.add_argument("name", metavar="NAME", help="plugin name, a Python identifier (e.g. my_kd)")
    new.add_argument("--kind", default="method", choices=[*KINDS, *FORMER_KINDS],
                     help="what the plugin provides (default: %(default)s)")
    new.add_argument("--dir", default=".", help="folder to create the project in (default: %(default)s)")

    docs = sub.add_parser(
        "docs", help="print the plugin guide (or check or regenerate it)",
        description="Print the plugin guide, benchbase/guide/writing-a-plugin.md in the installed package "
                    "(e.g. `benchbase docs | less`). Maintainers: --write renders its generated sections (hook "
                    "specs, component interfaces, public helpers, the new-plugin examples) from the code, "
                    "--check fails when they are stale.",
    )
    action = docs.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true",
                        help="exit 1 if the guide is stale or a hook spec lacks Args/Returns docs")
    action.add_argument("--write", action="store_true", help="regenerate the guide's generated sections")
    docs.add_argument("--path", help="the guide file to print, check or write (default: the installed one)")
    return parser


def _cmd_run(args, bb) -> int:
    from omegaconf import OmegaConf

    from benchbase import distributed
    from benchbase.config import compose_config

    if args.cfg:
        print(OmegaConf.to_yaml(compose_config(args.overrides, bb.config_dirs())), end="")
        return 0
    distributed.init_from_env()  # under torchrun: join the other processes (no-op otherwise)
    try:
        records = _run_jobs(args, bb, verbose=distributed.is_main())
    finally:
        distributed.shutdown()
    return _exit_status(records)


def _exit_status(records: list) -> int:
    """0 when every row's record is done; else :data:`EXIT_FAILED_ROWS`, saying how many failed."""
    failed = [r for r in records if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(records)} rows failed (their status says why); exit status {EXIT_FAILED_ROWS}",
              file=sys.stderr)
        return EXIT_FAILED_ROWS
    return 0


def _run_jobs(args, bb, verbose: bool) -> list:
    """One suite per job: the overrides as given, or each point of a ``-m`` sweep; the rows of all."""
    from benchbase.suite import run_suite

    jobs = [args.overrides]
    if args.multirun:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            parsed = OverridesParser.create().parse_overrides(args.overrides)
        except Exception as exc:
            raise BenchbaseError(f"bad sweep override: {str(exc).splitlines()[0]}") from None
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        if verbose:
            print(f"sweep: {len(jobs)} jobs")
    records = []
    for index, overrides in enumerate(jobs):
        if len(jobs) > 1 and verbose:
            print(f"[{index + 1}/{len(jobs)}] {' '.join(overrides)}")
        records += run_suite(bb, list(overrides), args.plugins, force=args.force, publish_runs=args.publish)
    return records


def _cmd_eval(args, bb) -> int:
    from benchbase.evaluate_cmd import run_eval

    run_eval(bb, args.model, args.items, args.weights, args.name, args.row, args.force)
    return 0


def _cmd_plugins(args, bb) -> int:
    infos = sorted(bb.infos.values(), key=lambda i: i.name)
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    from tabulate import tabulate

    rows = []
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.components.items())
        row = [info.name, f"{info.distribution} {info.version}".strip(), info.error and f"FAILED: {info.error}" or provides]
        if args.hooks:
            row.append(", ".join(info.hooks))
        rows.append(row)
    headers = ["plugin", "distribution", "registers"] + (["hooks"] if args.hooks else [])
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    if args.hooks:
        implementers = [[hook, ", ".join(names) or "(none)"] for hook, names in bb.hook_implementers().items()]
        print()
        print(tabulate(implementers, headers=["hook", "implemented by"], tablefmt="simple"))
    return 0


def _cmd_datasets(args, bb) -> int:
    from benchbase import catalog
    from benchbase.config import compose_config

    if args.name and "=" in args.name:  # an override in NAME's place: list them all under it
        args.overrides.insert(0, args.name)
        args.name = None
    cfg = compose_config(args.overrides, bb.config_dirs())
    print(catalog.dataset_details(bb, cfg, args.name) if args.name else catalog.dataset_listing(bb, cfg))
    return 0


def _cmd_ablate(args, bb) -> int:
    from benchbase import ablation, distributed

    if args.list or not args.name:
        for name, path in sorted(ablation.spec_paths(bb).items()):
            spec = ablation.load_spec(path)
            print(f"{name:28s} {spec.title} [{spec.paper}]" if spec.paper else f"{name:28s} {spec.title}")
        return 0
    distributed.init_from_env()
    try:
        paths, published, records = ablation.run_ablation(bb, args.name, args.overrides, force=args.force,
                                                          publish=args.publish)
    finally:
        distributed.shutdown()
    if paths:
        print("local table: " + ", ".join(str(p) for p in paths))
    if published is not None:
        print(published.summary(ablation.PREFIX + args.name))
    return _exit_status(records) if distributed.is_main() else 0


def _cmd_leaderboard(args, bb) -> int:
    from benchbase import leaderboard
    from benchbase.config import compose_config
    from benchbase.results import ResultsDB, read_jsonl

    if args.check:
        stale = leaderboard.check(args.out)
        for name in stale:
            print(f"{Path(args.out) / name} differs from its records; run `benchbase leaderboard`", file=sys.stderr)
        return 1 if stale else 0
    if args.prune:
        name, *selectors = args.prune
        if not selectors:
            raise BenchbaseError(f"--prune {name} names no records; add config hashes or "
                                 f"{leaderboard.HIDDEN!r} (records the table does not show)")
        removed, paths = leaderboard.prune(args.out, name, selectors)
        for r in removed:
            print(f"removed {r.config_hash} {r.method} seed {r.seed} ({r.status}, {r.created_at})")
        print("written: " + ", ".join(str(p) for p in paths))
        return 0
    if args.import_file is None and args.db is None and not args.publish:
        for path in leaderboard.regenerate_from_records(args.out):
            print(path)
        return _write_site(args)
    db = ResultsDB(args.db or compose_config([], bb.config_dirs()).db)
    if args.import_file is not None:
        added, skipped = db.import_jsonl(args.import_file)
        print(f"imported {added} records, skipped {skipped} already stored")
    local_dir = leaderboard.local_dir(db.path)
    local = leaderboard.local_records(db, local_dir)
    for suite, records in local.items():
        print(f"local table: {leaderboard.write_local(records, args.out, local_dir, suite)[1]}")
    print("ablation tables are written by `benchbase ablate NAME` (stored runs are reused, nothing reruns)")
    if args.publish:
        if args.import_file is not None:
            local = defaultdict(list)
            for record in read_jsonl(Path(args.import_file)):
                local[record.suite].append(record)
        for suite, records in sorted(local.items()):
            print(leaderboard.publish(records, args.out, suite).summary(suite))
    return _write_site(args)


def _write_site(args) -> int:
    """``--html DIR``: the committed tables of ``--out`` as a web site, after anything published."""
    if args.html:
        from benchbase.site import write_site

        print(f"web site: {write_site(args.out, args.html)[0]}")
    return 0


def _cmd_new_plugin(args) -> int:
    from benchbase.scaffold import new_plugin

    kind = FORMER_KINDS.get(args.kind, args.kind)
    if kind != args.kind:
        print(f"note: --kind {args.kind} is the former name of --kind {kind}", file=sys.stderr)
    root = new_plugin(args.name, args.dir, kind)
    print(f"created {root}\nnext: pip install -e \"{root}[test]\" && pytest {root}")
    return 0


def _cmd_docs(args) -> int:
    from benchbase import docs

    path = Path(args.path) if args.path else docs.GUIDE
    if args.check:
        problems = docs.check(path)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{path}: up to date")
        return 1 if problems else 0
    if args.write:
        print(f"{path}: {'updated' if docs.write(path) else 'up to date'}")
        return 0
    print(docs.read(path), end="")
    return 0


STANDALONE = {"new-plugin": _cmd_new_plugin, "docs": _cmd_docs}
"""Commands that do not load the installed plugins (so a broken plugin cannot block them)."""


GLOBAL_OPTIONS = {"--debug": 0, "--plugins-dir": 1}
"""benchbase's own options (and the values each takes), accepted after the command too."""

TRAILING = ("overrides", "items")
"""The commands' lists of trailing words (Hydra overrides; eval's tasks and overrides)."""


def _global_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with :data:`GLOBAL_OPTIONS` (and their values) moved before the command."""
    front: list[str] = []
    rest: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        name, inline = token.partition("=")[0], "=" in token
        if name in GLOBAL_OPTIONS:
            front += [token, *(next(tokens, "") for _ in range(0 if inline else GLOBAL_OPTIONS[name]))]
        else:
            rest.append(token)
    return front + rest


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``argv`` parsed with the flags anywhere among a command's overrides, as Hydra users expect
    (``benchbase run a=1 --cfg job b=2 --debug``): benchbase's own options move before the command,
    and tokens after the first run of overrides join them in order."""
    args, extra = parser.parse_known_args(_global_first(sys.argv[1:] if argv is None else argv))
    rest = next((name for name in TRAILING if isinstance(getattr(args, name, None), list)), None)
    if extra and (rest is None or any(token.startswith("-") for token in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, rest).extend(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command in STANDALONE:
            return STANDALONE[args.command](args)
        from benchbase.plugin_manager import load

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bb = load(args.plugins_dir)
        for warning in caught:
            if "benchbase plugin" in str(warning.message):
                print(f"warning: {warning.message}", file=sys.stderr)
        command = {"run": _cmd_run, "eval": _cmd_eval, "plugins": _cmd_plugins, "leaderboard": _cmd_leaderboard,
                   "ablate": _cmd_ablate, "datasets": _cmd_datasets}[args.command]
        return command(args, bb)
    except BenchbaseError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
