"""The channel (filter) pruning space: a model's prunable groups of coupled channels, one ratio each, and the
maps ratios -> widths -> cost and ratios -> subnet (the ``Space`` interface, ``autoprune.pruning.base``).

``PruningSpace`` takes its structure from Torch-Pruning's dependency graph (``autoprune.pruning.graph``);
what it adds is stable names (the module path of each group's root layer), ratios keyed by those names
and applied to the copy being pruned, a channel ranking computed once per criterion (or handed over
ready-made), the analytic cost model (``autoprune.measure.cost.LayerCosts``) so a candidate's MACs and
params are known before anything is pruned, and checks that everything it prints is true:

- every group is probed at set-up: a copy pruned to about half its width must run, in eval and in
  train mode, with the widths asked for; a group that fails is listed in ``unprunable`` with why,
  and the search goes on with the rest;
- a group's width moves in the units its channels are pruned in (the pairs ``torch.chunk`` halves
  make, the blocks a reshape into channels makes) and in the multiples the layers it feeds need
  (GroupNorm groups, attention heads, ``round_to``);
- every conv/linear/recurrent/attention layer is in a group or in ``unprunable``, with the reason;
- the analytic cost is checked against the traced count (``autoprune.measure.count``) of the
  baseline and of pruned subnets; where they differ (an op the model does not know), every
  candidate is counted by pruning a copy and tracing it (``cost_mode == "traced"``).
"""

from __future__ import annotations

import copy
import fnmatch
import random
import time
from collections.abc import Mapping, Sequence
from math import lcm

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError, one_line
from autoprune.measure.cost import Cost, LayerCosts
from autoprune.measure.count import count_cost
from autoprune.measure.layers import RNN_GATES, ROOT_TYPES, LayerShape, trace_layers
from autoprune.models.contract import contract_of, logits_of
from autoprune.pruning.base import Group, Space
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.criteria import Batch, Criterion, CriterionContext, get_criterion
from autoprune.pruning.graph import (
    apply_kept,
    build_graph,
    channel_units,
    returned_shapes,
    searchable_units,
    width_step,
)

__all__ = ["Cost", "Group", "PruningSpace", "Space", "apply_kept"]

COST_CHECK_SUBNETS = 2  # random subnets whose analytic cost is checked against the traced count at set-up


class PruningSpace(Space):
    """Prunable channel groups of ``model`` and the ratio -> subnet map.

    ``model`` is never modified; every subnet is pruned on a deep copy. ``batches`` are training
    (images, labels) batches for the data-driven criteria. ``orders`` are channel rankings computed
    before (another space's ``orders``): given them, the criterion is not run and the groups are not
    probed again, so a remote worker rebuilds the space its driver ranked and checked without the
    data or the time that took; a group without an order there was left out by the driver.

    Raises ``UserError`` where the model does not run on ``example_input``, the criterion cannot score
    it, no group can be pruned, or the groups run pruned alone but not together; ``ValueError`` for
    ``orders`` of groups this space does not have or that do not rank each channel once.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        config: SpaceConfig | None = None,
        *,
        criterion: str = "l1",
        seed: int = 0,
        batches: Sequence[Batch] | None = None,
        orders: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(model, example_input, config or SpaceConfig(), criterion=criterion, seed=seed)
        names = {m: n for n, m in self.model.named_modules()}
        self._traced: dict[tuple, Cost | None] = {}  # traced costs by the widths of every group, in group order
        key = contract_of(self.model).output_key
        self._shapes, classifier = trace_layers(self.model, self.example_input, names, lambda out: logits_of(out, key))
        ignored = [m for m in (classifier,) if m is not None]
        self.classifier = names.get(classifier)  # never pruned: its outputs are the classes
        graph, changes, outputs = build_graph(self.model, self.example_input)
        names.update(self._loose_parameters(graph))
        tic = time.perf_counter()
        score = None if orders is not None else _scorer(criterion, CriterionContext(self.model, batches, seed))
        self.ranking_seconds = time.perf_counter() - tic  # the criterion's pass over the data, then each group's ranking
        if self.classifier is not None:
            self.unprunable[self.classifier] = "the classifier: its outputs are the classes"
        # group name -> [(module name, "in"/"out", channels of the module per channel of the group)]
        self._effects: dict[str, list[tuple[str, str, float]]] = {}
        returned = {node for node in outputs if node.module is not classifier}  # auxiliary heads' outputs
        groups = []
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
            group = self._group_of(tp_group, graph, names, changes, returned, score, orders)
            if group is not None:
                groups.append(group)
        self._set_groups(groups)
        unknown = sorted(set(orders or {}) - set(self._by_name))
        if unknown:
            raise ValueError(f"orders given for group(s) {unknown} that this space does not have")
        if orders is None:
            self._returned = returned_shapes(self.model, self.example_input)
            self._probe_groups()
        self._list_unpruned(names)
        if not self.groups:
            detail = "; ".join(f"{k}: {v}" for k, v in self.unprunable.items())
            raise UserError("the model has no prunable groups" + (f" ({detail})" if detail else ""))
        self.costs = LayerCosts(self._shapes, {g.name: g.channels for g in self.groups}, self._effects,
                                self._traced_cost)
        self._check_costs()

    def _group_of(self, tp_group, graph: tp.DependencyGraph, names: dict, changes: dict, returned: set,
                  score: Criterion | None, orders: Mapping[str, Sequence[int]] | None) -> Group | None:
        """The searched group of one Torch-Pruning group, ranked; None (and its layers in ``unprunable``, with
        why) where it cannot be searched."""
        root = tp_group[0].dep.target.module
        name = names[root]
        channels = len(tp_group[0].idxs)
        effects, members = [], []
        for dep, idxs in tp_group:
            target = names.get(dep.target.module)
            if target is None or target not in self._shapes:
                continue
            dim = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            effects.append((target, dim, len(idxs) / channels))
            if dim == "out" and target not in members:
                members.append(target)
        if orders is not None and name not in orders:
            self.unprunable[name] = "left out by the space that ranked the channels"
            return None
        why = self._why_unprunable(name, tp_group, names, changes, returned)
        units, grouped_rule = None, None
        if why is None:
            units, grouped_rule, why = searchable_units(graph, root, tp_group, names, channels)
        if why is not None:
            for member in members or [name]:
                self.unprunable.setdefault(member, why if member == name else f"in group '{name}': {why}")
            return None
        unit = len(units[0])
        rule, rules = width_step(tp_group, names)
        if grouped_rule is not None:
            rules.insert(0, grouped_rule)
        elif unit > 1:
            rules.insert(0, f"its channels are pruned in units of {unit}")
        group = Group(name, channels, members, *self.config.bounds_for(name), step=lcm(unit, rule, self.config.round_to),
                      unit=unit, rules=rules)
        if orders is not None:
            group.order = _given_order(orders, name, channels)
        else:
            tic = time.perf_counter()
            try:
                group.order, group.importance = _ranked(score, tp_group, units)
            except Exception as exc:  # noqa: BLE001  (a layer pattern the criterion cannot rank)
                self.unprunable[name] = f"criterion '{self.criterion}' cannot rank its channels: {one_line(exc)}"
                return None
            finally:
                self.ranking_seconds += time.perf_counter() - tic
        self._effects[name] = effects
        return group

    def _loose_parameters(self, graph: tp.DependencyGraph) -> dict[nn.Parameter, str]:
        """Parameters outside any layer that Torch-Pruning cuts with a group's channels (a position embedding
        of shape (1, tokens, C)): each becomes an entry of the cost model, its size proportional to its
        channels, taken out of its module's fixed count. Returns their names."""
        param_names = {p: n for n, p in self.model.named_parameters()}
        loose = {}
        for p, dim in graph.unwrapped_parameters:
            name = param_names.get(p)
            if name is None:
                continue
            owner = self._shapes.get(name.rpartition(".")[0])
            if owner is not None and owner.kind == "other":
                owner.fixed_params -= p.numel()
            width = p.shape[dim]
            self._shapes[name] = LayerShape("param", width, width, kernel=p.numel() // width)
            loose[p] = name
        return loose

    def _why_unprunable(self, name: str, tp_group, names: dict, changes: dict, outputs: set) -> str | None:
        """Why the group rooted at ``name`` is not searched; None when it is."""
        returned = [dep.target for dep, _ in tp_group
                    if dep.target in outputs and (dep.target.type == tp.ops.OPTYPE.OUTPUT
                                                  or getattr(dep.handler, "__name__", "") == "prune_out_channels")]
        if returned:
            return "its outputs are what the model returns" + (
                f" ('{names[returned[0].module]}')" if returned[0].module in names else "")
        pattern = next((p for p in self.config.skip if fnmatch.fnmatchcase(name, p)), None)
        if pattern is not None:
            return f"skipped by the search space (skip: '{pattern}')"
        for dep, _ in tp_group:
            change = changes.get(dep.target) or changes.get(dep.source)
            if change is not None:
                return f"its channels pass through {change}, which Torch-Pruning cannot map"
        return None

    def _probe_groups(self) -> None:
        """Prune a copy to about half of every group's width and run it in eval and train mode. Where that
        fails, probe each group alone: a group that fails alone is moved to ``unprunable`` with the error;
        if the rest still fail together, the model is refused in one line."""
        if self._probe({g.name: 0.5 for g in self.groups}) is None:
            return
        for group in list(self.groups):
            kept = self.kept_channels({group.name: 0.5})[group.name]
            error = self._probe({group.name: 0.5})
            if error is None:
                continue
            self._set_groups([g for g in self.groups if g is not group])
            del self._effects[group.name]
            reason = f"pruning it to {kept} of {group.channels} channels fails: {one_line(error)}"
            for member in group.members or [group.name]:
                self.unprunable[member] = reason if member == group.name else f"in group '{group.name}': {reason}"
        error = self._probe({g.name: 0.5 for g in self.groups}) if self.groups else None
        if error is not None:  # each group runs pruned alone, but not all of them pruned together
            raise UserError(f"the model does not run with its groups {self.group_names} pruned together, though "
                            f"each runs pruned alone: {one_line(error)}")

    def _probe(self, ratios: Mapping[str, float]) -> Exception | None:
        """The error of pruning a copy to ``ratios`` and running it in eval and in train mode; None if it runs
        (and its traced cost is kept)."""
        batch = self.example_input.expand(2, *self.example_input.shape[1:]).clone()  # train-mode BN needs two
        try:
            subnet, _ = self.prune(ratios)
            cost = count_cost(subnet, self.example_input)  # runs it in eval mode; kept for the cost check
            with torch.no_grad():
                subnet.train()(batch)
            returned = returned_shapes(subnet, self.example_input)
            if returned != self._returned:
                raise RuntimeError(f"what the model returns changes shape: {self._returned} -> {returned}")
            self._traced[tuple(self.kept_channels(ratios).values())] = cost
        except Exception as exc:  # noqa: BLE001  (any failure means: not prunable this way)
            return exc
        return None

    def _list_unpruned(self, names: dict[nn.Module, str]) -> None:
        """Every layer with output channels is in a group or in ``unprunable`` with a reason."""
        searched = {m for g in self.groups for m in g.members}
        for module, name in names.items():
            if name in searched or name in self.unprunable or name not in self._shapes:
                continue
            if isinstance(module, ROOT_TYPES):
                self.unprunable[name] = "no group of Torch-Pruning's graph prunes its output channels"
            elif isinstance(module, tuple(RNN_GATES)):
                self.unprunable[name] = "a recurrent layer: its hidden width is not searched (its input width is)"
            elif isinstance(module, nn.MultiheadAttention):
                self.unprunable[name] = "attention outside every searched group"

    def _check_costs(self) -> None:
        """Check the analytic model against the traced count on the baseline, the probed subnet and
        ``COST_CHECK_SUBNETS`` random subnets (``LayerCosts.compare``); where any differs, costs are traced
        from then on."""
        rng = random.Random(self.seed)
        checks = [{}, {g.name: 0.5 for g in self.groups}]  # the baseline and the probed subnet
        checks += [{g.name: rng.uniform(g.low, g.high) for g in self.groups} for _ in range(COST_CHECK_SUBNETS)]
        self.costs.compare([self.kept_channels(ratios) for ratios in checks])

    def rerank(self, model: nn.Module, batches: Sequence[Batch] | None = None) -> None:
        """Take ``model``'s weights (this space's architecture, trained further: after sparsity training,
        say) and rank every group's channels again on them. Widths, costs and bounds stay as they are."""
        self.model = copy.deepcopy(model).cpu().eval()
        names = {m: n for n, m in self.model.named_modules()}
        modules = dict(self.model.named_modules())
        ignored = [modules[self.classifier]] if self.classifier is not None else []
        graph = build_graph(self.model, self.example_input).graph
        score = _scorer(self.criterion, CriterionContext(self.model, batches, self.seed))
        for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
            root = tp_group[0].dep.target.module
            group = self._by_name.get(names[root])
            if group is not None:
                units = channel_units(graph, root, group.channels)
                try:
                    group.order, group.importance = _ranked(score, tp_group, units)
                except Exception as exc:
                    raise UserError(f"criterion '{self.criterion}' cannot rank the channels of group "
                                    f"'{group.name}': {one_line(exc)}") from exc

    def _traced_cost(self, kept: Mapping[str, int]) -> Cost | None:
        """The subnet pruned to ``kept`` and counted as it runs (cached by widths); None where the model does
        not run at those widths (a candidate there fails when it is scored, with the model's own error)."""
        widths = tuple(kept.get(g.name, g.channels) for g in self.groups)
        if widths not in self._traced:
            subnet = self.model
            if any(w < g.channels for g, w in zip(self.groups, widths)):
                subnet = copy.deepcopy(self.model)
                indices = {g.name: sorted(g.order[g.channels - w:]) for g, w in zip(self.groups, widths)
                           if w < g.channels}
                apply_kept(subnet, self.example_input, indices, {g.name: g.channels for g in self.groups})
            try:
                self._traced[widths] = count_cost(subnet, self.example_input)  # eval, on the CPU
            except Exception:  # noqa: BLE001  (a model that refuses some widths)
                self._traced[widths] = None
        return self._traced[widths]


    # --- ratios -> subnet ------------------------------------------------------------------------

    def kept_indices(self, ratios: Mapping[str, float]) -> dict[str, list[int]]:
        """Indices of the channels each group keeps, by the criterion's ranking, ascending."""
        kept = self.kept_channels(ratios)
        return {g.name: sorted(g.order[g.channels - kept[g.name] :]) for g in self.groups}

    def kept(self, ratios: Mapping[str, float]) -> dict[str, list[int]]:
        """``kept_indices``: the channel indices are what a subnet records and how it is rebuilt."""
        return self.kept_indices(ratios)

    def prune(
        self, ratios: Mapping[str, float], weights: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[nn.Module, dict[str, list[int]]]:
        """A pruned deep copy of the model at ``ratios`` and the kept channel indices per group.

        ``weights``, a state dict of the unpruned model (its initialisation, say), replaces the
        trained weights before pruning: the channels kept are still the ones the trained model's
        ranking chose, so the subnet has the same structure and holds those weights' values at them.
        """
        kept = self.kept_indices(ratios)
        subnet = copy.deepcopy(self.model)
        if weights is not None:
            subnet.load_state_dict(weights)
        apply_kept(subnet, self.example_input, kept, {g.name: g.channels for g in self.groups})
        return subnet, kept

    def prune_further(
        self, subnet: nn.Module, current: Mapping[str, list[int]], kept: Mapping[str, list[int]]
    ) -> nn.Module:
        """Prune ``subnet``, this space's model already pruned to keep ``current``, in place down to ``kept``.

        Both are channel indices of the unpruned model (``kept_indices``), and each group's ``kept``
        must lie within its ``current``. Pruning keeps the surviving channels in their order, so
        channel j of the subnet is original channel ``current[name][j]``: that map turns ``kept``
        into the subnet's own indices. The weights of the channels kept carry over, which is what an
        iterative schedule that fine-tunes between its steps needs.
        """
        relative = {}
        for g in self.groups:
            position = {channel: j for j, channel in enumerate(current[g.name])}
            outside = sorted(set(kept[g.name]) - position.keys())
            if outside:
                raise ValueError(f"group '{g.name}': channels {outside} are not in the subnet any more")
            relative[g.name] = sorted(position[channel] for channel in kept[g.name])
        example = self.example_input.to(next(subnet.parameters()).device)
        return apply_kept(subnet, example, relative, {name: len(channels) for name, channels in current.items()})

    def readers(self, name: str) -> set[str]:
        """Layers that read the group's channels as their inputs (the 'next layers')."""
        return {module for module, dim, _ in self._effects[name] if dim == "in"}

    @property
    def orders(self) -> dict[str, list[int]]:
        """Each group's channel ranking, least important first; ``orders=`` rebuilds the space from it."""
        return {g.name: list(g.order) for g in self.groups}


def _scorer(criterion: str, context: CriterionContext) -> Criterion:
    try:
        return get_criterion(criterion, context)
    except UserError:
        raise
    except Exception as exc:  # a model the data-driven pass cannot run (e.g. its output is no logits)
        raise UserError(f"criterion '{criterion}' cannot score this model on the training batches: {exc}") from exc


def _ranked(score: Criterion, tp_group: tp.dependency.group.Group,
            units: list[list[int]]) -> tuple[list[int], list[float]]:
    """The group's channels, least important unit first by ``score`` (a unit scores the sum of its channels'
    scores; its channels stay together), and the score of each channel."""
    with torch.no_grad():
        importance = score(tp_group).detach().float().cpu()
    if importance.numel() != sum(len(u) for u in units):
        raise RuntimeError(f"{importance.numel()} scores for {sum(len(u) for u in units)} channels")
    unit_scores = torch.stack([importance[u].sum() for u in units])
    order = [channel for i in torch.argsort(unit_scores, stable=True).tolist() for channel in units[i]]
    return order, importance.tolist()


def _given_order(orders: Mapping[str, Sequence[int]], name: str, channels: int) -> list[int]:
    """The ready-made ranking of group ``name``, checked to rank each of its channels once."""
    order = [int(i) for i in orders[name]]
    if sorted(order) != list(range(channels)):
        raise ValueError(f"the order given for group '{name}' does not rank each of its {channels} channels once")
    return order


