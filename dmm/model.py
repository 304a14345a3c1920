"""DecisionMetaMamba: (R, s, a) tokens through MetaMamba blocks, actions read at state tokens.

Padding: SegmentSampler pads on the LEFT (zero states, zero returns-to-go, actions -10).
The model is causal, so padded steps only influence the real steps after them; as in the
paper's code they are fed as ordinary tokens (nothing is zeroed), and `attention_mask`
only selects the steps the loss sees (`action_loss`).
"""
from __future__ import annotations

import torch
from torch import nn

import dmm_kernels
from dmm.nn import PRESETS, make_block
from dmm_kernels import mixers
from dmm.tokens import N_TOKEN_TYPES, PAD_ACTION, left_pad_window


class DecisionMetaMamba(nn.Module):
    """Decision MetaMamba (arXiv 2408.10517; preset "v2": arXiv 2602.19805).

    forward(states (B,K,S), actions (B,K,A), returns_to_go (B,K,1), timesteps (B,K) long,
    attention_mask (B,K) bool) -> action predictions (B,K,A) in [-1, 1], one per state token.
    faithful=True computes as the authors' code does: with preset "v2" one LayerNorm pair shared
    across layers; with mixer "line" / "double-line" their v1 MultiModalLine, which slices output
    channels (one matrix W[d] = W_(d mod 3)[d] for every token; dmm.nn.ModalMixer). Without it,
    "line" is the per-token mixer of the paper's text. share_mixer=True shares one mixer across
    layers (their antmaze / kitchen setting).
    """

    def __init__(self, state_dim, act_dim, d_model=128, n_layers=3, context_len=8, mixer=None,
                 preset="v1", window=6, dropout=0.1, max_ep_len=1000, timestep_embedding=False,
                 faithful=False, share_mixer=False, expand=None, d_state=16):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"DecisionMetaMamba: preset must be one of {tuple(PRESETS)}; got {preset!r}")
        mixer = PRESETS[preset]["mixer"] if mixer is None else mixer
        if share_mixer and mixer not in mixers.SINGLE_MIXERS:
            raise ValueError(f"DecisionMetaMamba: share_mixer=True needs a single mixer "
                             f"(conv, line, dense); got mixer={mixer!r}")
        self.config = {
            "model": "dmm", "state_dim": state_dim, "act_dim": act_dim, "d_model": d_model,
            "n_layers": n_layers, "context_len": context_len, "mixer": mixer, "preset": preset,
            "window": window, "dropout": dropout, "max_ep_len": max_ep_len,
            "timestep_embedding": timestep_embedding, "faithful": faithful,
            "share_mixer": share_mixer, "expand": expand, "d_state": d_state,
        }
        self.state_dim, self.act_dim, self.d_model = state_dim, act_dim, d_model
        self.context_len, self.max_ep_len = context_len, max_ep_len
        self.timestep_embedding = timestep_embedding

        self.embed_return = nn.Linear(1, d_model)
        self.embed_state = nn.Linear(state_dim, d_model)
        self.embed_action = nn.Linear(act_dim, d_model)
        self.embed_timestep = nn.Embedding(max_ep_len, d_model) if timestep_embedding else None
        self.embed_ln = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            make_block(d_model, mixer=mixer, preset=preset, window=window, expand=expand,
                       d_state=d_state, faithful=faithful, layer_idx=i)  # MambaBlock for "none"
            for i in range(n_layers))
        if faithful and preset == "v2":
            # The authors' v2 code has one ln_1 / ln_2 pair used by every layer.
            for blk in self.blocks[1:]:
                blk.norm1, blk.norm2 = self.blocks[0].norm1, self.blocks[0].norm2
        if share_mixer:
            for blk in self.blocks[1:]:
                blk.mixer1 = self.blocks[0].mixer1
        self.ln_f = nn.LayerNorm(d_model)
        self.predict_action = nn.Linear(d_model, act_dim)

    # ---- embeddings ----------------------------------------------------------------------------
    def _add_time(self, emb: torch.Tensor, timesteps: torch.Tensor | None) -> torch.Tensor:
        if self.embed_timestep is None:
            return emb
        if timesteps is None:
            raise ValueError("DecisionMetaMamba: timesteps are required with timestep_embedding=True")
        # Steps past max_ep_len reuse the last embedding rather than fail mid-episode.
        t = timesteps.long().clamp(0, self.max_ep_len - 1)
        return emb + self.embed_timestep(t)

    def embed_tokens(self, states, actions, returns_to_go, timesteps=None) -> torch.Tensor:
        """(B, K, ...) inputs -> interleaved token embeddings (B, 3K, D) before embed_ln."""
        B, K = states.shape[:2]
        tokens = torch.stack([self.embed_return(returns_to_go), self.embed_state(states),
                              self.embed_action(actions)], dim=2)       # (B, K, 3, D)
        if self.embed_timestep is not None:
            tokens = self._add_time(tokens, None if timesteps is None else timesteps[..., None])
        return tokens.reshape(B, N_TOKEN_TYPES * K, self.d_model)       # (B, 3K, D)

    def _check(self, states, actions, returns_to_go, timesteps, attention_mask):
        if states.dim() != 3 or states.shape[-1] != self.state_dim:
            raise ValueError(f"states must be (batch, K, {self.state_dim}); got {tuple(states.shape)}")
        B, K = states.shape[:2]
        if actions.shape != (B, K, self.act_dim):
            raise ValueError(f"actions must be ({B}, {K}, {self.act_dim}); got {tuple(actions.shape)}")
        if returns_to_go.shape != (B, K, 1):
            raise ValueError(f"returns_to_go must be ({B}, {K}, 1); got {tuple(returns_to_go.shape)}")
        for name, x in (("timesteps", timesteps), ("attention_mask", attention_mask)):
            if x is not None and x.shape != (B, K):
                raise ValueError(f"{name} must be ({B}, {K}); got {tuple(x.shape)}")

    # ---- sequence ------------------------------------------------------------------------------
    def forward(self, states, actions, returns_to_go, timesteps=None, attention_mask=None):
        """attention_mask is accepted for a uniform signature and checked; the computation is
        causal and does not use it (see the module docstring)."""
        self._check(states, actions, returns_to_go, timesteps, attention_mask)
        h = self.drop(self.embed_ln(self.embed_tokens(states, actions, returns_to_go, timesteps)))
        for blk in self.blocks:
            h = blk(h)                                                   # (B, 3K, D)
        h = self.ln_f(h)
        return torch.tanh(self.predict_action(h[:, 1::N_TOKEN_TYPES]))  # (B, K, A)

    @torch.no_grad()
    def window_action(self, states, actions, returns_to_go, timesteps=None, mask=None,
                      pad_action=PAD_ACTION):
        """The paper's evaluation protocol: histories (B, T, ...) whose last step is the current
        one (its action entry is a placeholder: causality makes it irrelevant); run forward on
        the last context_len steps, left padded as in training; return the action (B, A)."""
        window = left_pad_window(self.context_len, states, actions, returns_to_go, timesteps,
                                 mask, pad_action)
        return self.forward(*window)[:, -1]

    def recurrent_policy(self, batch: int, dtype=None) -> "RecurrentPolicy":
        return RecurrentPolicy(self, batch, dtype)


class RecurrentPolicy:
    """O(1)-per-step acting through the blocks' step(): the whole episode is the context.

    Per env step t: act(states, returns_to_go, timesteps) feeds R_t (position 3t) and s_t
    (3t+1) and returns the action predicted at s_t; observe_action(actions) then feeds the
    action actually taken (3t+2). Use the model in eval() mode (dropout is applied otherwise).
    """

    def __init__(self, model: DecisionMetaMamba, batch: int, dtype=None):
        self.model, self.batch = model, batch
        self.caches = [blk.allocate_inference_cache(batch, dtype=dtype) for blk in model.blocks]
        # All layers in one metamamba_steps call per token when they all run the block op with
        # one configuration (not mixer "none"), else one step() per layer. Its arguments are
        # assembled again when a block parameter changed (A = -exp(A_log) is derived from one).
        configs = {tuple(blk.kernel_config().items()) if blk.mixer != mixers.NO_MIXER else None
                   for blk in model.blocks}
        self._config = dict(next(iter(configs))) if len(configs) == 1 and None not in configs else None
        self._params = list(model.blocks.parameters())
        self._steps, self._stamp = None, None
        self.t = 0
        self._pending_timesteps = None
        self._awaiting_action = False

    def reset(self, done: torch.Tensor | None = None) -> None:
        """Start new episodes: all of them, or the rows where `done` (B,) is True. Rows restart
        from zero caches, which is exactly a fresh sequence (inputs before token 0 are zero);
        only the modality phase is shared, and it stays aligned since all rows step together."""
        rows = slice(None) if done is None else done.to(torch.bool)
        for cache in self.caches:
            for v in cache.values():
                if isinstance(v, torch.Tensor):
                    v[rows] = 0
            if done is None:
                cache["position"] = 0
        if done is None:
            self.t, self._awaiting_action = 0, False

    def _feed(self, token: torch.Tensor, position: int) -> torch.Tensor:
        h = self.model.drop(self.model.embed_ln(token))                  # (B, D)
        if self._config is None:
            for blk, cache in zip(self.model.blocks, self.caches):
                h = blk.step(h, cache, position)
            return h
        stamp = [p._version for p in self._params]
        if stamp != self._stamp:
            self._steps = dmm_kernels.metamamba_steps_fn(
                self.caches, [b.block_params() for b in self.model.blocks], dtype=h.dtype,
                **self._config)
            self._stamp = stamp
        h = self._steps(h, position)
        for cache in self.caches:
            cache["position"] = position + 1
        return h

    @torch.no_grad()
    def act(self, states, returns_to_go, timesteps=None) -> torch.Tensor:
        """states (B, S), returns_to_go (B, 1), timesteps (B,) -> actions (B, A)."""
        if self._awaiting_action:
            raise RuntimeError("RecurrentPolicy.act: call observe_action(actions) with the actions "
                               "taken before the next act()")
        m = self.model
        if states.shape != (self.batch, m.state_dim) or returns_to_go.shape != (self.batch, 1):
            raise ValueError(f"RecurrentPolicy.act: states must be ({self.batch}, {m.state_dim}) and "
                             f"returns_to_go ({self.batch}, 1); got {tuple(states.shape)}, "
                             f"{tuple(returns_to_go.shape)}")
        pos = N_TOKEN_TYPES * self.t
        self._feed(m._add_time(m.embed_return(returns_to_go), timesteps), pos)
        h = self._feed(m._add_time(m.embed_state(states), timesteps), pos + 1)
        self._pending_timesteps, self._awaiting_action = timesteps, True
        return torch.tanh(m.predict_action(m.ln_f(h)))

    @torch.no_grad()
    def observe_action(self, actions) -> None:
        """actions (B, A): the actions taken after the last act()."""
        if not self._awaiting_action:
            raise RuntimeError("RecurrentPolicy.observe_action: call act() first")
        m = self.model
        if actions.shape != (self.batch, m.act_dim):
            raise ValueError(f"RecurrentPolicy.observe_action: actions must be ({self.batch}, "
                             f"{m.act_dim}); got {tuple(actions.shape)}")
        self._feed(m._add_time(m.embed_action(actions), self._pending_timesteps),
                   N_TOKEN_TYPES * self.t + 2)
        self.t += 1
        self._awaiting_action = False
