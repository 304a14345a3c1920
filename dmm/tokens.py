"""The (R, s, a) token layout shared by every model, the data pipeline and evaluation.

Token 3t + m of a window has modality m: 0 = return-to-go R_t, 1 = state s_t, 2 = action a_t.
Padded steps carry zero states, zero returns-to-go and actions PAD_ACTION (docs/ARCHITECTURE.md, "Tokens and padding").
"""
from __future__ import annotations

import torch

N_TOKEN_TYPES = 3  # R_t, s_t, a_t: token 3t + m has modality m
# Far outside the [-1, 1] action range, so a padded token can never look like a real action.
PAD_ACTION = -10.0


def left_pad_window(context_len, states, actions, returns_to_go, timesteps=None, mask=None,
                    pad_action=PAD_ACTION):
    """The last `context_len` steps of right-aligned histories (B, T, ...), left padded the way
    SegmentSampler pads when T < context_len. Returns (states, actions, rtg, timesteps, mask)."""
    B, T = states.shape[:2]
    if T < 1:
        raise ValueError("window_action: the history must hold at least the current step")
    if timesteps is None:
        timesteps = torch.zeros(B, T, dtype=torch.long, device=states.device)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=states.device)
    K = context_len
    seq = [states[:, -K:], actions[:, -K:], returns_to_go[:, -K:], timesteps[:, -K:], mask[:, -K:]]
    pad = K - seq[0].shape[1]
    if pad > 0:
        fill = [0.0, pad_action, 0.0, 0, False]
        seq = [torch.cat([x.new_full((B, pad, *x.shape[2:]), v), x], dim=1) for x, v in zip(seq, fill)]
    return tuple(seq)
