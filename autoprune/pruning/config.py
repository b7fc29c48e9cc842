"""Search-space settings (ratio bounds, step, skipped groups, channel rounding) from YAML."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from autoprune.errors import UserError

SHIPPED_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


@dataclass
class SpaceConfig:
    """``ratio_min``/``ratio_max`` bound every group's pruning ratio, searched on a grid of ``step``.

    ``skip`` holds glob patterns of group names never pruned; ``overrides`` narrow the bounds of
    groups matching a pattern, e.g. ``{match: "layer3.*", max: 0.5}``. Kept channels are rounded
    to a multiple of ``round_to`` and never fall below ``min_channels``.
    """

    ratio_min: float = 0.0
    ratio_max: float = 0.7
    step: float = 0.05
    round_to: int = 1
    min_channels: int = 1
    skip: list[str] = field(default_factory=list)
    overrides: list[dict] = field(default_factory=list)
    source: str = "built-in"

    def bounds_for(self, group: str) -> tuple[float, float]:
        """``(low, high)``, the ratio bounds of the group named ``group``: ``ratio_min`` and ``ratio_max``, replaced by
        the ``min``/``max`` of each override whose ``match`` glob matches the name (a later override over an
        earlier one)."""
        low, high = self.ratio_min, self.ratio_max
        for rule in self.overrides:
            if fnmatch.fnmatchcase(group, str(rule.get("match", ""))):
                low = float(rule.get("min", low))
                high = float(rule.get("max", high))
        return low, high

    def to_dict(self) -> dict:
        """Its fields as a plain dict (``dataclasses.asdict``)."""
        return asdict(self)


def shipped_spaces() -> list[str]:
    """Names of the search spaces installed with autoprune (``resnet``, ``resnet-round8``, ...)."""
    return sorted(p.stem for p in SHIPPED_SPACES.glob("*.yaml"))


def load_space_config(path: str | Path | None, family: str | None) -> SpaceConfig:
    """Read ``path`` (a YAML file, or the name of a shipped space where no such file exists), or the
    shipped YAML of the model family, or the shipped default. Raises ``UserError`` for a missing file, invalid
    YAML, an unknown key, or bounds outside 0 <= ratio.min <= ratio.max < 1, 0 < step <= 0.5,
    round_to >= 1, min_channels >= 1."""
    if path is not None:
        file = Path(path).expanduser()
        if file.is_file():
            text, source = file.read_text(), str(file)
        elif str(path) in shipped_spaces():
            text, source = (SHIPPED_SPACES / f"{path}.yaml").read_text(), f"search_spaces/{path}.yaml"
        else:
            raise UserError(f"search space {file} not found (a YAML file, or a shipped space: "
                            f"{', '.join(shipped_spaces())})")
    else:
        name = f"{family}.yaml" if family and (SHIPPED_SPACES / f"{family}.yaml").is_file() else "default.yaml"
        text, source = (SHIPPED_SPACES / name).read_text(), f"search_spaces/{name}"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"search space {source} is not valid YAML: {exc}") from exc
    return _parse(raw, source)


def _parse(raw: dict, source: str) -> SpaceConfig:
    if not isinstance(raw, dict):
        raise UserError(f"search space {source}: expected a mapping at the top level")
    known = {"ratio", "round_to", "min_channels", "skip", "overrides"}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"search space {source}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    ratio = raw.get("ratio", {}) or {}
    try:
        config = SpaceConfig(
            ratio_min=float(ratio.get("min", 0.0)),
            ratio_max=float(ratio.get("max", 0.7)),
            step=float(ratio.get("step", 0.05)),
            round_to=int(raw.get("round_to", 1)),
            min_channels=int(raw.get("min_channels", 1)),
            skip=[str(p) for p in raw.get("skip", []) or []],
            overrides=[dict(o) for o in raw.get("overrides", []) or []],
            source=source,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"search space {source}: {exc}") from exc
    if not 0.0 <= config.ratio_min <= config.ratio_max < 1.0:
        raise UserError(f"search space {source}: need 0 <= ratio.min <= ratio.max < 1")
    if not 0.0 < config.step <= 0.5:
        raise UserError(f"search space {source}: ratio.step must be in (0, 0.5]")
    if config.round_to < 1 or config.min_channels < 1:
        raise UserError(f"search space {source}: round_to and min_channels must be >= 1")
    return config
