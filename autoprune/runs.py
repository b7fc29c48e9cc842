"""Past runs, read back from their directories: ``autoprune runs`` lists them, ``autoprune show`` prints one."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from autoprune.errors import UserError
from autoprune.export import ExportCheck
from autoprune.progress import output
from autoprune.report import describe_latency, describe_speedup, pareto_front
from autoprune.results import RunDir, SubnetSpec


def subnets_table(baseline: dict, subnets: list[SubnetSpec], title: str = "fine-tuned subnets") -> Table:
    """The baseline (pareto.json's: ``macs``, ``params``, ``latency_ms``, ``proxy_acc``, ``test_acc``) and the
    fine-tuned subnets, best test accuracy first, the Pareto ones marked: latency as measured on the run's target
    with the spread of its rounds, and the speedup over the baseline measured beside it."""
    target = next((s.target for s in subnets if s.target), None)
    table = Table(title=title, caption=f"latency measured on {target}" if target else None)
    for col in ("subnet", "MACs (M)", "MACs %", "params (M)", "latency (ms)", "speedup", "proxy acc", "test acc",
                "Pareto"):
        table.add_column(col, justify="right")
    table.add_row("baseline", f"{baseline['macs'] / 1e6:.2f}", "100.0", f"{baseline['params'] / 1e6:.3f}",
                  f"{baseline['latency_ms']:.3f}", "", f"{baseline['proxy_acc']:.2%}", f"{baseline['test_acc']:.2%}",
                  "")
    front_ids = {s.id for s in pareto_front(subnets)}
    for s in sorted(subnets, key=lambda r: -r.test_acc):
        table.add_row(s.id, f"{s.macs / 1e6:.2f}", f"{100 * s.macs / baseline['macs']:.1f}", f"{s.params / 1e6:.3f}",
                      describe_latency(s), describe_speedup(s), f"{s.proxy_acc:.2%}", f"{s.test_acc:.2%}",
                      "yes" if s.id in front_ids else "")
    return table


def read_subnets(run_dir: Path) -> list[SubnetSpec]:
    """The specs of every fine-tuned subnet of a run, by id."""
    return [SubnetSpec.load(p.parent) for p in sorted(run_dir.glob("subnets/*/spec.json"))]


def summarize(run_dir: Path) -> dict:
    """One line of ``autoprune runs``: what was searched, how far it got, the best subnet."""
    run = RunDir(run_dir)
    config, status = run.read_config(), run.read_status()
    done = int(run.read_trials()["state"].isin(["complete", "stopped", "infeasible", "fail"]).sum())
    subnets = read_subnets(run_dir)
    best = max(subnets, key=lambda s: s.test_acc) if subnets else None
    base_macs = (run.read_baseline() or {}).get("macs")
    state = status.get("status", "unknown")
    return {
        "run": str(run_dir), "started": status.get("started", "").replace("T", " ")[:16],
        # a run killed mid-way still says running: resume it with --resume
        "status": "running or stopped" if state == "running" else state,
        "model": config.get("model"), "data": config.get("data"), "budget": config.get("budget"),
        "strategy": config.get("strategy"), "trials": f"{done}/{config.get('trials', '?')}",
        "subnets": len(subnets), "best acc": f"{best.test_acc:.2%}" if best else "",
        "its MACs": f"{best.macs / base_macs:.1%}" if best and base_macs else "",
    }


def list_runs(root: Path) -> list[dict]:
    """Every run directly under ``root`` (or ``root`` itself, if it is one), oldest first; a link to a run that is
    listed already (``make demo``'s ``results/demo``) is not listed again. Raises ``UserError`` if ``root`` is not
    a directory."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory")
    runs = [root] if RunDir(root).is_run else [p for p in root.iterdir() if p.is_dir() and RunDir(p).is_run]
    real = {p.resolve() for p in runs if not p.is_symlink()}
    runs = [p for p in runs if not (p.is_symlink() and p.resolve() in real)]
    return sorted((summarize(p) for p in runs), key=lambda r: (r["started"], r["run"]))


def print_runs(root: Path) -> int:
    """Print the table of ``autoprune runs`` to stdout (``list_runs``); returns the exit code, 0. Raises
    ``UserError`` where ``root`` is not a directory."""
    rows = list_runs(root)
    if not rows:
        output.print(f"no runs under {root} (a run directory holds config.yaml)")
        return 0
    table = Table(title=f"runs under {root}, oldest first", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = [c for c in rows[0] if c != "started"]  # a run directory's default name is its start time
    for col in columns:
        table.add_column(col, no_wrap=col == "run",
                         justify="right" if col in ("trials", "subnets", "best acc", "its MACs") else "left")
    for row in rows:
        name = Path(row["run"])
        row["run"] = str(name.relative_to(root)) if name != root else str(name)
        table.add_row(*(str(row[c]) for c in columns))
    output.print(table)
    return 0


def show_run(run_dir: Path) -> int:
    """A run's settings, its baseline and fine-tuned subnets (the Pareto ones marked) and its exports."""
    run = RunDir.existing(run_dir)
    info = summarize(run_dir)
    output.print(f"[bold]{run_dir}[/]: {info['model']} on {info['data']}, budget {info['budget']}, "
                  f"strategy {info['strategy']}, trials {info['trials']}, {info['status']}")
    baseline = run.read_baseline()
    subnets = read_subnets(run_dir)
    if not baseline:
        output.print("no pareto.json yet: the run has not finished its fine-tuning")
    elif not subnets:
        output.print("no fine-tuned subnets")
    else:
        output.print(subnets_table(baseline, subnets))
    for s in subnets:
        for fields in run.read_exports(s.id).values():
            output.print(f"{s.id} exported as {ExportCheck(**fields).describe()}", markup=False)
    return 0
