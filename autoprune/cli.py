"""The command line: ``autoprune search`` (the main job), ``sensitivity``, ``bench`` (the studies),
``train`` (a baseline), and for the runs they leave: ``runs``, ``show``, ``report`` and ``export``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from autoprune.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, no usage dump
        print(f"autoprune: error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default, except a flag's: its name says what giving it does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20", help="zoo name, package.module:factory or file.py:factory")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR, npz:FILE, or a factory")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", help="float16 mixed precision in training and fine-tuning (CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seeds the holdout split, the search and training: the same "
                   "seed repeats a run")
    p.add_argument("--holdout", type=int, default=5000, help="training images held out for scoring candidates")
    p.add_argument("--batch-size", type=int, default=128, help="images a training and recalibration batch")
    p.add_argument("--output-key", default=None, metavar="KEY",
                   help="where the logits are when the model's forward returns a dict (a key) or a tuple (an index); "
                   "not given: a dict's 'logits', else its first tensor; a tuple's first tensor")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser() -> argparse.ArgumentParser:
    from autoprune.export import FORMATS as EXPORT_FORMATS
    from autoprune.pipeline import SearchConfig
    from autoprune.pruning.criteria import describe_criteria
    from autoprune.search import describe_strategies

    d = SearchConfig()  # the one home of the search defaults

    strategies, criteria = describe_strategies(), describe_criteria()

    parser = _Parser(prog="autoprune", description="Find how wide each layer of a trained network should be.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = _HelpFormatter

    s = sub.add_parser("search", help="search per-group pruning ratios under a budget, fine-tune the best",
                       formatter_class=fmt)
    _add_common(s)
    s.add_argument("--budget", default=d.budget, help="e.g. 50%%flops, 40%%params, 60MMACs, 120MFLOPs, 8ms, 50%%latency; join with ','")
    s.add_argument("--weights", default=None, help=_weights_help())
    s.add_argument("--strategy", default=d.strategy, choices=list(strategies),
                   help="; ".join(f"{k}: {v}" for k, v in strategies.items()))
    _add_criterion(s, d, criteria)
    s.add_argument("--granularity", default=d.granularity, choices=["filter", "weight"],
                   help="filter: remove channels, so the network gets narrower and faster; weight: zero single "
                   "weights by magnitude (unstructured), keeping the dense shape (sparse MACs and params fall, "
                   "dense latency does not)")
    s.add_argument("--mask-scope", default=d.mask_scope, choices=["layer", "global"],
                   help="--granularity weight: a ratio per layer (searched), or one for the whole network with one "
                   "magnitude threshold over all layers")
    s.add_argument("--pfp-eps", type=float, default=d.pfp_eps, metavar="EPS",
                   help="strategy pfp: the error bound every group is allocated at; not given: the smallest that "
                   "meets the budget")
    s.add_argument("--sparsity-train", type=float, default=d.sparsity_train, metavar="EPOCHS",
                   help="before the search, train the model this many epochs with an L1 penalty on its BatchNorm "
                   "scales (network slimming, Liu et al. 2017) so that --criterion bn_scale finds channels near zero; "
                   "saved in the run and reused on --resume")
    s.add_argument("--sparsity-lambda", type=float, default=d.sparsity_lambda, metavar="L",
                   help="weight of the L1 penalty of --sparsity-train")
    s.add_argument("--space", default=None, help=_space_help())
    s.add_argument("--trials", type=int, default=d.trials, help="trials in the study, infeasible and failed ones "
                   "included")
    s.add_argument("--tolerance", type=float, default=d.tolerance,
                   help="random: accept candidates within this fraction below the budget; "
                   "binary: the damage a group may do (proxy drop or relative reconstruction error)")
    s.add_argument("--warm-start", action="store_true",
                   help="first try the uniform per-group ratio that meets the budget")
    s.add_argument("--latency-batch", type=int, default=d.latency_batch,
                   help="batch size at which latency is predicted and measured, on --device")
    s.add_argument("--damage", default=d.damage, choices=["proxy", "recon"],
                   help="binary search damage: adaptive-BN proxy drop, or next-layer reconstruction error")
    s.add_argument("--bounds-from-sensitivity", action="store_true",
                   help="narrow each group's ratio range to what the binary search found safe")
    s.add_argument("--sensitivity-from", default=None, metavar="RUN_DIR",
                   help="reuse the sensitivity.csv of an earlier run (same model, space and --tolerance) "
                   "instead of measuring it again")
    s.add_argument("--calib-batches", type=int, default=d.calib_batches, help="training batches for adaptive-BN recalibration")
    s.add_argument("--score-images", type=int, default=d.score_images, help="held-out images used to score a candidate")
    s.add_argument("--no-adaptive-bn", dest="adaptive_bn", action="store_false", help="score without recalibrating BN (for comparison)")
    s.add_argument("--finetune-top", type=int, default=d.finetune_top, help="fine-tune the best K feasible candidates")
    s.add_argument("--finetune-epochs", type=float, default=d.finetune_epochs, help="fractions allowed, e.g. 0.1")
    s.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="learning rate of the fine-tune (SGD)")
    _add_retrain(s, d)
    s.add_argument("--export", default=None, metavar="FORMATS",
                   help="export every Pareto subnet as these formats (" + ", ".join(EXPORT_FORMATS) + "; comma-"
                   "separated), each checked against PyTorch and timed; as `autoprune export` does")
    s.add_argument("--out", default=None, help="run directory; not given: results/<timestamp>")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--limit-train", type=int, default=None, help="use only this many training images (quick runs)")
    s.add_argument("--limit-test", type=int, default=None, metavar="N",
                   help="use only the first N test images (quick runs)")
    s.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="run the trials on this Ray cluster (host:port, or auto for the one this machine joined)")
    s.add_argument("--ray-local", type=int, default=None, metavar="N",
                   help="start a Ray on this machine with N CPUs (loopback only) and run the trials on it")
    s.add_argument("--workers", type=int, default=d.workers, help="concurrent trials on Ray")
    s.add_argument("--trial-resources", default=d.trial_resources, help="Ray resources of one trial, e.g. cpu=1,gpu=0.25")

    sub.add_parser("sensitivity", parents=[s], add_help=False, conflict_handler="resolve",
                   help="only the per-group binary search: sensitivity.csv / .png", formatter_class=fmt)

    _add_bench(sub, d, criteria, fmt)

    t = sub.add_parser("train", help="train a baseline model and save its state dict", formatter_class=fmt)
    _add_common(t)
    t.add_argument("--epochs", type=float, default=30, help="epochs of training; fractions allowed")
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the cosine schedule (SGD)")
    t.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    t.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from this state dict instead of random weights (to train a checkpoint further)")
    t.add_argument("--limit-train", type=int, default=None, help="use only this many training images (quick runs)")
    t.add_argument("--save-init", action="store_true",
                   help="also write the weights before training, OUT.init.pt, for `search --rewind lottery`")
    t.add_argument("--save-init-epoch", type=int, default=None, metavar="K",
                   help="also write the weights after epoch K, OUT.epoch<K>.pt, for `search --rewind lottery "
                   "--rewind-epoch K` (late rewinding)")

    i = sub.add_parser("inspect", help="what a search would see of a model: its groups, the layers never pruned "
                       "and why, traced and analytic MACs, the layout it runs in", formatter_class=fmt)
    _add_common(i)
    i.add_argument("--weights", default=None, help="state dict of the model (optional: structure and costs do not "
                   "depend on it)")
    i.add_argument("--space", default=None, help=_space_help())
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


def _add_retrain(p: argparse.ArgumentParser, d) -> None:
    from autoprune.retrain import REWINDS, SCHEDULES

    p.add_argument("--rewind", default=d.rewind, choices=REWINDS,
                   help="what the chosen subnets train from: none, their trained weights (fine-tune); lottery, "
                   "the kept weights at initialisation (Frankle & Carbin 2019; needs `autoprune train --save-init`); "
                   "scratch-e / scratch-b, a fresh random initialisation trained for --finetune-epochs / for the "
                   "compute of --finetune-epochs of the unpruned model (Liu et al. 2019)")
    p.add_argument("--rewind-epoch", type=int, default=d.rewind_epoch, metavar="K",
                   help="lottery: rewind to the weights after epoch K (`autoprune train --save-init-epoch K`)")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="oneshot: prune to the ratios at once; iterative: in --steps steps, fine-tuning between them")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="steps of --schedule iterative, each fine-tuned for --finetune-epochs / steps")
    p.add_argument("--distill", action="store_true",
                   help="distil from the unpruned model while training the subnets (Hinton et al. 2015)")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature, metavar="T",
                   help="temperature T of the distillation loss")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, metavar="W",
                   help="loss = (1 - W) * cross-entropy + W * T^2 * KL(teacher || student)")


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


def _space_help() -> str:
    from autoprune.pruning.config import shipped_spaces

    return (f"search-space YAML file, or a shipped space by name ({', '.join(shipped_spaces())}); "
            "not given: the model family's")


def _weights_help() -> str:
    from autoprune.pipeline import SHIPPED_WEIGHTS

    shipped = ", ".join(f"{model} on {data}" for model, data in SHIPPED_WEIGHTS)
    return f"state dict of the trained model; not given: the shipped checkpoint ({shipped})"


def _add_criterion(p: argparse.ArgumentParser, d, criteria: dict[str, str]) -> None:
    from autoprune.pruning.criteria import needs_data

    p.add_argument("--criterion", default=d.criterion, choices=list(criteria),
                   help="filter importance; " + "; ".join(f"{k}: {v}" for k, v in criteria.items()))
    p.add_argument("--criterion-batches", type=int, default=d.criterion_batches,
                   help="training batches (of --batch-size) that the data-driven criteria ("
                   + ", ".join(name for name in criteria if needs_data(name)) + ") rank channels on")


def _add_bench(sub, d, criteria: dict[str, str], fmt) -> None:
    from autoprune.bench import STUDIES

    bench = sub.add_parser("bench", help="benchmark studies: " + ", ".join(STUDIES), formatter_class=fmt)
    studies = bench.add_subparsers(dest="study", required=True, parser_class=_Parser)
    parsers = {}
    for name, text in STUDIES.items():
        b = studies.add_parser(name, help=text, description=text, formatter_class=fmt)
        _add_common(b)
        b.add_argument("--weights", default=None, help=_weights_help())
        _add_criterion(b, d, criteria)
        b.add_argument("--space", default=None, help=_space_help())
        b.add_argument("--calib-batches", type=int, default=d.calib_batches,
                       help="training batches for adaptive-BN recalibration")
        b.add_argument("--score-images", type=int, default=d.score_images, help="held-out images that score a candidate")
        b.add_argument("--tolerance", type=float, default=d.tolerance, help="as search --tolerance")
        b.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="learning rate of every fine-tune (SGD)")
        b.add_argument("--limit-train", type=int, default=None, help="use only this many training images (quick runs)")
        b.add_argument("--out", default=None, help=f"output directory; not given: results/bench/{name}")
        b.add_argument("--resume", action="store_true", help="continue an interrupted study in --out")
        parsers[name] = b
    f = parsers["fidelity"]
    f.add_argument("--budget", default="50%flops", help="the budget the candidates are drawn at")
    f.add_argument("--candidates", type=int, default=30, help="candidates scored and fine-tuned")
    _finetune_options(f, epochs=0.25, what="candidate")
    f.add_argument("--calib-sweep", type=_ints, default="1,5,10,20,50", help="calibration batch counts to compare")
    e = parsers["efficiency"]
    e.add_argument("--budget", default="50%flops", help="the budget of every search")
    e.add_argument("--strategies", type=_words, default="random,tpe,nsga2,tpe-bounded",
                   help="strategies to compare; tpe-bounded is tpe with --bounds-from-sensitivity")
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
    args = _parser().parse_args(argv)
    command = "autoprune " + shlex.join(sys.argv[1:] if argv is None else argv)  # as typed, for the records
    try:
        if args.command == "train":
            return _cmd_train(args, command)
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


def _cmd_train(args: argparse.Namespace, command: str) -> int:
    import json

    import torch

    from autoprune.data import load_data
    from autoprune.device import resolve_device
    from autoprune.measure import accuracy
    from autoprune.models import create_model, prepare_model
    from autoprune.models.contract import contract_of
    from autoprune.progress import console
    from autoprune.retrain import rewind_weights_path
    from autoprune.train import train

    if args.epochs <= 0:
        raise UserError("--epochs must be positive")
    if args.save_init_epoch is not None and not 1 <= args.save_init_epoch <= args.epochs:
        raise UserError("--save-init-epoch must be an epoch the training completes: 1 to --epochs")
    device = resolve_device(args.device)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    data = load_data(args.data, holdout=args.holdout, seed=args.seed, limit_train=args.limit_train)
    model = create_model(args.model, in_channels=data.in_channels, num_classes=data.num_classes)
    # unwrapped from torch.compile, lazy layers materialised, --init loaded, checked (autoprune.models.contract)
    model = prepare_model(model, data.example_input(), output_key=args.output_key, num_classes=data.num_classes,
                          weights=args.init)
    if not args.quiet:
        for note in contract_of(model).notes:
            console.print(note, markup=False, soft_wrap=True)
    prior_epochs: float | None = 0.0  # epochs the starting weights were trained for (None: not known)
    if args.init is not None:
        init_json = Path(args.init).with_suffix(".json")
        init_meta = json.loads(init_json.read_text()) if init_json.is_file() else {}
        prior_epochs = init_meta.get("epochs_total", init_meta.get("epochs"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rewind_points = []  # the weights saved for lottery rewinding

    def save(path: Path) -> None:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)

    def save_rewind_point(epoch: int | None = None) -> None:
        path = rewind_weights_path(out, epoch)
        save(path)
        rewind_points.append(str(path))

    def after_epoch(epoch: int) -> None:
        if epoch == args.save_init_epoch:
            save_rewind_point(epoch)

    if args.save_init:
        save_rewind_point()
    result = train(
        model, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        device=device, seed=args.seed, quiet=args.quiet, after_epoch=after_epoch, amp=args.amp,
    )
    test_acc = accuracy(model, data.test, device=device)
    holdout_acc = accuracy(model, data.holdout, device=device)
    save(out)
    meta = {
        "model": args.model, "data": args.data, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "seed": args.seed, "holdout": args.holdout,
        "test_acc": test_acc, "holdout_acc": holdout_acc, "seconds": round(result.seconds, 1),
        "init": args.init, "epochs_total": None if prior_epochs is None else prior_epochs + args.epochs,
        "rewind_points": rewind_points, "command": command, "layout": contract_of(model).layout,
        **({"output_key": args.output_key} if args.output_key is not None else {}),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(
        f"trained {args.model} on {args.data} for {args.epochs} epochs in {result.seconds:.0f} s: "
        f"test accuracy {test_acc:.2%}, holdout {holdout_acc:.2%} -> {out}"
    )
    return 0


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
    from autoprune.device import resolve_device
    from autoprune.inspection import inspect_model, print_inspection
    from autoprune.pipeline import SearchConfig, resolve_paths

    config = SearchConfig(model=args.model, data=args.data, weights=args.weights, space=args.space,
                          output_key=args.output_key, seed=args.seed, holdout=args.holdout,
                          batch_size=args.batch_size, device=resolve_device(args.device))
    resolve_paths(config)
    print_inspection(inspect_model(config), as_json=args.json)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.pipeline import run_search_from_args

    return run_search_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
