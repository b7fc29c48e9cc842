"""Where trials run: in this process (the default) or as Ray Tune trials on a cluster.

Both runners drive the same strategy over the same Optuna study and record trials through
``autoprune.runners.trial``, so a run directory reads the same whichever ran it.
"""
