"""Auto-Tune: the search space, one measurement, the session that searches, and its exports."""
