"""The whole job: model + data + budget -> searched, fine-tuned subnets and their Pareto front.

``search()`` is the one function behind both ``autoprune search`` and the Python API.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import torch
from torch import nn

from autoprune.budget import Budget, parse_budget
from autoprune.data import DataBundle, load_data
from autoprune.device import resolve_device
from autoprune.errors import UserError, one_line
from autoprune.export import check_formats, export_subnet
from autoprune.html_report import write_html_report
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.measure.latency import LatencyTable, measure_latency
from autoprune.models import create_model, load_weights, model_family
from autoprune.models.contract import contract_of, prepare_model
from autoprune.progress import console, progress_bar
from autoprune.pruning.config import load_space_config
from autoprune.pruning.criteria import criterion_batches, needs_data
from autoprune.pruning.space import Cost, PruningSpace
from autoprune.pruning.weights import SCOPES, WeightSpace, weight_masks
from autoprune.report import export_run
from autoprune.results import STUDY_NAME, RunDir, SubnetRecord, save_subnet, trials_frame
from autoprune.retrain import (
    check_retrain,
    check_retrain_model,
    retrain,
    retrain_record,
)
from autoprune.runners.trial import (
    all_failing,
    begin_trial,
    close_left_behind,
    describe_error,
    finish_trial,
    finished_count,
    none_scored,
    score_candidate,
)
from autoprune.runs import record_from_spec, subnets_table
from autoprune.search import SearchContext, Strategy, get_strategy
from autoprune.search.sensitivity import (
    DAMAGES,
    GroupSensitivity,
    allocate_budget,
    measure_sensitivity,
    read_sensitivity,
    write_sensitivity,
)
from autoprune.selection import choose_for_finetune, trial_ratios
from autoprune.specs import absolute_spec
from autoprune.train import TrainResult, check_amp, train

SHIPPED_WEIGHTS = {(model, "fashion-mnist"): Path(__file__).parent / "checkpoints" / f"{model}_fashion-mnist.pt"
                   for model in ("resnet20", "resnet56")}


@dataclass
class SearchConfig:
    model: str = "resnet20"
    data: str = "fashion-mnist"
    budget: str = "50%flops"
    weights: str | None = None
    strategy: str = "tpe"
    criterion: str = "l1"
    granularity: str = "filter"  # filter (channels, the dense net shrinks) | weight (unstructured: zeros and a mask)
    mask_scope: str = "layer"  # weight granularity: a ratio per layer, or one magnitude threshold for all (global)
    criterion_batches: int = 4  # training batches (of batch_size) the data-driven criteria rank channels on
    sparsity_train: float = 0.0  # epochs of L1 training on the BN scales before the search (network slimming)
    sparsity_lambda: float = 1e-4
    pfp_eps: float | None = None  # strategy pfp: the error bound to allocate at; None: the one that meets the budget
    space: str | None = None
    output_key: str | None = None  # what the logits are in a dict or tuple output; None: autoprune.models.contract's rule
    trials: int = 40
    tolerance: float = 0.02
    warm_start: bool = False
    latency_batch: int = 1
    damage: str = "proxy"
    bounds_from_sensitivity: bool = False
    sensitivity_from: str | None = None
    calib_batches: int = 20
    score_images: int = 2000
    adaptive_bn: bool = True
    finetune_top: int = 3
    finetune_epochs: float = 0.5
    finetune_lr: float = 0.01
    # how the chosen subnets are trained (autoprune.retrain); like the other fine-tune options, free to change on resume
    rewind: str = "none"  # none (fine-tune the trained weights) | lottery | scratch-e | scratch-b
    rewind_epoch: int | None = None  # lottery: rewind to the weights after this epoch instead of the initialisation
    schedule: str = "oneshot"  # oneshot | iterative
    steps: int = 3  # iterative: pruning steps, each fine-tuned finetune_epochs / steps
    distill: bool = False  # knowledge distillation from the unpruned model while training
    distill_temperature: float = 4.0
    distill_weight: float = 0.9
    batch_size: int = 128
    holdout: int = 5000
    limit_train: int | None = None
    limit_test: int | None = None  # the first N test images only (quick runs)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # float16 mixed precision in every training (CUDA only)
    export: str | None = None  # formats every Pareto subnet is exported in, comma-separated (autoprune.export)
    out: str | None = None
    ray_address: str | None = None
    ray_local: int | None = None
    workers: int = 1
    trial_resources: str = "cpu=1,gpu=0"


@dataclass
class SearchResult:
    run_dir: Path
    baseline: dict
    subnets: list[SubnetRecord]
    pareto: pd.DataFrame
    trials: pd.DataFrame
    best: SubnetRecord | None = field(default=None)


def search(
    model: str | nn.Module = "resnet20",
    data: str = "fashion-mnist",
    *,
    budget: str = "50%flops",
    resume: bool = False,
    quiet: bool = False,
    **options,
) -> SearchResult:
    """Search per-group pruning ratios under ``budget``, fine-tune the best, return the Pareto front.

    ``model`` is a model spec (zoo name, ``pkg.module:factory``, ``file.py:factory``) or an
    ``nn.Module`` holding trained weights; ``options`` are the fields of ``SearchConfig``.
    """
    config, module = _config_from(model, data, budget, options)
    started = time.perf_counter()
    setup = _prepare(config, module, resume, quiet)  # every check happens here, before any work
    run, space, budget_obj = setup.run, setup.space, setup.budget
    timings = dict(run.read_status().get("timings", {})) if resume else {}
    timings["setup"] = timings.get("setup", 0.0) + setup.seconds
    with _discarded_on_failure(run, fresh=not resume):  # until its first trial, a failed run leaves nothing
        if config.strategy == "binary" or config.bounds_from_sensitivity:
            with _timed(timings, "sensitivity"):
                _sensitivity_phase(config, setup, quiet)
        with _timed(timings, "search"):
            study = _search_phase(config, setup, quiet)
            trials = trials_frame(study, space.group_names)
            run.write_table("trials.csv", trials)
    with _timed(timings, "fine-tune"):
        subnets = _finetune_phase(config, setup, study, quiet)
    if config.ray_local is not None:
        from autoprune.runners.ray_tune import stop_local

        stop_local()
    front = export_run(run.path, config={**run.read_config(), **asdict(config)},  # with the space's groups
                       budget=budget_obj, base=space.base_cost, baseline=setup.baseline, trials=trials, subnets=subnets, timings=timings)
    if config.export:
        with _timed(timings, "export"):
            _export_phase(config, run, front, module)
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - started
    run.write_status(status="complete", timings=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_html_report(run.path)
    if not quiet:
        _print_summary(setup.baseline, subnets, run, finetuning=config.finetune_top > 0)
    best = max(subnets, key=lambda s: s.test_acc) if subnets else None
    pareto = pd.DataFrame([s.row() for s in front])
    return SearchResult(run.path, setup.baseline, subnets, pareto, trials, best)


def export_formats(config: SearchConfig) -> list[str]:
    return [f.strip() for f in (config.export or "").split(",") if f.strip()]


def _export_phase(config: SearchConfig, run: RunDir, front: list[SubnetRecord], module: nn.Module | None) -> None:
    """Export every Pareto subnet in every ``--export`` format, each checked and timed
    (subnets/<id>/exports.json). A subnet that will not export is reported, and the others go on."""
    for s in front:
        for fmt in export_formats(config):
            try:
                check = export_subnet(run.path, s.id, fmt, base_model=module)
            except Exception as exc:  # noqa: BLE001  (a custom model an exporter cannot trace: say so, go on)
                console.print(f"[bold red]export of {s.id} as {fmt} failed:[/] {describe_error(exc).strip()}")
                continue
            console.print(f"exported {s.id} as {check.describe()}", markup=False, style=None if check.ok else "bold red")


@contextmanager
def _discarded_on_failure(run: RunDir, *, fresh: bool) -> Iterator[None]:
    """Remove what a new run wrote if the block fails before the run has a trial or sensitivity results
    (``RunDir.discard``): so the same command can simply be run again. A run with results that stops on an
    error (every candidate failed, say) is kept, marked ``failed`` with the error in run.json; a resumed run
    that fails before its next trial is left as it was."""
    try:
        yield
    except BaseException as exc:
        if fresh and not run.has_results:
            run.discard()
        elif isinstance(exc, UserError) and run.has_results:
            run.write_status(status="failed", error=str(exc).splitlines()[0],
                             failed=time.strftime("%Y-%m-%dT%H:%M:%S"))
        raise


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[phase]`` (phases accumulate over resumes)."""
    tic = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - tic


def _config_from(model: str | nn.Module, data: str, budget: str, options: dict) -> tuple[SearchConfig, nn.Module | None]:
    unknown = set(options) - set(SearchConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown search options: {sorted(unknown)}")
    module = model if isinstance(model, nn.Module) else None
    return SearchConfig(model="<python object>" if module else model, data=data, budget=budget, **options), module


@dataclass
class _Setup:
    run: RunDir
    data: DataBundle
    space: PruningSpace
    budget: Budget
    strategy: Strategy
    evaluator: AdaptiveBNEvaluator
    baseline: dict
    seconds: float


def _prepare(config: SearchConfig, module: nn.Module | None, resume: bool, quiet: bool = True) -> _Setup:
    """Validate everything the user gave, then create the run directory, sparsity-train the model where
    asked and measure the baseline."""
    tic = time.perf_counter()
    run = RunDir.check(config.out, resume)
    resolve_paths(config)
    if resume:
        _check_resume_config(run, config)
    budget = check_options(config)
    data, model, space = load_workbench(config, module)
    contract = contract_of(model)
    if not quiet:
        for note in contract.notes:
            console.print(note, markup=False, soft_wrap=True)
    check_retrain_model(config, model)
    strategy = get_strategy(config.strategy, SearchContext(space, budget, config.seed, config.tolerance,
                                                           config.warm_start, config.trials, pfp_eps=config.pfp_eps))
    base_latency = measure_latency(model, data.input_shape, device=config.device, batch=config.latency_batch)
    if budget.needs_latency:
        table = LatencyTable(space.latency_layers(), device=config.device, batch=config.latency_batch,
                             cache=run.path / "latency_table.json", layout=contract.layout)
        space.attach_latency(table, base_latency)
    smallest = space.smallest_cost()
    if not budget.feasible(smallest, space.base_cost):
        latency = f" and {smallest.latency_ms:.2f} ms" if smallest.latency_ms is not None else ""
        raise UserError(
            f"budget {config.budget} cannot be met in this search space: the smallest subnet keeps "
            f"{smallest.macs / space.base_cost.macs:.1%} of MACs and {smallest.params / space.base_cost.params:.1%} "
            f"of params{latency} (raise ratio.max in the space file)"
        )
    _check_budget_prunes(budget, space.base_cost)
    # Nothing is written before this line: a bad input leaves no half-made run behind, and a failure
    # from here to the first trial removes what the run wrote (_discarded_on_failure).
    run.create()
    with _discarded_on_failure(run, fresh=not resume):
        config.out = str(run.path)
        run.write_config({**asdict(config), "space_config": space.config.to_dict(), "data_summary": data.summary(),
                          "layout": contract.layout, "model_notes": list(contract.notes),
                          "groups": space.describe(), "unprunable": space.unprunable,
                          "cost_check": space.cost_check})
        run.write_status(status="running", backend="ray" if _uses_ray(config) else "local",
                         workers=config.workers if _uses_ray(config) else 1,
                         started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if config.sparsity_train > 0:
            model = _sparsity_trained(config, run, data, model, space, quiet)
        evaluator = make_evaluator(config, data)
        try:
            proxy_acc, test_acc = evaluator.holdout_accuracy(model), accuracy(model, data.test, device=config.device)
        except Exception as exc:  # a model that passed the checks on one or two images, not on whole batches
            raise UserError(f"the unpruned model fails on batches of the data (up to 500 images): "
                            f"{one_line(exc)}") from exc
        baseline = {"macs": space.base_cost.macs, "params": space.base_cost.params, "proxy_acc": proxy_acc,
                    "test_acc": test_acc, "latency_ms": base_latency}
        model.cpu()
    return _Setup(run, data, space, budget, strategy, evaluator, baseline, time.perf_counter() - tic)


def load_workbench(config: SearchConfig, module: nn.Module | None = None, *,
                   untrained: bool = False) -> tuple[DataBundle, nn.Module, PruningSpace]:
    """The data, the trained model and its pruning space, as ``config`` names them (``untrained``: the model
    as its factory makes it, without weights, for a look at its structure)."""
    torch.manual_seed(config.seed)
    data = load_data(config.data, holdout=config.holdout, seed=config.seed, limit_train=config.limit_train,
                     limit_test=config.limit_test)
    if module is not None:  # a Python object: checked as a model loaded from a spec is (autoprune.models.contract)
        module = prepare_model(module, data.example_input(), output_key=config.output_key,
                               num_classes=data.num_classes)
    model = module if module is not None else _load_model(config, data, untrained)
    if config.granularity == "weight":  # the model family's space file holds channel bounds: only --space applies
        space_config = load_space_config(config.space, None) if config.space is not None else None
        return data, model, WeightSpace(model, data.example_input(), space_config, scope=config.mask_scope)
    space_config = load_space_config(config.space, None if module is not None else model_family(config.model))
    space = PruningSpace(model, data.example_input(), space_config, criterion=config.criterion, seed=config.seed,
                         batches=ranking_batches(config, data))
    return data, model, space


def _sparsity_trained(config: SearchConfig, run: RunDir, data: DataBundle, model: nn.Module, space: PruningSpace,
                      quiet: bool) -> nn.Module:
    """Network slimming's sparsity training (Liu et al. 2017): ``config.sparsity_train`` epochs with an L1
    penalty of ``config.sparsity_lambda`` on every BatchNorm scale, at the fine-tuning learning rate. The
    search starts from the result, and the space ranks its channels again on it. The weights are saved in
    the run as ``sparsity_trained.pt`` and read back on resume, so the training happens once a run."""
    path = run.path / "sparsity_trained.pt"
    model = copy.deepcopy(model)  # a model object the caller gave stays as it was
    if path.is_file():
        load_weights(model, path)
    else:
        train(model, data, epochs=config.sparsity_train, lr=config.finetune_lr, batch_size=config.batch_size,
              device=config.device, seed=config.seed, bn_l1=config.sparsity_lambda, description="sparsity training",
              quiet=quiet, amp=config.amp)
        model.cpu()
        partial = path.with_suffix(".partial")
        torch.save(model.state_dict(), partial)
        partial.replace(path)
    space.rerank(model.eval(), ranking_batches(config, data))
    return model


def ranking_batches(config: SearchConfig, data: DataBundle) -> list | None:
    """The fixed training batches a data-driven criterion ranks channels on; None for the others."""
    if not needs_data(config.criterion):
        return None
    return criterion_batches(data.train, config.criterion_batches, config.batch_size, config.seed)


def make_evaluator(config: SearchConfig, data: DataBundle, *, calib_batches: int | None = None,
                   adaptive: bool | None = None) -> AdaptiveBNEvaluator:
    """The candidate scorer: ``config.calib_batches`` training batches, the first ``score_images``
    held-out images."""
    holdout = data.holdout.subset(torch.arange(min(config.score_images, len(data.holdout))))
    scoring = DataBundle(data.name, data.train, holdout, data.test, data.num_classes, data.augment)
    return AdaptiveBNEvaluator(scoring, calib_batches=calib_batches or config.calib_batches,
                               batch_size=config.batch_size, device=config.device, seed=config.seed,
                               adaptive=config.adaptive_bn if adaptive is None else adaptive)


def finetune(subnet: nn.Module, config: SearchConfig, data: DataBundle, evaluator: AdaptiveBNEvaluator, *,
             seed: int, epochs: float | None = None, teacher: nn.Module | None = None, description: str = "fine-tune",
             quiet: bool = False) -> TrainResult:
    """Recalibrate BN, then fine-tune ``subnet`` in place with the run's settings (distilling from
    ``teacher`` where given, at the run's temperature and weight; keeping a weight-pruned subnet's zeros)."""
    masks = weight_masks(subnet) if config.granularity == "weight" else None
    evaluator.recalibrate(subnet.to(config.device))
    return train(subnet, data, epochs=config.finetune_epochs if epochs is None else epochs, lr=config.finetune_lr,
                 batch_size=config.batch_size, device=config.device, seed=seed, description=description, quiet=quiet,
                 teacher=teacher, temperature=config.distill_temperature, distill_weight=config.distill_weight,
                 masks=masks, amp=config.amp)


def resolve_paths(config: SearchConfig) -> None:
    """Make the specs and files ``config`` names absolute, so they mean the same from anywhere."""
    config.model, config.data = absolute_spec(config.model), absolute_spec(config.data)
    for key in ("weights", "sensitivity_from"):
        if getattr(config, key) is not None:
            setattr(config, key, str(Path(getattr(config, key)).expanduser().resolve()))


def check_options(config: SearchConfig) -> Budget:
    """The checks that need no data or model; returns the parsed budget."""
    budget = parse_budget(config.budget)
    needs_data(config.criterion)  # an unknown criterion is a UserError here
    if config.granularity not in ("filter", "weight"):
        raise UserError("--granularity must be filter or weight")
    if config.mask_scope not in SCOPES:
        raise UserError(f"--mask-scope must be one of {', '.join(SCOPES)}")
    if config.granularity == "weight":
        if config.criterion != SearchConfig.criterion or config.strategy == "pfp":
            raise UserError("--granularity weight ranks single weights by magnitude: --criterion and --strategy pfp "
                            "rank channels")
        if budget.needs_latency:
            raise UserError("a latency budget does not go with --granularity weight: zeroed weights run as fast as "
                            "any others on dense kernels (bench granularity measures it); give a flops or params "
                            "budget")
        if config.damage == "recon":
            raise UserError("--damage recon needs --granularity filter; use --damage proxy")
    for name, value in (("--trials", config.trials), ("--calib-batches", config.calib_batches),
                        ("--criterion-batches", config.criterion_batches),
                        ("--latency-batch", config.latency_batch),
                        ("--score-images", config.score_images), ("--batch-size", config.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1")
    for name, value in (("--limit-train", config.limit_train), ("--limit-test", config.limit_test)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1")
    if config.finetune_top < 0 or config.finetune_epochs < 0:
        raise UserError("--finetune-top and --finetune-epochs must not be negative")
    if config.sparsity_train < 0 or config.sparsity_lambda < 0:
        raise UserError("--sparsity-train and --sparsity-lambda must not be negative")
    if config.pfp_eps is not None and (config.strategy != "pfp" or config.pfp_eps <= 0):
        raise UserError("--pfp-eps goes with --strategy pfp and must be positive")
    if config.strategy == "pfp" and config.criterion != "pfp":
        raise UserError("--strategy pfp allocates by PFP's sensitivities: it needs --criterion pfp")
    check_retrain(config)
    check_amp(config.amp, config.device)
    if config.export:
        check_formats(export_formats(config))
    if not 0 < config.tolerance < 1:
        raise UserError("--tolerance must be between 0 and 1")
    if config.damage not in DAMAGES:
        raise UserError(f"--damage must be one of {', '.join(DAMAGES)}")
    if config.sensitivity_from is not None:
        if config.strategy != "binary" and not config.bounds_from_sensitivity:
            raise UserError("--sensitivity-from needs --strategy binary or --bounds-from-sensitivity")
        if read_sensitivity(Path(config.sensitivity_from)) is None:
            raise UserError(f"--sensitivity-from: no sensitivity.csv in {config.sensitivity_from}")
    if config.ray_address is not None and config.ray_local is not None:
        raise UserError("give --ray-address (an existing cluster) or --ray-local N (a new local Ray), not both")
    if config.workers < 1 or (config.ray_local is not None and config.ray_local < 1):
        raise UserError("--workers and --ray-local must be at least 1")
    if _uses_ray(config):
        _ray_settings(config)  # checks --trial-resources
    if config.ray_address is not None:  # before any progress bar is drawn
        from autoprune.runners.ray_tune import check_reachable

        check_reachable(config.ray_address)
    config.device = resolve_device(config.device)
    return budget


def _load_model(config: SearchConfig, data: DataBundle, untrained: bool = False) -> nn.Module:
    model = create_model(config.model, in_channels=data.in_channels, num_classes=data.num_classes)
    weights = config.weights
    if weights is None and not untrained:
        shipped = SHIPPED_WEIGHTS.get((config.model, config.data.partition(":")[0]))
        if shipped is None or not shipped.is_file():
            raise UserError(
                f"--weights is needed: no shipped checkpoint for {config.model} on {config.data} "
                f"(train one with: autoprune train --model {config.model} --data {config.data} --out FILE)"
            )
        weights = str(shipped)
        config.weights = weights
    # unwrapped from torch.compile, lazy layers materialised before the weights load, checked (autoprune.models.contract)
    model = prepare_model(model, data.example_input(), output_key=config.output_key, num_classes=data.num_classes,
                          weights=weights)
    return model.eval()


# The settings that define a run's search; --trials and the fine-tuning options may change on resume.
_RUN_IDENTITY = ("model", "data", "budget", "strategy", "criterion", "granularity", "mask_scope", "criterion_batches",
                 "sparsity_train",
                 "sparsity_lambda", "pfp_eps", "seed", "weights", "space", "output_key",
                 "calib_batches", "score_images", "adaptive_bn", "tolerance", "holdout", "limit_train", "batch_size",
                 "limit_test", "warm_start", "damage", "bounds_from_sensitivity", "sensitivity_from", "latency_batch")


def _check_budget_prunes(budget: Budget, base: Cost) -> None:
    """A budget the unpruned model meets is refused, as ``150%flops`` is; a part of a joined budget that
    it meets (``60MMACs`` on a 15M-MAC model) is said, since it constrains nothing."""
    loose = budget.loose(base)
    if len(loose) == len(budget.constraints):
        raise UserError(f"budget {budget.text} prunes nothing: the unpruned model is within it "
                        f"({budget.describe(base)}); give a budget below the baseline")
    for c in loose:
        console.print(f"[yellow]budget part {Budget((c,), c.text).describe(base)} constrains nothing: the unpruned "
                      "model is within it[/]", soft_wrap=True)


def _check_resume_config(run: RunDir, config: SearchConfig) -> None:
    """A resumed run keeps its own settings; one given explicitly that differs is an error."""
    saved, defaults = run.read_config(), SearchConfig()
    for key in _RUN_IDENTITY:
        if key not in saved:
            continue
        given = getattr(config, key)
        if given != getattr(defaults, key) and given != saved[key]:
            raise UserError(f"--resume: {key} {given!r} differs from the run's {saved[key]!r}")
        setattr(config, key, saved[key])


def sensitivity(model: str | nn.Module = "resnet20", data: str = "fashion-mnist", *, budget: str = "50%flops",
                resume: bool = False, quiet: bool = False, **options) -> list[GroupSensitivity]:
    """Only the per-group binary search: writes sensitivity.csv / .png in the run directory."""
    config, module = _config_from(model, data, budget, options)
    setup = _prepare(config, module, resume, quiet)
    timings = {"setup": setup.seconds}
    with _discarded_on_failure(setup.run, fresh=not resume), _timed(timings, "sensitivity"):
        results = _sensitivity_phase(config, setup, quiet)
    setup.run.write_status(status="complete", timings=timings)
    if not quiet:
        console.print(f"sensitivity: {setup.run.path / 'sensitivity.csv'}")
    return results


def _sensitivity_phase(config: SearchConfig, setup: _Setup, quiet: bool) -> list[GroupSensitivity]:
    """Per-group safe ratios (measured once, then read back on resume); they feed the strategy
    and, with ``bounds_from_sensitivity``, narrow the space to the safe ratios or the allocation."""
    results = read_sensitivity(setup.run.path)
    if results is None and config.sensitivity_from is not None:
        results = read_sensitivity(Path(config.sensitivity_from))
        if sorted(r.group for r in results) != sorted(setup.space.group_names):
            raise UserError(f"--sensitivity-from: {config.sensitivity_from} was measured on other groups")
        write_sensitivity(setup.run.path, results, config.tolerance, config.damage)
    if results is None:
        results = measure_sensitivity(setup.space, setup.evaluator, tolerance=config.tolerance,
                                      damage=config.damage, quiet=quiet)
        write_sensitivity(setup.run.path, results, config.tolerance, config.damage)
    context = setup.strategy.context
    context.safe_ratios = {r.group: r.max_safe_ratio for r in results}
    if config.bounds_from_sensitivity:
        allocation = allocate_budget(context, context.safe_ratios) or {}
        setup.space.narrow({name: max(safe, allocation.get(name, safe))
                            for name, safe in context.safe_ratios.items()})
        setup.run.write_config({**setup.run.read_config(), "groups": setup.space.describe()})
    return results


def _search_phase(config: SearchConfig, setup: _Setup, quiet: bool) -> optuna.Study:
    """Ask the strategy for candidates until ``config.trials`` trials are complete."""
    space, budget, strategy = setup.space, setup.budget, setup.strategy
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(storage=setup.run.storage_url, study_name=STUDY_NAME,
                                directions=list(strategy.directions), sampler=strategy.sampler(),
                                load_if_exists=True)
    close_left_behind(study)
    for key, value in {"model": config.model, "data": config.data, "budget": config.budget,
                       "strategy": config.strategy, "criterion": config.criterion, "base_macs": space.base_cost.macs,
                       "base_params": space.base_cost.params, "base_latency_ms": setup.baseline["latency_ms"],
                       "latency_batch": config.latency_batch, "device": config.device}.items():
        study.set_user_attr(key, value)  # what optuna-dashboard shows of the run
    setup.run.write_table("trials.csv", trials_frame(study, space.group_names))
    done = finished_count(study)
    best = max((t.user_attrs.get("proxy_acc") or 0.0 for t in study.trials), default=0.0)
    with progress_bar("search", config.trials, quiet=quiet) as bar:
        bar.advance(done)

        def finished(frozen: optuna.trial.FrozenTrial) -> None:
            nonlocal best
            best = max(best, frozen.user_attrs.get("proxy_acc") or 0.0)
            bar.advance()
            bar.note(f"best proxy {best:.2%}")

        if _uses_ray(config):
            from autoprune.runners.ray_tune import run_trials

            run_trials(_ray_settings(config), study, strategy, space, budget, setup.run, _workbench(config, setup),
                       config.trials - done, finished)
        else:
            while done < config.trials:
                pending = begin_trial(study, strategy, space, budget)
                scored, error = None, None
                if pending.feasible:
                    try:
                        scored = score_candidate(space, setup.evaluator, pending.ratios,
                                                 latency_batch=config.latency_batch)
                    except Exception as exc:  # noqa: BLE001  (a custom model that breaks at some widths: record it, go on)
                        error = describe_error(exc)
                finished(finish_trial(study, strategy, setup.run, space.group_names, pending, scored, error))
                fatal = all_failing(study)
                if fatal is not None:
                    raise fatal
                done += 1
    fatal = none_scored(study)  # every candidate within the budget failed: an error, not "none met the budget"
    if fatal is not None:
        raise fatal
    return study


def _uses_ray(config: SearchConfig) -> bool:
    return config.ray_address is not None or config.ray_local is not None


def _ray_settings(config: SearchConfig):
    from autoprune.runners.ray_tune import RaySettings, parse_resources

    cpus, gpus = parse_resources(config.trial_resources)
    return RaySettings(config.ray_address, config.ray_local, config.workers, cpus, gpus)


def _workbench(config: SearchConfig, setup: _Setup):
    from autoprune.runners.ray_tune import Workbench

    space = setup.space
    return Workbench(space.model, space.example_input, space.config, space.orders, setup.evaluator,
                     threads=max(1, int(_ray_settings(config).cpus_per_trial)), key=str(setup.run.path.resolve()),
                     mask_scope=space.scope if isinstance(space, WeightSpace) else None,
                     latency_batch=config.latency_batch)


def _finetune_phase(config: SearchConfig, setup: _Setup, study: optuna.Study, quiet: bool) -> list[SubnetRecord]:
    """Fine-tune the best feasible candidates and measure them on the test split."""
    metric, space = setup.budget.primary.metric, setup.space
    chosen = choose_for_finetune(study, config.finetune_top, lambda t: getattr(space.cost(trial_ratios(t, space)), metric),
                                 spread=setup.strategy.spread_finetune)
    records: dict[int, SubnetRecord] = {}
    todo = []
    for rank, t in enumerate(chosen, 1):
        directory = setup.run.subnet_dir(f"t{t.number:04d}")
        if (directory / "spec.json").exists():  # fine-tuned before a resume
            records[rank] = record_from_spec(directory)
        else:
            todo.append((rank, t))
    jobs = [(trial_ratios(t, space), config.seed + rank) for rank, t in todo]
    on_ray = _uses_ray(config) and bool(jobs)
    if on_ray:  # the workers train without bars of their own: one bar here counts the subnets done
        from autoprune.runners.ray_tune import finetune_on_ray

        results = finetune_on_ray(_ray_settings(config), _workbench(config, setup), setup.data, config, jobs)
    else:
        results = (finetune_candidate(space, setup.evaluator, config, setup.data, ratios, seed=seed, quiet=quiet,
                                      description=f"fine-tune t{t.number:04d} ({rank}/{len(chosen)})")
                   for (ratios, seed), (rank, t) in zip(jobs, todo))
    with progress_bar("fine-tune on Ray", len(jobs), quiet=quiet or not on_ray) as bar:
        for (rank, t), (ratios, _), done in zip(todo, jobs, results):
            records[rank] = _save_finetuned(config, setup, t, ratios, done)
            bar.advance()
    return [records[rank] for rank in sorted(records)]


@dataclass
class Finetuned:
    subnet: nn.Module
    kept: dict
    seconds: float
    test_acc: float
    holdout_acc: float
    epochs: float  # epochs trained, every step of an iterative schedule together


def finetune_candidate(space: PruningSpace, evaluator: AdaptiveBNEvaluator, config: SearchConfig, data: DataBundle,
                       ratios: dict[str, float], *, seed: int, description: str = "fine-tune",
                       quiet: bool = True) -> Finetuned:
    """Prune to ``ratios``, train the subnet as ``config`` asks (fine-tune, lottery rewind, from scratch,
    iteratively; distilled from the unpruned model or not), and measure test and held-out accuracy."""
    teacher = copy.deepcopy(space.model) if config.distill else None  # a copy: training moves it to the device

    def fit(subnet: nn.Module, epochs: float) -> TrainResult:
        return finetune(subnet, config, data, evaluator, seed=seed, epochs=epochs, teacher=teacher,
                        description=description, quiet=quiet)

    done = retrain(space, ratios, config, fit, seed=seed)
    test_acc = accuracy(done.subnet, data.test, device=config.device)
    holdout_acc = accuracy(done.subnet, data.holdout, device=config.device)
    return Finetuned(done.subnet.cpu(), done.kept, done.seconds, test_acc, holdout_acc, done.epochs)


def _save_finetuned(config: SearchConfig, setup: _Setup, t: optuna.trial.FrozenTrial, ratios: dict[str, float],
                    done: Finetuned) -> SubnetRecord:
    """Measure a fine-tuned subnet's latency here, on the run's device, and save it with its spec."""
    subnet_id, space, data = f"t{t.number:04d}", setup.space, setup.data
    cost = space.cost(ratios)
    latency = measure_latency(done.subnet, data.input_shape, device=config.device, batch=config.latency_batch)
    spec = {
        "id": subnet_id, "trial": t.number, "model": None if config.model == "<python object>" else config.model,
        "data": config.data, "in_channels": data.in_channels, "num_classes": data.num_classes,
        "input_shape": list(data.input_shape), "granularity": config.granularity, "seed": config.seed,
        "criterion": "magnitude" if config.granularity == "weight" else config.criterion,
        "mask_scope": config.mask_scope if config.granularity == "weight" else None,
        "base_weights": config.weights, "ratios": ratios,
        "channels": {g.name: g.channels for g in space.groups}, "kept": done.kept,
        "macs": cost.macs, "params": cost.params, "proxy_acc": t.user_attrs["proxy_acc"],
        "test_acc": done.test_acc, "holdout_acc": done.holdout_acc, "finetune_epochs": config.finetune_epochs,
        "finetune_seconds": round(done.seconds, 2), "retrain": retrain_record(config, done.epochs),
        "latency_ms": latency,
        "predicted_latency_ms": cost.latency_ms, "latency_batch": config.latency_batch,
        "device": config.device,
    }
    directory = setup.run.subnet_dir(subnet_id)
    masks = weight_masks(done.subnet) if config.granularity == "weight" else None
    save_subnet(directory, done.subnet.cpu(), spec, masks=masks)
    return record_from_spec(directory)


def _print_summary(baseline: dict, subnets: list[SubnetRecord], run: RunDir, *, finetuning: bool) -> None:
    if not finetuning:
        console.print(f"search done (no fine-tuning asked for): {run.path / 'trials.csv'}")
        return
    console.print(subnets_table(baseline, subnets))
    if not subnets:
        console.print("[bold yellow]no candidate met the budget: try --warm-start, --strategy random, "
                      "more --trials or a looser budget[/]")
    console.print(f"report: {run.path / 'report.html'}")


def run_search_from_args(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in SearchConfig.__dataclass_fields__ if k not in ("model", "data", "budget")}
    job = sensitivity if args.command == "sensitivity" else search
    job(args.model, args.data, budget=args.budget, resume=args.resume, quiet=args.quiet, **options)
    return 0
