"""MetaMambaBlock and MambaBlock (mixer "none", built by dmm.nn.make_block): parameter names and
shapes, init, presets, forward against the reference, step-by-step against forward, gradients.
float64 for every comparison; tiny shapes."""
import math

import pytest
import torch
import torch.nn.functional as F

from dmm import MambaBlock, MetaMambaBlock
from dmm.nn import MIXERS
from dmm.nn import make_block as block_for
from dmm_kernels import reference

D_MODEL, D_STATE, WINDOW = 8, 4, 3


def make_block(mixer, preset="v1", seed=0, **kw):
    """float64 block with every parameter perturbed, so no init symmetry hides a bug."""
    torch.manual_seed(seed)
    blk = block_for(D_MODEL, mixer=mixer, preset=preset, window=WINDOW, d_state=D_STATE,
                    dtype=torch.float64, **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            if name != "A_log":
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return blk


def expected_shapes(mixer, preset):
    expand = {"v1": 2, "v2": 1}[preset]
    E, R, N, W, Dm = expand * D_MODEL, math.ceil(D_MODEL / 16), D_STATE, WINDOW, D_MODEL
    shapes = {
        "norm1.weight": (Dm,), "norm1.bias": (Dm,),
        "in_proj.weight": (2 * E, Dm), "x_proj.weight": (R + 2 * N, E),
        "dt_proj.weight": (E, R), "dt_proj.bias": (E,), "A_log": (E, N), "D": (E,),
        "out_proj.weight": (Dm, E),
    }
    if mixer == "none":
        shapes.update({"conv1d.weight": (E, 1, 4), "conv1d.bias": (E,)})
        return shapes
    shapes.update({"norm2.weight": (Dm,), "norm2.bias": (Dm,)})
    kind = mixer.removeprefix("double-")
    if kind == "conv":
        shapes.update({"mixer1.weight": (3, W, Dm), "mixer1.bias": (3, Dm)})
    elif kind == "line":
        shapes["mixer1.weight"] = (3, Dm, W * Dm)
    else:  # dense
        shapes["mixer1.weight"] = (1, Dm, W * Dm)
    if mixer == "double-conv":
        shapes.update({"mixer2.weight": (3, W, E), "mixer2.bias": (3, E)})
    if mixer == "double-line":
        shapes["mixer2.weight"] = (3, E, W * E)
    return shapes


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_parameter_names_and_shapes(mixer, preset):
    blk = block_for(D_MODEL, mixer=mixer, preset=preset, window=WINDOW, d_state=D_STATE)
    assert isinstance(blk, MambaBlock if mixer == "none" else MetaMambaBlock)
    got = {n: tuple(p.shape) for n, p in blk.named_parameters()}
    assert got == expected_shapes(mixer, preset)


def test_presets_and_overrides():
    v1 = MetaMambaBlock(D_MODEL)
    assert (v1.mixer, v1.expand, v1.residual_ssm) == ("conv", 2, False)
    v2 = MetaMambaBlock(D_MODEL, preset="v2")
    assert (v2.mixer, v2.expand, v2.residual_ssm, v2.n_modalities) == ("dense", 1, True, 1)
    assert MetaMambaBlock(D_MODEL, mixer="double-line").residual_ssm is True
    custom = MetaMambaBlock(D_MODEL, mixer="line", preset="v2", expand=2, residual_ssm=False)
    assert (custom.mixer, custom.expand, custom.residual_ssm) == ("line", 2, False)
    with pytest.raises(ValueError, match="residual_ssm"):
        MetaMambaBlock(D_MODEL, mixer="double-conv", residual_ssm=False)
    with pytest.raises(ValueError, match="mixer"):
        MetaMambaBlock(D_MODEL, mixer="attention")
    with pytest.raises(ValueError, match=r"no mixer: the plain Mamba block, dmm.nn.MambaBlock"):
        MetaMambaBlock(D_MODEL, mixer="none")
    with pytest.raises(ValueError, match="residual_ssm=False is not available"):
        block_for(D_MODEL, mixer="none", residual_ssm=False)
    assert block_for(D_MODEL, mixer="none", preset="v2").expand == 1  # the preset's expand
    with pytest.raises(ValueError, match="preset"):
        MetaMambaBlock(D_MODEL, preset="v3")


@pytest.mark.parametrize("mixer", ["conv", "none"])
def test_mamba_init(mixer):
    torch.manual_seed(0)
    dt_min, dt_max = 2e-3, 5e-2
    blk = block_for(32, mixer=mixer, d_state=D_STATE, dt_min=dt_min, dt_max=dt_max)
    dt = F.softplus(blk.dt_proj.bias.double())
    assert dt.min() >= dt_min * (1 - 1e-6) and dt.max() <= dt_max * (1 + 1e-6)
    assert dt.max() / dt.min() > 3  # log-uniform spread, not a constant
    assert blk.dt_proj.weight.abs().max() <= blk.dt_rank ** -0.5
    assert torch.equal(blk.A_log, torch.log(torch.arange(1.0, D_STATE + 1)).repeat(blk.d_inner, 1))
    assert torch.equal(blk.D, torch.ones(blk.d_inner))
    assert blk.A_log._no_weight_decay and blk.D._no_weight_decay
    if mixer == "conv":
        assert blk.mixer1.weight.abs().max() <= blk.window ** -0.5  # Conv1d's U(+-1/sqrt(W))
        assert torch.equal(blk.mixer1.bias, torch.zeros_like(blk.mixer1.bias))


def test_dt_floor():
    blk = MetaMambaBlock(16, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    assert torch.allclose(F.softplus(blk.dt_proj.bias.double()), torch.full((32,), 1e-4,
                          dtype=torch.float64), rtol=1e-4)


def test_faithful_init():
    torch.manual_seed(0)
    blk = MetaMambaBlock(64, mixer="dense", preset="v2", faithful=True)
    assert torch.equal(blk.dt_proj.bias, torch.zeros_like(blk.dt_proj.bias))
    for w in (blk.in_proj.weight, blk.x_proj.weight, blk.out_proj.weight, blk.mixer1.weight):
        assert 0.017 < w.std().item() < 0.023 and abs(w.mean().item()) < 0.005


def ssm_ref(x, z, blk):
    """SSM part of mamba-ssm's block on x after the activation. x, z: (B, L, E)."""
    R, N = blk.dt_rank, blk.d_state
    dt, Bc, Cc = (x @ blk.x_proj.weight.T).split([R, N, N], dim=-1)
    y = reference.selective_scan_ref(
        x.transpose(1, 2), (dt @ blk.dt_proj.weight.T).transpose(1, 2), -torch.exp(blk.A_log),
        Bc.transpose(1, 2), Cc.transpose(1, 2), blk.D, z.transpose(1, 2), blk.dt_proj.bias,
        delta_softplus=True)
    return y.transpose(1, 2) @ blk.out_proj.weight.T


def plain_mamba_ref(h, blk):
    """Decision Mamba's block written out: h + Mamba(LN(h)) with a width-4 causal conv."""
    x, z = (F.layer_norm(h, (D_MODEL,), blk.norm1.weight, blk.norm1.bias) @ blk.in_proj.weight.T).chunk(2, -1)
    w = blk.conv1d.weight[:, 0]                                         # (E, 4)
    xp = F.pad(x, (0, 0, 3, 0))                                         # (B, L+3, E)
    conv = sum(xp[:, k:k + x.shape[1]] * w[:, k] for k in range(4)) + blk.conv1d.bias
    return h + ssm_ref(F.silu(conv), z, blk)


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_matches_reference(mixer, preset):
    blk = make_block(mixer, preset)
    h = torch.randn(2, 7, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = blk(h)
    assert out.shape == h.shape and out.dtype == torch.float64
    if mixer == "none":
        expected = plain_mamba_ref(h, blk)
    else:
        expected = reference.metamamba_block_ref(h, blk.block_params(), mixer, blk.n_modalities,
                                                 blk.residual_ssm, blk.eps)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_residual_around_ssm_differs():
    """residual_ssm is wired: the same weights with and without it differ by exactly h1."""
    blk = make_block("conv")
    h = torch.randn(1, 5, D_MODEL, dtype=torch.float64)
    plain = blk(h)
    blk.residual_ssm = True
    h1 = h + reference.modal_mix_ref(F.layer_norm(h, (D_MODEL,), blk.norm1.weight, blk.norm1.bias),
                                     blk.mixer1.weight, blk.mixer1.bias, "conv", 3)
    torch.testing.assert_close(blk(h), plain + h1, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", ["v1", "v2"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_step_equals_forward(mixer, preset):
    blk = make_block(mixer, preset, seed=5)
    B, L = 2, 8
    h = torch.randn(B, L, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = blk(h)
        cache = blk.allocate_inference_cache(B)
        steps = torch.stack([blk.step(h[:, i], cache, position=i) for i in range(L)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    if mixer == "none":
        assert cache["conv_state"].shape == (B, blk.d_inner, 3)
    assert cache["ssm_state"].shape == (B, blk.d_inner, D_STATE)


@pytest.mark.parametrize("mixer", MIXERS)
def test_gradients_reach_every_parameter(mixer):
    blk = make_block(mixer, seed=7)
    h = torch.randn(2, 6, D_MODEL, dtype=torch.float64, requires_grad=True)
    blk(h).square().sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    for name, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_factory_kwargs_and_errors():
    blk = MetaMambaBlock(D_MODEL, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in blk.parameters())
    with pytest.raises(ValueError, match="hidden_states must be \\(batch, length"):
        blk(torch.randn(3, D_MODEL, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden_states must be one token"):
        blk.step(torch.randn(1, 2, D_MODEL), blk.allocate_inference_cache(1), 0)
