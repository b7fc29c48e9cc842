"""One candidate of a search, in one record: what the strategy asked for, what it costs, how it scored.

A ``Candidate`` is made when a trial begins (``autoprune.runners.trial.begin_trial``), takes its score
from wherever it was scored (this process or a Ray worker), and is written to the run's Optuna study as
the trial's user attributes (``user_attrs``) and to trials.csv as one row (``row``). Read back from the
study (``Candidate.from_trial``), it is what fine-tune selection, the trial counts and the reports use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd

from autoprune.measure.cost import Cost

if TYPE_CHECKING:
    from autoprune.pruning.base import Group

RUNNING, COMPLETE, STOPPED, INFEASIBLE, FAIL = "running", "complete", "stopped", "infeasible", "fail"

# what scoring a candidate gives (``autoprune.runners.trial.score_candidate``, or a Ray worker's report)
SCORE_FIELDS = ("proxy_acc", "scored_images", "prune_seconds", "recalibrate_seconds", "evaluate_seconds")
ERROR_CHARS = 2000  # the end of a failed candidate's error that the study keeps

TRIAL_COLUMNS = ["number", "state", "macs", "params", "proxy_acc", "scored_images", "seconds", "prune_seconds",
                 "recalibrate_seconds", "evaluate_seconds", "draws", "same_as", "predicted_latency_ms", "error"]


@dataclass(frozen=True)
class Candidate:
    """One trial of a search.

    ``ratios``: group name -> fraction of its channels (or weights) removed, 0 to 1; read back from a trial,
    None for a group the study holds no ratio for (one whose grid has a single point, which is not sampled, or
    any group of a trial closed before it was asked): ``ratios_to_prune`` fills those in. ``widths``:
    group name -> channels (or weights) kept. ``cost``: MACs (FLOPs = 2 x MACs) and params of one sample,
    and the predicted latency in ms where the space has a latency table; None until costed. ``state``:
    ``running``, ``complete`` (scored within the budget), ``stopped`` (its score stopped early by the study's
    pruner: ``autoprune.search.pruners``; Optuna's ``PRUNED``), ``infeasible`` (over the budget, never scored) or
    ``fail`` (its error recorded), and Optuna's own ``waiting`` for a trial never asked.
    ``proxy_acc``: the adaptive-BN score, a fraction (of the ``scored_images`` it saw, fewer where stopped). Seconds, rounded to 0.1 ms: ``seconds`` from ask to tell,
    and the scoring split ``prune_seconds``, ``recalibrate_seconds``, ``evaluate_seconds``. A candidate's latency
    is predicted (``cost.latency_ms``), not measured: the search checks the predictor on held-out subnets
    (``autoprune.deployment``) and measures the fine-tuned subnets. ``draws``: random draws it took
    (the ``random`` strategy only). ``same_as``: the earlier trial of the same widths whose score it took rather
    than scoring the same subnet again (``autoprune.runners.trial.begin_trial``). ``error``: the end of a failed candidate's traceback
    (``autoprune.runners.trial.describe_error``).
    """

    number: int
    ratios: Mapping[str, float | None]
    state: str = RUNNING
    widths: Mapping[str, int] | None = None
    cost: Cost | None = None
    proxy_acc: float | None = None
    scored_images: int | None = None
    seconds: float | None = None
    prune_seconds: float | None = None
    recalibrate_seconds: float | None = None
    evaluate_seconds: float | None = None
    draws: int | None = None
    same_as: int | None = None
    error: str | None = None

    @property
    def feasible(self) -> bool:
        """Within the budget (a trial still open reads back as ``running``, so as feasible)."""
        return self.state != INFEASIBLE

    @property
    def id(self) -> str:
        """The id of the subnet fine-tuned from it: ``t`` and the trial number in four digits."""
        return f"t{self.number:04d}"

    def ratios_to_prune(self, groups: Iterable[Group]) -> dict[str, float]:
        """The ratio of each of the space's ``groups`` (``name``, ``low``) that this candidate was scored at,
        as a float: a group without one in the study has a grid of one point, ``low``, which the strategy
        gives it without sampling (``autoprune.search.base.suggest_ratios``)."""
        return {g.name: float(g.low if self.ratios.get(g.name) is None else self.ratios[g.name]) for g in groups}

    # --- how it changes as the trial goes on ---------------------------------------------------------

    def costed(self, widths: Mapping[str, int], cost: Cost, *, feasible: bool) -> Candidate:
        """This candidate with its widths and cost; ``infeasible`` where it is over the budget."""
        return replace(self, widths=dict(widths), cost=cost, state=self.state if feasible else INFEASIBLE)

    def scored(self, result: Mapping[str, Any], *, seconds: float) -> Candidate:
        """This candidate told: complete, stopped (``result["stopped"]`` true), or still infeasible (``result``
        empty: it was never scored), with the ``SCORE_FIELDS`` of ``result`` (a worker's report may hold more)
        and ``seconds`` from ask to tell; seconds are kept to 0.1 ms, the score as given."""
        fields = {key: round(result[key], 4) if key.endswith("_seconds") else result[key]
                  for key in SCORE_FIELDS if key in result}
        state = INFEASIBLE if self.state == INFEASIBLE else STOPPED if result.get("stopped") else COMPLETE
        return replace(self, state=state, seconds=round(seconds, 4), **fields)

    def failed(self, error: str) -> Candidate:
        """This candidate failed with ``error`` (of which the last ``ERROR_CHARS`` characters are kept)."""
        return replace(self, state=FAIL, error=error[-ERROR_CHARS:])

    # --- the study and trials.csv --------------------------------------------------------------------

    def user_attrs(self) -> dict[str, Any]:
        """The Optuna user attributes that record it, those known so far: once costed, its ``ratios`` (a sampler's
        trial has other parameters: ``autoprune.search.base.Strategy.propose``), ``macs``, ``params``, ``widths``,
        ``predicted_latency_ms`` (unrounded: it is compared with the budget) and ``feasible`` once costed;
        then the score, the seconds, ``draws``, ``same_as`` and ``error`` where it has them. ``from_trial`` reads them."""
        attrs: dict[str, Any] = {}
        if self.cost is not None:
            attrs.update(ratios=dict(self.ratios), macs=self.cost.macs, params=self.cost.params)
        if self.widths is not None:
            attrs["widths"] = dict(self.widths)
        if self.cost is not None:
            if self.cost.latency_ms is not None:
                attrs["predicted_latency_ms"] = self.cost.latency_ms
            attrs["feasible"] = self.feasible
        for key in (*SCORE_FIELDS, "seconds", "draws", "same_as", "error"):
            if getattr(self, key) is not None:
                attrs[key] = getattr(self, key)
        return attrs

    def write_attrs(self, trial: optuna.Trial, written: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Set on the live ``trial`` each of ``user_attrs`` not in ``written`` (what an earlier call returned,
        so each attribute is stored once); returns them all."""
        attrs = self.user_attrs()
        for key, value in attrs.items():
            if written is None or key not in written:
                trial.set_user_attr(key, value)
        return attrs

    @classmethod
    def from_trial(cls, t: optuna.trial.FrozenTrial, group_names: Iterable[str] | None = None) -> Candidate:
        """The candidate a trial of the run's study records. ``ratios`` has one entry per name of
        ``group_names`` (None where the trial has no ratio for it), or one per group it has a ratio for.
        A complete trial marked ``feasible`` false is ``infeasible``; one without the mark (an older run),
        complete."""
        attrs = t.user_attrs
        state = STOPPED if t.state == optuna.trial.TrialState.PRUNED else t.state.name.lower()
        if t.state == optuna.trial.TrialState.COMPLETE and not attrs.get("feasible", True):
            state = INFEASIBLE
        recorded = attrs.get("ratios") or t.params  # an older run, or a trial closed before its ratios were written
        names = recorded if group_names is None else group_names
        cost = None
        if "macs" in attrs or "params" in attrs:
            cost = Cost(attrs.get("macs"), attrs.get("params"), attrs.get("predicted_latency_ms"))
        return cls(number=t.number, ratios={name: recorded.get(name) for name in names}, state=state,
                   widths=attrs.get("widths"), cost=cost,
                   **{key: attrs.get(key) for key in (*SCORE_FIELDS, "seconds", "draws", "same_as", "error")})

    def row(self) -> dict[str, Any]:
        """Its row of trials.csv: the ``TRIAL_COLUMNS`` (the error by its last line, the exception; the study
        keeps the traceback), then ``ratio:<group>`` for each of its ratios, rounded to 6 places."""
        cost = self.cost or Cost(None, None)
        values = {"number": self.number, "state": self.state, "macs": cost.macs, "params": cost.params,
                  "predicted_latency_ms": cost.latency_ms,
                  "error": self.error.strip().splitlines()[-1] if self.error else self.error}
        row = {column: values[column] if column in values else getattr(self, column) for column in TRIAL_COLUMNS}
        for name, ratio in self.ratios.items():
            row[f"ratio:{name}"] = None if ratio is None else round(ratio, 6)
        return row


def candidates(study: optuna.Study, group_names: Iterable[str] | None = None,
               states: tuple[optuna.trial.TrialState, ...] | None = None) -> list[Candidate]:
    """The candidates of ``study``'s trials (of ``states``, or all), in trial order (``Candidate.from_trial``)."""
    names = None if group_names is None else list(group_names)
    return [Candidate.from_trial(t, names) for t in study.get_trials(deepcopy=False, states=states)]


def complete_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of a trials table (trials.csv) scored in full: ``complete``, with a proxy accuracy. A ``stopped``
    candidate's proxy is of fewer images, and ranks with none of them."""
    return trials[(trials["state"] == COMPLETE) & trials["proxy_acc"].notna()] if len(trials) else trials


def trials_frame(study: optuna.Study, group_names: list[str]) -> pd.DataFrame:
    """trials.csv of ``study``: one ``Candidate.row`` per trial, the ``TRIAL_COLUMNS`` then one ratio per group."""
    columns = TRIAL_COLUMNS + [f"ratio:{n}" for n in group_names]
    frame = pd.DataFrame([c.row() for c in candidates(study, group_names)], columns=columns)
    return frame.astype({"scored_images": "Int64", "same_as": "Int64"})  # blank where never scored, or scored
