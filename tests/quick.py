"""The latency options of the tests' searches whose subject is not latency.

Latency measured in eager PyTorch in 3 interleaved rounds, every width kept, no held-out check: each ONNX export
takes seconds, and runs compared with each other must search the same widths whatever this machine's timings.
The default target, its widths, its check and its 15 rounds are tested in test_latency_target.py and
test_default_job.py.
"""

QUICK_OPTIONS = {"target": "torch", "widths": "all", "latency_checks": 0, "latency_rounds": 3}  # the Python API's
QUICK_LATENCY = tuple(word for name, value in QUICK_OPTIONS.items()  # the command line's
                      for word in (f"--{name.replace('_', '-')}", str(value)))
