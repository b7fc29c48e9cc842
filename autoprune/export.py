"""Deployable subnets: ONNX, a torch.export program or a plain state dict, each checked and timed.

Every export is checked where it will run: the ONNX file in onnxruntime, the ``.pt2`` program
through ``torch.export.load``, the state dict loaded back into the pruned architecture. Each must
give the PyTorch subnet's outputs within a tolerance, and its latency is measured next to the
PyTorch subnet's, at the same batch, threads and device (the CPU). The record goes to
``subnets/<id>/exports.json``, one entry per format.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.measure.target import dynamic_batch, export_onnx, quiet_exporter
from autoprune.measure.timing import time_forward
from autoprune.models.contract import CHANNELS_LAST, contract_of, logits_of
from autoprune.results import RunDir, SubnetSpec, atomic_write, load_subnet

FORMATS = {"onnx": "subnet.onnx", "torch-export": "subnet.pt2", "state-dict": "subnet.pt"}
CHECK_BATCH = 8  # outputs are compared on this many random inputs; exports keep the batch dimension dynamic
ATOL, RTOL = 1e-4, 1e-4  # |exported - pytorch| <= ATOL + RTOL * max|pytorch|: float32 reassociation, no more


@dataclass
class ExportCheck:
    """An export's check, one entry of exports.json: the file (``bytes``), where it ran, its largest difference
    to the PyTorch subnet's logits against the tolerance, and the latency in ms of both."""

    format: str
    path: str
    bytes: int
    runtime: str  # where the export was run for the check
    max_abs_diff: float  # against the PyTorch subnet, on CHECK_BATCH random inputs
    tolerance: float
    batch: int  # latency batch
    threads: int
    latency_ms: float  # the exported model, in its runtime
    pytorch_latency_ms: float  # the PyTorch subnet, same batch and threads

    @property
    def ok(self) -> bool:
        """The export's logits are within the tolerance of the PyTorch subnet's."""
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        """What the check found, in two lines: for the export command, the search's --export and ``show``."""
        verdict = "matches PyTorch" if self.ok else "DIFFERS from PyTorch"
        return (f"{self.format}: {self.path} ({self.bytes / 1e6:.2f} MB), run in {self.runtime}: {verdict} "
                f"(max |diff| {self.max_abs_diff:.1e}, tolerance {self.tolerance:.1e})\n"
                f"  latency at batch {self.batch} with {self.threads} threads: {self.latency_ms:.3f} ms exported, "
                f"{self.pytorch_latency_ms:.3f} ms in PyTorch")


def check_formats(formats: list[str]) -> None:
    """Fail early on an unknown format, or on ONNX without the ``deploy`` extra installed."""
    for name in formats:
        if name not in FORMATS:
            raise UserError(f"unknown export format {name!r}: expected {', '.join(FORMATS)}")
    if "onnx" in formats:
        for module in ("onnx", "onnxscript", "onnxruntime"):
            try:
                __import__(module)
            except ImportError:
                raise UserError(f"ONNX export needs {module} (a dependency of autoprune): pip install {module}") from None


def export_subnet(run_dir: str | Path, subnet_id: str, fmt: str, out: str | Path | None = None, *,
                  batch: int | None = None, base_model: nn.Module | None = None) -> ExportCheck:
    """Export ``subnets/<subnet_id>`` of a run as ``fmt``, check it and time it; record the check in
    the subnet's exports.json. ``out`` defaults to ``subnets/<id>/subnet.<ext>``; ``batch`` to the
    run's latency batch. ``base_model`` is needed only for a run searched from a Python model object."""
    check_formats([fmt])
    run = RunDir.existing(run_dir)
    directory = run.subnet_dir(subnet_id)
    if not (directory / "spec.json").is_file():
        found = sorted(p.parent.name for p in run.path.glob("subnets/*/spec.json"))
        raise UserError(f"{directory} holds no subnet; this run has: {', '.join(found) or 'none'}")
    spec = SubnetSpec.load(directory)
    if spec.model is None and base_model is None:
        raise UserError("this subnet was searched from a Python model object: export it from Python with "
                        "autoprune.export.export_subnet(run_dir, subnet_id, fmt, base_model=model)")
    model = load_subnet(directory, base_model)
    check = export_model(model, tuple(spec.input_shape), fmt, Path(out) if out else directory / FORMATS[fmt],
                         batch=batch or spec.latency_batch or 1)
    atomic_write(directory / "exports.json", json.dumps({**run.read_exports(subnet_id), fmt: asdict(check)}, indent=2)
                 + "\n")
    return check


def export_model(model: nn.Module, input_shape: tuple[int, ...], fmt: str, path: Path, *,
                 batch: int = 1) -> ExportCheck:
    """Write ``model`` (eval mode, CPU) to ``path`` as ``fmt`` with a dynamic batch dimension; load it
    back in its runtime, compare outputs and time both."""
    model = model.cpu().eval()
    x_check = check_inputs(input_shape)
    runtime, run = write_export(model, fmt, path, x_check)
    diff, tolerance = compare(run, model, x_check)
    channels_last = contract_of(model).layout == CHANNELS_LAST  # as the search ran it (autoprune.models.contract)
    return ExportCheck(
        format=fmt, path=str(path), bytes=path.stat().st_size, runtime=runtime, max_abs_diff=diff,
        tolerance=tolerance, batch=batch, threads=torch.get_num_threads(),
        latency_ms=time_export(run, input_shape, batch, channels_last=channels_last and fmt != "onnx"),
        pytorch_latency_ms=time_export(model, input_shape, batch, channels_last=channels_last),
    )


Runner = Callable[[torch.Tensor], object]  # the model's output: logits, or a dict or tuple holding them


def check_inputs(input_shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed random batch exports are traced at and checked on."""
    return torch.randn(CHECK_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def compare(run: Runner, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The largest absolute difference between the export's and the model's logits on ``x`` (taken from a
    dict or tuple output by the model's output key, ``autoprune.models.contract``), and the tolerance it
    must stay within: ATOL + RTOL x the largest logit."""
    key = contract_of(model).output_key
    expected = logits_of(model(x), key)
    got = logits_of(run(x), key)
    if got.shape != expected.shape:
        return float("inf"), ATOL + RTOL * float(expected.abs().max())
    return float((got - expected).abs().max()), ATOL + RTOL * float(expected.abs().max())


def write_export(model: nn.Module, fmt: str, path: Path, example: torch.Tensor) -> tuple[str, Runner]:
    """Write ``model`` (eval mode, CPU) to ``path`` as ``fmt``, traced at ``example`` with the batch
    dimension dynamic, and load it back: the runtime's name and a function that runs the export."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export.load wants the .pt2 suffix
    if fmt == "onnx":
        loaded = _onnx(model, example, tmp)
    elif fmt == "torch-export":
        loaded = _torch_export(model, example, tmp)
    else:
        loaded = _state_dict(model, tmp)
    os.replace(tmp, path)
    return loaded


def time_export(run: Runner, input_shape: tuple[int, ...], batch: int, *, channels_last: bool) -> float:
    """Median ms of a forward pass at ``batch`` on the CPU. ``channels_last`` (an ``nn.Module`` only):
    a copy of the module and its input in oneDNN's fast layout, as ``measure_latency`` times a model;
    PyTorch's runtimes are timed so (``bench deploy`` times a torch.export program both ways)."""
    x = torch.randn(batch, *input_shape)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
        run = copy.deepcopy(run).to(memory_format=torch.channels_last)
    return time_forward(torch.no_grad()(lambda: run(x)), "cpu")


def _onnx(model: nn.Module, x: torch.Tensor, tmp: Path):
    import onnxruntime as ort

    export_onnx(model, x, tmp)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch is timed with
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        leaves, structure = torch.utils._pytree.tree_flatten(model(x))  # a dict or tuple output: its tensors, in order

    def run(inp: torch.Tensor) -> object:
        outputs = [torch.from_numpy(a) for a in session.run(None, {"input": inp.numpy()})]
        if len(outputs) == 1:
            return outputs[0]
        if len(outputs) == len(leaves):  # the model's own structure, so the logits are found by the same key
            return torch.utils._pytree.tree_unflatten(outputs, structure)
        return outputs

    return f"onnxruntime {ort.__version__} (CPU)", run


def _torch_export(model: nn.Module, x: torch.Tensor, tmp: Path):
    with quiet_exporter():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_batch())
    torch.export.save(program, tmp)
    with quiet_exporter():
        loaded = torch.export.load(tmp).module()
    return f"torch.export.load (torch {torch.__version__})", loaded


def _state_dict(model: nn.Module, tmp: Path):
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
    loaded = copy.deepcopy(model)  # the pruned architecture, every tensor zeroed, then what was written
    with torch.no_grad():
        for tensor in loaded.state_dict().values():
            tensor.zero_()
    loaded.load_state_dict(torch.load(tmp, map_location="cpu", weights_only=True))
    return f"torch.load into the pruned architecture (torch {torch.__version__})", loaded.eval()
