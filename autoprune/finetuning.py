"""The fine-tune step: the best candidates within the budget are trained (fine-tuned, rewound or from
scratch, as ``RetrainSettings`` say), measured on the test split and saved with their specs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import optuna
import pandas as pd
from torch import nn

from autoprune.candidate import Candidate, candidates
from autoprune.config import PYTHON_OBJECT, SearchConfig
from autoprune.data import DataBundle
from autoprune.deployment import measure_beside, time_subnet
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.progress import progress_bar
from autoprune.pruning.base import Space
from autoprune.pruning.weights import weight_masks
from autoprune.results import SubnetSpec, load_subnet
from autoprune.retrain import retrain, retrain_record
from autoprune.search import Strategy
from autoprune.selection import choose_for_finetune
from autoprune.train import TrainResult, epochs_of_steps, train
from autoprune.workbench import Workbench


@dataclass(frozen=True)
class FinetuneJob:
    """One subnet to train: the candidate's ``ratios`` (group name -> fraction of channels removed), the
    training ``seed``, the progress bar's ``description``, and for a short fine-tune of the shortlist its
    ``epochs`` (None: the run's ``finetune_epochs``) and no test accuracy (``test`` false)."""

    ratios: dict[str, float]
    seed: int
    description: str = "fine-tune"
    epochs: float | None = None
    test: bool = True


@dataclass
class Finetuned:
    """A trained subnet (on the CPU), its kept channel indices per group, seconds of training, and its test and
    held-out accuracy (fractions; no test accuracy for a short fine-tune of the shortlist)."""

    subnet: nn.Module
    kept: dict
    seconds: float
    test_acc: float | None
    holdout_acc: float
    epochs: float  # epochs trained, every step of an iterative schedule together


def finetune_phase(bench: Workbench, study: optuna.Study, strategy: Strategy, runner, *,
                   quiet: bool) -> list[SubnetSpec]:
    """Fine-tune the ``finetune_top`` best feasible candidates of ``study`` through ``runner`` and save each
    (subnets/t<NNNN>/); a subnet already saved by an earlier invocation of a resumed run is read back, not
    trained again. The subnets trained here are then timed again together (``time_together``). Returns their
    specs in rank order."""
    config, space = bench.config, bench.space
    metric = bench.budget.primary.metric
    scored = candidates(study, space.group_names, states=(optuna.trial.TrialState.COMPLETE,))

    def cost(c: Candidate) -> float:
        return getattr(space.cost(c.ratios_to_prune(space.groups)), metric)

    chosen = choose_for_finetune(scored, config.shortlist_size or config.finetune_top, cost,
                                 spread=strategy.spread_finetune)
    if len(chosen) > config.finetune_top:  # more candidates than fine-tunes: the short fine-tunes choose
        chosen = shortlist_phase(bench, study, chosen, runner, quiet=quiet)
    specs: dict[int, SubnetSpec] = {}
    todo = []
    for rank, c in enumerate(chosen, 1):
        directory = bench.run.subnet_dir(c.id)
        if (directory / "spec.json").exists():  # fine-tuned before a resume
            specs[rank] = SubnetSpec.load(directory)
        else:
            todo.append((rank, c))
    jobs = [FinetuneJob(c.ratios_to_prune(space.groups), config.seed + rank,
                        f"fine-tune {c.id} ({rank}/{len(chosen)})") for rank, c in todo]
    bar_here = not (quiet or runner.shows_finetune_progress)  # a runner whose workers draw no bars of their own
    with progress_bar("fine-tune on Ray", len(jobs), quiet=not bar_here or not jobs) as bar:
        for (rank, c), job, done in zip(todo, jobs, runner.finetune(jobs) if jobs else ()):
            specs[rank] = save_finetuned(bench, c, job.ratios, done)
            bar.advance()
    fresh = [rank for rank, _ in todo]  # those saved before a resume are kept as they were
    if len(fresh) > 1:
        specs.update(zip(fresh, time_together(bench, [specs[rank] for rank in fresh]), strict=True))
    return [specs[rank] for rank in sorted(specs)]




def shortlist_phase(bench: Workbench, study: optuna.Study, shortlisted: list[Candidate], runner, *,
                    quiet: bool) -> list[Candidate]:
    """Multi-fidelity selection: train each shortlisted candidate for ``shortlist_steps`` steps (the run's
    retraining, at its learning rate) and return the ``finetune_top`` with the best held-out accuracy after it
    (ties: the better proxy). The accuracies are kept in the study (user attribute ``shortlist_<steps>_steps``), so
    that a resumed run trains none twice, and written to shortlist.csv. The test split is not touched."""
    config = bench.config
    key = f"shortlist_{config.shortlist_steps}_steps"  # trial number -> held-out accuracy after that many steps
    done = {int(k): v for k, v in study.user_attrs.get(key, {}).items()}
    todo = [c for c in shortlisted if c.number not in done]
    epochs = epochs_of_steps(config.shortlist_steps, len(bench.data.train), config.batch_size)
    jobs = [FinetuneJob(c.ratios_to_prune(bench.space.groups), config.seed, f"shortlist {c.id} ({i}/{len(todo)})",
                        epochs=epochs, test=False) for i, c in enumerate(todo, 1)]
    bar_here = not (quiet or runner.shows_finetune_progress)
    with progress_bar("shortlist on Ray", len(jobs), quiet=not bar_here or not jobs) as bar:
        for c, trained in zip(todo, runner.finetune(jobs) if jobs else (), strict=True):
            done[c.number] = trained.holdout_acc
            study.set_user_attr(key, {str(k): v for k, v in done.items()})
            bar.advance()
    ranked = sorted(shortlisted, key=lambda c: (-done[c.number], -(c.proxy_acc or 0.0), c.number))
    chosen = ranked[:config.finetune_top]
    rows = [{"number": c.number, "id": c.id, "proxy_acc": c.proxy_acc, "shortlist_holdout_acc": done[c.number],
             "rank": rank, "finetuned": c in chosen} for rank, c in enumerate(ranked, 1)]
    bench.run.write_table("shortlist.csv", pd.DataFrame(rows))
    return chosen


def time_together(bench: Workbench, specs: list[SubnetSpec]) -> list[SubnetSpec]:
    """The subnets of ``specs`` timed again, all in one measurement beside the unpruned model
    (``autoprune.deployment.measure_beside``), and its spec.json rewritten with it: subnets compared with each
    other are measured at one moment. Each was timed as its fine-tune ended, so that a crash loses no verdict;
    on a 2-core machine the same subnet measured 1.40x there and 1.72x beside its peers a minute later."""
    target, base = bench.latency.target, bench.model if bench.config.model == PYTHON_OBJECT else None
    calls = {s.id: (target.prepare(load_subnet(s.path, base), bench.data.input_shape), s.predicted_latency_ms, s.macs)
             for s in specs}
    _, measured = measure_beside(target, bench.latency.base_call, calls)
    updated = []
    for spec, m in zip(specs, measured, strict=True):
        spec = replace(spec, latency_ms=m.ms, latency_spread=[m.low, m.high], speedup=m.speedup,
                       speedup_spread=[m.speedup_low, m.speedup_high])
        spec.write()
        updated.append(spec)
    return updated


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


def finetune_candidate(space: Space, evaluator: AdaptiveBNEvaluator, config: SearchConfig, data: DataBundle,
                       ratios: dict[str, float], *, seed: int, description: str = "fine-tune",
                       quiet: bool = True, epochs: float | None = None, test: bool = True) -> Finetuned:
    """Prune to ``ratios``, train the subnet as ``config`` asks (fine-tune, lottery rewind, from scratch,
    iteratively; distilled from the unpruned model or not) for ``epochs`` (None: ``config.finetune_epochs``), and
    measure held-out accuracy, and test accuracy where ``test``."""
    if epochs is not None:
        config = replace(config, finetune_epochs=epochs)
    teacher = copy.deepcopy(space.model) if config.distill else None  # a copy: training moves it to the device

    def fit(subnet: nn.Module, epochs: float) -> TrainResult:
        return finetune(subnet, config, data, evaluator, seed=seed, epochs=epochs, teacher=teacher,
                        description=description, quiet=quiet)

    done = retrain(space, ratios, config, fit, seed=seed)
    test_acc = accuracy(done.subnet, data.test, device=config.device) if test else None
    holdout_acc = accuracy(done.subnet, data.holdout, device=config.device)
    return Finetuned(done.subnet.cpu(), done.kept, done.seconds, test_acc, holdout_acc, done.epochs)


def save_finetuned(bench: Workbench, candidate: Candidate, ratios: dict[str, float], done: Finetuned) -> SubnetSpec:
    """Measure a fine-tuned subnet's latency on the run's target as it ships (exported for onnxruntime), beside
    the unpruned model, and save it with its spec (subnets/<id>/); returns the spec. ``ratios``: every group's,
    as it was pruned."""
    config, space, data = bench.config, bench.space, bench.data
    cost = space.cost(ratios)
    measured = time_subnet(bench.latency, done.subnet, data.input_shape, candidate.id, cost.latency_ms, cost.macs)
    weight = config.granularity == "weight"
    spec = SubnetSpec(
        id=candidate.id, trial=candidate.number, model=None if config.model == PYTHON_OBJECT else config.model,
        data=config.data, in_channels=data.in_channels, num_classes=data.num_classes,
        input_shape=list(data.input_shape), granularity=config.granularity, seed=config.seed,
        criterion="magnitude" if weight else config.criterion, mask_scope=config.mask_scope if weight else None,
        base_weights=config.weights, ratios=ratios, channels={g.name: g.channels for g in space.groups},
        kept=done.kept, macs=cost.macs, params=cost.params, proxy_acc=candidate.proxy_acc, test_acc=done.test_acc,
        holdout_acc=done.holdout_acc, finetune_epochs=config.finetune_epochs,
        finetune_seconds=round(done.seconds, 2), retrain=retrain_record(config, done.epochs), latency_ms=measured.ms,
        predicted_latency_ms=cost.latency_ms, latency_spread=[measured.low, measured.high], speedup=measured.speedup,
        speedup_spread=[measured.speedup_low, measured.speedup_high], target=bench.latency.target.describe(),
        latency_batch=config.latency_batch, device=config.device,
    )
    directory = bench.run.subnet_dir(candidate.id)
    masks = weight_masks(done.subnet) if weight else None
    return spec.save(directory, done.subnet.cpu(), masks=masks)
