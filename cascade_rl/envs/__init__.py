"""Environments: what an episode's prompt is and what happens after each model turn."""

from cascade_rl.envs.base import ENVS, Env, StepResult, env_class, make_env, register_env

__all__ = ["ENVS", "Env", "StepResult", "env_class", "make_env", "register_env"]
