"""``autoprune bench``: the studies that back the README's claims with measured figures.

Each study runs side by side in one process on one machine (so ratios hold on noisy hardware),
resumes from its journal after an interruption, and writes CSV + PNG + summary.md under
``results/bench/<study>/`` with the exact command that made them.
"""

STUDIES = {
    "fidelity": "adaptive-BN vs vanilla score against fine-tuned accuracy; calibration-batch sweep",
    "efficiency": "best proxy vs trials per strategy over seeds; candidates per minute; scoring overhead",
    "baselines": "searched vs uniform L1 vs Torch-Pruning global magnitude vs unpruned, fine-tuned alike",
    "speedup": "measured CPU latency (batch 1 and 64) vs MACs at several budgets, and a latency budget",
    "criteria": "every importance criterion at the same uniform and searched ratios: proxy, fine-tuned, ranking time",
    "retrain": "fine-tune vs lottery rewind (init, epoch K) vs Scratch-E vs Scratch-B on one pruned architecture",
    "granularity": "weight vs filter pruning at equal parameters: measured latency and proxy accuracy",
    "deploy": "subnets exported to ONNX and torch.export, timed in onnxruntime, torch.export and PyTorch; widths "
    "rounded to a multiple of 8 or not",
}
