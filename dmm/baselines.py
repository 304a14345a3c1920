"""Decision Transformer baseline: a small causal GPT over (R, s, a) tokens (CORL-like).

Same forward signature and config mechanism as DecisionMetaMamba. Unlike the SSM model it
uses attention_mask: padded keys are hidden from every query (each token still sees itself,
so fully padded rows stay finite; their predictions are ignored by the loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmm.tokens import N_TOKEN_TYPES, PAD_ACTION, left_pad_window


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model, n_heads, dropout):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"DecisionTransformer: d_model ({d_model}) must be divisible by "
                             f"n_heads ({n_heads})")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                # (B, H, L, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, L, D)))


class GPTBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, d_model, n_heads, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x, allowed):
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


class DecisionTransformer(nn.Module):
    def __init__(self, state_dim, act_dim, d_model=128, n_layers=3, n_heads=1, context_len=20,
                 dropout=0.1, max_ep_len=1000):
        super().__init__()
        self.config = {
            "model": "dt", "state_dim": state_dim, "act_dim": act_dim, "d_model": d_model,
            "n_layers": n_layers, "n_heads": n_heads, "context_len": context_len,
            "dropout": dropout, "max_ep_len": max_ep_len,
        }
        self.state_dim, self.act_dim, self.d_model = state_dim, act_dim, d_model
        self.context_len, self.max_ep_len = context_len, max_ep_len
        self.embed_timestep = nn.Embedding(max_ep_len, d_model)
        self.embed_return = nn.Linear(1, d_model)
        self.embed_state = nn.Linear(state_dim, d_model)
        self.embed_action = nn.Linear(act_dim, d_model)
        self.embed_ln = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(GPTBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.predict_action = nn.Linear(d_model, act_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # GPT-2 init, as in the Decision Transformer code.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, states, actions, returns_to_go, timesteps=None, attention_mask=None):
        B, K = states.shape[:2]
        if states.shape[-1] != self.state_dim or actions.shape != (B, K, self.act_dim) \
                or returns_to_go.shape != (B, K, 1):
            raise ValueError(f"DecisionTransformer: expected states (B, K, {self.state_dim}), "
                             f"actions (B, K, {self.act_dim}), returns_to_go (B, K, 1); got "
                             f"{tuple(states.shape)}, {tuple(actions.shape)}, {tuple(returns_to_go.shape)}")
        if timesteps is None:
            raise ValueError("DecisionTransformer: timesteps (B, K) are required")
        t = timesteps.long().clamp(0, self.max_ep_len - 1)              # past the end: last row
        time = self.embed_timestep(t)                                    # (B, K, D)
        tokens = torch.stack([self.embed_return(returns_to_go), self.embed_state(states),
                              self.embed_action(actions)], dim=2) + time[:, :, None]
        L = N_TOKEN_TYPES * K
        h = self.drop(self.embed_ln(tokens.reshape(B, L, self.d_model)))  # (B, 3K, D)

        causal = torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
        allowed = causal[None, None]                                     # (1, 1, L, L)
        if attention_mask is not None:
            key_ok = attention_mask.to(torch.bool).repeat_interleave(N_TOKEN_TYPES, dim=1)  # (B, L)
            eye = torch.eye(L, dtype=torch.bool, device=h.device)
            allowed = causal & (key_ok[:, None, :] | eye)                # (B, L, L)
            allowed = allowed[:, None]                                   # (B, 1, L, L)
        for blk in self.blocks:
            h = blk(h, allowed)
        h = self.ln_f(h)
        return torch.tanh(self.predict_action(h[:, 1::N_TOKEN_TYPES]))  # (B, K, A)

    @torch.no_grad()
    def window_action(self, states, actions, returns_to_go, timesteps=None, mask=None,
                      pad_action=PAD_ACTION):
        """Histories (B, T, ...) -> the action (B, A) at the last state of the last K steps."""
        window = left_pad_window(self.context_len, states, actions, returns_to_go, timesteps,
                                 mask, pad_action)
        return self.forward(*window)[:, -1]

    def recurrent_policy(self, batch: int, dtype=None):
        raise NotImplementedError("DecisionTransformer has no recurrent policy (attention needs the "
                                  "whole window); evaluate it with window_action")
