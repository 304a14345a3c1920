"""The Triton chunked scan at the edges of its tiles: lengths on both sides of a chunk (the
interpreter's CHUNK is 64), one and many states, channel counts across a BLOCK_E tile, and every
autotuning configuration run by hand, all in float64 against dmm_kernels.reference. Runs where
the Triton kernels run CPU tensors: TRITON_INTERPRET=1 DMM_KERNELS_BACKEND=triton."""
import pytest
import torch

pytest.importorskip("triton")

from conftest import TRITON_INTERPRETED  # noqa: E402
from dmm_kernels.reference import selective_scan_ref  # noqa: E402
from dmm_kernels.triton import scan  # noqa: E402

pytestmark = pytest.mark.skipif(not TRITON_INTERPRETED, reason="needs TRITON_INTERPRET=1 and "
                                "DMM_KERNELS_BACKEND=triton")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(batch, E, L, N, G=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    bc = (batch, N, L) if G is None else (batch, G, N, L)
    # A near 0 for some states so that a state lives across a whole chunk and more: a lost carry
    # between chunks then shows in the output.
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) * 0.5 - 0.01
    return {"u": rand(batch, E, L), "delta": rand(batch, E, L, scale=0.5, shift=-1.0), "A": A,
            "B": rand(*bc), "C": rand(*bc), "D": rand(E), "z": rand(batch, E, L),
            "delta_bias": rand(E, scale=0.3)}


def _check(x, config=None):
    """Forward (out, last state) and every gradient of the kernels against the reference."""
    args = [x[k] for k in NAMES]
    out, last = scan.scan_fwd(*args, True, config=config)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = scan.scan_bwd(dout, *args, True, config=config)
    leaves = [t.clone().requires_grad_() for t in args]
    ref_out, ref_last = selective_scan_ref(*leaves, delta_softplus=True, return_last_state=True)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
    for name, got, want in zip(NAMES, grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)


# (L, N): each side of one and of many chunk edges, a single step, one state, the state tile's
# widths of 16 and 64. L = 4097 (65 chunks, the last of one step) with one state and one row:
# the interpreter's cost grows with chunks x states.
EDGES = [(1, 16), (2, 1), (63, 16), (64, 1), (65, 16), (129, 64), (4097, 1)]


@pytest.mark.parametrize("L,N", EDGES, ids=[f"L{L}-N{N}" for L, N in EDGES])
def test_chunk_edges(L, N):
    _check(_inputs(batch=1 if L > 1000 else 2, E=3, L=L, N=N, seed=L + N))


@pytest.mark.parametrize("E,G", [(17, None), (34, 2)])
def test_channel_tile_edges(E, G):
    """17 channels per group: a full BLOCK_E tile and a 1-channel one, whose dB / dC partials
    are summed with the full tile's."""
    _check(_inputs(batch=2, E=E, L=70, N=5, G=G, seed=E))


CONFIGS = sorted({(c.kwargs["BLOCK_E"], c.kwargs["CHUNK"], c.num_warps): c
                  for c in scan.FWD_CONFIGS + scan.BWD_CONFIGS}.items())


@pytest.mark.parametrize("config", [c for _, c in CONFIGS],
                         ids=[f"E{e}-T{t}-w{w}" for (e, t, w), _ in CONFIGS])
def test_every_autotuning_configuration(config):
    """What the GPU's autotuner may pick, run under the interpreter: chunk and tile edges of
    each configuration's sizes are crossed (L = 2 chunks + 1, channels = 1 tile + 1)."""
    chunk, block_e = config.kwargs["CHUNK"], config.kwargs["BLOCK_E"]
    _check(_inputs(batch=1, E=block_e + 1, L=2 * chunk + 1, N=3, seed=chunk), config)


def test_block_layout_with_dt_proj():
    """The block's form: (batch, L, E) views, B / C as views of x_dbl, dt_proj folded in, across
    two chunks."""
    g = torch.Generator().manual_seed(3)
    batch, L, E, N, R = 2, 67, 5, 4, 3
    xs = torch.randn(batch, L, E, generator=g, dtype=torch.float64)
    x_dbl = torch.randn(batch, L, R + 2 * N, generator=g, dtype=torch.float64)
    z = torch.randn(batch, L, 2 * E, generator=g, dtype=torch.float64)[..., E:]
    w_dt = torch.randn(E, R, generator=g, dtype=torch.float64)
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) - 0.05
    D, bias = torch.randn(E, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
    y, last = scan.scan_fwd(xs, x_dbl[..., :R], A, x_dbl[..., R:R + N], x_dbl[..., R + N:], D, z, bias,
                            True, layout="ble", dt_proj_weight=w_dt)
    delta = (x_dbl[..., :R] @ w_dt.T).transpose(1, 2)
    ref_y, ref_last = selective_scan_ref(xs.transpose(1, 2), delta, A, x_dbl[..., R:R + N].transpose(1, 2),
                                         x_dbl[..., R + N:].transpose(1, 2), D, z.transpose(1, 2), bias,
                                         delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, ref_y.transpose(1, 2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)
