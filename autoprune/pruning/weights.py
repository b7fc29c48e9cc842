"""Unstructured weight pruning: the ``Space`` (``autoprune.pruning.base``) of single weights.

Every conv and linear layer is a unit whose ratio is the share of its weights set to zero, the
smallest in magnitude first (``scope="layer"``); or one unit for the whole network with a single
magnitude threshold over every layer (``scope="global"``, as in Han et al. 2015 and the lottery
ticket papers). The subnet keeps the dense architecture: its pruned weights are zeros, and the
zeros are its mask (``weight_masks``), which fine-tuning keeps (``train(masks=...)``).

Costs (``autoprune.measure.cost.SparseCosts``) count what a sparse kernel would do: parameters without
the zeros, MACs without the multiplications by them. A dense kernel still does them all, so latency does
not fall with them: the predicted latency is the dense network's, the search refuses latency budgets, and
the bench study ``granularity`` measures it.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.measure.cost import SparseCosts
from autoprune.measure.layers import trace_layers
from autoprune.pruning.base import Group, Space
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.criteria import Batch

SCOPES = ("layer", "global")
GLOBAL = "global"  # the one unit of scope global
WEIGHT_SPACE = SpaceConfig(ratio_max=0.95, source="built-in (weights)")  # the bounds when no --space is given


class WeightSpace(Space):
    """Prunable weights of ``model``, one ratio per layer (or one for all), and the ratio -> subnet map.

    ``model`` is never modified. A unit's ``channels`` are its weights (for scope global, those of every
    layer in ``layers``, concatenated in that order, each layer's weight flattened); ``order`` ranks them
    by magnitude, smallest first. The skip patterns of ``config`` leave layers out. Raises ``UserError`` for
    a scope not in ``SCOPES`` and where no conv or linear layer is left to prune.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, config: SpaceConfig | None = None, *,
                 scope: str = "layer") -> None:
        if scope not in SCOPES:
            raise UserError(f"--mask-scope must be one of {', '.join(SCOPES)}")
        super().__init__(model, example_input, config or WEIGHT_SPACE, criterion="magnitude", seed=0)
        self.scope = scope
        names = {m: n for n, m in self.model.named_modules()}
        shapes, _ = trace_layers(self.model, self.example_input, names)  # the classifier's weights are pruned too
        self.layers = [name for name, s in shapes.items() if s.kind in ("conv", "depthwise", "linear")
                       and not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.skip)]
        if not self.layers:
            raise UserError("the model has no conv or linear layers to prune weights of (after skips)")
        modules = dict(self.model.named_modules())
        self._sizes = [modules[name].weight.numel() for name in self.layers]
        if scope == "layer":
            self._set_groups([Group(name, size, [name], *self.config.bounds_for(name))
                              for name, size in zip(self.layers, self._sizes)])
        else:
            self._set_groups([Group(GLOBAL, sum(self._sizes), list(self.layers), *self.config.bounds_for(GLOBAL))])
        self._rank(self.model)
        self.costs = SparseCosts(shapes, self.removed_weights)

    def _rank(self, model: nn.Module) -> None:
        """Each unit's weights of ``model``, smallest magnitude first; for scope global, also which
        layer each of them belongs to, in that order."""
        for group, order in _magnitude_orders(model, self.layers, self.scope).items():
            self._by_name[group].order = order
        if self.scope == "global":
            layer_of = torch.repeat_interleave(torch.arange(len(self.layers)), torch.tensor(self._sizes))
            self._layer_of = layer_of[self.groups[0].order]

    def rerank(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> None:
        """Rank the weights again by ``model``'s magnitudes (``batches`` are not needed)."""
        self.model = copy.deepcopy(model).cpu().eval()
        self._rank(self.model)

    @property
    def orders(self) -> dict[str, list[int]]:
        """Nothing: a magnitude ranking is quicker to redo from the weights than to ship, so a worker's
        space (``WeightSpace(model, example_input, config, scope=...)``) ranks again."""
        return {}

    def removed_weights(self, kept: Mapping[str, int]) -> dict[str, int]:
        """Weights each layer loses when the units keep ``kept`` weights (missing units keep all)."""
        if self.scope == "layer":
            return {g.name: g.channels - kept.get(g.name, g.channels) for g in self.groups}
        group = self.groups[0]
        count = group.channels - kept.get(GLOBAL, group.channels)
        per_layer = torch.bincount(self._layer_of[:count], minlength=len(self.layers)).tolist()
        return dict(zip(self.layers, per_layer))

    def readers(self, name: str) -> set[str]:
        """Raises ``ValueError``: a unit of weights has no reading layers of its own."""
        raise ValueError("a unit of weights has no reading layers of its own: --damage recon needs filter pruning")

    # --- pruning -----------------------------------------------------------------------------

    def kept_indices(self, ratios: Mapping[str, float]) -> dict[str, list[int]]:
        """Per unit, the flat indices of the weights the magnitude ranking keeps at ``ratios``, ascending:
        for scope layer, indices into the layer's ``weight.flatten()``; for scope global, into the
        concatenation of every layer's flattened weight, in ``layers`` order. ``prune(ratios)`` zeroes every
        other weight (the weights kept that are already zero stay zero)."""
        kept = self.kept_channels(ratios)
        return {g.name: torch.sort(g.order[g.channels - kept[g.name]:]).values.tolist() for g in self.groups}

    def kept(self, ratios: Mapping[str, float]) -> dict[str, int]:
        """The weights each unit keeps at ``ratios``: a count (``kept_channels``). Which weights is the subnet's
        own record, its zeros (``weight_masks``), since iterative magnitude pruning chooses them by the
        subnet's magnitudes, which are not known before it is trained."""
        return self.kept_channels(ratios)

    def prune(self, ratios: Mapping[str, float],
              weights: Mapping[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, int]]:
        """A copy of the model with the weights the trained model ranks smallest set to zero, and
        ``kept(ratios)``. ``weights`` (an initialisation, say) replace the trained values
        first: the zeros still fall where the trained model's magnitudes put them."""
        kept = self.kept(ratios)
        subnet = copy.deepcopy(self.model)
        if weights is not None:
            subnet.load_state_dict(weights)
        self._zero(subnet, kept, {g.name: g.order for g in self.groups})
        return subnet, kept

    def prune_further(self, subnet: nn.Module, current: Mapping[str, int], kept: Mapping[str, int]) -> nn.Module:
        """Zero more of ``subnet``'s weights, in place, until each unit keeps ``kept`` weights (counts, as
        ``kept`` gives them): the smallest by the subnet's own magnitudes, as iterative magnitude pruning
        does between its fine-tunes. The weights already zero are the smallest, so they stay pruned.
        Raises ``TypeError`` for indices (``kept_indices``) instead of counts, and ``ValueError`` where a
        unit would keep more weights than ``current``."""
        given = sorted(name for name, count in [*current.items(), *kept.items()] if not isinstance(count, int))
        if given:
            raise TypeError(f"prune_further takes the weights each unit keeps as counts (WeightSpace.kept), "
                            f"not their indices: units {given}")
        grown = sorted(name for name, count in kept.items() if count > current[name])
        if grown:
            raise ValueError(f"units {grown} would keep more weights than the subnet still has")
        self._zero(subnet, kept, _magnitude_orders(subnet, self.layers, self.scope))
        return subnet

    def _zero(self, model: nn.Module, kept: Mapping[str, int], orders: Mapping[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        for group in self.groups:
            keep = torch.ones(group.channels, dtype=torch.bool)
            keep[orders[group.name][: group.channels - kept[group.name]]] = False
            sizes = [modules[name].weight.numel() for name in group.members]
            with torch.no_grad():
                for name, mask in zip(group.members, keep.split(sizes)):
                    weight = modules[name].weight
                    weight.mul_(mask.view_as(weight).to(weight.device, weight.dtype))


def _magnitude_orders(model: nn.Module, layers: list[str], scope: str) -> dict[str, torch.Tensor]:
    """Each unit's weights, smallest |w| first (stable, so zeros and ties keep their places)."""
    modules = dict(model.named_modules())
    flat = {name: modules[name].weight.detach().abs().flatten().cpu() for name in layers}
    if scope == "layer":
        return {name: torch.argsort(w, stable=True) for name, w in flat.items()}
    return {GLOBAL: torch.argsort(torch.cat(list(flat.values())), stable=True)}


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The mask of a weight-pruned model, by parameter name: where its conv and linear weights are
    non-zero, for the layers that have zeros."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = module.weight.detach() != 0
            if not bool(mask.all()):
                masks[f"{name}.weight" if name else "weight"] = mask.cpu()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero ``model``'s parameters where ``masks`` (``weight_masks``) are false, in place."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))
