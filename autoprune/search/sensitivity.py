"""Per-group sensitivity by binary search, as in Approximated Oracle Filter Pruning (Ding et al. 2019).

For each group alone, find the largest ratio on the space's grid whose damage stays within a
tolerance. Damage is either the drop of the adaptive-BN proxy accuracy (``proxy``) or the
relative reconstruction error of the layers that read the group's channels (``recon``:
||base - pruned||^2 / ||base||^2 of their outputs). Damage grows with the ratio, so each group
needs about log2(grid points) evaluations instead of one per grid point.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from autoprune.measure import AdaptiveBNEvaluator
from autoprune.progress import progress_bar
from autoprune.pruning.space import PruningSpace
from autoprune.search.allocation import ratio_grid

DAMAGES = ("proxy", "recon")


@dataclass
class GroupSensitivity:
    """One group's result of the per-group binary search (AOFP, Ding et al. 2019): its width, the largest ratio
    whose damage stays within the tolerance, the fraction of the baseline's MACs that ratio saves alone, and every
    ``(ratio, damage)`` point evaluated (damage: proxy-accuracy drop, or relative reconstruction error)."""

    group: str
    channels: int
    macs_saved_at_max: float  # fraction of baseline MACs saved by this group alone at its safe ratio
    max_safe_ratio: float
    curve: list[tuple[float, float]]  # (ratio, damage) points evaluated, by ratio


def measure_sensitivity(
    space: PruningSpace,
    evaluator: AdaptiveBNEvaluator,
    *,
    tolerance: float,
    damage: str = "proxy",
    quiet: bool = False,
) -> list[GroupSensitivity]:
    """Each group's largest ratio on its grid (``allocation.ratio_grid``) whose ``damage`` alone stays
    within ``tolerance`` (a proxy-accuracy drop, or a relative reconstruction error), by binary search:
    about log2(grid points) + 1 evaluations per group. One result per group, in the space's order.
    An unknown ``damage`` raises ValueError."""
    damage_of = _damage_function(space, evaluator, damage)
    results = []
    grids = {g.name: ratio_grid(g.low, g.high, space.config.step) for g in space.groups}
    total = sum(int(np.ceil(np.log2(len(grid)))) + 1 for grid in grids.values())
    with progress_bar(f"sensitivity ({damage})", total, quiet=quiet) as bar:
        for g in space.groups:
            grid = grids[g.name]
            curve: dict[float, float] = {}

            def within(index: int, name: str = g.name, points: dict = curve, grid: list = grid) -> bool:
                ratio = grid[index]
                if ratio not in points:
                    points[ratio] = damage_of({name: ratio})
                    bar.advance()
                return points[ratio] <= tolerance

            lo, hi = 0, len(grid) - 1  # grid[lo] is safe by definition (ratio low, usually 0)
            if within(hi):
                lo = hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if within(mid):
                    lo = mid
                else:
                    hi = mid
            safe = grid[lo]
            saved = 1.0 - space.cost({g.name: safe}).macs / space.base_cost.macs
            results.append(GroupSensitivity(g.name, g.channels, saved, safe, sorted(curve.items())))
            bar.note(f"{g.name}: {safe:.2f}")
    return results


def _damage_function(
    space: PruningSpace, evaluator: AdaptiveBNEvaluator, damage: str
) -> Callable[[dict[str, float]], float]:
    if damage == "proxy":
        reference = evaluator.score(space.prune({})[0])

        def proxy_drop(ratios: dict[str, float]) -> float:
            return reference - evaluator.score(space.prune(ratios)[0])

        return proxy_drop
    if damage == "recon":
        batch = evaluator.calibration_batch()
        base_outputs = _consumer_outputs(space.model, space, batch, None)

        def recon_error(ratios: dict[str, float]) -> float:
            (name,) = ratios
            subnet, _ = space.prune(ratios)
            pruned = _consumer_outputs(subnet, space, batch, name)
            num = sum(float((base_outputs[k] - v).pow(2).sum()) for k, v in pruned.items())
            den = sum(float(base_outputs[k].pow(2).sum()) for k in pruned)
            return num / max(den, 1e-12)

        return recon_error
    raise ValueError(f"unknown damage '{damage}' (choose from {', '.join(DAMAGES)})")


@torch.no_grad()
def _consumer_outputs(
    model: nn.Module, space: PruningSpace, batch: torch.Tensor, group: str | None
) -> dict[str, torch.Tensor]:
    """Outputs of the layers that read a group's channels (all groups' readers when None)."""
    readers = space.readers(group) if group else {r for g in space.group_names for r in space.readers(g)}
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
        for name in readers
    ]
    try:
        model.eval().cpu()(batch.cpu())
    finally:
        for h in handles:
            h.remove()
    return outputs


def write_sensitivity(run_dir: Path, results: list[GroupSensitivity], tolerance: float, damage: str) -> None:
    """Write ``results`` to ``run_dir``/sensitivity.csv (one row per group; the curve as ``ratio:damage`` pairs)
    and draw sensitivity.png (``plot_sensitivity``)."""
    with open(run_dir / "sensitivity.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "channels", "macs_saved_at_max", "max_safe_ratio", "curve"])
        for r in results:
            curve = ";".join(f"{ratio:g}:{value:.6f}" for ratio, value in r.curve)
            writer.writerow([r.group, r.channels, f"{r.macs_saved_at_max:.6f}", r.max_safe_ratio, curve])
    plot_sensitivity(run_dir / "sensitivity.png", results, tolerance, damage)


def read_sensitivity(where: Path) -> list[GroupSensitivity] | None:
    """The results in ``where`` (a run directory or the CSV itself); None if there are none."""
    path = where if where.suffix == ".csv" else where / "sensitivity.csv"
    if not path.is_file():
        return None
    results = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            curve = [tuple(float(x) for x in p.split(":")) for p in row["curve"].split(";") if p]
            results.append(GroupSensitivity(row["group"], int(row["channels"]), float(row["macs_saved_at_max"]),
                                            float(row["max_safe_ratio"]), curve))  # type: ignore[arg-type]
    return results


def plot_sensitivity(path: Path | BinaryIO, results: list[GroupSensitivity], tolerance: float, damage: str) -> None:
    """Draw each group's damage against its ratio, with the ``tolerance`` line (left), and the MACs each group
    saves alone at its safe ratio (right), as a PNG to ``path`` (a file name or a binary stream)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for r in results:
        xs, ys = zip(*r.curve) if r.curve else ((), ())
        curves.plot(xs, ys, "-o", markersize=3, label=r.group)
    curves.axhline(tolerance, color="black", linestyle="--", label="tolerance")
    curves.set_xlabel("pruning ratio of the group alone")
    curves.set_ylabel("proxy accuracy drop" if damage == "proxy" else "relative reconstruction error")
    curves.set_title("damage per group (points evaluated by the binary search)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=6, ncol=2)
    names = [r.group for r in results]
    bars.barh(names, [r.max_safe_ratio for r in results], color="tab:blue")
    bars.set_xlabel("largest safe ratio")
    bars.invert_yaxis()
    bars.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
