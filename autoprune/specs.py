"""Resolve ``package.module:factory`` and ``path/to/file.py:factory`` specs to callables."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.errors import UserError


def is_callable_spec(spec: str) -> bool:
    """True when ``spec`` names a factory rather than a registered name."""
    if ":" not in spec:
        return False
    target, _, attr = spec.rpartition(":")
    return bool(attr) and attr.isidentifier() and (target.endswith(".py") or "." in target or target.isidentifier())


def absolute_spec(spec: str) -> str:
    """``file.py:factory`` with the file's absolute path, so a saved spec works from any directory."""
    if not is_callable_spec(spec):
        return spec
    target, _, attr = spec.rpartition(":")
    if not target.endswith(".py"):
        return spec
    return f"{Path(target).expanduser().resolve()}:{attr}"


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable a ``package.module:name`` or ``path/to/file.py:name`` spec names; ``what`` (``model``,
    ``data``) begins each error message. A file is executed as a new module on every call.

    Raises ``UserError`` where the file is missing or raises on import, the module cannot be imported
    (``ImportError``), or it has no callable of that name.
    """
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError(f"{what} '{spec}': file {path} not found")
        module_name = f"autoprune_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:  # the user's file failed to import
            raise UserError(f"{what} '{spec}': importing {path} failed: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"{what} '{spec}': cannot import module '{target}': {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UserError(f"{what} '{spec}': '{target}' has no callable '{attr}'")
    return fn


def call_with_supported(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
