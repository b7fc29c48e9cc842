"""What can be pruned (``PruningSpace``) and in which order channels go (criteria)."""
