"""Benchmarks: the llama-bench-compatible runner, its exports and the history store."""
