"""What a subnet costs (MACs, params) and how good it is (adaptive-BN proxy, test accuracy)."""

from autoprune.measure.evaluator import AdaptiveBNEvaluator, accuracy, to_device

__all__ = ["AdaptiveBNEvaluator", "accuracy", "to_device"]
