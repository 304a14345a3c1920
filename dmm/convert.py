"""Port weights between the authors' Decision MetaMamba checkpoints and DecisionMetaMamba.

v1 (arXiv 2408.10517, gym/models/decision_metamamba.py): one module per layer,
    model.layers.{i}.ln_1 / ln_2, .multimodal_token_mixer_{1,2}.{rtg,obs,act}_conv1d (Conv1d
    depthwise: weight (D, 1, W), bias (D)) or .{rtg,obs,act}_lin (Linear(W*D -> D), no bias),
    .in_proj, .x_proj, .dt_proj, .A_log, .D, .out_proj; model.ln_f.
v2 (arXiv 2602.19805, decision-model/models/decision_metamamba.py): model.ln_1 / model.ln_2
    shared by all layers, model.local_sequence_mixers.{i}.lin (Linear(W*D -> D), no bias),
    model.global_sequence_mixers.{i}.{in_proj, ...}; model.ln_f.
Both: embed_return, embed_state, embed_action, embed_ln, predict_action.0 (Linear; .1 is Tanh).
Ours: blocks.{i}.norm1 / mixer1 (weight (3, W, D) + bias (3, D), or (M, D, W*D)) / norm2 /
mixer2 / in_proj / ..., ln_f, predict_action.

The v1 line mixer: MultiModalLine slices its Linears' outputs with [:, :, m::3] on a (B, L, D)
tensor, i.e. by output channel, so every token gets W[d] = W_(d mod 3)[d] (one matrix). The
converter gives that matrix to all three modalities, which reproduces their forward exactly in
either of our line mixers, and marks the model faithful=True, whose line mixer computes (and
trains) their channel-sliced function. Exporting a per-token line model (faithful=False) is
refused: their code has no such mixer.
"""
from __future__ import annotations

import re

import torch

from dmm.model import DecisionMetaMamba
from dmm_kernels import mixers

MODALITIES = ("rtg", "obs", "act")  # the paper's names for modalities 0, 1, 2
_SHARED = ("embed_return", "embed_state", "embed_action", "embed_ln")
_SSM = ("in_proj", "x_proj", "dt_proj", "A_log", "D", "out_proj")


def _is_v2(sd: dict) -> bool:
    return any(k.startswith("model.global_sequence_mixers.") for k in sd)


def _n_layers(sd: dict) -> int:
    idx = [int(m.group(1)) for k in sd
           for m in [re.match(r"model\.(?:layers|global_sequence_mixers)\.(\d+)\.", k)] if m]
    if not idx:
        raise ValueError("convert: no model.layers.* or model.global_sequence_mixers.* keys; "
                         "is this a Decision MetaMamba checkpoint?")
    return max(idx) + 1


def _mixer_from_paper(sd: dict, prefix: str) -> tuple[dict, str] | None:
    """{weight, bias?} in our layout from one paper mixer at `prefix`, and its kind."""
    if f"{prefix}.rtg_conv1d.weight" in sd:
        w = [sd[f"{prefix}.{m}_conv1d.weight"][:, 0, :].T for m in MODALITIES]   # (W, D) each
        b = [sd[f"{prefix}.{m}_conv1d.bias"] for m in MODALITIES]                 # (D,) each
        return {"weight": torch.stack(w), "bias": torch.stack(b)}, "conv"
    if f"{prefix}.rtg_lin.weight" in sd:
        w = torch.stack([sd[f"{prefix}.{m}_lin.weight"] for m in MODALITIES])  # (3, D, W*D)
        d = torch.arange(w.shape[1])
        combined = w[d % len(MODALITIES), d]                                     # (D, W*D)
        return {"weight": combined.expand_as(w).clone()}, "line"
    return None


def from_paper(sd: dict) -> tuple[dict, dict]:
    """The authors' state dict -> (our state dict, the DecisionMetaMamba kwargs it implies).

    The kwargs cover shapes and the mixer; dropout, context_len, max_ep_len are not stored in a
    checkpoint and keep our defaults unless you override them."""
    v2 = _is_v2(sd)
    n_layers = _n_layers(sd)
    out = {}
    for name in _SHARED:
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = sd[f"{name}.{p}"]
    for p in ("weight", "bias"):
        out[f"predict_action.{p}"] = sd[f"predict_action.0.{p}"]
        out[f"ln_f.{p}"] = sd[f"model.ln_f.{p}"]
    mixer = None
    for i in range(n_layers):
        ours = f"blocks.{i}"
        if v2:
            src = f"model.global_sequence_mixers.{i}"
            key = f"model.local_sequence_mixers.{i}.lin.weight"
            if key not in sd:
                raise ValueError(f"convert: {key} missing. The authors' antmaze / kitchen models keep "
                                 "their shared mixer in a plain list, so it is not saved in the "
                                 "checkpoint and cannot be recovered")
            out[f"{ours}.mixer1.weight"] = sd[key][None]                 # (1, D, W*D)
            mixer = "dense"
            for p in ("weight", "bias"):
                out[f"{ours}.norm1.{p}"] = sd[f"model.ln_1.{p}"]
                out[f"{ours}.norm2.{p}"] = sd[f"model.ln_2.{p}"]
        else:
            src = f"model.layers.{i}"
            mix1, kind = _mixer_from_paper(sd, f"{src}.multimodal_token_mixer_1")
            mix2 = _mixer_from_paper(sd, f"{src}.multimodal_token_mixer_2")
            mixer = kind if mix2 is None else f"double-{kind}"
            for p, t in mix1.items():
                out[f"{ours}.mixer1.{p}"] = t
            if mix2 is not None:
                for p, t in mix2[0].items():
                    out[f"{ours}.mixer2.{p}"] = t
            for p in ("weight", "bias"):
                out[f"{ours}.norm1.{p}"] = sd[f"{src}.ln_1.{p}"]
                out[f"{ours}.norm2.{p}"] = sd[f"{src}.ln_2.{p}"]
        for name in _SSM:
            for key in [k for k in sd if k == f"{src}.{name}" or k.startswith(f"{src}.{name}.")]:
                out[ours + key[len(src):]] = sd[key]
    d_model = sd["embed_ln.weight"].shape[0]
    w1 = out["blocks.0.mixer1.weight"]
    config = {
        "state_dim": sd["embed_state.weight"].shape[1],      # Linear(S, D): weight (D, S)
        "act_dim": sd["embed_action.weight"].shape[1],
        "d_model": d_model, "n_layers": n_layers, "mixer": mixer, "preset": "v2" if v2 else "v1",
        "window": mixers.window_of(w1, mixers.parse(mixer).kind, d_model),
        "expand": out["blocks.0.in_proj.weight"].shape[0] // (2 * d_model),
        "d_state": out["blocks.0.A_log"].shape[1],
        # The authors' model, trained further as theirs: v2 shares ln_1 / ln_2 across layers,
        # v1 line mixers are channel-sliced (for conv, faithful only changes the init).
        "faithful": True,
    }
    return out, config


def to_paper(sd: dict, config: dict) -> dict:
    """Our DecisionMetaMamba state dict -> the authors' names (for comparing with their code).
    config: the model's .config. A v2 export takes the LayerNorms of block 0 as the shared ones."""
    mixer, v2 = config["mixer"], config["preset"] == "v2"
    if v2 and mixer != "dense":
        raise ValueError(f"convert.to_paper: the v2 code only has the dense mixer; got {mixer!r}")
    if mixer == mixers.NO_MIXER:
        raise ValueError("convert.to_paper: mixer 'none' has no counterpart in the authors' code")
    kind = mixers.parse(mixer).kind
    if kind == "line" and not v2 and not config.get("faithful"):
        raise ValueError("convert.to_paper: a per-token 'line' mixer has no counterpart in the "
                         "authors' v1 code, whose MultiModalLine slices output channels; build the "
                         "model with faithful=True to train (and export) their function")
    out = {}
    for name in _SHARED:
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = sd[f"{name}.{p}"]
    for p in ("weight", "bias"):
        out[f"predict_action.0.{p}"] = sd[f"predict_action.{p}"]
        out[f"model.ln_f.{p}"] = sd[f"ln_f.{p}"]
    for i in range(config["n_layers"]):
        ours = f"blocks.{i}"
        if v2:
            dst = f"model.global_sequence_mixers.{i}"
            out[f"model.local_sequence_mixers.{i}.lin.weight"] = sd[f"{ours}.mixer1.weight"][0]
            for p in ("weight", "bias"):
                out[f"model.ln_1.{p}"] = sd[f"blocks.0.norm1.{p}"]
                out[f"model.ln_2.{p}"] = sd[f"blocks.0.norm2.{p}"]
        else:
            dst = f"model.layers.{i}"
            for j in (1, 2):
                if f"{ours}.mixer{j}.weight" not in sd:
                    continue
                w = sd[f"{ours}.mixer{j}.weight"]
                prefix = f"{dst}.multimodal_token_mixer_{j}"
                for m, name in enumerate(MODALITIES):
                    if kind == "conv":
                        out[f"{prefix}.{name}_conv1d.weight"] = w[m].T[:, None, :].contiguous()
                        out[f"{prefix}.{name}_conv1d.bias"] = sd[f"{ours}.mixer{j}.bias"][m]
                    else:
                        out[f"{prefix}.{name}_lin.weight"] = w[m]
            for p in ("weight", "bias"):
                out[f"{dst}.ln_1.{p}"] = sd[f"{ours}.norm1.{p}"]
                out[f"{dst}.ln_2.{p}"] = sd[f"{ours}.norm2.{p}"]
        for name in _SSM:
            for key in [k for k in sd if k == f"{ours}.{name}" or k.startswith(f"{ours}.{name}.")]:
                out[dst + key[len(ours):]] = sd[key]
    return out


def load_paper_checkpoint(sd: dict, dtype=None, **overrides):
    """Build a DecisionMetaMamba holding the authors' weights, in `dtype` (default: the
    checkpoint's). overrides: DecisionMetaMamba kwargs a checkpoint does not hold (context_len...)."""
    ours, config = from_paper(sd)
    model = DecisionMetaMamba(**{**config, **overrides})
    model.to(sd["embed_ln.weight"].dtype if dtype is None else dtype)
    model.load_state_dict(ours, strict=True)
    return model
