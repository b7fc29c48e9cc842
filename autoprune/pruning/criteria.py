"""Filter-importance criteria, one registry; each scores the channels of one dependency group.

A group couples every layer whose channels must be cut together (a residual stream, a depthwise
pair), so importance is computed over all of the group's layers at once: over its weights (l1, l2,
fpgm: Torch-Pruning's group importances), over its BatchNorm scales (bn_scale), or over what its
channels do on training data (taylor, apoz, entropy, pfp).

The data-driven criteria look where a pruned channel goes missing: in the input of every conv or
linear layer that reads the group's channels (Torch-Pruning's in-channel members of the group). In a
conv-BN-ReLU chain that input is the channel's ReLU output; in a residual stream it is the stream after
each block's add and ReLU, once per block that reads it. Each such reader is scored per channel, and
the group's score is the mean over its readers. One pass over the batches, with hooks on every reader
at once, serves all groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from autoprune.data.bundle import Split
from autoprune.errors import UserError
from autoprune.models.contract import contract_of, logits_of
from autoprune.registry import Registry

Criterion = Callable[[tp.dependency.group.Group], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

ENTROPY_BINS = 32  # 4 batches of 128 images put ~16 images in each bin on average
PFP_IMAGES = 32  # the "small batch" PFP takes its maxima over; its cost grows with in x out channels per image
_PFP_CHUNK = 1 << 22  # contribution entries computed at once (16 MB of float32), to bound memory on wide layers


@dataclass(frozen=True)
class CriterionContext:
    """What a criterion may look at.

    ``model`` is the module the groups reference (the space's eval-mode copy); ``batches`` are fixed
    (images, labels) batches of the training split, needed by the data-driven criteria only.
    """

    model: nn.Module
    batches: Sequence[Batch] | None = None
    seed: int = 0


CRITERIA: Registry[Callable[[CriterionContext], Criterion]] = Registry("criterion")


def register_criterion(name: str, help: str, *, needs_data: bool = False):
    """Register a criterion factory ``fn(context) -> Criterion`` under ``name``; ``needs_data``: it ranks
    channels on ``context.batches`` of training images."""
    return CRITERIA.register(name, help, needs_data=needs_data)


def list_criteria() -> list[str]:
    """The registered criterion names, sorted."""
    return CRITERIA.names()


def describe_criteria() -> dict[str, str]:
    """``{name: help}`` of every criterion, sorted by name: the ``--criterion`` choices."""
    return CRITERIA.describe()


def needs_data(name: str) -> bool:
    """Whether criterion ``name`` ranks channels on training batches (an unknown name is a UserError)."""
    return CRITERIA.get(name).needs_data


def get_criterion(name: str, context: CriterionContext) -> Criterion:
    """A callable mapping a group to one importance score per channel (higher = keep), a tensor of
    shape (channels,).

    A data-driven criterion makes its one pass over ``context.batches`` here, before returning. An
    unknown name, or a data-driven criterion without batches, is a ``UserError``.
    """
    entry = CRITERIA.get(name)
    if entry.needs_data and not context.batches:
        raise UserError(f"criterion '{name}' ranks channels on training batches, and none were given")
    return entry.obj(context)


def criterion_batches(train: Split, count: int, batch_size: int, seed: int) -> list[Batch]:
    """``count`` batches of training images drawn once with ``seed``: what the data-driven criteria see."""
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: count * batch_size]
    return list(train.subset(index).batches(batch_size))


# --- weights -----------------------------------------------------------------------------------


@register_criterion("l1", "sum of absolute weights over the group (Li et al. 2017)")
def _l1(context: CriterionContext) -> Criterion:
    return tp.importance.GroupMagnitudeImportance(p=1)


@register_criterion("l2", "L2 norm of the group's weights")
def _l2(context: CriterionContext) -> Criterion:
    return tp.importance.GroupMagnitudeImportance(p=2)


@register_criterion("fpgm", "distance from the geometric median of the layer's filters (He et al. 2019)")
def _fpgm(context: CriterionContext) -> Criterion:
    return tp.importance.FPGMImportance()


@register_criterion("random", "a seeded random ranking: the control every criterion must beat")
def _random(context: CriterionContext) -> Criterion:
    generator = torch.Generator().manual_seed(context.seed)

    def score(group: tp.dependency.group.Group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=generator)

    return score


@register_criterion("bn_scale", "|gamma| of the group's BatchNorm layers, summed (network slimming, Liu et al. 2017)")
def _bn_scale(context: CriterionContext) -> Criterion:
    def score(group: tp.dependency.group.Group) -> torch.Tensor:
        total = torch.zeros(len(group[0].idxs))
        found = False
        for item in group:
            bn = item.dep.target.module
            if item.dep.handler == function.prune_batchnorm_out_channels and bn.affine and None not in item.root_idxs:
                total.index_add_(0, torch.tensor(item.root_idxs), bn.weight.detach()[item.idxs].abs().cpu())
                found = True
        if not found:
            raise ValueError("the group has no BatchNorm layer with a scale")
        return total

    return score


# --- data: what the readers of a group see -----------------------------------------------------


@register_criterion("taylor", "first-order Taylor estimate of the loss change, |activation x gradient| averaged over "
                    "--criterion-batches training batches (Molchanov et al. 2017)", needs_data=True)
def _taylor(context: CriterionContext) -> Criterion:
    # Molchanov's per-image |mean over positions of a x dL/da|, averaged over images
    return _by_readers(_taylor_summaries(context.model, context.batches), lambda s: s.abs().mean(0))


@register_criterion("apoz", "1 - average percentage of zeros after the ReLU, over --criterion-batches training "
                    "batches (Hu et al. 2016)", needs_data=True)
def _apoz(context: CriterionContext) -> Criterion:
    def nonzero(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # the fraction of values > 0, i.e. those a ReLU keeps: where one precedes the reader the input is its
        # output, and where none does (a linear bottleneck) the count is the one a ReLU would give
        values = _positions(layer, x)
        return torch.count_nonzero(values > 0, dim=-1) / values.shape[-1]

    return _by_readers(_input_summaries(context.model, context.batches, nonzero), lambda s: s.mean(0))


@register_criterion("entropy", f"entropy of the {ENTROPY_BINS}-bin histogram of each channel's global average over "
                    "--criterion-batches training batches (Luo & Wu 2017)", needs_data=True)
def _entropy(context: CriterionContext) -> Criterion:
    def pooled(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _positions(layer, x).mean(-1)

    return _by_readers(_input_summaries(context.model, context.batches, pooled), _histogram_entropy)


@register_criterion("pfp", f"provable filter pruning's sensitivity: a channel's largest share of a next-layer "
                    f"pre-activation over {PFP_IMAGES} training images (Liebenwein, Baykal et al. 2020)",
                    needs_data=True)
def _pfp(context: CriterionContext) -> Criterion:
    images, labels = context.batches[0]
    small = [(images[:PFP_IMAGES], labels[:PFP_IMAGES])]
    return _by_readers(_input_summaries(context.model, small, _pfp_shares), lambda s: s.amax(0))


def _is_reader(module: nn.Module) -> bool:
    """A layer mixing all of its input channels: the layers whose inputs the data-driven criteria watch."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


_READS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def _by_readers(summaries: dict[nn.Module, torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor]) -> Criterion:
    """A criterion from per-image summaries of every reader's input features, (images, features) each:
    ``reduce`` turns one reader's (images, channels) into a score per channel; readers are averaged."""

    def score(group: tp.dependency.group.Group) -> torch.Tensor:
        channels = len(group[0].idxs)
        scores = []
        for item in group:
            layer = item.dep.target.module
            if item.dep.handler not in _READS or not _is_reader(layer) or None in item.root_idxs:
                continue
            if layer not in summaries:
                raise ValueError(f"a layer reading the group ({type(layer).__name__}) did not run in the forward pass")
            scores.append(reduce(_to_channels(summaries[layer][:, item.idxs], item.root_idxs, channels)))
        if not scores:
            raise ValueError("no conv or linear layer reads the group's channels")
        return torch.stack(scores).mean(0)

    return score


def _to_channels(values: torch.Tensor, root_idxs: list[int], channels: int) -> torch.Tensor:
    """(images, features) -> (images, channels): the features that carry one channel (several after a
    flatten) are averaged."""
    index = torch.tensor(root_idxs)
    total = values.new_zeros(values.shape[0], channels).index_add_(1, index, values)
    count = torch.zeros(channels).index_add_(0, index, torch.ones(len(root_idxs)))
    return total / count.clamp_min(1)


def _positions(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A reader's input as (images, features, positions): a conv's spatial positions, or a linear layer's
    tokens (every dimension between the first and the features)."""
    if isinstance(layer, nn.Conv2d):
        return x.flatten(2)
    return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)


@contextmanager
def _reader_hooks(model: nn.Module, pre_hook) -> Iterator[None]:
    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if _is_reader(m)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _input_summaries(model: nn.Module, batches: Sequence[Batch],
                     summarize: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """One forward pass over ``batches`` without gradients; ``summarize(layer, input)`` gives
    (images, features) for every reader."""
    found: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)

    def record(layer: nn.Module, args: tuple) -> None:
        found[layer].append(summarize(layer, args[0]))

    with _reader_hooks(model, record), torch.no_grad():
        for images, _ in batches:
            model(images)
    return {layer: torch.cat(parts) for layer, parts in found.items()}


def _taylor_summaries(model: nn.Module, batches: Sequence[Batch]) -> dict[nn.Module, torch.Tensor]:
    """Per image and input feature of every reader: the mean over positions of activation x gradient of
    the cross-entropy, the gradient being the part that flows back through that reader alone (what removing
    the channel from that reader's input changes, to first order).

    Gradients are taken with ``torch.autograd.grad`` on the inputs only: no parameter's ``.grad`` or
    ``requires_grad`` is touched.
    """
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    found: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)

    def watch(layer: nn.Module, args: tuple) -> tuple:
        view = args[0].view_as(args[0])  # a graph node of its own: it receives this reader's gradient only
        seen.append((layer, view))
        return (view, *args[1:])

    key = contract_of(model).output_key
    with _reader_hooks(model, watch), torch.enable_grad():
        for images, labels in batches:
            seen.clear()
            # an input that needs gradients makes the graph reach every layer, even where weights are frozen
            logits = logits_of(model(images.clone().requires_grad_()), key)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, [view for _, view in seen], allow_unused=True)
            for (layer, view), grad in zip(seen, grads):
                product = view.detach() * grad if grad is not None else torch.zeros_like(view)
                found[layer].append(_positions(layer, product).mean(-1))
    return {layer: torch.cat(parts) for layer, parts in found.items()}


def _histogram_entropy(values: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each column's histogram in ``ENTROPY_BINS`` equal bins spanning the column's own
    range; a constant column puts everything in one bin and scores 0."""
    low, high = values.amin(0), values.amax(0)
    scaled = (values - low) / (high - low).clamp_min(torch.finfo(values.dtype).tiny)
    bins = (scaled * ENTROPY_BINS).long().clamp(0, ENTROPY_BINS - 1).T
    counts = torch.zeros(values.shape[1], ENTROPY_BINS).scatter_add_(1, bins, torch.ones(bins.shape))
    p = counts / values.shape[0]
    return -(p * p.clamp_min(1e-12).log()).sum(1)


def _pfp_shares(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per image and input channel of ``layer``: the largest share the channel has in the pre-activation
    (bias left out) of any of the layer's neurons, an output channel at one position, its contribution
    summed over the kernel.

    Weights and inputs are taken in absolute value (the ``absolute`` variant of PFP's official code), so
    that every share is one of a sum of non-negative terms; PFP's default takes positive and negative
    weights apart instead, at twice the cost. The contributions of every input to every neuron take
    in x out x positions entries per image, so they are computed a few images at a time.
    """
    outs, ins = layer.weight.shape[:2]
    weight, x = layer.weight.abs(), x.abs()
    step = max(1, _PFP_CHUNK // (ins * outs * (x[0].numel() // ins)))
    return torch.cat([_largest_shares(layer, x[start : start + step], weight) for start in range(0, len(x), step)])


def _largest_shares(layer: nn.Module, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    contribution = _contributions(layer, a, w)  # (images, in channels, out channels, positions), all >= 0
    total = contribution.sum(1, keepdim=True)
    # a neuron whose total is 0 has no contribution above 0: its shares come out 0, not NaN
    return contribution.div_(total.clamp_min(torch.finfo(total.dtype).tiny)).amax(dim=(2, 3))


def _contributions(layer: nn.Module, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What each input channel adds to each neuron of ``layer`` if its weights were ``w``:
    (images, in channels, out channels, positions)."""
    outs, ins = w.shape[:2]
    if isinstance(layer, nn.Conv2d):
        per_channel = w.transpose(0, 1).reshape(ins * outs, 1, *w.shape[2:])  # one conv group per input channel
        out = F.conv2d(a, per_channel, None, layer.stride, layer.padding, layer.dilation, groups=ins)
        return out.reshape(a.shape[0], ins, outs, -1)
    return torch.einsum("ntj,oj->njot", a.reshape(a.shape[0], -1, ins), w)
