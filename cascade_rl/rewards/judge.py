"""Generative pairwise judges (``type: judge`` rewards)."""
