"""Normalized score: 100 * (return - random) / (expert - random).

D4RL tasks use D4RL's reference returns (docs/ARCHITECTURE.md, "Evaluation and normalized score"); the embedded datasets use the
project's own measured references (dmm.data.embedded).
"""
from __future__ import annotations

import re

import numpy as np

from .embedded import PENDULUM_EXPERT_RETURN, PENDULUM_RANDOM_RETURN

# (random, expert) per task family. D4RL's values, as in d4rl/infos.py (REF_MIN/MAX_SCORE);
# every dataset of one family (medium, medium-replay, ...) shares them.
REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "pendulum": (PENDULUM_RANDOM_RETURN, PENDULUM_EXPERT_RETURN),
}


def task_family(name: str) -> str | None:
    """'d4rl:hopper-medium-v2', 'Hopper-v5', 'mujoco/hopper/medium-v0', 'embedded:pendulum-expert'
    -> 'hopper' / 'pendulum'; None when no known family appears in the name."""
    name = name.split(":", 1)[1] if re.match(r"^[a-z0-9]+:", name) else name
    for token in re.split(r"[-/_.\s]+", name.lower()):
        if token in REFERENCE_RETURNS:
            return token
    return None


def reference_returns(dataset_or_name) -> tuple[float, float]:
    refs = getattr(dataset_or_name, "reference_returns", None)
    if refs is not None:
        return refs
    name = getattr(dataset_or_name, "name", dataset_or_name)
    family = task_family(str(name))
    if family is None:
        raise ValueError(
            f"no reference returns for {name!r}: known task families are "
            f"{sorted(REFERENCE_RETURNS)}; pass a dataset that has reference_returns set"
        )
    return REFERENCE_RETURNS[family]


def normalized_score(dataset_or_env_name, returns):
    """100 * (R - random) / (expert - random); a float for a scalar, else a float64 array."""
    random_ret, expert_ret = reference_returns(dataset_or_env_name)
    scores = 100.0 * (np.asarray(returns, dtype=np.float64) - random_ret) / (expert_ret - random_ret)
    return float(scores) if scores.ndim == 0 else scores
