"""build_model: a model from its .config dict (checkpoints, training and evaluation use it)."""
from __future__ import annotations

from torch import nn

from dmm.baselines import DecisionTransformer
from dmm.model import DecisionMetaMamba

MODELS = {"dmm": DecisionMetaMamba, "dt": DecisionTransformer}


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from its .config: config["model"] is "dmm" (default) or "dt"."""
    kwargs = dict(config)
    kind = kwargs.pop("model", "dmm")
    if kind not in MODELS:
        raise ValueError(f"build_model: config['model'] must be one of {tuple(MODELS)}; got {kind!r}")
    return MODELS[kind](**kwargs)
