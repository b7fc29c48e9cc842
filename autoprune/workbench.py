"""What a search works on, loaded once: the data, the trained model, its pruning space, the scorer and the
unpruned model's baseline figures; and the run directory they are recorded in.

``open_workbench`` does every check that needs the model before anything is written, so that bad input
leaves no half-made run behind.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from autoprune.budget import TIGHT_SHARE, Budget
from autoprune.config import SearchConfig, shipped_weights
from autoprune.data import DataBundle, load_data
from autoprune.deployment import LatencySetup, save_setup, set_up_latency
from autoprune.errors import UserError, one_line
from autoprune.measure import AdaptiveBNEvaluator, accuracy
from autoprune.models import create_model, load_weights, model_family
from autoprune.models.contract import contract_of, prepare_model
from autoprune.progress import console
from autoprune.pruning.base import Space
from autoprune.pruning.config import load_space_config
from autoprune.pruning.criteria import criterion_batches, needs_data
from autoprune.pruning.space import PruningSpace
from autoprune.pruning.weights import WeightSpace
from autoprune.results import RunDir
from autoprune.retrain import check_retrain_model
from autoprune.train import train

SCORING_STEPS = 8  # batches a candidate's score is split into: where a pruner may stop it
SCORING_BATCH = 256  # the most images a scoring batch holds


@dataclass
class Workbench:
    """A run's loaded inputs: ``model`` (the trained, unpruned network, on the CPU, in eval mode), its
    ``space``, the scorer ``evaluator``, ``baseline`` (the unpruned model's ``macs``, ``params``, ``proxy_acc``,
    ``test_acc`` and ``latency_ms`` on the target at ``config.latency_batch``), the ``latency`` set-up (target,
    predictor, efficient widths: ``autoprune.deployment``), and ``seconds`` spent setting it up."""

    config: SearchConfig
    run: RunDir
    data: DataBundle
    model: nn.Module
    space: Space
    budget: Budget
    evaluator: AdaptiveBNEvaluator
    baseline: dict
    latency: LatencySetup
    seconds: float


def open_workbench(config: SearchConfig, budget: Budget, run: RunDir, module: nn.Module | None, *,
                   resume: bool, quiet: bool = True) -> Workbench:
    """Load the data, model and space of the validated ``config``, check that the budget can be met in the
    space and prunes something, then create the run (config.yaml, run.json), sparsity-train the model where
    asked and measure the baseline. Raises ``UserError`` before writing anything when an input is wrong."""
    tic = time.perf_counter()
    data, model, space = load_workbench(config, module)
    contract = contract_of(model)
    if not quiet:
        for note in contract.notes:
            console.print(note, markup=False, soft_wrap=True)
    check_retrain_model(config, model)
    if budget.without_latency() is not None:  # before the latency set-up: a budget out of reach says so at once
        check_budget(budget.without_latency(), space, notes=False)
    latency = set_up_latency(config, model, space, data.input_shape, run.path, budget, quiet=quiet)
    check_budget(budget, space)
    # Nothing is written before this line: a bad input leaves no half-made run behind, and a failure
    # from here to the first trial removes what the run wrote (RunDir.discarded_on_failure).
    run.create()
    with run.discarded_on_failure(fresh=not resume):
        run.write_config({**asdict(config), "space_config": space.config.to_dict(), "data_summary": data.summary(),
                          "layout": contract.layout, "model_notes": list(contract.notes),
                          "groups": space.describe(), "unprunable": space.unprunable,
                          "cost_check": space.cost_check})
        run.write_status(status="running", backend="ray" if config.uses_ray else "local",
                         workers=config.workers if config.uses_ray else 1,
                         started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        save_setup(latency, run.path)
        if config.sparsity_train > 0:
            model = sparsity_trained(config, run, data, model, space, quiet)
        evaluator = make_evaluator(config, data)
        try:
            proxy_acc, test_acc = evaluator.holdout_accuracy(model), accuracy(model, data.test, device=config.device)
        except Exception as exc:  # a model that passed the checks on one or two images, not on whole batches
            raise UserError(f"the unpruned model fails on batches of the data (up to 500 images): "
                            f"{one_line(exc)}") from exc
        baseline = {"macs": space.base_cost.macs, "params": space.base_cost.params, "proxy_acc": proxy_acc,
                    "test_acc": test_acc, "latency_ms": latency.baseline.ms}
        model.cpu()
    if not quiet:
        for line in latency.describe():
            console.print(line, markup=False, soft_wrap=True)
    return Workbench(config, run, data, model, space, budget, evaluator, baseline, latency, time.perf_counter() - tic)


def check_budget(budget: Budget, space: Space, *, notes: bool = True) -> None:
    """Raise ``UserError`` where even the smallest subnet of ``space`` is over ``budget``, or where the unpruned
    model is already within it (as ``150%flops`` is refused); a part of a joined budget that the unpruned model
    meets (``60MMACs`` on a 15M-MAC model) constrains nothing, and is said where ``notes``, as is a budget whose
    smallest subnet takes more than ``TIGHT_SHARE`` of it (the candidates differ little)."""
    base = space.base_cost
    smallest = space.smallest_cost()
    if not budget.feasible(smallest, base):
        latency = "" if smallest.latency_ms is None else (
            f" and {smallest.latency_ms:.3f} ms ({smallest.latency_ms / base.latency_ms:.1%} of the unpruned model's "
            f"{base.latency_ms:.3f} ms, predicted)")
        raise UserError(
            f"budget {budget.text} cannot be met in this search space: the smallest subnet keeps "
            f"{smallest.macs / base.macs:.1%} of MACs and {smallest.params / base.params:.1%} "
            f"of params{latency} (raise ratio.max in the space file)"
        )
    loose = budget.loose(base)
    if len(loose) == len(budget.constraints):
        raise UserError(f"budget {budget.text} prunes nothing: the unpruned model is within it "
                        f"({budget.describe(base)}); give a budget below the baseline")
    for c in loose if notes else ():
        console.print(f"[yellow]budget part {Budget((c,), c.text).describe(base)} constrains nothing: the unpruned "
                      "model is within it[/]", soft_wrap=True)
    share = budget.share(smallest, base) if notes else 0.0
    if share > TIGHT_SHARE:
        console.print(f"[yellow]budget {budget.text} leaves the search little room: the smallest subnet of the space "
                      f"(every group at its smallest width) already takes {share:.1%} of it, so the candidates "
                      "differ little (raise ratio.max in the space file, or loosen the budget)[/]", soft_wrap=True)


def load_workbench(config: SearchConfig, module: nn.Module | None = None, *,
                   untrained: bool = False) -> tuple[DataBundle, nn.Module, Space]:
    """The data, the trained model and its pruning space, as ``config`` names them (``module``: a model object
    given instead of ``config.model``; ``untrained``: the model as its factory makes it, without weights, for a
    look at its structure). Raises ``UserError`` for a model, data or space that cannot be loaded."""
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


def _load_model(config: SearchConfig, data: DataBundle, untrained: bool = False) -> nn.Module:
    model = create_model(config.model, in_channels=data.in_channels, num_classes=data.num_classes)
    weights = config.weights or shipped_weights(config)
    if weights is None and not untrained:
        raise UserError(
            f"--weights is needed: no shipped checkpoint for {config.model} on {config.data} "
            f"(train one with: autoprune train --model {config.model} --data {config.data} --out FILE)"
        )
    # unwrapped from torch.compile, lazy layers materialised before the weights load, checked (autoprune.models.contract)
    model = prepare_model(model, data.example_input(), output_key=config.output_key, num_classes=data.num_classes,
                          weights=weights)
    return model.eval()


def sparsity_trained(config: SearchConfig, run: RunDir, data: DataBundle, model: nn.Module, space: Space,
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
    """The candidate scorer: ``calib_batches`` (default ``config.calib_batches``) training batches, the first
    ``config.score_images`` held-out images in ``SCORING_STEPS`` batches (of at most ``SCORING_BATCH``), each one
    step at which the study's pruner may stop a score (``autoprune.search.pruners``)."""
    images = min(config.score_images, len(data.holdout))
    holdout = data.holdout.subset(torch.arange(images))
    scoring = DataBundle(data.name, data.train, holdout, data.test, data.num_classes, data.augment)
    return AdaptiveBNEvaluator(scoring, calib_batches=calib_batches or config.calib_batches,
                               batch_size=config.batch_size, device=config.device, seed=config.seed,
                               adaptive=config.adaptive_bn if adaptive is None else adaptive,
                               eval_batch_size=max(1, min(SCORING_BATCH, math.ceil(images / SCORING_STEPS))))
