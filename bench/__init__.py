"""Benchmarks that compare cascade_rl with TRL on the same work; run each script as ``python bench/<name>.py``."""
