"""The command line: ``autoprune search`` (the main job), ``sensitivity``, ``bench`` (the studies),
``train`` (a baseline), and for the runs they leave: ``runs``, ``show``, ``report`` and ``export``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from autoprune.errors import UserError
from autoprune.settings import BENCH, INSPECT, SEARCH, TRAIN, add_options, given


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        print(f"autoprune: error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default, except a flag's: its name says what giving it does. A declared setting's help
    says its default already (``autoprune.settings.add_options``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or "(default: " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_settings(p: argparse.ArgumentParser, command: str, *, explicit: bool = False) -> None:
    """The declared settings ``command`` takes (``autoprune.config``), one argument group per concept."""
    from autoprune.config import settings_for

    for title, found in settings_for(command).items():
        add_options(p.add_argument_group(title) if command == SEARCH else p, found, explicit=explicit)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    from autoprune.export import FORMATS as EXPORT_FORMATS

    parser = _Parser(prog="autoprune", description="Find how wide each layer of a trained network should be.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = _HelpFormatter

    s = sub.add_parser("search", help="search per-group pruning ratios under a budget, fine-tune the best",
                       formatter_class=fmt)
    _add_settings(s, SEARCH, explicit=True)  # explicit: --resume takes what is not given from the run
    s.add_argument("--resume", action="store_true", help="continue the run in --out with its recorded settings; "
                   "an option given too overrides the run's where it may change (--trials, the fine-tuning and "
                   "runner options), and must equal it otherwise")

    sub.add_parser("sensitivity", parents=[s], add_help=False, conflict_handler="resolve",
                   help="only the per-group binary search: sensitivity.csv / .png", formatter_class=fmt)

    _add_bench(sub, fmt)

    t = sub.add_parser("train", help="train a baseline model and save its state dict", formatter_class=fmt)
    _add_settings(t, TRAIN)
    t.add_argument("--epochs", type=float, default=30, help="epochs of training; fractions allowed")
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the cosine schedule (SGD)")
    t.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    t.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from this state dict instead of random weights (to train a checkpoint further)")
    t.add_argument("--save-init", action="store_true",
                   help="also write the weights before training, OUT.init.pt, for `search --rewind lottery`")
    t.add_argument("--save-init-epoch", type=int, default=None, metavar="K",
                   help="also write the weights after epoch K, OUT.epoch<K>.pt, for `search --rewind lottery "
                   "--rewind-epoch K` (late rewinding)")

    i = sub.add_parser("inspect", help="what a search would see of a model: its groups, the layers never pruned "
                       "and why, traced and analytic MACs, the layout it runs in", formatter_class=fmt)
    _add_settings(i, INSPECT)
    i.add_argument("--json", action="store_true", help="print the inspection as JSON")
    r = sub.add_parser("runs", help="list the runs under a directory: budget, strategy, status, best accuracy")
    r.add_argument("results", nargs="?", default="results", help="directory holding run directories")
    w = sub.add_parser("show", help="print a run's settings, its fine-tuned subnets (Pareto ones marked), its exports")
    w.add_argument("run_dir")
    h = sub.add_parser("report", help="(re)build a run's report.html: one self-contained page")
    h.add_argument("run_dir")
    h.add_argument("--screenshot", default=None, metavar="PNG",
                   help="also open the page in headless Chromium, check it and save a screenshot (needs playwright "
                   "and Debian's chromium)")
    e = sub.add_parser("export", help="export a subnet as ONNX, a torch.export program or a state dict; check it "
                       "against PyTorch and time both", formatter_class=fmt)
    e.add_argument("run_dir")
    e.add_argument("--subnet", required=True, metavar="ID", help="a subnet of the run (`autoprune show RUN_DIR`)")
    e.add_argument("--format", default="onnx", choices=list(EXPORT_FORMATS),
                   help="onnx (checked in onnxruntime), torch-export (a .pt2 program) or state-dict (tensors only)")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="where to write it; not given: RUN_DIR/subnets/ID/" + "|".join(EXPORT_FORMATS.values()))
    e.add_argument("--batch", type=int, default=None,
                   help="batch size the latencies are measured at; not given: the run's --latency-batch")
    return parser


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _finetune_options(p: argparse.ArgumentParser, *, epochs: float, what: str) -> None:
    p.add_argument("--finetune-epochs", type=float, default=epochs, help=f"fine-tuning of every {what}")
    p.add_argument("--finetune-seeds", type=int, default=2, help=f"fine-tunes per {what}, each with its own seed")


def _add_bench(sub, fmt) -> None:
    from autoprune.bench import STUDIES
    from autoprune.pruning.criteria import describe_criteria

    criteria = describe_criteria()

    bench = sub.add_parser("bench", help="benchmark studies: " + ", ".join(STUDIES), formatter_class=fmt)
    studies = bench.add_subparsers(dest="study", required=True, parser_class=_Parser)
    parsers = {}
    for name, text in STUDIES.items():
        b = studies.add_parser(name, help=text, description=text, formatter_class=fmt)
        _add_settings(b, BENCH)
        b.add_argument("--out", default=None, help=f"output directory; not given: results/bench/{name}")
        b.add_argument("--resume", action="store_true", help="continue an interrupted study in --out")
        parsers[name] = b
    f = parsers["fidelity"]
    f.add_argument("--budget", default="50%flops", help="the budget the candidates are drawn at")
    f.add_argument("--candidates", type=int, default=30, help="candidates scored and fine-tuned")
    _finetune_options(f, epochs=0.25, what="candidate")
    f.add_argument("--calib-sweep", type=_ints, default="1,5,10,20,50", help="calibration batch counts to compare")
    f.add_argument("--shortlist-sweep", type=_ints, default="", help="steps of the short fine-tunes to compare as "
                   "a selection stage (--shortlist-steps), each scored on the held-out images; none by default")
    e = parsers["efficiency"]
    e.add_argument("--budget", default="50%flops", help="the budget of every search")
    e.add_argument("--strategies", type=_words, default="random,tpe,nsga2,tpe-bounded",
                   help="labels to compare, strategy[+pruner][@calibration batches] (tpe+halving, tpe+none@20); "
                        "tpe-bounded is tpe with --bounds-from-sensitivity")
    e.add_argument("--trials", type=int, default=30, help="trials per search")
    e.add_argument("--seeds", type=int, default=3, help="search seeds per strategy")
    e.add_argument("--overhead-candidates", type=int, default=10,
                   help="candidates whose bare forward passes are timed for the overhead ratio")
    a = parsers["baselines"]
    a.add_argument("--budgets", type=_words, default="50%flops,30%flops,20%flops", help="comma-separated budgets")
    a.add_argument("--strategy", default="random", help="strategy of the searched subnet")
    a.add_argument("--trials", type=int, default=40, help="trials of the search at each budget")
    _finetune_options(a, epochs=0.5, what="model")
    a.add_argument("--latency-batches", type=_ints, default="1,64", help="batch sizes latency is measured at")
    p = parsers["speedup"]
    p.add_argument("--budgets", type=_words, default="70%flops,50%flops,30%flops,20%flops", help="comma-separated MAC or param budgets")
    p.add_argument("--latency-budget", default="50%latency", help="the latency-budget search measured too ('' to skip)")
    p.add_argument("--trials", type=int, default=10, help="random-strategy trials per budget for the searched subnet")
    p.add_argument("--latency-batches", type=_ints, default="1,64", help="batch sizes latency is measured at; the latency search uses the largest")
    c = parsers["criteria"]
    c.add_argument("--budget", default="50%flops", help="the budget of the uniform and searched ratios")
    c.add_argument("--criteria", type=_words, default=",".join(criteria), help="criteria to compare")
    c.add_argument("--trials", type=int, default=40, help="random-strategy trials of the search for the searched ratios")
    _finetune_options(c, epochs=0.5, what="subnet")
    r = parsers["retrain"]
    r.add_argument("--budget", default="50%flops", help="the budget of the uniform ratios every method trains")
    r.add_argument("--base-epochs", type=float, default=4, help="epochs of the baseline the study trains (no --weights)")
    r.add_argument("--base-lr", type=float, default=0.1, help="learning rate of that baseline")
    r.add_argument("--rewind-epoch", type=int, default=1, help="the late-rewinding lottery arm rewinds to this epoch")
    _finetune_options(r, epochs=1.0, what="method")
    g = parsers["granularity"]
    g.add_argument("--budgets", type=_words, default="50%params,30%params,20%params",
                   help="comma-separated parameter (or MAC) budgets of the filter-pruned subnets")
    g.add_argument("--latency-batches", type=_ints, default="1,64", help="batch sizes latency is measured at")
    y = parsers["deploy"]
    y.add_argument("--budgets", type=_words, default="50%flops,30%flops", help="comma-separated MAC or param budgets")
    y.add_argument("--latency-batches", type=_ints, default="1,64", help="batch sizes latency is measured at")
    y.add_argument("--round-to", type=int, default=8, help="the rounded arm keeps a multiple of this many channels")


def main(argv: list[str] | None = None) -> int:
    """Run ``autoprune`` with ``argv`` (``sys.argv[1:]`` where None) and return the exit code: 0 on success, 1
    where ``export`` or ``report --screenshot`` finds a problem, 2 for a ``UserError`` (printed on stderr as
    ``autoprune: error: ...``), 130 when interrupted. A bad option exits the parser with ``SystemExit(2)``,
    ``--help`` with ``SystemExit(0)``."""
    args = _parser().parse_args(argv)
    command = "autoprune " + shlex.join(sys.argv[1:] if argv is None else argv)  # as typed, for the records
    try:
        if args.command == "train":
            from autoprune.train import train_command

            return train_command(args, command)
        if args.command == "bench":
            from autoprune.bench.run import run_from_args

            return run_from_args(args, command)
        if args.command == "inspect":
            return _cmd_inspect(args)
        if args.command in ("runs", "show", "report", "export"):
            return _cmd_run_tools(args)
        return _cmd_search(args)  # search or sensitivity
    except UserError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


def _cmd_run_tools(args: argparse.Namespace) -> int:
    """The commands that read a finished (or running) run directory."""
    from autoprune import runs
    from autoprune.progress import console
    from autoprune.results import RunDir

    if args.command == "runs":
        return runs.print_runs(Path(args.results))
    run_dir = RunDir.existing(args.run_dir).path
    if args.command == "show":
        return runs.show_run(run_dir)
    if args.command == "report":
        return _cmd_report(run_dir, args.screenshot)
    from autoprune.export import export_subnet

    if args.batch is not None and args.batch < 1:
        raise UserError("--batch must be at least 1")
    check = export_subnet(run_dir, args.subnet, args.format, args.out, batch=args.batch)
    console.print(check.describe(), markup=False)
    return 0 if check.ok else 1


def _cmd_report(run_dir: Path, screenshot: str | None) -> int:
    from autoprune.html_report import check_in_browser, write_html_report
    from autoprune.progress import console

    page = write_html_report(run_dir)
    console.print(f"report: {page}")
    if screenshot is None:
        return 0
    check = check_in_browser(page, Path(screenshot))
    problems = check.problems()
    for problem in problems:
        console.print(f"[bold red]{problem}[/]")
    console.print(f"screenshot: {screenshot} ({len(check.images)} images rendered, {len(problems)} problems)")
    return 1 if problems else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autoprune.config import SearchConfig, resolve_paths, settings_for
    from autoprune.device import resolve_device
    from autoprune.inspection import inspect_model, print_inspection

    config = resolve_paths(SearchConfig(**_given(args, settings_for(INSPECT))))
    print_inspection(inspect_model(replace(config, device=resolve_device(config.device))), as_json=args.json)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    """``search`` and ``sensitivity``: the options the user gave, the rest from the declarations (or, with
    ``--resume``, from the run)."""
    from autoprune.config import settings_for
    from autoprune.pipeline import search, sensitivity

    job = sensitivity if args.command == "sensitivity" else search
    job(resume=args.resume, quiet=args.quiet, **_given(args, settings_for(SEARCH)))
    return 0


def _given(args: argparse.Namespace, sections: dict) -> dict:
    return given(args, [d for found in sections.values() for d in found])


if __name__ == "__main__":
    sys.exit(main())
