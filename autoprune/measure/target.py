"""Deployment targets: the runtime a subnet's latency is measured in, the one it will ship to.

A target prepares a model, or a single layer for the per-layer latency table, so that one call runs one
forward pass at the target's batch on a fixed random input, with the target's threads:

- ``onnxruntime`` (the default on the CPU): the model exported with PyTorch's ONNX exporter (dynamo) and run
  by an onnxruntime ``InferenceSession`` on its CPU execution provider, graph optimisations on, in a timing
  process whose sessions share one thread pool (``autoprune.measure.sessions``). A layer of the table is built
  directly as a one-node ONNX graph (``Conv``, ``ConvTranspose`` or ``MatMul`` + ``Add``), so timing a width
  costs milliseconds, not an export.
- ``torch`` (the default on CUDA): eager PyTorch in eval mode, in the memory layout that runs the unpruned
  model fastest (``choose_layout``: channels_last or contiguous, where the model's contract allows both).

Units: milliseconds, batch ``batch``, ``threads`` intra-op threads. Further runtimes are one small class
each, registered in ``TARGETS``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.measure import timing
from autoprune.measure.timing import ROUNDS
from autoprune.models.contract import CHANNELS_LAST, CONTIGUOUS, contract_of, input_to
from autoprune.registry import Registry

Call = Callable[[], object]  # one forward pass at the target's batch
TARGETS: Registry[type[Target]] = Registry("target")
AUTO = "auto"  # --target's default: onnxruntime on the CPU, torch elsewhere


class Target(ABC):
    """Where latency is measured: ``prepare`` a model, ``prepare_layer`` a layer, ``describe`` it.

    ``device``: where the runtime runs (``cpu``, ``cuda``...); ``batch``: the batch of every timed pass;
    ``threads``: intra-op threads (``torch.get_num_threads()`` where None); ``rounds``: the interleaved rounds
    of a measurement of whole models (``time``).
    """

    name: ClassVar[str]

    def __init__(self, *, device: str = "cpu", batch: int = 1, threads: int | None = None, rounds: int = ROUNDS) -> None:
        self.device = device
        self.batch = batch
        self.threads = threads or torch.get_num_threads()
        self.rounds = rounds

    @abstractmethod
    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Call:
        """A call running one forward pass of ``model`` (eval mode; not modified) at the target's batch on a
        fixed random input of one sample's shape ``input_shape`` (``(C, H, W)``)."""

    @abstractmethod
    def prepare_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Call:
        """A call running the single layer ``module`` (a conv or linear layer) on a fixed random input of
        one sample's shape ``input_shape``, as the runtime would run it inside a network."""

    @property
    @abstractmethod
    def runtime(self) -> str:
        """The runtime and its version, as in ``onnxruntime 1.20.1 (CPU)``."""

    @property
    def key(self) -> str:
        """What a latency table's timings depend on besides the layer: runtime, device, batch and threads."""
        return f"{self.runtime}|{self.device}|b{self.batch}|t{self.threads}"

    def describe(self) -> str:
        """One line for the reports: ``onnxruntime 1.20.1 (CPU), batch 1, 2 threads``."""
        return f"{self.runtime}, batch {self.batch}, {self.threads} thread{'s' if self.threads != 1 else ''}"

    def time(self, calls: Mapping[str, Call]) -> dict[str, list[float]]:
        """The prepared ``calls`` timed against each other in ``rounds`` interleaved rounds
        (``autoprune.measure.timing.time_interleaved``): each call's round medians in ms, in round order."""
        with self.running():
            return timing.time_interleaved(calls, self.device, rounds=self.rounds)

    def time_layer(self, call: Call) -> float:
        """Median ms of a prepared layer's pass (5 warm-up and 25 timed passes)."""
        with self.running():
            return timing.time_forward(call, self.device, warmup=5, repeats=25)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The context the prepared calls are timed in: PyTorch's intra-op threads set to ``threads``."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def sync(self) -> None:
        """Wait for work queued on the device (CUDA), so that a timed call ends when its pass does."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def to_record(self) -> dict:
        """What run.json and the reports keep of the target."""
        return {"target": self.name, "runtime": self.runtime, "device": self.device, "batch": self.batch,
                "threads": self.threads}


def make_target(name: str, *, device: str = "cpu", batch: int = 1, threads: int | None = None,
                rounds: int = ROUNDS) -> Target:
    """The target ``name`` (``auto``: ``onnxruntime`` on the CPU, ``torch`` elsewhere). Raises ``UserError`` for an
    unknown name, for onnxruntime on a device other than the CPU, or where onnxruntime is not installed."""
    if name == AUTO:
        name = "onnxruntime" if device == "cpu" else "torch"
    cls = TARGETS.get(name).obj
    return cls(device=device, batch=batch, threads=threads, rounds=rounds)


def target_names() -> list[str]:
    """``auto`` and the registered targets: the choices of ``--target``."""
    return [AUTO, *TARGETS.names()]


@TARGETS.register("torch", "eager PyTorch on --device, in the layout that runs the model fastest")
class TorchTarget(Target):
    """Eager PyTorch in eval mode on ``device``. ``layout``: channels_last or contiguous; set by
    ``choose_layout`` on the unpruned model (the contract's layout until then)."""

    name = "torch"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layout: str | None = None

    @property
    def runtime(self) -> str:
        where = "CPU" if self.device == "cpu" else self.device
        layout = f", {self.layout}" if self.layout else ""
        return f"torch {torch.__version__} ({where}{layout})"

    def _layout(self, model: nn.Module) -> str:
        return CONTIGUOUS if contract_of(model).layout == CONTIGUOUS else (self.layout or CHANNELS_LAST)

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Call:
        layout = self._layout(model)
        model = _copy_to(model, self.device, layout)
        x = input_to(_random(self.batch, input_shape, self.device), layout)
        return torch.no_grad()(lambda: model(x))

    def prepare_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Call:
        layout = self.layout or CHANNELS_LAST
        module = _copy_to(module, self.device, layout if len(input_shape) == 3 else CONTIGUOUS)
        x = input_to(_random(self.batch, input_shape, self.device), layout)
        return torch.no_grad()(lambda: module(x))

    def choose_layout(self, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
        """Time ``model`` in each layout its contract allows (``time``) and keep the faster; returns the median ms
        of each layout timed."""
        if contract_of(model).layout == CONTIGUOUS or len(input_shape) != 3:
            self.layout = CONTIGUOUS
            return {}
        calls = {}
        for layout in (CHANNELS_LAST, CONTIGUOUS):
            self.layout = layout
            calls[layout] = self.prepare(model, input_shape)
        medians = {layout: statistics.median(rounds) for layout, rounds in self.time(calls).items()}
        self.layout = min(medians, key=medians.__getitem__)
        return medians


@TARGETS.register("onnxruntime", "the model exported to ONNX, run by onnxruntime on the CPU")
class OnnxRuntimeTarget(Target):
    """onnxruntime's CPU execution provider, ``threads`` intra-op threads, graph optimisations on. Sessions live
    in this process's ``autoprune.measure.sessions.SessionProcess`` of ``threads`` threads, and are timed
    there."""

    name = "onnxruntime"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.device != "cpu":
            raise UserError(f"--target onnxruntime runs on the CPU, not --device {self.device} "
                            "(use --target torch there)")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:  # a core dependency: only a broken install lacks it
            raise UserError("--target onnxruntime needs onnxruntime: pip install onnxruntime") from None

    @property
    def runtime(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} (CPU)"

    def _load(self, model_bytes: bytes, input_shape: tuple[int, ...], name: str) -> Call:
        from autoprune.measure.sessions import session_process

        feed = {name: _random(self.batch, input_shape, "cpu").numpy()}
        return session_process(self.threads).load(model_bytes, feed)

    def prepare(self, model: nn.Module, input_shape: tuple[int, ...]) -> Call:
        model_bytes = onnx_bytes(model, _random(self.batch, input_shape, "cpu"), dynamic=False)
        return self._load(model_bytes, input_shape, "input")

    def prepare_layer(self, module: nn.Module, input_shape: tuple[int, ...]) -> Call:
        return self._load(layer_graph(module, (self.batch, *input_shape)), input_shape, "x")

    def time(self, calls: Mapping[str, Call]) -> dict[str, list[float]]:
        from autoprune.measure.sessions import session_process

        return session_process(self.threads).time(calls, self.rounds)

    def time_layer(self, call: Call) -> float:
        from autoprune.measure.sessions import session_process

        return session_process(self.threads).time_forward(call, warmup=5, repeats=25)


def _random(batch: int, shape: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)


def _copy_to(module: nn.Module, device: str, layout: str) -> nn.Module:
    import copy

    module = copy.deepcopy(module).to(device).eval()
    return module.to(memory_format=torch.channels_last) if layout == CHANNELS_LAST else module


# --- ONNX ---------------------------------------------------------------------------------------


def dynamic_batch() -> tuple[dict[int, torch.export.Dim]]:
    """The exporters' ``dynamic_shapes``: the first input's dimension 0 (the batch) is free."""
    return ({0: torch.export.Dim("batch", min=1)},)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence what the exporters print of themselves: their passes (stdout), PyTorch's own
    deprecations (FutureWarning) and the torchvision operators they skip when it is absent (logs)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path | None = None, *, dynamic: bool = True):
    """``model`` (eval mode, CPU) exported by PyTorch's dynamo ONNX exporter, traced at ``example`` (a batch of at
    least 2 where ``dynamic``, which leaves the batch free; otherwise the batch is ``example``'s); written to
    ``path`` where given. Returns the ``torch.onnx.ONNXProgram``."""
    with quiet_exporter():
        program = torch.onnx.export(model.cpu().eval(), (example,), dynamo=True,
                                    dynamic_shapes=dynamic_batch() if dynamic else None,
                                    input_names=["input"], output_names=["logits"], external_data=False)
        if path is not None:
            program.save(str(path))
    return program


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, dynamic: bool = True) -> bytes:
    """``model`` exported to ONNX (``export_onnx``), serialised."""
    return export_onnx(model, example, dynamic=dynamic).model_proto.SerializeToString()


def layer_graph(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """A serialised one-node ONNX model (input ``x`` of the full ``input_shape``, batch included) that runs
    ``module`` as the exporter writes it: ``Conv``/``ConvTranspose`` with its kernel, strides, padding,
    dilation and groups, or a linear layer's ``MatMul`` + ``Add``. Weights are random. Raises ``TypeError``
    for any other layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = torch.Generator().manual_seed(0)
    inits, nodes = [], []
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = torch.randn(module.weight.shape, generator=rng)
        inits.append(numpy_helper.from_array(weight.numpy(), "w"))
        inputs = ["x", "w"]
        if module.bias is not None:
            inits.append(numpy_helper.from_array(torch.randn(module.bias.shape, generator=rng).numpy(), "b"))
            inputs.append("b")
        attrs = {"kernel_shape": list(module.kernel_size), "strides": list(module.stride),
                 "dilations": list(module.dilation), "group": module.groups}
        if module.padding == "same":  # PyTorch pads the end with what an even split leaves over
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            attrs["pads"] = [t // 2 for t in total] + [t - t // 2 for t in total]
        elif module.padding == "valid":
            attrs["pads"] = [0] * 2 * len(module.kernel_size)
        else:
            attrs["pads"] = list(module.padding) * 2
        if module.transposed:
            attrs["output_padding"] = list(module.output_padding)
        nodes.append(helper.make_node("ConvTranspose" if module.transposed else "Conv", inputs, ["y"], **attrs))
    elif isinstance(module, nn.Linear):
        weight = torch.randn(module.in_features, module.out_features, generator=rng)
        inits.append(numpy_helper.from_array(weight.numpy(), "w"))
        if module.bias is not None:
            inits.append(numpy_helper.from_array(torch.randn(module.out_features, generator=rng).numpy(), "b"))
            nodes += [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
        else:
            nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    else:
        raise TypeError(f"no ONNX graph for a {type(module).__name__}: the latency table times convs and linears")
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()
