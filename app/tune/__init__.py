"""Auto-Tune: the search space, one measurement, the session that searches (its plan, its Optuna study
and pruner), the proof of its gain, its results and their exports."""
