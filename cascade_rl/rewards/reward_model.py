"""Scalar reward models (``type: reward_model`` rewards)."""
