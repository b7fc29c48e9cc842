"""Trials and fine-tunes in this process, one after another: the default runner.

It has the interface of the Ray runner (``autoprune.runners.ray_tune.RayRunner``): ``run_trials`` drives
the strategy over the study through the shared trial steps (``autoprune.runners.trial``), and
``finetune`` trains the chosen subnets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import optuna

from autoprune.candidate import Candidate
from autoprune.finetuning import Finetuned, FinetuneJob, finetune_candidate
from autoprune.runners.trial import (
    all_failing,
    begin_trial,
    describe_error,
    finish_trial,
    score_candidate,
)
from autoprune.search import Strategy
from autoprune.search.pruners import stop_rule
from autoprune.workbench import Workbench


class LocalRunner:
    """Runs on the workbench's own space and scorer; ``quiet``: no progress bars of the fine-tunes."""

    shows_finetune_progress = True  # each fine-tune draws its own bar here

    def __init__(self, bench: Workbench, *, quiet: bool) -> None:
        self.bench = bench
        self.quiet = quiet

    def run_trials(self, study: optuna.Study, strategy: Strategy, remaining: int,
                   on_finish: Callable[[Candidate], None]) -> None:
        """Run ``remaining`` trials; ``on_finish(candidate)`` after each, as the study records it. Raises the
        ``UserError`` of ``all_failing`` as soon as every candidate so far has failed."""
        bench = self.bench
        space = bench.space
        for _ in range(remaining):
            pending = begin_trial(study, strategy, space, bench.budget)
            scored, error = None, None
            if pending.to_score:
                try:
                    scored = score_candidate(space, bench.evaluator, pending.candidate.ratios,
                                             stop_rule(pending.trial, bench.config.pruner))
                except Exception as exc:  # noqa: BLE001  (a custom model that breaks at some widths: record it, go on)
                    error = describe_error(exc)
            on_finish(finish_trial(study, strategy, bench.run, space.group_names, pending, scored, error))
            fatal = all_failing(study)
            if fatal is not None:
                raise fatal

    def finetune(self, jobs: list[FinetuneJob]) -> Iterator[Finetuned]:
        """Train each job's subnet in turn; yields the results in order."""
        bench = self.bench
        for job in jobs:
            yield finetune_candidate(bench.space, bench.evaluator, bench.config, bench.data, job.ratios,
                                     seed=job.seed, quiet=self.quiet, description=job.description, epochs=job.epochs,
                                     test=job.test)

    def close(self) -> None:
        """Nothing to release."""
