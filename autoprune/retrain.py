"""How a chosen subnet is trained after pruning: the retraining methods of the pruning literature.

- fine-tune (the default): the subnet keeps the trained weights of the channels it kept.
- ``lottery`` (Frankle & Carbin 2019): the kept weights go back to their values at initialisation,
  or after epoch K of the baseline's training (late rewinding, Frankle et al. 2020), then train.
- ``scratch-e`` / ``scratch-b`` (Liu et al. 2019, "Rethinking the value of network pruning"): the
  pruned architecture from a fresh random initialisation, trained for the same epochs (E), or for
  the compute of the unpruned network over those epochs (B).
- ``iterative``: prune in S steps toward the ratios, fine-tuning between the steps.

Distillation from the unpruned network (``autoprune.train.distillation_loss``) goes with each of
them: it only changes the loss of the training loop that ``fit`` runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models import load_weights
from autoprune.pruning.base import Space
from autoprune.pruning.weights import apply_masks, weight_masks
from autoprune.settings import BENCH, SEARCH, setting
from autoprune.train import TrainResult, rewind_weights_path

if TYPE_CHECKING:
    from autoprune.config import SearchConfig

SHORTLIST_FACTOR = 2  # the default --shortlist: this many times --finetune-top
REWINDS = ("none", "lottery", "scratch-e", "scratch-b")
SCHEDULES = ("oneshot", "iterative")


@dataclass(frozen=True)
class RetrainSettings:
    """How the ``finetune_top`` best candidates are chosen and trained: from the best ``shortlist`` by proxy after a
    short fine-tune of ``shortlist_steps`` steps each (multi-fidelity selection; ``shortlist`` 0: by proxy alone);
    ``finetune_epochs`` (fractions allowed) of SGD at
    ``finetune_lr``, from their trained weights or rewound (``rewind``, ``rewind_epoch``), in one shot or
    ``steps`` iterative steps (``schedule``), distilled from the unpruned model or not. All of them may change
    when a run is resumed. The default ``shortlist`` (None) is ``SHORTLIST_FACTOR`` x ``finetune_top``, set from
    ``bench fidelity`` (results/bench/fidelity-shortlist): there 100 steps ranked candidates at 0.84 of the
    seed-to-seed ceiling (Spearman), the adaptive-BN proxy at 0.76."""

    finetune_top: int = setting(3, "fine-tune the best K feasible candidates")
    finetune_epochs: float = setting(0.5, "epochs of each fine-tune; fractions allowed, e.g. 0.1")
    shortlist: int | None = setting(
        None, "multi-fidelity selection: train the best M candidates by proxy for --shortlist-steps steps first, and "
        "fine-tune the --finetune-top of them with the best held-out accuracy after it (not given: twice "
        "--finetune-top; 0: off, the best by proxy)", metavar="M", commands=(SEARCH, BENCH))
    shortlist_steps: int = setting(100, "training steps of each short fine-tune of --shortlist", metavar="STEPS",
                                   commands=(SEARCH, BENCH))
    finetune_lr: float = setting(0.01, "learning rate of the fine-tune (SGD)", commands=(SEARCH, BENCH))
    rewind: str = setting(
        "none", "what the chosen subnets train from: none, their trained weights (fine-tune); lottery, the kept "
        "weights at initialisation (Frankle & Carbin 2019; needs `autoprune train --save-init`); scratch-e / "
        "scratch-b, a fresh random initialisation trained for --finetune-epochs / for the compute of "
        "--finetune-epochs of the unpruned model (Liu et al. 2019)", choices=lambda: REWINDS)
    rewind_epoch: int | None = setting(
        None, "lottery: rewind to the weights after epoch K (`autoprune train --save-init-epoch K`)", metavar="K")
    schedule: str = setting(
        "oneshot", "oneshot: prune to the ratios at once; iterative: in --steps steps, fine-tuning between them",
        choices=lambda: SCHEDULES)
    steps: int = setting(3, "steps of --schedule iterative, each fine-tuned for --finetune-epochs / steps")
    distill: bool = setting(False, "distil from the unpruned model while training the subnets (Hinton et al. 2015)")
    distill_temperature: float = setting(4.0, "temperature T of the distillation loss", metavar="T")
    distill_weight: float = setting(0.9, "loss = (1 - W) * cross-entropy + W * T^2 * KL(teacher || student)",
                                    metavar="W")

    @property
    def shortlist_size(self) -> int:
        """M, the candidates the multi-fidelity stage trains briefly: ``shortlist``, or where not given
        ``SHORTLIST_FACTOR`` x ``finetune_top``; 0 where the stage is off, or nothing is fine-tuned."""
        if not self.finetune_top:
            return 0
        return SHORTLIST_FACTOR * self.finetune_top if self.shortlist is None else self.shortlist


Fit = Callable[[nn.Module, float], TrainResult]  # recalibrate BN, then train the subnet in place for the epochs


@dataclass
class Retrained:
    """A subnet trained by ``retrain``: the ``subnet`` itself (trained in place), what it ``kept`` of each group as
    the space records it (``Space.kept``: in a channel space, the channel indices of the unpruned model), the
    ``epochs`` trained (every step of a schedule together) and the ``seconds`` its ``fit`` calls took."""

    subnet: nn.Module
    kept: dict  # Space.kept: per group, channel indices of the unpruned model, or weights kept per unit
    epochs: float  # epochs trained, every step of a schedule together
    seconds: float


def check_retrain(config: SearchConfig) -> None:
    """The retraining options' checks that need no model: a bad one stops the run before any work, as a
    ``UserError`` (also where ``--rewind lottery`` lacks its saved initialisation file)."""
    if config.finetune_top < 0 or config.finetune_epochs < 0:
        raise UserError("--finetune-top and --finetune-epochs must not be negative")
    if (config.shortlist is not None and config.shortlist < 0) or config.shortlist_steps < 1:
        raise UserError("--shortlist must not be negative, and --shortlist-steps must be at least 1")
    if config.shortlist and config.shortlist <= config.finetune_top:
        raise UserError(f"--shortlist {config.shortlist} must exceed --finetune-top {config.finetune_top}: the stage "
                        "chooses the fine-tuned among more candidates (0 turns it off)")
    if config.rewind not in REWINDS:
        raise UserError(f"--rewind must be one of {', '.join(REWINDS)}")
    if config.schedule not in SCHEDULES:
        raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)}")
    if config.steps < 1:
        raise UserError("--steps must be at least 1")
    if config.rewind != "none" and config.schedule == "iterative":
        raise UserError("--rewind does not go with --schedule iterative: the steps of an iterative schedule "
                        "carry the weights of one step's fine-tune into the next")
    if config.rewind_epoch is not None and (config.rewind != "lottery" or config.rewind_epoch < 1):
        raise UserError("--rewind-epoch K (K >= 1) goes with --rewind lottery")
    if config.distill_temperature <= 0 or not 0 <= config.distill_weight <= 1:
        raise UserError("--distill-temperature must be positive and --distill-weight between 0 and 1")
    if config.rewind == "lottery":
        flag = "--save-init" if config.rewind_epoch is None else f"--save-init-epoch {config.rewind_epoch}"
        if config.weights is None:
            raise UserError(f"--rewind lottery needs --weights of a model trained with `autoprune train {flag}`: "
                            "there is no saved initialisation of a shipped checkpoint or a Python model object")
        path = rewind_weights_path(config.weights, config.rewind_epoch)
        if not path.is_file():
            raise UserError(f"--rewind lottery: {path} not found; `autoprune train {flag} --out {config.weights}` "
                            "writes it next to the weights")


def check_retrain_model(config: SearchConfig, model: nn.Module) -> None:
    """The checks that need the model: the rewind weights fit it, and a from-scratch run can re-initialise it.
    Raises ``UserError`` otherwise."""
    if config.rewind == "lottery":
        load_rewind_state(model, config.weights, config.rewind_epoch)
    if config.rewind in ("scratch-e", "scratch-b"):
        _resettable_layers(model)


def load_rewind_state(model: nn.Module, weights: str, epoch: int | None) -> dict[str, torch.Tensor]:
    """The state dict a lottery ticket rewinds to, checked to fit ``model``, the unpruned architecture.

    It is read from the file where this runs: on a Ray cluster, every node needs it at the same path.
    """
    probe = copy.deepcopy(model).cpu()
    load_weights(probe, rewind_weights_path(weights, epoch))
    return probe.state_dict()


def starting_subnet(space: Space, ratios: Mapping[str, float], config: SearchConfig, *,
                    seed: int) -> tuple[nn.Module, dict[str, list[int]]]:
    """The subnet at ``ratios`` with the weights ``config.rewind`` starts training from, and its kept indices.

    The kept channels are always the ones the trained model's ranking chose: a lottery ticket takes
    its initial values at exactly those indices, and a from-scratch subnet keeps their architecture.
    """
    if config.rewind == "lottery":
        subnet, kept = space.prune(ratios, load_rewind_state(space.model, config.weights, config.rewind_epoch))
        for bn in subnet.modules():  # statistics of the trained net, or none at all: unknown for these weights
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats:
                bn.reset_running_stats()
        return subnet, kept
    subnet, kept = space.prune(ratios)
    if config.rewind in ("scratch-e", "scratch-b"):
        masks = weight_masks(subnet) if config.granularity == "weight" else {}  # a weight-pruned subnet keeps its zeros
        reinitialise(subnet, seed)
        apply_masks(subnet, masks)
    return subnet, kept


def reinitialise(model: nn.Module, seed: int) -> None:
    """Fresh random weights at the pruned widths: each layer's own ``reset_parameters()`` (PyTorch's
    default initialisation of conv, linear and BN), seeded, with the global RNG left as it was."""
    layers = _resettable_layers(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for layer in layers:
            layer.reset_parameters()


def _resettable_layers(model: nn.Module) -> list[nn.Module]:
    """The layers holding parameters; each must have ``reset_parameters`` for a fresh start to be whole."""
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    lacking = sorted({type(m).__name__ for m in layers if not callable(getattr(m, "reset_parameters", None))})
    if lacking:
        raise UserError(f"--rewind scratch-*: layers of type {', '.join(lacking)} have parameters but no "
                        "reset_parameters(), so the subnet cannot be re-initialised")
    return layers


def retrain_epochs(space: Space, ratios: Mapping[str, float], rewind: str, epochs: float) -> float:
    """Epochs to train: ``epochs``, except Scratch-B's, scaled by base MACs / subnet MACs so the subnet
    gets the compute of ``epochs`` of the unpruned network (no cap: at 25% MACs, 4x the epochs)."""
    if rewind != "scratch-b":
        return epochs
    return epochs * space.base_cost.macs / space.cost(ratios).macs


def schedule_ratios(ratios: Mapping[str, float], steps: int) -> list[dict[str, float]]:
    """The ratios of each step of an iterative schedule: step i of S prunes every group to i/S of its
    ratio, and the last step to the ratio itself."""
    return [{name: ratio * (step / steps) for name, ratio in ratios.items()} for step in range(1, steps + 1)]


def retrain(space: Space, ratios: Mapping[str, float], config: SearchConfig, fit: Fit, *,
            seed: int) -> Retrained:
    """Prune to ``ratios`` and train the subnet as ``config`` asks; ``fit`` recalibrates BN and trains."""
    if config.schedule == "iterative":
        return _prune_iteratively(space, ratios, config.steps, config.finetune_epochs, fit)
    subnet, kept = starting_subnet(space, ratios, config, seed=seed)
    result = fit(subnet, retrain_epochs(space, ratios, config.rewind, config.finetune_epochs))
    return Retrained(subnet, kept, result.epochs, result.seconds)


def _prune_iteratively(space: Space, ratios: Mapping[str, float], steps: int, epochs: float,
                       fit: Fit) -> Retrained:
    """Prune in ``steps`` steps, each fine-tuned for ``epochs / steps``: the budget of a one-shot fine-tune.

    A channel ranking is one order per group, so the channels kept at a larger ratio are among those
    kept at a smaller one: each step prunes the fine-tuned subnet of the step before, and the last
    step keeps exactly the channels ``space.prune(ratios)`` keeps.
    """
    subnet, current = space.prune({})
    trained = seconds = 0.0
    for step in schedule_ratios(ratios, steps):
        kept = space.kept(step)
        space.prune_further(subnet, current, kept)
        result = fit(subnet, epochs / steps)
        trained, seconds, current = trained + result.epochs, seconds + result.seconds, kept
    return Retrained(subnet, current, trained, seconds)


def retrain_record(config: SearchConfig, epochs: float) -> dict:
    """What a subnet's spec.json records of how it was trained after pruning."""
    return {
        "rewind": config.rewind,
        "rewind_epoch": config.rewind_epoch if config.rewind == "lottery" else None,
        "schedule": config.schedule,
        "steps": config.steps if config.schedule == "iterative" else 1,
        "distill": ({"temperature": config.distill_temperature, "weight": config.distill_weight}
                    if config.distill else None),
        "lr": config.finetune_lr,
        "epochs": round(epochs, 4),
    }


def describe_retrain(record: Mapping | None) -> str:
    """A record in a few words, for the report: ``lottery (init), 0.5 epochs``, ``iterative in 3 steps +
    distillation (T 4, W 0.9), 0.5 epochs``. No record: a subnet saved before methods were recorded,
    which was fine-tuned."""
    if record is None:
        return "fine-tune"
    names = {"none": "fine-tune", "lottery": "lottery", "scratch-e": "scratch-E", "scratch-b": "scratch-B"}
    text = names[record["rewind"]]
    if record["rewind"] == "lottery":
        text += " (init)" if record["rewind_epoch"] is None else f" (epoch {record['rewind_epoch']})"
    if record["schedule"] == "iterative":
        text = f"iterative in {record['steps']} steps"
    if record["distill"]:
        text += f" + distillation (T {record['distill']['temperature']:g}, W {record['distill']['weight']:g})"
    return f"{text}, {record['epochs']:g} epochs"
