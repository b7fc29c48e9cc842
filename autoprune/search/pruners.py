"""Early-stopped scoring: Optuna's pruners stop a candidate's adaptive-BN score once it is plainly worse.

A candidate is scored batch by batch on the same held-out images in the same order
(``AdaptiveBNEvaluator.score``'s ``stop``); after each batch but the last the trial reports to the study and
asks its pruner whether to go on. A stopped candidate is recorded as ``stopped`` (Optuna's ``PRUNED``), with
the accuracy on the images it saw, and is never fine-tuned. The pruners need one objective: NSGA-II's trials
are always scored in full.

- ``median``: stop where the running accuracy is below the median of earlier trials' at the same batch
  (Optuna's ``MedianPruner``; after 5 trials, from the second batch).
- ``halving``: successive halving over the batches (Optuna's ``SuccessiveHalvingPruner``, rungs at 1, 3, 9...
  batches, a third of the trials promoted at each), as ASHA does (Li et al., MLSys 2020).
- ``wilcoxon``: stop where a Wilcoxon signed-rank test over the batches seen says the candidate is worse than the
  best trial on the same batches (Optuna's ``WilcoxonPruner``, p < 0.1, from the third batch): each batch is
  one paired instance.
- ``none``: every candidate scored on every batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from autoprune.measure.evaluator import StopRule
from autoprune.registry import Registry

PRUNERS: Registry[Callable[[], optuna.pruners.BasePruner]] = Registry("pruner")


@PRUNERS.register("median", "stop a candidate whose running accuracy is below the median of earlier trials' at "
                  "the same batch (after 5 trials, from the second batch)", per_batch=False)
def _median() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


@PRUNERS.register("halving", "successive halving over the scoring batches: rungs at 1, 3, 9... batches, a third "
                  "promoted at each", per_batch=False)
def _halving() -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


@PRUNERS.register("wilcoxon", "stop a candidate that a Wilcoxon signed-rank test over the batches seen finds worse "
                  "than the best trial (p < 0.1, from the third batch)", per_batch=True)
def _wilcoxon() -> optuna.pruners.BasePruner:
    with warnings.catch_warnings():  # experimental in Optuna 5: its interface may change, which the tests would see
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


@PRUNERS.register("none", "score every candidate on every batch", per_batch=False)
def _none() -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def list_pruners() -> list[str]:
    """The ``--pruner`` choices, sorted."""
    return PRUNERS.names()


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``name`` (an unknown name is a ``UserError`` listing the pruners)."""
    return PRUNERS.get(name).obj()


def stop_rule(trial: optuna.Trial, name: str) -> StopRule | None:
    """The rule that reports each scoring batch to ``trial`` and stops where the study's pruner says to: the
    batch's own accuracy for a pruner of paired instances (``wilcoxon``), the running accuracy otherwise. None
    for ``none``, and for a study of several objectives (NSGA-II), which Optuna's pruners do not take."""
    if name == "none" or len(trial.study.directions) > 1:
        return None
    per_batch = PRUNERS.get(name).per_batch

    def stop(step: int, images: int, batch_accuracy: float, running_accuracy: float) -> bool:
        trial.report(batch_accuracy if per_batch else running_accuracy, step)
        return trial.should_prune()

    return stop
