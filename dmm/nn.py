"""The layers as nn.Modules: MetaMambaBlock, the Decision MetaMamba layer (docs/ARCHITECTURE.md,
"The MetaMamba block"), and MambaBlock, the plain Mamba block of Decision Mamba (mixer "none").

Both own their parameters (names follow mamba-ssm where they exist) and share the SSM half, its
init and the inference protocol (_SSMBlock). MetaMambaBlock hands the computation to the fused
ops in dmm_kernels: `metamamba_block` for a sequence and `metamamba_step` for one token with a
cache. MambaBlock (h + Mamba(LN(h)), depthwise causal conv1d of width 4) is written here in
PyTorch around `dmm_kernels.selective_scan`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import dmm_kernels
from dmm_kernels import BlockParams, mixers

MIXERS = mixers.MODEL_MIXERS  # the names a model takes ("none": MambaBlock); dmm_kernels/mixers.py
# Defaults each preset gives to the arguments left as None.
PRESETS = {
    "v1": {"mixer": "conv", "expand": 2, "residual_ssm": False},   # arXiv 2408.10517
    "v2": {"mixer": "dense", "expand": 1, "residual_ssm": True},   # arXiv 2602.19805
}
FAITHFUL_STD = 0.02  # the paper's _init_weights: every nn.Linear inside the blocks ~ N(0, 0.02)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrent states and scan parameters are kept in at least fp32 (fp64 stays fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ModalMixer(nn.Module):
    """Causal token mixer with one filter per modality (token i has modality i % M).

    kind "conv": depthwise, weight (M, W, dim), bias (M, dim).
    kind "line": dense over the window, weight (M, dim, W*dim) (column k*dim + d, k = 0 the
    oldest token), no bias. "dense" (v2) is "line" with M = 1.
    channel_sliced (kind "line" only): what the authors' v1 MultiModalLine computes. It slices
    the outputs of its M Linears with [:, :, m::M] on a (B, L, dim) tensor, i.e. by output
    CHANNEL, so every token gets channel d from the Linear of modality d % M: one matrix
    W[d] = weight[d % M, d] shared by all tokens. The weight keeps their M matrices (their
    parameters, gradients and weight decay, rows outside the slice unused).
    """

    def __init__(self, dim, kind="conv", window=6, n_modalities=3, channel_sliced=False,
                 device=None, dtype=None):
        super().__init__()
        if kind not in mixers.KINDS:
            raise ValueError(f"ModalMixer: kind must be 'conv' or 'line'; got {kind!r}")
        mixers.check_window(window, "ModalMixer: window")
        if channel_sliced and kind != "line":
            raise ValueError("ModalMixer: channel_sliced is the authors' line mixer; kind must be "
                             f"'line', got {kind!r}")
        factory = {"device": device, "dtype": dtype}
        self.dim, self.kind, self.window, self.n_modalities = dim, kind, window, n_modalities
        self.channel_sliced = channel_sliced
        if kind == "conv":
            self.weight = nn.Parameter(torch.empty(n_modalities, window, dim, **factory))
            self.bias = nn.Parameter(torch.empty(n_modalities, dim, **factory))
        else:
            self.weight = nn.Parameter(torch.empty(n_modalities, dim, window * dim, **factory))
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self, faithful: bool = False) -> None:
        """Default: the fan-in uniform init of nn.Conv1d / nn.Linear for the weight and a zero
        bias, so at init the mixer is an unbiased local average and h1 = h + mixed starts near
        h. faithful: exactly what the paper's modules get (Conv1d keeps PyTorch's default,
        bias included; the Linear mixers are caught by _init_weights: N(0, 0.02))."""
        with torch.no_grad():
            if self.kind == "conv":
                bound = 1.0 / math.sqrt(self.window)   # Conv1d(groups=dim): fan_in = W
                self.weight.uniform_(-bound, bound)
                if faithful:
                    self.bias.uniform_(-bound, bound)
                else:
                    self.bias.zero_()
            elif faithful:
                self.weight.normal_(0.0, FAITHFUL_STD)
            else:
                bound = 1.0 / math.sqrt(self.window * self.dim)
                self.weight.uniform_(-bound, bound)

    def effective(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(weight, bias, n_modalities) as the op computes them. channel_sliced: the one matrix
        W[d] = weight[d % M, d] for every token, (1, dim, W*dim) (gradients reach only those rows)."""
        if not self.channel_sliced:
            return self.weight, self.bias, self.n_modalities
        d = torch.arange(self.dim, device=self.weight.device)
        return self.weight[d % self.n_modalities, d][None], None, 1

    def forward(self, u: torch.Tensor, phase: int = 0) -> torch.Tensor:
        weight, bias, n_modalities = self.effective()
        return dmm_kernels.modal_mix(u, weight, bias, kind=self.kind, n_modalities=n_modalities,
                                     phase=phase % n_modalities)

    def extra_repr(self) -> str:
        return (f"{self.dim}, kind={self.kind}, window={self.window}, "
                f"n_modalities={self.n_modalities}, channel_sliced={self.channel_sliced}")


class _SSMBlock(nn.Module):
    """What MetaMambaBlock and MambaBlock share: the SSM half's parameters (in_proj, x_proj,
    dt_proj, A_log, D, out_proj) and their Mamba init, and mamba_ssm.Mamba's inference protocol
    (forward with InferenceParams, allocate_inference_cache, step). A subclass defines
    _sequence(h), _sequence_with_states(h), _zero_cache(batch, dtype, device) and
    _step(h_t, cache, position). Subclasses build their modules in their own order (the
    order fixes the random draws of the default init, so checkpoints and runs stay the same)."""

    def _set_ssm_config(self, d_model, expand, d_state, dt_rank, faithful, dt_min, dt_max,
                        dt_init_floor, eps, layer_idx) -> None:
        name = type(self).__name__
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
        self.d_model, self.expand, self.d_state = d_model, expand, d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.faithful, self.eps, self.layer_idx = faithful, eps, layer_idx
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor

    def _make_ssm_tail(self, factory: dict) -> None:
        """The modules after in_proj (and after a second mixer): x_proj .. out_proj."""
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **factory)
        self.dt_proj = nn.Linear(R, E, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(E, N, **factory))
        self.D = nn.Parameter(torch.empty(E, **factory))
        self.out_proj = nn.Linear(E, self.d_model, bias=False, **factory)
        # Optimizers may skip weight decay on these (mamba-ssm convention).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _linears(self) -> list[nn.Linear]:
        return [self.in_proj, self.x_proj, self.dt_proj, self.out_proj]

    def _reset_ssm(self) -> None:
        """Mamba init of the SSM half: dt_proj.bias = softplus^-1(dt), dt log-uniform in
        [dt_min, dt_max] (floored at dt_init_floor); dt_proj.weight ~ U(+-R^-0.5); A_log =
        log(1..N) per channel (S4D-real); D = 1. faithful: every Linear redrawn N(0, 0.02) with
        zero bias, as the paper's _init_weights does (which zeroes dt_proj.bias: softplus(0) = 0.69)."""
        std = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std)
        E, dev = self.d_inner, self.dt_proj.bias.device
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(E, device=dev, dtype=torch.float64) * (log_max - log_min)
                       + log_min).clamp(min=self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # softplus^-1(dt)
        a = torch.arange(1, self.d_state + 1, dtype=torch.float64, device=dev)
        self.A_log.copy_(torch.log(a).repeat(E, 1))
        self.D.fill_(1.0)
        if self.faithful:
            for lin in self._linears():
                lin.weight.normal_(0.0, FAITHFUL_STD)
                if lin.bias is not None:
                    lin.bias.zero_()

    # ---- sequence ------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, inference_params=None) -> torch.Tensor:
        """hidden_states (B, L, D) -> (B, L, D). inference_params: mamba-ssm's InferenceParams
        (or any object with its key_value_memory_dict and seqlen_offset): at seqlen_offset 0
        the prompt runs in parallel and this layer's cache is stored under layer_idx; at a
        later offset the tokens continue from that cache, one step each."""
        h = hidden_states
        if h.dim() != 3 or h.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__}: hidden_states must be (batch, length, "
                             f"{self.d_model}); got {tuple(h.shape)}")
        if inference_params is None:
            return self._sequence(h)
        cache = self._cache_from(inference_params, h)
        offset = int(inference_params.seqlen_offset)
        if offset == 0:
            return self._prefill(h, cache)
        return torch.stack([self.step(h[:, i], cache, position=offset + i)
                            for i in range(h.shape[1])], dim=1)

    def _prefill(self, h: torch.Tensor, cache: dict) -> torch.Tensor:
        """The prompt h (B, L, D) in parallel; leaves `cache` as after stepping through it."""
        out, states = self._sequence_with_states(h)
        for key, value in states.items():
            if value is not None:
                cache[key].copy_(value)
        cache["position"] = h.shape[1]
        return out

    def _cache_from(self, inference_params, h: torch.Tensor) -> dict:
        """This layer's cache in inference_params.key_value_memory_dict, allocated on first use."""
        name = type(self).__name__
        if self.layer_idx is None:
            raise ValueError(f"{name}: forward(..., inference_params) needs the block's "
                             "layer_idx (its key in key_value_memory_dict); build it with "
                             "layer_idx=i")
        caches = inference_params.key_value_memory_dict
        if self.layer_idx not in caches:
            caches[self.layer_idx] = self.allocate_inference_cache(
                h.shape[0], getattr(inference_params, "max_seqlen", None))
        cache = caches[self.layer_idx]
        if cache["ssm_state"].shape[0] != h.shape[0]:
            raise ValueError(f"{name}: the cache of layer {self.layer_idx} holds batch "
                             f"{cache['ssm_state'].shape[0]} but hidden_states has batch "
                             f"{h.shape[0]}; allocate it with batch_size={h.shape[0]}")
        return cache

    # ---- one token -----------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size: int, max_seqlen: int | None = None, dtype=None,
                                 **kwargs) -> dict:
        """Zero cache for step() (mamba_ssm.Mamba's signature; max_seqlen is not needed: the
        state is O(1)). Mixer windows (MambaBlock: the conv state) in `dtype` (default: the
        weights'), the SSM state in fp32 (fp64 for fp64), and "position": the index of the
        next token, which step() advances."""
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        cache = self._zero_cache(batch_size, dtype, self.in_proj.weight.device)
        cache["position"] = 0
        return cache

    def step(self, hidden_states: torch.Tensor, cache: dict, position: int | None = None
             ) -> torch.Tensor:
        """One token: hidden_states (B, 1, D) -> (B, 1, D), or (B, D) -> (B, D). `cache` (from
        allocate_inference_cache) is updated in place. position: the token's index in the
        sequence (its modality is position % n_modalities); default the cache's own, and the
        cache's position becomes position + 1."""
        h_t = hidden_states
        one_token_seq = h_t.dim() == 3 and h_t.shape[1] == 1
        if one_token_seq:
            h_t = h_t[:, 0]
        if h_t.dim() != 2 or h_t.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__}.step: hidden_states must be one token, "
                             f"(batch, 1, {self.d_model}) or (batch, {self.d_model}); got "
                             f"{tuple(hidden_states.shape)}")
        position = cache.get("position", 0) if position is None else int(position)
        out = self._step(h_t, cache, position)
        cache["position"] = position + 1
        return out[:, None] if one_token_seq else out


class MetaMambaBlock(_SSMBlock):
    """One Decision MetaMamba block, a drop-in like mamba_ssm.Mamba: (B, L, D) -> (B, L, D).

    mixer: conv | line | double-conv | double-line | dense (None: the preset's); no mixer is
    MambaBlock. preset "v1": expand 2, no residual around the SSM (double mixers always have
    one); preset "v2": mixer "dense", expand 1, residual around the SSM. Arguments given
    explicitly override the preset. faithful=True computes and initialises like the authors'
    code: every Linear inside the block N(0, 0.02) with zero bias (which zeroes dt_proj.bias
    too), and the "line" / "double-line" mixers as their v1 MultiModalLine really computes
    (channel-sliced, see ModalMixer). Without faithful, "line" is the per-token mixer of the
    paper's text: token i uses the matrix of its own modality i % 3. The quirks that span
    layers (shared LayerNorms / mixer) belong to DecisionMetaMamba.
    Token 0 of every sequence given to forward() has modality 0 (a return-to-go token).

    Inference follows mamba_ssm.Mamba: forward(hidden_states, inference_params) with
    mamba-ssm's InferenceParams (this block's cache lives in key_value_memory_dict[layer_idx];
    seqlen_offset 0 runs the prompt in parallel, later calls continue one token at a time),
    or step(hidden_states, cache) on a cache from allocate_inference_cache, which keeps its
    own position.
    """

    def __init__(self, d_model, mixer=None, preset="v1", window=6, n_modalities=3, expand=None,
                 d_state=16, dt_rank="auto", residual_ssm=None, faithful=False, dt_min=1e-3,
                 dt_max=0.1, dt_init_floor=1e-4, eps=1e-5, layer_idx=None,
                 device=None, dtype=None):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"MetaMambaBlock: preset must be one of {tuple(PRESETS)}; got {preset!r}")
        defaults = PRESETS[preset]
        mixer = defaults["mixer"] if mixer is None else mixer
        try:
            spec = mixers.parse(mixer, n_modalities)
        except ValueError as error:
            raise ValueError(f"MetaMambaBlock: {error}") from None
        if spec.double:
            if residual_ssm is False:
                raise ValueError(f"MetaMambaBlock: mixer={mixer!r} always adds the residual around "
                                 "the SSM (out + h1); leave residual_ssm None or set it True")
            residual_ssm = True
        elif residual_ssm is None:
            residual_ssm = defaults["residual_ssm"]
        self._set_ssm_config(d_model, defaults["expand"] if expand is None else expand, d_state,
                             dt_rank, faithful, dt_min, dt_max, dt_init_floor, eps, layer_idx)
        factory = {"device": device, "dtype": dtype}
        self.mixer, self.preset, self.window = mixer, preset, window
        self.n_modalities, self.kind = spec.n_modalities, spec.kind
        self.residual_ssm = bool(residual_ssm)
        # The authors' v1 line mixer (faithful): one channel-sliced matrix, so the op sees M = 1.
        sliced = faithful and self.kind == "line" and self.n_modalities > 1
        self.op_n_modalities = 1 if sliced else self.n_modalities

        E = self.d_inner
        self.norm1 = nn.LayerNorm(d_model, eps=eps, **factory)
        self.mixer1 = ModalMixer(d_model, self.kind, window, self.n_modalities, sliced, **factory)
        self.norm2 = nn.LayerNorm(d_model, eps=eps, **factory)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False, **factory)
        self.mixer2 = (ModalMixer(E, self.kind, window, self.n_modalities, sliced, **factory)
                       if spec.double else None)
        self._make_ssm_tail(factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The LayerNorms and Linears their PyTorch default, the mixers theirs (ModalMixer:
        faithful, the paper's), then the Mamba init of the SSM half (_SSMBlock._reset_ssm)."""
        with torch.no_grad():
            self.norm1.reset_parameters()
            self.norm2.reset_parameters()
            for lin in self._linears():
                lin.reset_parameters()
            for mix in (self.mixer1, self.mixer2):
                if mix is not None:
                    mix.reset_parameters(faithful=self.faithful)
            self._reset_ssm()

    # ---- the op's view of the parameters -------------------------------------------------------
    def block_params(self) -> BlockParams:
        """The parameters as dmm_kernels.metamamba_block / _prefill / _step take them (mixer
        weights as the op computes them, see ModalMixer.effective)."""
        w1, b1, _ = self.mixer1.effective()
        w2, b2, _ = self.mixer2.effective() if self.mixer2 is not None else (None, None, None)
        return BlockParams(
            norm1_weight=self.norm1.weight, norm1_bias=self.norm1.bias,
            mixer1_weight=w1, mixer1_bias=b1,
            norm2_weight=self.norm2.weight, norm2_bias=self.norm2.bias,
            in_proj_weight=self.in_proj.weight, mixer2_weight=w2, mixer2_bias=b2,
            x_proj_weight=self.x_proj.weight,
            dt_proj_weight=self.dt_proj.weight, dt_proj_bias=self.dt_proj.bias,
            A_log=self.A_log, D=self.D, out_proj_weight=self.out_proj.weight)

    def kernel_config(self) -> dict:
        """The non-tensor arguments of dmm_kernels.metamamba_block / _prefill / _step."""
        return {"mixer": self.mixer, "n_modalities": self.op_n_modalities,
                "residual_ssm": self.residual_ssm, "eps": self.eps}

    # ---- the fused ops -------------------------------------------------------------------------
    def _sequence(self, h: torch.Tensor) -> torch.Tensor:
        return dmm_kernels.metamamba_block(h, self.block_params(), **self.kernel_config())

    def _sequence_with_states(self, h: torch.Tensor):
        with torch.no_grad():
            return dmm_kernels.metamamba_prefill(h, self.block_params(), **self.kernel_config())

    def _zero_cache(self, batch_size: int, dtype, device) -> dict:
        return dmm_kernels.allocate_step_cache(batch_size, self.block_params(), self.mixer,
                                               dtype, device)

    def _step(self, h_t: torch.Tensor, cache: dict, position: int) -> torch.Tensor:
        return dmm_kernels.metamamba_step(h_t, cache, self.block_params(), position=position,
                                          **self.kernel_config())

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, mixer={self.mixer}, preset={self.preset}, "
                f"expand={self.expand}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"residual_ssm={self.residual_ssm}, faithful={self.faithful}")


class MambaBlock(_SSMBlock):
    """Decision Mamba's block (mixer "none"): h + Mamba(LN(h)), the SSM input through a depthwise
    causal conv1d of width d_conv, in PyTorch around dmm_kernels.selective_scan. Parameter
    names as MetaMambaBlock's (norm1, conv1d, in_proj, x_proj, dt_proj, A_log, D, out_proj)."""

    mixer = mixers.NO_MIXER
    residual_ssm = True  # the pre-LN residual h + Mamba(LN(h)) is the block

    def __init__(self, d_model, expand=2, d_state=16, dt_rank="auto", faithful=False,
                 dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, d_conv=4, eps=1e-5, layer_idx=None,
                 device=None, dtype=None):
        super().__init__()
        self._set_ssm_config(d_model, expand, d_state, dt_rank, faithful, dt_min, dt_max,
                             dt_init_floor, eps, layer_idx)
        factory = {"device": device, "dtype": dtype}
        self.d_conv, E = d_conv, self.d_inner
        self.norm1 = nn.LayerNorm(d_model, eps=eps, **factory)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=True, **factory)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False, **factory)
        self._make_ssm_tail(factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LayerNorm, Linears and conv1d their PyTorch default, then the Mamba init of the SSM
        half (_SSMBlock._reset_ssm)."""
        with torch.no_grad():
            self.norm1.reset_parameters()
            for lin in self._linears():
                lin.reset_parameters()
            self.conv1d.reset_parameters()
            self._reset_ssm()

    def _ssm_params(self):
        st = _state_dtype(self.A_log.dtype)
        return -torch.exp(self.A_log.to(st)), self.D.to(st), self.dt_proj.bias.to(st)

    def _sequence(self, h: torch.Tensor) -> torch.Tensor:
        return self._sequence_with_states(h, with_states=False)[0]

    def _sequence_with_states(self, h: torch.Tensor, with_states: bool = True):
        """h (B, L, D) -> (h + Mamba(LN(h)), states): with_states, the step cache after the
        sequence (conv_state: the last d_conv-1 conv inputs; ssm_state), else None."""
        L, E, N, R = h.shape[1], self.d_inner, self.d_state, self.dt_rank
        x_in, z = self.in_proj(self.norm1(h)).chunk(2, dim=-1)           # (B, L, E) each
        x_in = x_in.transpose(1, 2)                                      # (B, E, L)
        x = F.conv1d(x_in, self.conv1d.weight, self.conv1d.bias, padding=self.d_conv - 1,
                     groups=E)[..., :L]                                  # (B, E, L) causal
        x = F.silu(x)
        dt_low, Bc, Cc = self.x_proj(x.transpose(1, 2)).split([R, N, N], dim=-1)
        delta = (dt_low @ self.dt_proj.weight.T).transpose(1, 2)         # (B, E, L), no bias
        A, Dskip, dt_bias = self._ssm_params()
        y, last_state = dmm_kernels.selective_scan(
            x, delta, A, Bc.transpose(1, 2).contiguous(), Cc.transpose(1, 2).contiguous(),
            D=Dskip, z=z.transpose(1, 2), delta_bias=dt_bias, delta_softplus=True,
            return_last_state=True)                                      # (B, E, L)
        out = h + self.out_proj(y.transpose(1, 2))
        if not with_states:
            return out, None
        conv_state = F.pad(x_in, (self.d_conv - 1, 0))[..., L:]          # (B, E, d_conv-1)
        return out, {"conv_state": conv_state, "ssm_state": last_state}

    def _zero_cache(self, batch_size: int, dtype, device) -> dict:
        return {
            "conv_state": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, dtype=dtype,
                                      device=device),
            "ssm_state": torch.zeros(batch_size, self.d_inner, self.d_state,
                                     dtype=_state_dtype(dtype), device=device),
        }

    def _step(self, h_t: torch.Tensor, cache: dict, position: int) -> torch.Tensor:
        N, R = self.d_state, self.dt_rank
        x, z = self.in_proj(self.norm1(h_t)).chunk(2, dim=-1)            # (B, E) each
        conv_state = cache["conv_state"]                                 # (B, E, d_conv-1)
        window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
        conv_state.copy_(window[..., 1:])
        x = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (B, E)
        dt_low, Bc, Cc = self.x_proj(x).split([R, N, N], dim=-1)
        A, Dskip, dt_bias = self._ssm_params()
        st = A.dtype
        x32, Bc, Cc = x.to(st), Bc.to(st), Cc.to(st)
        delta = F.softplus((dt_low @ self.dt_proj.weight.T).to(st) + dt_bias)   # (B, E)
        state = cache["ssm_state"]                                       # (B, E, N)
        state.copy_(torch.exp(delta[..., None] * A) * state
                    + (delta * x32)[..., None] * Bc[:, None])
        y = (state * Cc[:, None]).sum(-1) + Dskip * x32                  # (B, E)
        y = (y * F.silu(z.to(st))).to(h_t.dtype)
        return h_t + self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, mixer=none, expand={self.expand}, "
                f"d_state={self.d_state}, dt_rank={self.dt_rank}, d_conv={self.d_conv}, "
                f"faithful={self.faithful}")


def make_block(d_model, mixer=None, preset="v1", **kwargs) -> _SSMBlock:
    """The layer for a model's mixer: MambaBlock for "none" (its expand from the preset when not
    given; window / residual_ssm do not apply to it), else MetaMambaBlock."""
    if mixer != mixers.NO_MIXER:
        return MetaMambaBlock(d_model, mixer=mixer, preset=preset, **kwargs)
    if preset not in PRESETS:
        raise ValueError(f"make_block: preset must be one of {tuple(PRESETS)}; got {preset!r}")
    if kwargs.pop("residual_ssm", None) is False:
        raise ValueError("MambaBlock (mixer 'none') is the pre-LN residual Mamba block; "
                         "residual_ssm=False is not available for it (leave it None)")
    kwargs.pop("window", None)
    kwargs.pop("n_modalities", None)
    if kwargs.get("expand") is None:
        kwargs["expand"] = PRESETS[preset]["expand"]
    return MambaBlock(d_model, **kwargs)
