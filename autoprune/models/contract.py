"""How autoprune runs a model: the one place that says which memory layout it runs in and which part
of its output are the logits.

**Logits** (``logits_of``): a model's ``forward`` may return

- a tensor: those are the logits;
- a dict (any mapping, e.g. a Hugging Face ``ModelOutput``): ``output[KEY]`` with ``--output-key KEY``,
  else ``output["logits"]`` where there is one, else its first tensor value;
- a tuple or list: element ``int(KEY)`` with ``--output-key KEY`` (a named tuple also by field name),
  else its first tensor.

Anything else is a ``UserError`` naming what the model returned. The logits must be ``(N, classes)``.

**Layout**: convolutions run fastest here in channels_last, so a model runs in it where that works.
``check_model`` tries one forward pass in eval and train mode in channels_last and in NCHW; where
channels_last raises (``x.view(n, -1)`` on a conv map), changes the logits, or cannot apply (inputs that
are not 4-D: channels_last is for 4-D tensors only), the model runs in NCHW ("contiguous") everywhere.

**Where the decision lives**: a ``RunContract`` set as a plain attribute of the model. The model is what
travels: it is deep-copied into the pruning space and for every candidate, pruned in place by
Torch-Pruning, pickled to Ray workers and handed to the trainer, the evaluator and the latency and export
timers. An attribute in the module's ``__dict__`` goes along with every one of those without a new
parameter on each function on the way, it is not part of the state dict (weights files stay plain
tensors), and ``contract_of`` is one attribute read, nothing on the hot path. A model never checked
(the zoo's, a test's) reads the default: channels_last for 4-D inputs, logits by the rule above.
Saved subnets record it in spec.json (``to_record``), and ``load_subnet`` restores it.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.errors import UserError, one_line

__all__ = ["RunContract", "check_model", "contract_of", "input_to", "logits_of", "materialize", "model_to",
           "prepare_model", "set_contract", "unwrap_compiled"]

CHANNELS_LAST, CONTIGUOUS = "channels_last", "contiguous"
LAYOUTS = (CHANNELS_LAST, CONTIGUOUS)
ATOL, RTOL = 1e-5, 1e-3  # channels_last against NCHW logits: float reassociation in the conv kernels, no more
_ATTR = "_autoprune_contract"


@dataclass(frozen=True)
class RunContract:
    """How autoprune runs one model: its memory ``layout`` and the ``output_key`` its logits are taken by."""

    layout: str = CHANNELS_LAST
    output_key: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # what the set-up checks found, one line each

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")

    def to_record(self) -> dict:
        """What spec.json keeps of it."""
        return {"layout": self.layout, "output_key": self.output_key}

    @staticmethod
    def from_record(record: Mapping | None) -> RunContract:
        """The contract a spec.json record (``to_record``) describes; None or a missing key gives the default
        (channels_last, no output key). Raises ``ValueError`` for an unknown layout."""
        record = record or {}
        return RunContract(record.get("layout", CHANNELS_LAST), record.get("output_key"))


_DEFAULT = RunContract()


def contract_of(model: nn.Module) -> RunContract:
    """The model's contract; the default (channels_last for 4-D inputs, logits by the rule) where none was set."""
    return model.__dict__.get(_ATTR, _DEFAULT)  # where set, it is in the instance dict (nn.Module.__setattr__)


def set_contract(model: nn.Module, contract: RunContract) -> nn.Module:
    """Set ``contract`` on ``model`` (an attribute, not in its state dict) and return ``model``."""
    setattr(model, _ATTR, contract)
    return model


def model_to(model: nn.Module, device: str) -> nn.Module:
    """Move ``model`` to ``device`` in its layout (in place, like ``nn.Module.to``)."""
    fmt = torch.channels_last if contract_of(model).layout == CHANNELS_LAST else torch.contiguous_format
    return model.to(device).to(memory_format=fmt)


def input_to(x: torch.Tensor, model_or_layout: nn.Module | str, device: str | torch.device | None = None, *,
             non_blocking: bool = False) -> torch.Tensor:
    """``x`` on ``device`` in the layout of a model (or the layout named): channels_last only for a 4-D tensor."""
    layout = model_or_layout if isinstance(model_or_layout, str) else contract_of(model_or_layout).layout
    if device is not None:
        x = x.to(device, non_blocking=non_blocking)
    if layout == CHANNELS_LAST and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def logits_of(output: object, key: str | int | None = None) -> torch.Tensor:
    """The logits in what a model returned, by the rule in this module's docstring; a ``UserError`` otherwise."""
    if isinstance(output, torch.Tensor):  # the common case first: one isinstance on the hot path
        return output
    return _pick(output, key)[0]


def _pick(output: object, key: str | int | None) -> tuple[torch.Tensor, str]:
    """The logits and how to name them in a message ("the model's output 'logits'")."""
    if isinstance(output, torch.Tensor):
        return output, "the model's output"
    if isinstance(output, Mapping):
        keys = ", ".join(repr(k) for k in output) or "none"
        if key is not None:
            if key not in output:
                raise UserError(f"the model's output dict has no key {key!r} (its keys: {keys}): give --output-key "
                                "one of them")
            chosen = key
        elif "logits" in output:
            chosen = "logits"
        else:
            chosen = next((k for k, v in output.items() if isinstance(v, torch.Tensor)), None)
            if chosen is None:
                raise UserError(f"the model returned a dict without a tensor (its keys: {keys}): return the logits "
                                "as a tensor, or give --output-key")
        value = output[chosen]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"the model's output {chosen!r} is a {type(value).__name__}, not a tensor of logits: "
                            "give --output-key to pick the logits")
        return value, f"the model's output {chosen!r}"
    if isinstance(output, (tuple, list)):
        kind = f"{type(output).__name__} of {len(output)}"
        if key is not None:
            fields = getattr(output, "_fields", ())
            if key in fields:
                index = fields.index(key)
            else:
                try:
                    index = int(key)
                except (TypeError, ValueError):
                    raise UserError(f"--output-key {key!r} is not an index, and the model returned a {kind}: give "
                                    f"one of 0..{len(output) - 1}") from None
                if not -len(output) <= index < len(output):
                    raise UserError(f"--output-key {key!r} is out of range: the model returned a {kind}")
        else:
            index = next((i for i, v in enumerate(output) if isinstance(v, torch.Tensor)), None)
            if index is None:
                raise UserError(f"the model returned a {kind} without a tensor: return the logits as a tensor")
        value = output[index]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"the model's output [{index}] is a {type(value).__name__}, not a tensor of logits: "
                            "give --output-key to pick the logits")
        return value, f"the model's output [{index}]"
    raise UserError(f"the model returned a {type(output).__name__}, not logits: autoprune takes a tensor, a dict "
                    "(its 'logits' or first tensor) or a tuple (its first tensor), or the one --output-key names")


# --- set-up checks ------------------------------------------------------------------------------


def unwrap_compiled(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The module a ``torch.compile`` wrapper holds (its state dict keys and module names are the user's),
    and a line saying so; the model itself and None where it is not wrapped."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded wherever torch.compile made a model
    if eval_frame is None or not isinstance(model, eval_frame.OptimizedModule):
        return model, None
    inner = model._orig_mod
    return inner, (f"the model is torch.compile'd: autoprune prunes and runs the {type(inner).__name__} it wraps, "
                   "uncompiled")


def has_lazy(model: nn.Module) -> bool:
    """Whether ``model`` holds lazy parameters or buffers not yet given a shape (``nn.LazyConv2d``, ...)."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()) or any(
        isinstance(b, nn.parameter.UninitializedBuffer) for b in model.buffers())


@torch.no_grad()
def materialize(model: nn.Module, example_input: torch.Tensor) -> None:
    """Give lazy layers (``nn.LazyConv2d``, ``nn.LazyLinear``, ...) their shapes by one eval-mode forward
    pass on ``example_input``; nothing happens to a model without them."""
    if not has_lazy(model):
        return
    training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            _forward(model.eval(), example_input, "eval")
    finally:
        model.train(training)


def check_model(model: nn.Module, example_input: torch.Tensor, *, output_key: str | None = None,
                num_classes: int) -> RunContract:
    """Check that ``model`` runs on ``example_input`` (a batch of the data) as autoprune will run it, and set
    its contract: lazy layers are materialised; eval and train mode must each give logits of shape
    ``(N, num_classes)`` by ``logits_of``, and in train mode carry a gradient; the layout is channels_last
    only where that gives the NCHW logits.
    A failure is a one-line ``UserError``. The model's weights, buffers, mode and the global random state are
    left as they were (train mode runs on a copy)."""
    model, unwrapped = unwrap_compiled(model)
    notes = [unwrapped] if unwrapped else []
    x = example_input.detach().cpu().contiguous()
    training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            materialize(model, x)
            expected = _logits(model.eval(), x, output_key, num_classes, "eval")
            # two images at least: a BatchNorm after global pooling cannot normalise one in train mode
            pair = x if len(x) > 1 else torch.cat([x, x])
            trainee = copy.deepcopy(model).train()
            with torch.enable_grad():
                logits = _logits(trainee, pair, output_key, num_classes, "train")
            if not logits.requires_grad and any(p.requires_grad for p in trainee.parameters()):
                raise UserError("in train mode the model's logits carry no gradient (a detach() or no_grad in its "
                                "forward?): it could not be trained or fine-tuned")
            del trainee, logits
            reason = _why_not_channels_last(model, x, pair, output_key, expected)
    finally:
        model.train(training)
    layout = CHANNELS_LAST if reason is None else CONTIGUOUS
    if reason is not None:
        notes.append(f"the model runs in NCHW (contiguous), not channels_last: {reason}")
    contract = RunContract(layout, output_key, tuple(notes))
    set_contract(model, contract)
    return contract


def prepare_model(model: nn.Module, example_input: torch.Tensor, *, output_key: str | None = None, num_classes: int,
                  weights: str | None = None) -> nn.Module:
    """The model as autoprune runs it: unwrapped from ``torch.compile``, lazy layers materialised, ``weights``
    loaded (where given), checked and its contract set (``check_model``). Callers say ``contract_of(m).notes``."""
    from autoprune.models import load_weights

    model, unwrapped = unwrap_compiled(model)
    materialize(model, example_input.detach().cpu())
    if weights is not None:
        load_weights(model, weights)
    contract = check_model(model, example_input, output_key=output_key, num_classes=num_classes)
    if unwrapped:
        set_contract(model, RunContract(contract.layout, contract.output_key, (unwrapped, *contract.notes)))
    return model


def _forward(model: nn.Module, x: torch.Tensor, mode: str) -> object:
    try:
        return model(x)
    except UserError:
        raise
    except Exception as exc:  # whatever the user's forward raises: one line, no traceback
        where = "" if mode == "eval" else " in train mode"
        raise UserError(f"the model does not run{where} on the data's input shape {tuple(x.shape)}: "
                        f"{one_line(exc, 120)}") from exc


def _logits(model: nn.Module, x: torch.Tensor, key: str | None, num_classes: int, mode: str) -> torch.Tensor:
    output = _forward(model, x, mode)
    try:
        logits, name = _pick(output, key)
    except UserError as exc:
        raise UserError(f"in {mode} mode, {exc}" if mode == "train" else str(exc)) from None
    if tuple(logits.shape) != (len(x), num_classes):
        where = " in train mode" if mode == "train" else ""
        hint = (f"--output-key {key!r} does not pick the logits" if key is not None else
                "the logits must be (batch, classes); give --output-key if they are elsewhere in the output")
        raise UserError(f"{name}{where} has shape {tuple(logits.shape)} but the data has {num_classes} classes: "
                        f"{hint}")
    return logits


def _why_not_channels_last(model: nn.Module, x: torch.Tensor, pair: torch.Tensor, key: str | None,
                           expected: torch.Tensor) -> str | None:
    """None where the model runs in channels_last as it does in NCHW; else why not, in a few words."""
    if x.dim() != 4:
        return f"its input is {x.dim()}-D (channels_last is for 4-D images)"
    try:
        trial = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
        got = logits_of(trial(x.contiguous(memory_format=torch.channels_last)), key)
        trial.train()(pair.contiguous(memory_format=torch.channels_last))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001  (whatever the model raises in channels_last: it runs in NCHW)
        return f"in channels_last its forward raises {one_line(exc, 60)}"
    diff = float((got.float() - expected.float()).abs().max()) if got.shape == expected.shape else float("inf")
    if not diff <= ATOL + RTOL * float(expected.float().abs().max()):
        return f"in channels_last its logits differ from NCHW's by {diff:.2g}"
    return None

