"""The options that keep the tests' searches quick where their subject is neither latency nor the shortlist.

Latency measured in eager PyTorch in 3 interleaved rounds, every width kept, no held-out check: each ONNX export
takes seconds, and runs compared with each other must search the same widths whatever this machine's timings.
The default target, its widths, its check and its 15 rounds are tested in test_latency_target.py and
test_default_job.py. The multi-fidelity stage, on by default, trains its shortlist for 4 steps rather than 100;
test_shortlist.py tests what it chooses.
"""

LATENCY_OPTIONS = {"target": "torch", "widths": "all", "latency_checks": 0, "latency_rounds": 3}
QUICK_OPTIONS = {**LATENCY_OPTIONS, "shortlist_steps": 4}  # the Python API's


def _flags(options: dict) -> tuple[str, ...]:
    return tuple(word for name, value in options.items() for word in (f"--{name.replace('_', '-')}", str(value)))


QUICK_FLAGS = _flags(QUICK_OPTIONS)  # the command line's
LATENCY_FLAGS = _flags(LATENCY_OPTIONS)[::2]  # the latency options' names alone
