"""``make bench``: the worker's throughput against the model's own ceiling (see BENCHMARKS.md)."""
