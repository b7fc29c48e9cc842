"""Seeded bugs: plant each of 15 known wrong answers in a copy of the tree and run the tests that should notice.

Each bug is one textual change to one file. Nine are bugs the suite once let through; six more are
of the same kinds. A bug is
*killed* when its tests fail with it planted. The copy takes the working tree as it is (uncommitted
changes included); this tree is never modified.

    .venv/bin/python tools/seeded_bugs.py            # all 15, about 3 minutes on 2 cores
    .venv/bin/python tools/seeded_bugs.py 3 9        # only these
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


E2E, RESUME = "tests/e2e/test_search.py", "tests/e2e/test_resume.py"
BUGS = [
    Bug("linear-layer MACs ignore input cuts", "autoprune/measure/layers.py",
        "            return self.kernel * self.positions * in_dim * out_dim\n",
        "            return self.kernel * self.positions * (self.in_dim if self.kind == 'linear' else in_dim) * out_dim\n",
        ("tests/pruning/test_exact_cost.py", "tests/pruning/test_space.py")),
    Bug("a budget check that looks only at the first constraint", "autoprune/budget.py",
        "return all(v <= 1e-12 for v in self.violations(cost, base).values())",
        "return self.primary.violation(cost, base) <= 1e-12",
        ("tests/test_budget.py", "tests/test_budget_properties.py", "tests/test_trial_feasible.py")),
    Bug("fine-tuning skips its BN recalibration", "autoprune/finetuning.py",
        "    evaluator.recalibrate(subnet.to(config.device))\n",
        "    subnet.to(config.device)\n",
        (f"{E2E}::test_fine_tuning_starts_from_recalibrated_batchnorm",)),
    Bug("--no-adaptive-bn ignored", "autoprune/workbench.py",
        "adaptive=config.adaptive_bn if adaptive is None else adaptive)",
        "adaptive=True if adaptive is None else adaptive)",
        ("tests/e2e/test_options.py::test_no_adaptive_bn_scores_each_candidate_with_its_bn_statistics_as_pruned",)),
    Bug("the recalibrated instead of the fine-tuned weights saved", "autoprune/finetuning.py",
        "    return spec.save(directory, done.subnet.cpu(), masks=masks)\n",
        "    recalibrated = space.prune(ratios)[0]\n    bench.evaluator.recalibrate(recalibrated)\n"
        "    return spec.save(directory, recalibrated.cpu(), masks=masks)\n",
        (f"{E2E}::test_search_writes_a_complete_run",)),
    Bug("load_subnet returns a model in train mode", "autoprune/results.py",
        "    return model.eval()\n", "    return model.train()\n",
        ("tests/test_subnet_io.py",)),
    Bug("resume deletes the study and redoes every trial", "autoprune/runners/study.py",
        "    study = optuna.create_study(storage=bench.run.storage_url,",
        "    try:\n        optuna.delete_study(study_name=STUDY_NAME, storage=bench.run.storage_url)\n"
        "    except KeyError:\n        pass\n"
        "    study = optuna.create_study(storage=bench.run.storage_url,",
        (f"{RESUME}::test_every_strategy_resumes_to_more_trials", f"{RESUME}::test_resume_after_a_killed_run")),
    Bug("already fine-tuned subnets fine-tuned again on resume", "autoprune/finetuning.py",
        'if (directory / "spec.json").exists():  # fine-tuned before a resume',
        "if False:",
        (f"{RESUME}::test_resume_keeps_fine_tuned_subnets_and_fine_tunes_only_the_new",)),
    Bug("every subnet put on the Pareto front", "autoprune/report.py",
        "    return non_dominated(records, lambda r: r.test_acc, lambda r: r.macs)\n",
        "    return sorted(records, key=lambda r: r.macs)\n",
        ("tests/test_pareto.py", f"{E2E}::test_search_writes_a_complete_run")),
    Bug("conv MACs ignore output cuts", "autoprune/measure/layers.py",
        "            return self.kernel * self.positions * in_dim * out_dim\n",
        "            return self.kernel * self.positions * in_dim * self.out_dim\n",
        ("tests/pruning/test_exact_cost.py", "tests/pruning/test_space.py")),
    Bug("candidates scored without their BN recalibrated", "autoprune/measure/evaluator.py",
        "        if self.adaptive:\n            self.recalibrate(model, calib_batches)\n",
        "        if False:\n            self.recalibrate(model, calib_batches)\n",
        ("tests/measure/test_evaluator.py",)),
    Bug("the worst candidates by proxy fine-tuned", "autoprune/selection.py",
        "key=lambda c: (-c.proxy_acc, c.number)",
        "key=lambda c: (c.proxy_acc, c.number)",
        ("tests/search", f"{E2E}::test_search_writes_a_complete_run")),
    Bug("a percentage budget read as a fraction of ten", "autoprune/budget.py",
        "return Constraint(_metric(rel[\"metric\"]), value / 100.0, None, part)",
        "return Constraint(_metric(rel[\"metric\"]), value / 10.0, None, part)",
        ("tests/test_budget.py", "tests/test_budget_properties.py")),
    Bug("FLOPs taken as MACs in an absolute budget", "autoprune/budget.py",
        "            value /= 2.0  # FLOPs = 2 x MACs\n", "            value /= 1.0\n",
        ("tests/test_budget.py", "tests/test_budget_properties.py")),
    Bug("test accuracy measured on the held-out images", "autoprune/finetuning.py",
        "    test_acc = accuracy(done.subnet, data.test, device=config.device)\n",
        "    test_acc = accuracy(done.subnet, data.holdout, device=config.device)\n",
        (f"{E2E}::test_search_writes_a_complete_run",)),
]


def _copy_tree(to: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def plant(bug: Bug, tree: Path) -> str:
    """Apply ``bug`` to ``tree``; returns the original text of the file."""
    path = tree / bug.path
    text = path.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"seeded bug '{bug.what}': the line to change is not once in {bug.path}; update this script")
    path.write_text(text.replace(bug.old, bug.new))
    return text


def run(bug: Bug, tree: Path) -> tuple[bool, float]:
    """Whether the bug's tests fail with it planted (killed), and how long they ran."""
    original = plant(bug, tree)
    env = {**os.environ, "PYTHONPATH": str(tree)}  # before the editable install of this tree
    tic = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               "-n", "0", *bug.tests], check=False, cwd=tree, env=env, capture_output=True,
                              text=True)
    finally:
        (tree / bug.path).write_text(original)
    if done.returncode not in (0, 1):
        raise SystemExit(f"seeded bug '{bug.what}': pytest exited {done.returncode}\n{done.stdout[-3000:]}")
    return done.returncode == 1, time.monotonic() - tic


def main(argv: list[str]) -> int:
    chosen = [int(a) for a in argv] or list(range(1, len(BUGS) + 1))
    if not all(1 <= n <= len(BUGS) for n in chosen):
        raise SystemExit(f"seeded bugs are numbered 1 to {len(BUGS)}")
    with tempfile.TemporaryDirectory(prefix="seeded-bugs-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        killed = 0
        print("| # | seeded bug | killed | seconds |\n|---|---|---|---:|")
        for number in chosen:
            bug = BUGS[number - 1]
            caught, seconds = run(bug, tree)
            killed += caught
            print(f"| {number} | {bug.what} | {'yes' if caught else '**no**'} | {seconds:.0f} |", flush=True)
        print(f"\n{killed} of {len(chosen)} killed")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
