"""``autoprune inspect``: what a search would see of a model, before any search runs.

Each group (name, channels, the step its width moves in and why, member layers), every layer never
pruned with the reason, the MACs and params of the unpruned network (traced from what it runs and from
the analytic model, with how far they agree on random subnets) and the memory layout it runs in. The
model is loaded and checked exactly as ``autoprune search`` loads it (``pipeline.load_workbench``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from autoprune.models.contract import contract_of
from autoprune.report import describe_cost_check, space_tables


@dataclass
class Inspection:
    """What ``autoprune inspect`` reports (``inspect_model``): the model and data names, the weights file (None
    where the model was inspected untrained), the memory ``layout`` it runs in, the set-up's ``notes``, the
    searched ``groups`` (``Space.describe``), the layers never pruned with the reason, and ``cost_check``
    (the analytic MACs and params against the traced ones)."""

    model: str
    data: str
    weights: str | None
    layout: str
    notes: list[str]
    groups: list[dict]
    unprunable: dict[str, str]
    cost_check: dict

    def to_dict(self) -> dict:
        """Its fields as a dict, as ``autoprune inspect --json`` prints them."""
        return dict(self.__dict__)


def inspect_model(config) -> Inspection:
    """Load ``config``'s model and data (``SearchConfig``; weights optional: structure and costs do not depend
    on them) and build its pruning space. Raises ``UserError`` for a model, data or space that cannot be
    loaded."""
    from autoprune.config import shipped_weights
    from autoprune.workbench import load_workbench

    untrained = config.weights is None and shipped_weights(config) is None
    _, model, space = load_workbench(config, untrained=untrained)
    contract = contract_of(model)
    notes = list(contract.notes)
    if untrained:
        notes.append("no --weights given: the structure and costs below do not depend on the weights")
    return Inspection(config.model, config.data, config.weights or shipped_weights(config), contract.layout, notes, space.describe(),
                      dict(space.unprunable), space.cost_check)


def print_inspection(result: Inspection, as_json: bool = False) -> None:
    """Print ``result`` to stdout: the model, layout and notes, the unpruned network's MACs (FLOPs = 2 x MACs) and
    params traced and analytic, the cost check, and tables of the groups and of the layers never pruned;
    with ``as_json``, the JSON of ``to_dict`` instead."""
    from rich.console import Console
    from rich.table import Table

    console = Console()  # stdout: what was asked for, not progress
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    config = {"groups": result.groups, "unprunable": result.unprunable, "cost_check": result.cost_check}
    groups, unprunable, _ = space_tables(config)
    base = result.cost_check.get("base") or {}
    console.print(f"{result.model} on {result.data}" + (f", weights {result.weights}" if result.weights else ""),
                  markup=False)
    console.print(f"layout: {result.layout}", markup=False)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if base:
        console.print(f"MACs (FLOPs = 2 x MACs): {base['traced_macs']:,} traced, {base['analytic_macs']:,} analytic; "
                      f"params: {base['traced_params']:,} traced, {base['analytic_params']:,} analytic", markup=False)
    console.print(describe_cost_check(result.cost_check), markup=False)
    table = Table(title=f"{len(groups)} group{'s' if len(groups) != 1 else ''} searched")
    for column in ("group", "channels", "step", "layers"):
        table.add_column(column, overflow="fold")
    for row in groups:
        table.add_row(*row)
    console.print(table)
    if unprunable:
        table = Table(title=f"{len(unprunable)} layer{'s' if len(unprunable) != 1 else ''} never pruned")
        table.add_column("layer", overflow="fold")
        table.add_column("why", overflow="fold")
        for row in unprunable:
            table.add_row(*row)
        console.print(table)
