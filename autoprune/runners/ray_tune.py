"""Trials as Ray Tune trials, on a cluster or on a local Ray with several workers.

The run's own strategy and Optuna study (``study.db``) stay in the driver, behind a Tune
``Searcher``: ``suggest`` asks the strategy (Optuna's samplers, random, binary: the same objects
as in a local run, with the same constraints and warm start), and ``on_trial_complete`` tells the
study. Candidates over budget are recorded in the driver and never reach a worker. Workers only
prune and score: the base model, the driver's channel rankings and the scoring data go into the
object store once per run (``ship``), and each worker process reads them out once and builds its
pruning space once for every trial it runs (``reuse_actors``).

Early-stopped scoring: a worker reports each scoring batch to Tune, and a Tune scheduler in the driver
(``make_scheduler``) asks the run's Optuna pruner, on the trial in the study, whether to go on, and stops the
trial where it says so: the same pruner and the same decisions as in a local run (Optuna's successive
halving is the asynchronous kind, ASHA).

Faults: a worker that dies mid-trial has its trial retried by Tune (``FailureConfig``); a trial
that raises is recorded as failed with its error; a killed driver leaves ``study.db`` with every
completed trial, and ``--resume`` goes on from there.

Fine-tuning of the chosen subnets runs as parallel Ray tasks with the same resources as a trial;
their latency is measured back in the driver, on the run's target, like a local run's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import optuna
import torch
from torch import nn

from autoprune.budget import Budget
from autoprune.errors import UserError
from autoprune.measure import AdaptiveBNEvaluator
from autoprune.pruning.base import Space
from autoprune.pruning.config import SpaceConfig
from autoprune.pruning.space import PruningSpace
from autoprune.pruning.weights import WeightSpace
from autoprune.results import RunDir
from autoprune.runners.settings import RaySettings
from autoprune.runners.trial import (
    PendingTrial,
    all_failing,
    begin_trial,
    describe_error,
    finish_trial,
    score_candidate,
)
from autoprune.search import Strategy
from autoprune.search.pruners import stop_rule

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray listens on 127.0.0.1 only


_started_here = False  # whether this process started the Ray it is connected to (--ray-local)


def connect(settings: RaySettings) -> None:
    """Join the cluster at ``settings.address``, or start a private local Ray on loopback."""
    global _started_here
    if settings.local_workers is not None:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar, not Tune's status tables
    import ray

    if ray.is_initialized():
        if settings.local_workers is not None and not _started_here:
            raise UserError("--ray-local: this process is already connected to a Ray cluster; use --ray-address")
        return
    if settings.address is not None:  # autoprune.config.validate has checked it answers (check_reachable)
        refused = (ConnectionError, getattr(ray.exceptions, "AuthenticationError", ConnectionError))
        try:
            ray.init(address=settings.address, log_to_driver=False)
        except refused as exc:
            raise UserError(f"--ray-address {settings.address}: Ray could not join the cluster there ({exc}). "
                            "Where the cluster uses token authentication, give this machine its token "
                            "(RAY_AUTH_TOKEN, or ~/.ray/auth_token); where the head listens on 127.0.0.1 only, "
                            f"set {LOOPBACK_ENV}=0 here as for the head (docs/ray.md)") from exc
    else:
        # "local": a new Ray for this run, even where this machine already runs a cluster
        ray.init(address="local", num_cpus=settings.local_workers, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        _started_here = True


def stop_local() -> None:
    """Stop the private Ray that ``--ray-local`` started for the run."""
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


@dataclass
class WorkerBench:
    """What every worker needs, shipped once: the trained model and the scorer's data."""

    model: nn.Module
    example_input: torch.Tensor
    space_config: SpaceConfig
    orders: dict[str, list[int]]  # the driver's channel rankings: workers never rerun the criterion
    evaluator: AdaptiveBNEvaluator
    threads: int
    key: str  # one per run: a worker process keeps the space it built for it
    mask_scope: str | None = None  # weight pruning: the WeightSpace's scope (its magnitude ranking is redone)

    def build(self) -> tuple[Space, AdaptiveBNEvaluator]:
        """The worker's own pruning space, rebuilt from the driver's rankings (a weight space from its scope),
        and the scorer; sets the worker's torch threads to ``threads``."""
        torch.set_num_threads(max(1, self.threads))
        if self.mask_scope is not None:
            return WeightSpace(self.model, self.example_input, self.space_config, scope=self.mask_scope), self.evaluator
        space = PruningSpace(self.model, self.example_input, self.space_config, orders=self.orders)
        return space, self.evaluator


@dataclass(frozen=True)
class Shipped:
    """A run's ``WorkerBench`` in the object store, behind a key: a worker reads it out of the store
    only the first time it meets the key, so later trials cost no deserialisation."""

    key: str
    ref: object  # ray.ObjectRef of the WorkerBench


_WORKER_STATE: dict[str, tuple[WorkerBench, Space, AdaptiveBNEvaluator]] = {}


def ship(workbench: WorkerBench) -> Shipped:
    """Put ``workbench`` into the Ray object store once, behind its run's key (needs a connected Ray)."""
    import ray

    return Shipped(workbench.key, ray.put(workbench))


def _worker_state(shipped: Shipped) -> tuple[WorkerBench, Space, AdaptiveBNEvaluator]:
    """The workbench of this run, and its pruning space and scorer, built once per worker process."""
    if shipped.key not in _WORKER_STATE:
        import ray

        _WORKER_STATE.clear()
        workbench = ray.get(shipped.ref)
        _WORKER_STATE[shipped.key] = (workbench, *workbench.build())
    return _WORKER_STATE[shipped.key]


def _score_trial(config: dict, shipped: Shipped) -> None:
    """The Tune trainable: prune and score one candidate, report the score or the error. With
    ``config["early_stop"]`` each scoring batch but the last is reported too (``partial``), for the driver's
    scheduler to stop the trial on (Tune then ends this function at its next report)."""
    from ray import tune

    _, space, evaluator = _worker_state(shipped)

    def report(step: int, images: int, batch_accuracy: float, running_accuracy: float) -> bool:
        tune.report({"partial": True, "scoring_step": step, "scored_images": images,
                     "batch_accuracy": batch_accuracy, "proxy_acc": running_accuracy})
        return False  # the driver decides

    try:
        result = score_candidate(space, evaluator, config["ratios"], report if config["early_stop"] else None)
    except Exception as exc:  # noqa: BLE001  (recorded as a failed trial by the searcher)
        result = {"proxy_acc": 0.0, "error": describe_error(exc)}
    tune.report(result)


@dataclass
class _Driver:
    """The searcher's live state, which exists only in the driver: the study and strategy, the
    space that costs candidates, the run directory, and ``on_finish`` (the caller's callback: with
    progress on, it advances a rich progress bar, which holds locks and a console)."""

    study: optuna.Study
    strategy: Strategy
    space: Space
    budget: Budget
    run: RunDir
    remaining: int
    on_finish: object  # Callable[[Candidate], None]
    early_stop: bool = False  # the run's pruner may stop scores: workers report each scoring batch


def make_searcher(study: optuna.Study, strategy: Strategy, space: Space, budget: Budget, run: RunDir,
                  remaining: int, on_finish, pruner: str = "none"):
    """A Tune ``Searcher`` over the run's study; ``on_finish(candidate)`` after each trial. Where ``pruner`` may
    stop scores (one objective, not ``none``), trials ask their workers for each scoring batch, and a trial that
    ``make_scheduler`` stopped is told as stopped.
    (Defined here so that importing this module does not import Ray.)

    ``tune.Tuner`` pickles its search algorithm into ``tuner.pkl`` (for ``Tuner.restore``), so the
    searcher must pickle: its methods read everything through ``self`` (a closure would carry the
    callback, and the progress bar's locks, into the pickle) and ``__getstate__`` leaves the driver's
    live state out. Nothing is lost: autoprune never restores a Tuner, ``--resume`` reopens ``study.db``."""
    from ray.tune.search import Searcher

    class _StudySearcher(Searcher):
        def __init__(self, driver: _Driver) -> None:
            super().__init__(metric="proxy_acc", mode="max")
            self.driver: _Driver | None = driver
            self.pending: dict[str, PendingTrial] = {}
            self.stopped: set[str] = set()  # trials the driver's scheduler stopped early
            self.asked = 0
            self.fatal: UserError | None = None

        def __getstate__(self) -> dict:
            return {**self.__dict__, "driver": None, "pending": {}, "stopped": set()}

        def suggest(self, trial_id: str):
            d = self.driver
            while self.asked < d.remaining and self.fatal is None:
                self.asked += 1
                pending = begin_trial(d.study, d.strategy, d.space, d.budget)
                if pending.to_score:
                    self.pending[trial_id] = pending
                    return {"ratios": pending.candidate.ratios, "trial": pending.number, "early_stop": d.early_stop}
                d.on_finish(finish_trial(d.study, d.strategy, d.run, d.space.group_names, pending, None))
            return Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            d = self.driver
            pending = self.pending.pop(trial_id, None)
            if pending is None:
                return
            names = d.space.group_names
            stopped = trial_id in self.stopped
            self.stopped.discard(trial_id)
            if error or not result:
                candidate = finish_trial(d.study, d.strategy, d.run, names, pending, None,
                                         error="RayTrialError: the trial's worker failed on every retry")
            elif result.get("error"):
                candidate = finish_trial(d.study, d.strategy, d.run, names, pending, None, error=result["error"])
            else:  # the worker's report: the score, with Tune's own keys, which the candidate leaves out
                stopped = stopped or bool(result.get("partial"))
                candidate = finish_trial(d.study, d.strategy, d.run, names, pending, {**result, "stopped": stopped})
            d.on_finish(candidate)
            self.fatal = self.fatal or all_failing(d.study)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study in the run directory holds the search's state."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: ``--resume`` reopens the study."""

    return _StudySearcher(_Driver(study, strategy, space, budget, run, remaining, on_finish,
                                  early_stop=len(study.directions) == 1 and pruner != "none"))


def make_scheduler(searcher, pruner: str):
    """A Tune ``TrialScheduler`` that stops a trial where the run's Optuna pruner (``autoprune.search.pruners``)
    says to, asked on the trial in the study with each batch the worker reports: the local runner's rule,
    decided in the driver. Runs trials in submission order otherwise (Tune's FIFO scheduler). Pickles without
    the searcher, as the searcher does without its driver."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class _PrunerScheduler(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self._supports_buffered_results = False  # every batch's report, not a buffered few
            self.searcher = searcher
            self.pruner = pruner

        def __getstate__(self) -> dict:
            return {**self.__dict__, "searcher": None}

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            pending = self.searcher.pending.get(trial.trial_id) if self.searcher is not None else None
            if not result.get("partial") or pending is None or trial.trial_id in self.searcher.stopped:
                return TrialScheduler.CONTINUE
            rule = stop_rule(pending.trial, self.pruner)
            if rule is not None and rule(result["scoring_step"], result["scored_images"], result["batch_accuracy"],
                                         result["proxy_acc"]):
                self.searcher.stopped.add(trial.trial_id)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return _PrunerScheduler()


def ship_model_code(model: nn.Module) -> None:
    """Let the classes of a user's model travel by value: a ``file.py:factory`` model, or one
    defined in a script, cannot be imported by name on the workers. Installed packages (torch,
    autoprune, ...) are imported there as usual."""
    from ray import cloudpickle

    for name in sorted({type(m).__module__ for m in model.modules()}):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        if name == "__main__" or name.split(".")[0] in ("torch", "autoprune") or "-packages" in path:
            continue
        cloudpickle.register_pickle_by_value(module)


def run_trials(settings: RaySettings, study: optuna.Study, strategy: Strategy, space: Space, budget: Budget,
               run: RunDir, workbench: WorkerBench, remaining: int, on_finish, pruner: str = "none") -> None:
    """Run ``remaining`` trials as Tune trials, ``settings.workers`` at a time; ``on_finish(candidate)`` after
    each; ``pruner`` stops scores early (``make_scheduler``)."""
    from ray import tune

    connect(settings)
    ship_model_code(workbench.model)
    searcher = make_searcher(study, strategy, space, budget, run, remaining, on_finish, pruner)
    trainable = tune.with_resources(tune.with_parameters(_score_trial, shipped=ship(workbench)),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(searcher, pruner), num_samples=-1,
                                    max_concurrent_trials=settings.workers,
                                    reuse_actors=True,
                                    trial_dirname_creator=lambda trial: f"trial-{trial.config['trial']:04d}"),
        run_config=tune.RunConfig(name="tune", storage_path=str((run.path / "ray").resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    tuner.fit()
    if searcher.fatal is not None:
        raise searcher.fatal


def _finetune_job(shipped: Shipped, data, config, job):
    from autoprune.finetuning import finetune_candidate

    _, space, evaluator = _worker_state(shipped)
    return finetune_candidate(space, evaluator, config, data, job.ratios, seed=job.seed, epochs=job.epochs,
                              test=job.test)


def finetune_on_ray(settings: RaySettings, workbench: WorkerBench, data, config, jobs: list):
    """Train every ``autoprune.finetuning.FinetuneJob`` of ``jobs`` as parallel Ray tasks; yields the results in
    order, each as soon as it and those before it are done."""
    import ray

    connect(settings)
    ship_model_code(workbench.model)
    task = ray.remote(_finetune_job).options(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial,
                                             max_retries=2)
    shipped, data_ref = ship(workbench), ray.put(data)
    refs = [task.remote(shipped, data_ref, config, job) for job in jobs]
    for ref in refs:
        yield ray.get(ref)


class RayRunner:
    """Trials as Tune trials and fine-tunes as Ray tasks, on the cluster the run's settings name (the local
    runner's interface: ``autoprune.runners.local.LocalRunner``)."""

    shows_finetune_progress = False  # the workers train without bars: the caller counts the subnets done

    def __init__(self, bench) -> None:  # bench: autoprune.workbench.Workbench
        self.bench = bench
        self.settings = bench.config.ray_settings()
        space = bench.space
        self.worker_bench = WorkerBench(space.model, space.example_input, space.config, space.orders, bench.evaluator,
                                        threads=max(1, int(self.settings.cpus_per_trial)),
                                        key=str(bench.run.path.resolve()),
                                        mask_scope=space.scope if isinstance(space, WeightSpace) else None)

    def run_trials(self, study: optuna.Study, strategy: Strategy, remaining: int, on_finish) -> None:
        """Run ``remaining`` trials, ``workers`` at a time; ``on_finish(candidate)`` after each."""
        bench = self.bench
        run_trials(self.settings, study, strategy, bench.space, bench.budget, bench.run, self.worker_bench,
                   remaining, on_finish, bench.config.pruner)

    def finetune(self, jobs):
        """Fine-tune every job as a parallel Ray task; yields the results in order."""
        return finetune_on_ray(self.settings, self.worker_bench, self.bench.data, self.bench.config, jobs)

    def close(self) -> None:
        """Stop the private Ray that ``--ray-local`` started for the run."""
        stop_local()
