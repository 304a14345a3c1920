"""Unfused baselines the benchmarks compare against.

`paper_block` is the computation path of the paper's own code: a PyTorch token mixer that runs
one Conv1d (or Linear window) per modality over the whole sequence and then picks each token's
output by its modality, separate LayerNorms and GEMMs, and mamba-ssm's `selective_scan_fn`
(when mamba-ssm is installed; else our reference scan, and the row is labelled so).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dmm_kernels import mixers, reference
from dmm_kernels.params import BlockParams

try:  # the paper's scan kernel, when available (GPU machines with mamba-ssm built)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_selective_scan
except Exception:  # noqa: BLE001  (ImportError, or a broken CUDA build of mamba-ssm)
    mamba_selective_scan = None


def paper_scan():
    """(name, fn): mamba-ssm's selective scan if installed, else the PyTorch reference."""
    if mamba_selective_scan is not None:
        return "mamba-ssm", mamba_selective_scan
    return "reference-scan", reference.selective_scan_ref


def _paper_mixer(u, weight, bias, kind, n_modalities):
    """All modality filters over every token, then a gather by modality (the paper's scatter)."""
    batch, L, D = u.shape
    W = mixers.window_of(weight, kind, D)
    padded = F.pad(u.transpose(1, 2), (W - 1, 0))                          # (batch, D, L+W-1)
    outputs = []
    for m in range(n_modalities):
        if kind == "conv":
            y = F.conv1d(padded, weight[m].T.unsqueeze(1), bias[m] if bias is not None else None,
                         groups=D)                                          # (batch, D, L)
        else:
            cols = padded.unfold(2, W, 1).permute(0, 2, 3, 1).reshape(batch, L, W * D)
            y = F.linear(cols, weight[m]).transpose(1, 2)                   # (batch, D_out, L)
        outputs.append(y)
    stacked = torch.stack(outputs, 0)                                       # (M, batch, D, L)
    modality = torch.arange(L, device=u.device) % n_modalities
    picked = stacked[modality, :, :, torch.arange(L, device=u.device)]     # (L, batch, D)
    return picked.permute(1, 0, 2)                                          # (batch, L, D)


def paper_block(h, params, mixer="conv", n_modalities=3, residual_ssm=False, eps=1e-5, scan=None):
    """The paper's block as separate PyTorch/mamba-ssm calls. h: (batch, L, D). scan: the
    selective scan to call (default: paper_scan()'s)."""
    scan = paper_scan()[1] if scan is None else scan
    kind, double = mixer.removeprefix("double-"), mixer.startswith("double-")
    p = BlockParams.of(params)
    D_model = h.shape[-1]
    E, N = p.A_log.shape
    R = p.dt_proj_weight.shape[1]
    u = F.layer_norm(h, (D_model,), p.norm1_weight, p.norm1_bias, eps)
    h1 = h + _paper_mixer(u, p.mixer1_weight, p.mixer1_bias, kind, n_modalities)
    v = F.layer_norm(h1, (D_model,), p.norm2_weight, p.norm2_bias, eps)
    x, z = F.linear(v, p.in_proj_weight).split([E, E], dim=-1)
    if double:
        x = _paper_mixer(x, p.mixer2_weight, p.mixer2_bias, kind, n_modalities)
    x = F.silu(x)
    dt_low, Bc, Cc = F.linear(x, p.x_proj_weight).split([R, N, N], dim=-1)
    delta = F.linear(dt_low, p.dt_proj_weight)
    y = scan(x.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous(),
             -torch.exp(p.A_log.float()), Bc.transpose(1, 2).contiguous(),
             Cc.transpose(1, 2).contiguous(), p.D.float(), z.transpose(1, 2).contiguous(),
             p.dt_proj_bias.float(), True)
    out = F.linear(y.transpose(1, 2), p.out_proj_weight)
    return out + h1 if (residual_ssm or double) else out
