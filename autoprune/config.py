"""The search's configuration: the run's own settings, composed with those of each concept, validated
once into a frozen ``SearchConfig``.

Each concept declares its settings where it lives (``autoprune.settings.setting``): the space in
``pruning.settings``, the strategy in ``search.settings``, scoring in ``measure.settings``, retraining
in ``retrain``, the runner in ``runners.settings``. ``SearchConfig`` is all of them at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.budget import Budget, parse_budget
from autoprune.errors import UserError
from autoprune.measure.settings import LatencySettings, ScoringSettings
from autoprune.pruning.settings import PruningSettings
from autoprune.retrain import RetrainSettings, check_retrain
from autoprune.runners.settings import RunnerSettings
from autoprune.search.settings import StrategySettings
from autoprune.settings import (
    ALL_COMMANDS,
    BENCH,
    INSPECT,
    SEARCH,
    TRAIN,
    Declared,
    declared,
    setting,
)
from autoprune.specs import absolute_spec

SHIPPED_WEIGHTS = {(model, "fashion-mnist"): Path(__file__).parent / "checkpoints" / f"{model}_fashion-mnist.pt"
                   for model in ("resnet20", "resnet56")}
PYTHON_OBJECT = "<python object>"  # the model of a run given an nn.Module instead of a spec


def _weights_help() -> str:
    shipped = ", ".join(f"{model} on {data}" for model, data in SHIPPED_WEIGHTS)
    return f"state dict of the trained model; not given: the shipped checkpoint ({shipped})"


def _export_help() -> str:
    from autoprune.export import FORMATS

    return (f"export every Pareto subnet as these formats ({', '.join(FORMATS)}; comma-separated), each checked "
            "against PyTorch and timed; as `autoprune export` does")


@dataclass(frozen=True)
class RunSettings:
    """What is searched and with what: ``model`` (a zoo name, ``pkg.module:factory`` or ``file.py:factory``)
    with ``weights`` (a state dict; None: the shipped checkpoint), ``data`` (a data spec), the ``budget``, the
    ``seed`` of everything random, the images held out for scoring (``holdout``), the batch size, the device,
    and where the run is written (``out``)."""

    model: str = setting("resnet20", "zoo name, package.module:factory or file.py:factory", identity=True,
                         commands=ALL_COMMANDS)
    data: str = setting("fashion-mnist", "fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR, npz:FILE, or a factory",
                        identity=True, commands=ALL_COMMANDS)
    budget: str = setting("50%flops", "e.g. 50%flops, 40%params, 60MMACs, 120MFLOPs, 8ms, 50%latency; join with ','",
                          identity=True)
    weights: str | None = setting(None, _weights_help, identity=True, commands=(SEARCH, BENCH, INSPECT))
    output_key: str | None = setting(
        None, "where the logits are when the model's forward returns a dict (a key) or a tuple (an index); not "
        "given: a dict's 'logits', else its first tensor; a tuple's first tensor", identity=True, metavar="KEY",
        commands=ALL_COMMANDS)
    device: str = setting("cpu", "cpu, cuda, cuda:N", commands=ALL_COMMANDS)
    amp: bool = setting(False, "float16 mixed precision in training and fine-tuning (CUDA)", commands=ALL_COMMANDS)
    seed: int = setting(0, "seeds the holdout split, the search and training: the same seed repeats a run",
                        identity=True, commands=ALL_COMMANDS)
    holdout: int = setting(5000, "training images held out for scoring candidates", identity=True,
                           commands=ALL_COMMANDS)
    batch_size: int = setting(128, "images a training and recalibration batch", identity=True, commands=ALL_COMMANDS)
    limit_train: int | None = setting(None, "use only this many training images (quick runs)", identity=True,
                                      commands=(SEARCH, BENCH, TRAIN))
    limit_test: int | None = setting(None, "use only the first N test images (quick runs)", identity=True,
                                     metavar="N")
    export: str | None = setting(None, _export_help, metavar="FORMATS")
    out: str | None = setting(None, "run directory; not given: results/<timestamp>")

    @property
    def export_formats(self) -> list[str]:
        """The ``export`` formats, in order."""
        return [f.strip() for f in (self.export or "").split(",") if f.strip()]


@dataclass(frozen=True)
class SearchConfig(RunSettings, PruningSettings, StrategySettings, ScoringSettings, LatencySettings, RetrainSettings,
                   RunnerSettings):
    """Every setting of a search, frozen. Build it with keyword arguments (the field names are the options'
    names with ``_``: ``SearchConfig(calib_batches=5)``), then ``validate`` it; change one with
    ``dataclasses.replace``."""


SECTIONS = {"run": RunSettings, "pruning": PruningSettings, "search strategy": StrategySettings,
            "scoring": ScoringSettings, "latency": LatencySettings, "fine-tuning": RetrainSettings, "runner": RunnerSettings}


def settings_for(command: str) -> dict[str, list[Declared]]:
    """The declared settings a command takes, by section (``search``, ``bench``, ``train``, ``inspect``)."""
    out = {title: [d for d in declared(cls) if command in d.commands] for title, cls in SECTIONS.items()}
    return {title: found for title, found in out.items() if found}


def all_settings() -> list[Declared]:
    """Every declared setting of ``SearchConfig``."""
    return declared(SearchConfig)


def shipped_weights(config: RunSettings) -> str | None:
    """The shipped checkpoint of ``config``'s model trained on its data, where there is one."""
    shipped = SHIPPED_WEIGHTS.get((config.model, config.data.partition(":")[0]))
    return str(shipped) if shipped is not None and shipped.is_file() else None


def resolve_paths(config: SearchConfig) -> SearchConfig:
    """``config`` with the specs and files it names made absolute, so that they mean the same from anywhere."""
    paths = {key: str(Path(getattr(config, key)).expanduser().resolve())
             for key in ("weights", "sensitivity_from") if getattr(config, key) is not None}
    return dataclasses.replace(config, model=absolute_spec(config.model), data=absolute_spec(config.data), **paths)


def validate(config: SearchConfig) -> tuple[SearchConfig, Budget]:
    """Every check that needs no data or model, at once; returns the config with absolute paths and the device
    resolved, and the parsed budget. Raises ``UserError`` on the first
    setting that is wrong."""
    from autoprune.device import resolve_device
    from autoprune.export import check_formats
    from autoprune.measure.target import make_target
    from autoprune.train import check_amp

    config = resolve_paths(config)
    budget = parse_budget(config.budget)
    config.check_pruning()
    config.check_strategy()
    config.check_scoring()
    config.check_latency()
    for option, value in (("--batch-size", config.batch_size), ("--holdout", config.holdout),
                          ("--limit-train", config.limit_train), ("--limit-test", config.limit_test)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1")
    if config.granularity == "weight":
        if config.criterion != SearchConfig.criterion or config.strategy == "pfp":
            raise UserError("--granularity weight ranks single weights by magnitude: --criterion and --strategy pfp "
                            "rank channels")
        if budget.needs_latency:
            raise UserError("a latency budget does not go with --granularity weight: zeroed weights run as fast as "
                            "any others on dense kernels (bench granularity measures it); give a flops or params "
                            "budget")
        if config.damage == "recon":
            raise UserError("--damage recon needs --granularity filter; use --damage proxy")
    if config.strategy == "pfp" and config.criterion != "pfp":
        raise UserError("--strategy pfp allocates by PFP's sensitivities: it needs --criterion pfp")
    check_retrain(config)
    check_amp(config.amp, config.device)
    if config.export:
        check_formats(config.export_formats)
    config.check_runner()
    config = dataclasses.replace(config, device=resolve_device(config.device))
    make_target(config.target, device=config.device)  # onnxruntime only on the CPU
    return config, budget


def resumed(saved: dict[str, Any], given: dict[str, Any]) -> tuple[SearchConfig, list[str]]:
    """The config of a resumed run: the run's own settings as ``saved`` in its config.yaml, with the options the
    user ``given`` explicitly over them where that is allowed; returns it and one line per setting changed.

    A setting that fixes the run's identity (``identity=True`` in its declaration) may only be given with the
    run's own value: any other raises ``UserError``. Settings the run predates take their defaults."""
    asked = resolve_paths(SearchConfig(**given))  # compared as they would be saved
    values, changes = {}, []
    for d in all_settings():
        if d.name not in saved:  # a setting the run predates: its default, or what is given now
            if d.name in given:
                values[d.name] = getattr(asked, d.name)
            continue
        values[d.name] = saved[d.name]
        if d.name not in given or d.name == "out":
            continue
        new = getattr(asked, d.name)
        if new == saved[d.name]:
            continue
        if d.identity:
            raise UserError(f"--resume: {d.option} {new!r} differs from the run's {saved[d.name]!r}")
        values[d.name] = new
        changes.append(f"{d.option} {saved[d.name]!r} -> {new!r}")
    return SearchConfig(**values), changes
