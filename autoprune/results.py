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
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn

from autoprune.candidate import TRIAL_COLUMNS
from autoprune.errors import UserError
from autoprune.retrain import describe_retrain

SPEC_FORMAT = "autoprune.subnet/1"
STUDY_NAME = "autoprune"


class RunDir:
    """A run directory at ``path`` (the layout above): what a search writes there and reads back on a resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def check(path: str | Path | None, resume: bool) -> RunDir:
        """Validate ``--out`` / ``--resume`` before any work; create nothing yet. Without ``path``, a new run goes
        to results/<date-time>. Raises ``UserError`` for a resume without ``path`` or of a directory holding no
        run, and for a new run in a directory that holds one or is not empty."""
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
        """Make the directory and its subnets/ (a resume finds them there: nothing to do)."""
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
        """The Optuna storage of the run's study: study.db, by its absolute path."""
        return f"sqlite:///{(self.path / 'study.db').resolve()}"

    def read_config(self) -> dict:
        """config.yaml: every setting of the run, resolved ({} for an empty file)."""
        return yaml.safe_load((self.path / "config.yaml").read_text()) or {}

    def write_config(self, config: dict) -> None:
        """Write config.yaml at once, keys in the order given."""
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_status(self) -> dict:
        """run.json: status, backend, timings in seconds ({} before it is written)."""
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_status(self, **fields: Any) -> None:
        """Merge ``fields`` into run.json, written at once."""
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
        """Write ``frame`` as the CSV file ``name`` of the run, replacing it at once."""
        tmp = self.path / f".{name}.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.path / name)

    def append_trial(self, row: dict) -> None:
        """Add one finished trial to trials.csv as it happens (the study stays the source of truth)."""
        path = self.path / "trials.csv"
        frame = pd.DataFrame([row])
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)

    def subnet_dir(self, subnet_id: str) -> Path:
        """subnets/<subnet_id>: where a fine-tuned subnet's spec.json and weights are saved."""
        return self.path / "subnets" / subnet_id


@dataclass(kw_only=True)
class SubnetSpec:
    """What a fine-tuned subnet is: ``subnets/<id>/spec.json``, in its order, with ``save`` and ``load``.

    The base network (``model`` spec, null for a search given a Python model object; ``in_channels``,
    ``num_classes`` and one input's ``input_shape``), how it was pruned (``granularity`` ``filter`` or
    ``weight``, ``criterion``, ``mask_scope``, ``seed``; per group the ``ratios`` removed, 0 to 1, the
    unpruned ``channels`` and the channel indices ``kept``), what it costs (``macs``, FLOPs = 2 x MACs, and
    ``params``; a weight-pruned subnet's ``kept`` is a count of weights per unit, its ``channels`` the
    unpruned counts), its accuracies as fractions (``proxy_acc``, the adaptive-BN score before fine-tuning;
    ``test_acc`` and ``holdout_acc`` after), how it was trained (``finetune_epochs``, ``finetune_seconds``,
    ``retrain``: ``autoprune.retrain.retrain_record``), its latency in ms on the deployment ``target``
    (``latency_ms`` measured beside the unpruned model in interleaved rounds, its ``latency_spread``, the
    ``speedup`` over the unpruned model with its ``speedup_spread``; ``predicted_latency_ms`` from the
    target's latency table) at ``latency_batch`` on ``device``,
    and the ``contract`` it runs by (``autoprune.models.contract``). docs/specs.md lists the fields.

    Fields a spec predates load with defaults: ``granularity`` filter, ``latency_ms`` NaN, the others None.
    ``path`` is the directory it was saved to or loaded from; spec.json does not hold it.
    """

    id: str
    trial: int
    model: str | None
    data: str
    in_channels: int
    num_classes: int
    input_shape: list[int]
    granularity: str = "filter"
    seed: int
    criterion: str
    mask_scope: str | None = None
    base_weights: str | None
    ratios: dict[str, float]
    channels: dict[str, int]
    kept: dict[str, list[int] | int]
    macs: int
    params: int
    proxy_acc: float
    test_acc: float
    holdout_acc: float
    finetune_epochs: float
    finetune_seconds: float
    retrain: dict | None = None
    latency_ms: float = math.nan
    predicted_latency_ms: float | None = None
    latency_spread: list[float] | None = None  # [lowest, highest] round of the measurement, ms
    speedup: float | None = None  # over the unpruned model, timed beside it: median of the paired rounds
    speedup_spread: list[float] | None = None  # [lowest, highest] paired round
    target: str | None = None  # where latency was measured: runtime, batch, threads
    latency_batch: int | None = None
    device: str | None = None
    contract: dict | None = None
    path: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """spec.json's content: ``format`` first, then every field but ``path``, in order."""
        return {"format": SPEC_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}}

    def save(self, directory: str | Path, subnet: nn.Module,
             masks: dict[str, torch.Tensor] | None = None) -> SubnetSpec:
        """Write ``weights.pt`` (a plain state dict, on the CPU), ``masks.pt`` for a weight-pruned subnet
        (parameter name -> boolean tensor of the weight's shape, true where a weight is kept), then spec.json:
        the spec, written last and at once, marks the subnet complete. Returns the spec as written: its
        ``path`` the directory, and a ``contract`` left None taken from ``subnet`` (its layout and output key).
        This spec is left as it was."""
        from autoprune.models.contract import contract_of

        directory = Path(directory)
        spec = replace(self, contract=self.contract or contract_of(subnet).to_record(), path=str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        files = {"weights.pt": {k: v.detach().cpu().contiguous() for k, v in subnet.state_dict().items()}}
        if masks is not None:
            files["masks.pt"] = masks
        for name, content in files.items():
            tmp = directory / f".{name}.tmp"
            torch.save(content, tmp)
            os.replace(tmp, directory / name)
        spec.write()
        return spec

    def write(self) -> None:
        """Write spec.json into the spec's directory (``path``), at once."""
        atomic_write(Path(self.path) / "spec.json", json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SubnetSpec:
        """The spec of ``directory`` (a ``subnets/<id>`` directory, or its spec.json), its ``path`` that
        directory. Fields it does not know are left out. Raises ``ValueError`` where spec.json is not an
        autoprune subnet spec or lacks a field that every spec has, ``FileNotFoundError`` where there is none."""
        path = Path(directory)
        directory = path.parent if path.name == "spec.json" else path
        record = json.loads((directory / "spec.json").read_text())
        if not isinstance(record, dict) or record.get("format") != SPEC_FORMAT:
            raise ValueError(f"{directory / 'spec.json'} is not an autoprune subnet spec")
        known = {f.name for f in fields(cls)} - {"path"}
        missing = [f.name for f in fields(cls) if f.name in known and f.name not in record
                   and f.default is MISSING]
        if missing:
            raise ValueError(f"{directory / 'spec.json'} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in record.items() if k in known}, path=str(directory))

    @property
    def retrain_text(self) -> str:
        """How it was trained after pruning, in a few words (``autoprune.retrain.describe_retrain``)."""
        return describe_retrain(self.retrain)

    def front_record(self) -> dict[str, Any]:
        """Its entry in pareto.json's ``front``: id, trial, cost, accuracies, seconds, latencies, ratios, path
        and how it was retrained (in words)."""
        return {key: self.retrain_text if key == "retrain" else getattr(self, key) for key in PARETO_FIELDS}

    def row(self) -> dict[str, Any]:
        """Its row of pareto.csv: ``front_record`` without the ratios."""
        return {k: v for k, v in self.front_record().items() if k != "ratios"}


# what pareto.json says of each subnet on the front, in order (pareto.csv: the same without the ratios)
PARETO_FIELDS = ("id", "trial", "macs", "params", "proxy_acc", "test_acc", "holdout_acc", "finetune_seconds",
                 "latency_ms", "predicted_latency_ms", "speedup", "ratios", "path", "retrain")



def load_subnet(path: str | Path, base_model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved subnet: the base architecture, pruned to the kept channels (a weight-pruned
    subnet keeps the dense architecture, its zeros in the weights), with its weights.

    ``path`` is a ``subnets/<id>`` directory (or its spec.json). ``base_model`` is needed only when
    the search was given a Python model object rather than a model spec. Raises ``ValueError`` for what is
    not a subnet spec (``SubnetSpec.load``), a spec of a Python model object without ``base_model``, or a
    base model of other widths than the spec's ``channels``; ``UserError`` for weights.pt missing or unreadable
    (``autoprune.models.read_tensors``).
    """
    from autoprune.models import create_model, read_tensors
    from autoprune.models.contract import RunContract, materialize, set_contract, unwrap_compiled
    from autoprune.pruning.space import apply_kept

    spec = SubnetSpec.load(path)
    if base_model is not None:
        model = copy.deepcopy(base_model).cpu()
    elif spec.model:
        model = create_model(spec.model, in_channels=spec.in_channels, num_classes=spec.num_classes)
    else:
        raise ValueError("this subnet was searched from a Python model object: pass base_model=")
    model, _ = unwrap_compiled(model)
    example = torch.zeros(1, *spec.input_shape)
    materialize(model, example)  # lazy layers take their shapes before they are pruned
    if spec.granularity == "filter":
        apply_kept(model.eval(), example, spec.kept, spec.channels)
    state = read_tensors(Path(spec.path) / "weights.pt", "subnet weights")
    model.load_state_dict(state)
    if spec.contract is not None:  # runs as the search ran it; older specs: the default
        set_contract(model, RunContract.from_record(spec.contract))
    return model.eval()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden file beside it: a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
