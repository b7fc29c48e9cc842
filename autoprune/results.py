"""The run directory: one schema for everything a search writes, and subnets that load safely.

Layout of ``results/<run>/``::

    config.yaml      everything resolved (re-read by --resume)
    run.json         status (running | complete), backend (local | ray), workers, timings
    study.db         the Optuna study (SQLite): the source of truth for trials
    trials.csv       one row per trial
    pareto.csv/json  non-dominated fine-tuned subnets (test accuracy vs MACs)
    pareto.png       candidates and fine-tuned subnets against MACs, budget line
    report.md        baseline vs subnets, budget, time spent
    report.html      the whole run on one self-contained page (autoprune.html_report)
    subnets/<id>/    spec.json + weights.pt (a plain state dict; + masks.pt if weight-pruned);
                     exports (subnet.onnx, .pt2, .pt) with their checks in exports.json
    ray/             Ray runs only: Tune's experiment directory
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
import yaml
from torch import nn

from autoprune.errors import UserError

SPEC_FORMAT = "autoprune.subnet/1"
STUDY_NAME = "autoprune"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def check(path: str | Path | None, resume: bool) -> RunDir:
        """Validate ``--out`` / ``--resume`` before any work; create nothing yet."""
        if path is None:
            if resume:
                raise UserError("--resume needs --out pointing at the run to continue")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("results") / stamp
        run = RunDir(Path(path).expanduser())
        holds_run = run.is_run or (run.path / "study.db").exists()
        if resume and not holds_run:
            raise UserError(f"--resume: {run.path} holds no run to continue")
        if not resume and holds_run:
            raise UserError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
        if not resume and run.path.exists() and any(run.path.iterdir()):
            raise UserError(f"{run.path} exists and is not empty; choose another --out")
        return run

    def create(self) -> None:
        self._made = not self.path.exists()  # check() saw it absent or empty: discard() undoes this
        (self.path / "subnets").mkdir(parents=True, exist_ok=True)

    @property
    def has_results(self) -> bool:
        """Something worth resuming: a trial in trials.csv, or the sensitivity results."""
        if (self.path / "sensitivity.csv").is_file():
            return True
        try:
            return not self.read_trials().empty
        except Exception:  # noqa: BLE001  (a half-written trials.csv: the study may still hold trials)
            return (self.path / "study.db").is_file()

    def discard(self) -> None:
        """Remove what this run wrote since ``create()``: the directory where it made it, else (an empty
        directory given as --out) its contents. For a run that failed before its first trial, so that the
        same command can run again."""
        made = getattr(self, "_made", None)
        if made is None or not self.path.is_dir():  # create() was not called here: nothing of ours to remove
            return
        if made:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    @contextmanager
    def discarded_on_failure(self, *, fresh: bool) -> Iterator[None]:
        """Remove what a new run wrote if the block fails before the run has a trial or sensitivity results
        (``discard``): so the same command can simply be run again. A run with results that stops on an error
        (every candidate failed, say) is kept, marked ``failed`` with the error in run.json; a resumed run that
        fails before its next trial is left as it was."""
        try:
            yield
        except BaseException as exc:
            if fresh and not self.has_results:
                self.discard()
            elif isinstance(exc, UserError) and self.has_results:
                self.write_status(status="failed", error=str(exc).splitlines()[0],
                                  failed=time.strftime("%Y-%m-%dT%H:%M:%S"))
            raise

    @property
    def is_run(self) -> bool:
        """A search wrote its settings here (the first thing it writes)."""
        return (self.path / "config.yaml").is_file()

    @staticmethod
    def existing(path: str | Path) -> RunDir:
        """The run in ``path``, for the commands that read one; a UserError if there is none."""
        run = RunDir(Path(path))
        if not run.is_run:
            raise UserError(f"{run.path} holds no autoprune run (no config.yaml)")
        return run

    # --- files ------------------------------------------------------------------------------

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{(self.path / 'study.db').resolve()}"

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text()) or {}

    def write_config(self, config: dict) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_status(self) -> dict:
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_status(self, **fields: Any) -> None:
        status = self.read_status()
        status.update(fields)
        atomic_write(self.path / "run.json", json.dumps(status, indent=2) + "\n")

    def read_baseline(self) -> dict | None:
        """The unpruned model's cost and accuracy (pareto.json, written when the search ends)."""
        path = self.path / "pareto.json"
        return json.loads(path.read_text())["baseline"] if path.is_file() else None

    def read_trials(self) -> pd.DataFrame:
        """trials.csv, every known column present (empty before the first trial; older runs lack newer columns)."""
        path = self.path / "trials.csv"
        trials = pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame(columns=["number"])
        return trials.reindex(columns=list(dict.fromkeys([*TRIAL_COLUMNS, *trials.columns]))).sort_values("number")

    def read_exports(self, subnet_id: str) -> dict[str, dict]:
        """The checks of a subnet's exports by format (subnets/<id>/exports.json, ``autoprune.export``)."""
        path = self.subnet_dir(subnet_id) / "exports.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        tmp = self.path / f".{name}.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.path / name)

    def append_trial(self, row: dict) -> None:
        """Add one finished trial to trials.csv as it happens (the study stays the source of truth)."""
        path = self.path / "trials.csv"
        frame = pd.DataFrame([row])
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)

    def subnet_dir(self, subnet_id: str) -> Path:
        return self.path / "subnets" / subnet_id


TRIAL_COLUMNS = ["number", "state", "macs", "params", "proxy_acc", "seconds", "prune_seconds",
                 "recalibrate_seconds", "evaluate_seconds", "latency_seconds", "draws", "predicted_latency_ms",
                 "latency_ms", "error"]


def trial_row(t: optuna.trial.FrozenTrial, group_names: list[str]) -> dict:
    """One row of trials.csv: number, state, cost, proxy accuracy, seconds (all, and the scoring
    split), random draws, latency (predicted where the budget has one; measured for every scored
    candidate), one ratio per group."""
    attrs = t.user_attrs
    state = t.state.name.lower()
    if t.state == optuna.trial.TrialState.COMPLETE and not attrs.get("feasible", True):
        state = "infeasible"
    row = {column: attrs.get(column) for column in TRIAL_COLUMNS}
    row.update(number=t.number, state=state)
    if row["error"]:
        row["error"] = row["error"].strip().splitlines()[-1]  # the exception; the study keeps its traceback
    for name in group_names:
        ratio = t.params.get(name)
        row[f"ratio:{name}"] = None if ratio is None else round(ratio, 6)
    return row


def trials_frame(study: optuna.Study, group_names: list[str]) -> pd.DataFrame:
    columns = TRIAL_COLUMNS + [f"ratio:{n}" for n in group_names]
    return pd.DataFrame([trial_row(t, group_names) for t in study.trials], columns=columns)


@dataclass
class SubnetRecord:
    id: str
    trial: int
    macs: int
    params: int
    proxy_acc: float
    test_acc: float
    holdout_acc: float
    finetune_seconds: float
    latency_ms: float  # measured on the run's device at its latency batch
    predicted_latency_ms: float | None  # from the latency table, where the budget has a latency
    ratios: dict[str, float]
    path: str
    retrain: str = "fine-tune"  # how it was trained after pruning, in a few words (spec.json has the record)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "ratios"}


def save_subnet(directory: Path, subnet: nn.Module, spec: dict, *, masks: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``weights.pt`` (a plain state dict), ``masks.pt`` for a weight-pruned subnet (parameter
    name -> boolean tensor, true where a weight is kept), then ``spec.json``: the spec marks it complete.
    The spec records how the subnet runs (its layout and output key, ``autoprune.models.contract``)."""
    from autoprune.models.contract import contract_of

    spec = {**spec, "contract": spec.get("contract") or contract_of(subnet).to_record()}
    directory.mkdir(parents=True, exist_ok=True)
    files = {"weights.pt": {k: v.detach().cpu().contiguous() for k, v in subnet.state_dict().items()}}
    if masks is not None:
        files["masks.pt"] = masks
    for name, content in files.items():
        tmp = directory / f".{name}.tmp"
        torch.save(content, tmp)
        os.replace(tmp, directory / name)
    atomic_write(directory / "spec.json", json.dumps({"format": SPEC_FORMAT, **spec}, indent=2) + "\n")


def load_subnet(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved subnet: the base architecture, pruned to the kept channels (a weight-pruned
    subnet keeps the dense architecture, its zeros in the weights), with its weights.

    ``path`` is a ``subnets/<id>`` directory (or its spec.json). ``base_model`` is needed only when
    the search was given a Python model object rather than a model spec.
    """
    from autoprune.models import create_model
    from autoprune.models.contract import RunContract, materialize, set_contract, unwrap_compiled
    from autoprune.pruning.space import apply_kept

    path = Path(path)
    directory = path.parent if path.name == "spec.json" else path
    spec = json.loads((directory / "spec.json").read_text())
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{directory / 'spec.json'} is not an autoprune subnet spec")
    if base_model is not None:
        model = copy.deepcopy(base_model).cpu()
    elif spec.get("model"):
        model = create_model(spec["model"], in_channels=spec["in_channels"], num_classes=spec["num_classes"])
    else:
        raise ValueError("this subnet was searched from a Python model object: pass base_model=")
    model, _ = unwrap_compiled(model)
    example = torch.zeros(1, *spec["input_shape"])
    materialize(model, example)  # lazy layers take their shapes before they are pruned
    if spec.get("granularity", "filter") == "filter":
        apply_kept(model.eval(), example, spec["kept"], spec["channels"])
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    if "contract" in spec:  # runs as the search ran it; older specs: the default
        set_contract(model, RunContract.from_record(spec["contract"]))
    return model.eval()


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
