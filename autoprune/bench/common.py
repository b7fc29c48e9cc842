"""What every benchmark study shares: its output directory, a journal that makes it resumable,
the machine it ran on, and the summary that records the exact command."""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd
import torch
from torch import nn

from autoprune.candidate import complete_scores
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.finetuning import finetune
from autoprune.measure import accuracy
from autoprune.measure.latency import measure_latency
from autoprune.pipeline import search
from autoprune.progress import console
from autoprune.pruning.base import Space

if TYPE_CHECKING:
    from autoprune.deployment import LatencySetup


def machine() -> str:
    """One line naming the CPU (or GPU) and thread count the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


class BenchDir:
    """``results/bench/<study>/``: bench.json (settings, command, machine), journal.jsonl (every
    finished unit of work, so an interrupted study resumes where it stopped), CSV, PNG, summary.md.

    Raises ``UserError`` where ``path`` already holds a benchmark and ``resume`` is off, where ``resume``
    finds no benchmark there or one of another study or other settings, or where ``path`` is a directory
    that is not empty.
    """

    def __init__(self, path: str | Path, study: str, settings: dict[str, Any], *, resume: bool, command: str) -> None:
        self.path = Path(path).expanduser()
        self.study = study
        meta = self.path / "bench.json"
        settings = json.loads(json.dumps(settings))  # the form it is saved in, for comparison
        if meta.exists():
            saved = json.loads(meta.read_text())
            if not resume:
                raise UserError(f"{self.path} already holds a {saved['study']} benchmark; pass --resume to "
                                "continue it or choose another --out")
            if saved["study"] != study or saved["settings"] != settings:
                changed = sorted(k for k in set(settings) | set(saved["settings"])
                                 if settings.get(k) != saved["settings"].get(k))
                raise UserError(f"--resume: settings differ from the benchmark in {self.path}: {', '.join(changed) or 'study'}")
        elif resume:
            raise UserError(f"--resume: {self.path} holds no benchmark to continue")
        elif self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"{self.path} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            meta.write_text(json.dumps({"study": study, "settings": settings, "command": command,
                                        "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "seconds": 0.0}, indent=2) + "\n")
        self._meta = json.loads(meta.read_text())
        self._seconds_before = float(self._meta.get("seconds", 0.0))  # spent by earlier invocations
        self.started = time.perf_counter()
        self._journal = self.path / "journal.jsonl"
        self._done: dict[str, dict] = {}
        if self._journal.exists():
            for line in self._journal.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._done[entry["key"]] = entry["value"]

    def done(self, key: str) -> dict | None:
        """What a finished unit of work recorded, or None if it has not run yet."""
        return self._done.get(key)

    def record(self, key: str, value: dict) -> dict:
        """Append ``value`` (JSON-serialisable) under ``key`` to journal.jsonl, flushed to disk, so that a resumed
        study finds it with ``done``; the seconds spent so far go to bench.json. Returns ``value``."""
        with open(self._journal, "a") as fh:
            fh.write(json.dumps({"key": key, "value": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._done[key] = value
        self._save_seconds()
        return value

    def _save_seconds(self) -> float:
        """Seconds of work on the study so far, over every invocation (kept in bench.json)."""
        self._meta["seconds"] = round(self._seconds_before + time.perf_counter() - self.started, 1)
        tmp = self.path / ".bench.json.tmp"
        tmp.write_text(json.dumps(self._meta, indent=2) + "\n")
        os.replace(tmp, self.path / "bench.json")
        return self._meta["seconds"]

    def log(self, text: str) -> None:
        """Print ``text`` on stderr with the time of day and the study's name."""
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {self.study}: {text}")

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """Write ``frame`` as ``name`` in the study's directory (no index, 6 significant digits); returns the path."""
        path = self.path / name
        frame.to_csv(path, index=False, float_format="%.6g")
        return path

    def save_figure(self, fig, name: str) -> Path:
        """Save the matplotlib figure ``fig`` as ``name`` in the study's directory and close it; returns the path."""
        import matplotlib.pyplot as plt

        path = self.path / name
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def write_summary(self, title: str, body: str) -> Path:
        """Write summary.md: ``title``, the command, the machine, when the study started and the minutes it took over
        every invocation, then ``body`` (Markdown). Returns its path."""
        seconds, meta = self._save_seconds(), self._meta
        header = (f"# {title}\n\n"
                  f"Command: `{meta['command']}`\n\n"
                  f"Machine: {meta['machine']}. Started {meta['started']}; the study took {seconds / 60:.1f} min.\n\n")
        path = self.path / "summary.md"
        path.write_text(header + body.strip() + "\n")
        console.print(f"{self.study}: {path}")
        return path


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    """``(fig, axes)`` of ``ncols`` plots side by side, each ``width`` x ``height`` inches at 110 dpi, on the
    file-only Agg backend; ``axes`` is 2-D (``axes[0][i]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), dpi=110, squeeze=False)


class Searched(NamedTuple):
    """The candidate a study's search chooses to fine-tune first (``best_searched``)."""

    ratios: dict[str, float]  # per group: 1 - its searched width / its channels, the search's widths in any space
    row: pd.Series  # its row of trials.csv
    run_dir: Path  # the search's run directory
    model: nn.Module  # the subnet as the search built it, under the search's own width rule
    multiple: int | None  # that rule (the search's latency.json): widths a multiple of this, None: every width
    widths: dict[str, list[int]] | None  # per group, the widths it keeps; None: every width


def best_searched(config: SearchConfig, bench: BenchDir, space: Space, budget: str, *, quiet: bool = False,
                  **options: Any) -> Searched | None:
    """The candidate a real search at ``budget`` chooses to fine-tune first (``autoprune search``, in
    ``runs/search-<budget>``; resumed if cut short): where the search shortlists (``config.shortlist_size``, M), the
    one with the best held-out accuracy after the short fine-tunes of the best M by proxy (the search runs its multi-fidelity
    stage and saves that one subnet untrained, ``finetune_epochs`` 0: the study fine-tunes it); otherwise the best
    proxy (fine-tuning off). None where the search scored no candidate.

    A search snaps ratios to the widths its own latency set-up kept (its latency.json), which another set-up
    (the study's, ``set_up_widths``) may not share: the subnet is built under the search's widths, and the
    ratios returned give those widths exactly in a space of every width, so that the study measures the
    candidate the search scored."""
    run_dir = bench.path / "runs" / ("search-" + "".join(c if c.isalnum() else "_" for c in budget.replace("%", "pct")))
    settings = {k: v for k, v in asdict(config).items() if k not in ("model", "data", "budget", "out")}
    settings.update(**options)
    size = replace(config, **options).shortlist_size  # as a search of these settings would shortlist
    shortlisted = size > 1
    if shortlisted:
        settings.update(finetune_top=1, finetune_epochs=0.0, shortlist=size)
    else:
        settings.update(finetune_top=0)
    status = run_dir / "run.json"
    if not status.exists() or json.loads(status.read_text()).get("status") != "complete":
        bench.log(f"{budget}: searching {settings['trials']} trials ({settings['strategy']})"
                  + (f", shortlist of {size}" if shortlisted else ""))
        search(config.model, config.data, budget=budget, out=str(run_dir), resume=(run_dir / "config.yaml").exists(),
               quiet=quiet, **settings)
    trials = pd.read_csv(run_dir / "trials.csv")
    scored = complete_scores(trials)
    if scored.empty:
        return None
    if shortlisted:  # the one subnet the search chose (by its shortlist, where it had more than one candidate)
        (spec,) = run_dir.glob("subnets/*/spec.json")
        best = scored[scored["number"] == json.loads(spec.read_text())["trial"]].iloc[0]
    else:
        best = scored.sort_values(["proxy_acc", "number"], ascending=[False, True]).iloc[0]
    setup = run_dir / "latency.json"
    own = json.loads(setup.read_text()) if setup.is_file() else {}
    widths = own.get("widths")
    ratios = {g: float(best[f"ratio:{g}"]) for g in space.group_names}
    with space.widths_of(widths):
        kept = space.kept_channels(ratios)
        model = space.prune(ratios)[0]
    return Searched({g.name: 1.0 - kept[g.name] / g.channels for g in space.groups}, best, run_dir, model,
                    own.get("multiple"), widths)


def width_rule(multiple: int | None, widths: Mapping[str, list[int]] | None, global_multiple: int | None = None) -> str:
    """A width rule in words: efficient widths at a multiple (``autoprune.deployment``), or every width; and where
    given, the multiple global magnitude pruning rounded to (``bench.baselines.heuristic_subnets``)."""
    rule = (f"multiples of {multiple} channels, only the widths no wider one runs faster" if widths is not None
            else "every width")
    return rule + (f", global rounded to {global_multiple}" if global_multiple not in (None, multiple or 1) else "")


def finetuned_accuracy(bench: BenchDir, key: str, model: nn.Module, config: SearchConfig, data, evaluator, *,
                       seed: int) -> tuple[dict, bool]:
    """Test accuracy of a copy of ``model`` fine-tuned with the run's settings and ``seed``, recorded in
    the journal under ``key`` (read back if it is there); and whether it was trained just now. The record
    holds ``test_acc`` (a fraction in [0, 1]) and ``finetune_seconds``."""
    result = bench.done(key)
    if result is not None:
        return result, False
    tic = time.perf_counter()
    tuned = copy.deepcopy(model)
    finetune(tuned, config, data, evaluator, seed=seed, quiet=True)
    return bench.record(key, {"test_acc": accuracy(tuned, data.test, device=config.device),
                              "finetune_seconds": round(time.perf_counter() - tic, 1)}), True


def set_up_widths(config: SearchConfig, bench: BenchDir, space: Space, input_shape: tuple[int, ...], batch: int,
                  budgets: list[str], *, quiet: bool = False) -> LatencySetup:
    """The width rule and latency predictor a search sets up (``autoprune.deployment``) at a budget of every
    constraint of ``budgets`` (``budget.all_of``: a rule whose smallest subnet meets each of them), on the run's
    target at ``batch``, written to runs/widths/latency.json (read back on a resumed study): restricts ``space`` to
    its efficient widths and attaches the calibrated predictor, so that the study's uniform and global subnets
    follow a searched one's rule at every budget. Returns the ``LatencySetup``."""
    from autoprune.budget import all_of, parse_budget
    from autoprune.deployment import save_setup, set_up_latency

    setup_dir = bench.path / "runs" / "widths"
    setup_dir.mkdir(parents=True, exist_ok=True)
    setup = set_up_latency(replace(config, latency_batch=batch, latency_checks=0), space.model, space, input_shape,
                           setup_dir, all_of(parse_budget(b) for b in budgets), quiet=quiet)
    save_setup(setup, setup_dir)
    return setup


def measure_on_target(config: SearchConfig, models: dict[str, nn.Module], input_shape: tuple[int, ...],
                      batches: list[int]) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """Each model at each batch on the run's target (``--target``, ``--latency-threads``), prepared as it would
    ship and timed beside the first model (the unpruned one) in interleaved rounds
    (``autoprune.deployment.measure_beside``): per model and batch, ``ms`` with its ``low``/``high`` round, and the
    ``speedup`` over the first model paired round by round, with its ``speedup_low``/``speedup_high``; and per
    batch the target's description."""
    from autoprune.deployment import measure_beside, run_target

    names = list(models)
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    described = {}
    for b in batches:
        target = run_target(replace(config, latency_batch=b))
        base_call = target.prepare(models[names[0]], input_shape)
        base, measured = measure_beside(target, base_call, {name: (target.prepare(models[name], input_shape), None, None)
                                                            for name in names[1:]})
        out[names[0]][str(b)] = {"ms": base.ms, "low": base.low, "high": base.high, "speedup": 1.0,
                                 "speedup_low": 1.0, "speedup_high": 1.0}
        for m in measured:
            out[m.id][str(b)] = {"ms": m.ms, "low": m.low, "high": m.high, "speedup": m.speedup,
                                 "speedup_low": m.speedup_low, "speedup_high": m.speedup_high}
        described[str(b)] = target.describe()
    return out, described


def timing_columns(measured: dict[str, float], batch: int) -> dict[str, float]:
    """One model's measurement at ``batch`` (``measure_on_target``) as a table's columns: ``latency_b{batch}_ms``
    and ``speedup_b{batch}``, each with its ``_low`` and ``_high`` round."""
    return {f"latency_b{batch}_ms": measured["ms"], f"latency_b{batch}_low": measured["low"],
            f"latency_b{batch}_high": measured["high"], f"speedup_b{batch}": measured["speedup"],
            f"speedup_b{batch}_low": measured["speedup_low"], f"speedup_b{batch}_high": measured["speedup_high"]}


def measure_latencies(models: dict[str, nn.Module], input_shape: tuple[int, ...], batches: list[int], device: str,
                      rounds: int = 3) -> dict[str, dict[str, float]]:
    """Latency in ms of each model at each batch: the median of ``rounds`` rounds that take every
    model in turn, so that a slow spell of a noisy machine is shared instead of hitting one model."""
    samples: dict[str, dict[str, list[float]]] = {name: {str(b): [] for b in batches} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for b in batches:
                samples[name][str(b)].append(measure_latency(copy.deepcopy(model), input_shape, device=device, batch=b))
    return {name: {b: statistics.median(v) for b, v in per.items()} for name, per in samples.items()}
