"""The pruning settings of a search: what is pruned (the space), in which units, and in which order."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.errors import UserError
from autoprune.settings import BENCH, INSPECT, SEARCH, setting

GRANULARITIES = ("filter", "weight")


def _scopes() -> tuple[str, ...]:
    from autoprune.pruning.weights import SCOPES

    return SCOPES


def _criteria() -> list[str]:
    from autoprune.pruning.criteria import describe_criteria

    return list(describe_criteria())


def _space_help() -> str:
    from autoprune.pruning.config import shipped_spaces

    return (f"search-space YAML file, or a shipped space by name ({', '.join(shipped_spaces())}); "
            "not given: the model family's")


def _criterion_help() -> str:
    from autoprune.pruning.criteria import describe_criteria

    return "filter importance; " + "; ".join(f"{k}: {v}" for k, v in describe_criteria().items())


def _criterion_batches_help() -> str:
    from autoprune.pruning.criteria import describe_criteria, needs_data

    data_driven = ", ".join(name for name in describe_criteria() if needs_data(name))
    return f"training batches (of --batch-size) that the data-driven criteria ({data_driven}) rank channels on"


@dataclass(frozen=True)
class PruningSettings:
    """The space and the criterion: ``space`` (a YAML file or a shipped space's name; None: the model
    family's), ``criterion`` (a registered filter importance), ``granularity`` (filter: channels go, the dense
    network narrows; weight: single weights are zeroed behind a mask, per ``mask_scope``), and network
    slimming's sparsity training before the search (``sparsity_train`` epochs, L1 weight ``sparsity_lambda``)."""

    space: str | None = setting(None, _space_help, identity=True, commands=(SEARCH, BENCH, INSPECT))
    criterion: str = setting("l1", _criterion_help, identity=True, choices=_criteria, commands=(SEARCH, BENCH))
    criterion_batches: int = setting(4, _criterion_batches_help, identity=True, commands=(SEARCH, BENCH))
    granularity: str = setting(
        "filter", "filter: remove channels, so the network gets narrower and faster; weight: zero single weights "
        "by magnitude (unstructured), keeping the dense shape (sparse MACs and params fall, dense latency does not)",
        identity=True, choices=lambda: GRANULARITIES)
    mask_scope: str = setting(
        "layer", "--granularity weight: a ratio per layer (searched), or one for the whole network with one "
        "magnitude threshold over all layers", identity=True, choices=_scopes)
    sparsity_train: float = setting(
        0.0, "before the search, train the model this many epochs with an L1 penalty on its BatchNorm scales "
        "(network slimming, Liu et al. 2017) so that --criterion bn_scale finds channels near zero; saved in the "
        "run and reused on --resume", identity=True, metavar="EPOCHS")
    sparsity_lambda: float = setting(1e-4, "weight of the L1 penalty of --sparsity-train", identity=True,
                                     metavar="L")

    def check_pruning(self) -> None:
        """The pruning settings' own checks; raises ``UserError`` on the first that fails."""
        from autoprune.pruning.criteria import needs_data

        needs_data(self.criterion)  # an unknown criterion is a UserError here
        if self.granularity not in GRANULARITIES:
            raise UserError(f"--granularity must be one of {', '.join(GRANULARITIES)}")
        if self.mask_scope not in _scopes():
            raise UserError(f"--mask-scope must be one of {', '.join(_scopes())}")
        if self.criterion_batches < 1:
            raise UserError("--criterion-batches must be at least 1")
        if self.sparsity_train < 0 or self.sparsity_lambda < 0:
            raise UserError("--sparsity-train and --sparsity-lambda must not be negative")
