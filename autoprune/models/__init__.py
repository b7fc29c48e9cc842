"""Model zoo and model specs: ``create_model(spec, in_channels=, num_classes=)`` is the one door in."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models import imagenet, zoo  # noqa: F401  (fill the registry)
from autoprune.models.contract import (
    RunContract,
    check_model,
    contract_of,
    logits_of,
    prepare_model,
)
from autoprune.models.registry import MODELS, list_models, register_model
from autoprune.specs import call_with_supported, is_callable_spec, load_callable

__all__ = ["RunContract", "check_model", "contract_of", "create_model", "list_models", "load_weights", "logits_of",
           "model_family", "prepare_model", "read_tensors", "register_model"]


def create_model(spec: str, *, in_channels: int, num_classes: int) -> nn.Module:
    """Build a model from a zoo name, ``package.module:factory`` or ``path/file.py:factory``.

    A factory receives ``in_channels=`` and ``num_classes=`` where its signature accepts them. An
    unknown zoo name, a user factory that raises or one that returns no ``nn.Module`` is a ``UserError``.
    """
    if not is_callable_spec(spec):
        return MODELS.get(spec).obj(in_channels=in_channels, num_classes=num_classes)
    fn = load_callable(spec, "model")
    try:
        model = call_with_supported(fn, in_channels=in_channels, num_classes=num_classes)
    except Exception as exc:
        raise UserError(f"model '{spec}': the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{spec}': the factory returned {type(model).__name__}, not an nn.Module")
    return model


def model_family(spec: str) -> str | None:
    """The search-space family of a zoo model (``resnet``, ``vgg``, ...); None for user models.

    An unknown zoo name is a ``UserError``."""
    return None if is_callable_spec(spec) else MODELS.get(spec).family


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a plain state dict (never unpickling arbitrary objects) and say clearly if it does not fit.

    A state dict saved from a ``torch.compile``'d model (every key prefixed ``_orig_mod.``) loads too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    state = read_tensors(path, "weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    prefix = "_orig_mod."
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
        state = {k[len(prefix):]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    lazy = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)  # they take the file's shapes
    mismatched = [
        k for k in own if k in state and not isinstance(own[k], lazy) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise UserError(f"weights {path} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def read_tensors(path: Path, what: str) -> object:
    """``torch.load`` of ``path`` on the CPU with ``weights_only`` (tensors and plain containers, never arbitrary
    objects unpickled). A file it cannot read raises ``UserError`` in one line naming ``what`` and why: pickled
    objects (a whole model saved with ``torch.save(model)``), a damaged archive, a file that cannot be opened, an
    empty file, or not a file ``torch.save`` wrote; not torch's advice to load it unsafely."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if pickled:
            why = (f"it holds a pickled {pickled.group(1)}, and autoprune unpickles no objects (a whole model "
                   "saved with torch.save(model)?): save model.state_dict() instead")
        elif "PytorchStreamReader" in text:
            why = "its archive is damaged (cut short, or not saved fully)"
        elif isinstance(exc, OSError):
            why = exc.strerror or text
        elif isinstance(exc, EOFError) or path.stat().st_size == 0:
            why = "it is empty"
        elif "Weights only load failed" in text:
            why = "it is not a file torch.save wrote"
        else:
            why = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise UserError(f"{what} {path} cannot be read as a state dict: {why}") from exc
