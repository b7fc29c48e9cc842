"""Where trials run: in this process (the default) or as Ray Tune trials on a cluster.

Both runners drive the same strategy over the same Optuna study and record trials through
``autoprune.runners.trial``, so a run directory reads the same whichever ran it. They share one
interface: ``run_trials(study, strategy, remaining, on_finish)``, ``finetune(jobs)`` and ``close()``.
"""

from __future__ import annotations


def make_runner(bench, *, quiet: bool):
    """The runner ``bench.config`` asks for: ``RayRunner`` with a Ray address or ``--ray-local``, else
    ``LocalRunner`` (``bench``: an ``autoprune.workbench.Workbench``)."""
    if bench.config.uses_ray:
        from autoprune.runners.ray_tune import RayRunner

        return RayRunner(bench)
    from autoprune.runners.local import LocalRunner

    return LocalRunner(bench, quiet=quiet)
