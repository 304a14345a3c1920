"""The CUDA kernels of csrc/cuda run by the CPU emulator (csrc/emu), against the reference.

Runs when the loaded dmm library is the emulated one (build it with CMake, then
`DMM_KERNELS_LIBRARY=build/libdmm_emulated.so python -m pytest tests/...`); skipped otherwise.
The other op suites (test_selective_scan, test_modal_mix, test_ops_registration, test_block,
test_block_cuda, test_step) run against it unchanged: their "cpu" cases then run the emulated CUDA
kernels. This file adds what they do not reach: the shapes at the kernels' edges (W = 1 and 16 in
the fused block, E = 0, N = R = 0, batch 1, one modality), schedule fuzzing (other thread and block
orders: a missing barrier or a race changes results), the deterministic mode, and the bugs found by
reading the kernels, each with a test that failed before its fix.
"""
import os

import pytest
import torch

import dmm_kernels
from conftest import EMULATED
from dmm_kernels import reference as ref
from dmm_kernels.params import SCAN_PARAMS

pytestmark = pytest.mark.skipif(not EMULATED,
                                reason="needs the emulated kernels' library (DMM_KERNELS_LIBRARY)")

SEEDS = [1, 2, 3]  # schedule seeds besides 0 (in order)
# The pass's schedule (tools/emulated_tests.sh runs the suites under DMM_EMU_SEED = 0, 7, 1234).
PASS_SEED = int(os.environ.get("DMM_EMU_SEED", "0"), 0)


@pytest.fixture(autouse=True)
def _pass_seed():
    """Every test starts (and ends) with the pass's schedule and NaN-filled shared memory."""
    torch.ops.dmm_emu.set_schedule_seed(PASS_SEED)
    torch.ops.dmm_emu.set_nan_fill(True)
    yield
    torch.ops.dmm_emu.set_schedule_seed(PASS_SEED)


def randn(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite result"
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ---- the emulated library is what runs ------------------------------------------------------------
def test_ops_run_in_the_emulator():
    before = torch.ops.dmm_emu.blocks_run()
    x = randn(1, 3, 5)
    torch.ops.dmm.modal_mix_fwd(x, randn(3, 2, 5), None, "conv", 3, 0)
    assert torch.ops.dmm_emu.blocks_run() > before


def kernel_counters():
    """{kernel text in DMM_LAUNCH: {launches, blocks, bytes_read, ...}} since the last reset."""
    names, rows = torch.ops.dmm_emu.counters()
    keys = ("launches", "blocks", "bytes_read", "bytes_written", "unique_bytes_read",
            "unique_bytes_written")
    return {n: dict(zip(keys, r)) for n, r in zip(names, rows.tolist())}


def test_counters_of_a_conv_forward():
    """Global-memory bytes the emulator counts for one modal_conv_fwd launch: every element of u,
    weight and bias is read at least once and y written once (unique bytes), and the loads of all
    threads sum to one bias and two loads per tap inside the sequence (W = 3 taps, L = 10)."""
    u, w, b = randn(2, 10, 5, dtype=torch.float32), randn(3, 3, 5, dtype=torch.float32), randn(3, 5, dtype=torch.float32)
    torch.ops.dmm_emu.reset_counters()
    y = torch.ops.dmm.modal_mix_fwd(u, w, b, "conv", 3, 0)
    k = kernel_counters()["modal_conv_fwd_kernel<acc_t>"]
    taps = sum(min(i + 1, 3) for i in range(10))  # taps inside the sequence, per (b, d)
    assert k["launches"] == 1
    assert k["bytes_written"] == k["unique_bytes_written"] == y.nbytes
    assert k["unique_bytes_read"] == u.nbytes + w.nbytes + b.nbytes
    assert k["bytes_read"] == 4 * 2 * 5 * (10 + 2 * taps)
    torch.ops.dmm_emu.reset_counters()
    assert kernel_counters() == {}


# ---- selective scan ---------------------------------------------------------------------------------
def scan_inputs(batch=2, E=37, L=130, N=16, G=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    bc = (batch, N, L) if G is None else (batch, G, N, L)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    return {"u": r(batch, E, L), "delta": r(batch, E, L, scale=0.5, shift=-1.0),
            "A": -(torch.rand(E, N, generator=g, dtype=torch.float64) + 0.1).to(pdt),
            "B": r(*bc), "C": r(*bc), "D": r(E).to(pdt), "z": r(batch, E, L),
            "delta_bias": r(E, scale=0.3).to(pdt)}


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_grads(fn, x, seed=0):
    xs = {k: None if v is None else v.clone().requires_grad_() for k, v in x.items()}
    out = fn(**xs, delta_softplus=True)
    out.backward(randn(*out.shape, dtype=out.dtype, seed=seed + 100))
    return out.detach(), {k: v.grad for k, v in xs.items() if v is not None}


@pytest.mark.parametrize("seed,N,G", [(1, 16, None), (2, 40, 2)])  # 1 / 2 states per lane; groups
def test_selective_scan_fuzzed_schedules(seed, N, G):
    """L = 130 crosses the backward's chunk boundaries; E = 18 is no multiple of the channels per
    block; other thread / block orders leave forward and gradients unchanged (up to the order of
    float atomics)."""
    torch.ops.dmm_emu.set_schedule_seed(seed)
    x = scan_inputs(batch=1, E=18, N=N, G=G, seed=seed)
    out, grads = scan_grads(dmm_kernels.selective_scan, x, seed)
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, x, seed)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for k in NAMES:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_selective_scan_batch_one_low_precision(dtype):
    x = scan_inputs(batch=1, E=17, L=70, N=16, dtype=dtype, seed=5)
    out, grads = scan_grads(dmm_kernels.selective_scan, x)
    x64 = {k: v.double() for k, v in x.items()}
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, x64)
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert rel_err(out, ref_out) < tol
    for k in NAMES:
        assert rel_err(grads[k], ref_grads[k]) < 20 * tol, k


# ---- the scan kernels' chunk and tile edges ----------------------------------------------------------
# The forward runs chunks of 64 (L > 32) or 32 steps, the backward chunks of 32, each split over 4
# lanes per channel; a CTA serves 32 channels (8 where N is large). E = 33 leaves a CTA with one
# channel; the lengths put the last chunk at 1, 2, 31, 32, 33 steps and cross 64 chunks.
@pytest.mark.parametrize("L,schedule", [(1, 0), (2, 5), (2047, 0), (2048, 5), (2049, 0), (4097, 5)])
def test_scan_chunk_edges(L, schedule):  # schedule 0: in order; 5: a fuzzed thread / block order
    torch.ops.dmm_emu.set_schedule_seed(schedule)
    x = scan_inputs(batch=1, E=33, L=L, N=2, seed=L)
    out, grads = scan_grads(dmm_kernels.selective_scan, x, seed=L)
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, x, seed=L)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for k in NAMES:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9, msg=k)


@pytest.mark.parametrize("N,schedule", [(1, 6), (16, 0), (64, 6), (65, 0)])
def test_scan_state_counts(N, schedule):
    """N = 256 (float64: the single-warp configuration) is test_selective_scan's."""
    torch.ops.dmm_emu.set_schedule_seed(schedule)
    x = scan_inputs(batch=1, E=33, L=131, N=N, G=None, seed=N)
    out, grads = scan_grads(dmm_kernels.selective_scan, x, seed=N)
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, x, seed=N)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for k in NAMES:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-9, atol=1e-9, msg=k)


def test_scan_batch_64_paper_shape():
    """Batch 64 at the paper's sequence length (L = 24, one partial chunk), float32."""
    x = scan_inputs(batch=64, E=5, L=24, N=16, dtype=torch.float32, seed=3)
    out, grads = scan_grads(dmm_kernels.selective_scan, x)
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, {k: v.double() for k, v in x.items()})
    assert rel_err(out, ref_out) < 1e-6
    for k in NAMES:
        assert rel_err(grads[k], ref_grads[k]) < 1e-5, k


def cancelling_inputs(dtype, seed=0):
    """Scan inputs whose y_t = sum_n s_n C_n is a small difference of large terms: states come in
    pairs with equal A and B, and C = (100 + c, -100) on a pair (c ~ 4, exact in both half types).
    An accumulator in the half type loses y in the rounding of the large partial sums; float32
    keeps it."""
    x = scan_inputs(batch=1, E=40, L=70, N=16, dtype=torch.float64, seed=seed)
    x["A"] = x["A"][:, :8].repeat_interleave(2, dim=1)
    x["B"] = x["B"][:, :8].repeat_interleave(2, dim=1)
    C = torch.full_like(x["C"], -100.0)                     # (batch, N, L)
    C[:, 0::2] = 100.0 + (4 * x["C"][:, 0::2]).round()
    x["C"] = C
    x["D"] = None
    x["z"] = None
    return {k: None if v is None else v.to(dtype) if k in ("u", "delta", "B", "C") else v.float()
            for k, v in x.items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_low_precision_against_composite(dtype):
    """The kernels against float64, beside the same-dtype composite (the reference from the same
    rounded inputs, accumulating in float32, output rounded to the dtype): the kernels' error stays
    within 1.5x of the composite's, on an input whose partial sums cancel."""
    x = cancelling_inputs(dtype)
    x64 = {k: None if v is None else v.double() for k, v in x.items()}
    ref_out, ref_grads = scan_grads(ref.selective_scan_ref, x64)
    out, grads = scan_grads(dmm_kernels.selective_scan, x)
    comp_out, comp_grads = scan_grads(ref.selective_scan_ref, x)
    assert rel_err(out, ref_out) <= 1.5 * rel_err(comp_out, ref_out) + 1e-7
    for k in ("u", "delta", "B", "C"):
        assert rel_err(grads[k], ref_grads[k]) <= 1.5 * rel_err(comp_grads[k], ref_grads[k]) + 1e-7, k


# ---- deterministic mode (bug: float atomics made the gradient sums differ from run to run) ---------
@pytest.fixture
def deterministic():
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


def scan_bwd_under(seed, x, dout):
    torch.ops.dmm_emu.set_schedule_seed(seed)
    return torch.ops.dmm.selective_scan_bwd(dout, *(x[k] for k in NAMES), True)


def conv_bwd_under(seed, u, w, b, dy):
    torch.ops.dmm_emu.set_schedule_seed(seed)
    return torch.ops.dmm.modal_mix_bwd(dy, u, w, b, "conv", 3, 0)


def conv_case():
    u, dy = randn(4, 300, 40, dtype=torch.float32, seed=1), randn(4, 300, 40, dtype=torch.float32, seed=2)
    return u, randn(3, 6, 40, dtype=torch.float32, seed=3), randn(3, 40, dtype=torch.float32, seed=4), dy


def test_float_atomics_vary_with_the_schedule():
    """Without the deterministic mode, other block / thread orders change the last bits of the
    atomically summed gradients: what the GPU does from run to run, shown by the emulator."""
    x = scan_inputs(batch=3, E=40, L=24, N=16, G=2, dtype=torch.float32, seed=9)
    dout = randn(3, 40, 24, dtype=torch.float32, seed=10)
    runs = [scan_bwd_under(s, x, dout) for s in (1, 2)]
    names = ["dA", "dB", "dC", "dD", "ddelta_bias"]
    differs = [not torch.equal(a, b) for a, b in zip(runs[0][2:], runs[1][2:])]
    assert any(differs), dict(zip(names, differs))
    u, w, b, dy = conv_case()
    c1, c2 = conv_bwd_under(1, u, w, b, dy), conv_bwd_under(2, u, w, b, dy)
    assert not torch.equal(c1[1], c2[1]) or not torch.equal(c1[2], c2[2])


def test_deterministic_mode_is_bit_identical(deterministic):
    """Under torch.use_deterministic_algorithms(True): two runs under different schedules give
    bit-identical dA, dB, dC, dD, ddelta_bias and conv dweight / dbias (failed before the
    deterministic path: float atomics in arrival order)."""
    x = scan_inputs(batch=3, E=40, L=24, N=16, G=2, dtype=torch.float32, seed=9)
    dout = randn(3, 40, 24, dtype=torch.float32, seed=10)
    first, second = scan_bwd_under(1, x, dout), scan_bwd_under(2, x, dout)
    for name, a, b in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"], first,
                          second):
        assert torch.equal(a, b), name
    # ... and equal to the reference (the partial sums are the same sums)
    x64 = {k: v.double() for k, v in x.items()}
    _, ref_grads = scan_grads(ref.selective_scan_ref, x64)
    xs = {k: v.clone().requires_grad_() for k, v in x64.items()}
    ref.selective_scan_ref(**xs, delta_softplus=True).backward(dout.double())
    for name, got in zip(["dA", "dB", "dC", "dD"], first[2:6]):
        key = name[1:]
        assert rel_err(got, xs[key].grad) < 1e-5, name
    u, w, b, dy = conv_case()
    c1, c2 = conv_bwd_under(1, u, w, b, dy), conv_bwd_under(3, u, w, b, dy)
    for name, a, b_ in zip(["du", "dweight", "dbias"], c1, c2):
        assert torch.equal(a, b_), name


# ---- modal mixer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0] + SEEDS)
@pytest.mark.parametrize("W", [1, 16])
@pytest.mark.parametrize("M", [1, 3])
def test_conv_window_edges_fuzzed(seed, W, M):
    torch.ops.dmm_emu.set_schedule_seed(seed)
    u = randn(2, 29, 45, seed=seed).requires_grad_()
    w = randn(M, W, 45, seed=seed + 1).requires_grad_()
    b = randn(M, 45, seed=seed + 2).requires_grad_()
    y = dmm_kernels.modal_mix(u, w, b, kind="conv", n_modalities=M, phase=M - 1)
    y_ref = ref.modal_mix_ref(u, w, b, kind="conv", n_modalities=M, phase=M - 1)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = randn(*y.shape, seed=seed + 3)
    g = torch.autograd.grad(y, (u, w, b), dy)
    g_ref = torch.autograd.grad(y_ref, (u, w, b), dy)
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("D_out", [7, 1])
def test_line_output_width_d_out(D_out):
    """Bug (csrc/cuda/modal_mix.cu before 88d0999): kind "line" allocated y, checked dy, allocated
    dbias and reshaped dy with D instead of D_out: u (2, 7, 5) with weight (3, 7, 15) raised, and
    D_out = 1 broadcast silently to a wrong (2, 7, 5) result."""
    u = randn(2, 7, 5, seed=1).requires_grad_()
    w = randn(3, D_out, 15, seed=2).requires_grad_()
    b = randn(3, D_out, seed=3).requires_grad_()
    y = dmm_kernels.modal_mix(u, w, b, kind="line", n_modalities=3, phase=0)
    y_ref = ref.modal_mix_ref(u, w, b, kind="line", n_modalities=3, phase=0)
    assert y.shape == (2, 7, D_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = randn(2, 7, D_out, seed=4)
    for a, e in zip(torch.autograd.grad(y, (u, w, b), dy), torch.autograd.grad(y_ref, (u, w, b), dy)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---- the block: fused forward, composite backward, step --------------------------------------------------
def block_params(d_model, mixer, seed, dtype=torch.float64, **kw):
    g = torch.Generator().manual_seed(seed)
    return ref.make_block_params(d_model, mixer, dtype=dtype, generator=g, **kw)


def block_op(h, p, mixer, n_modalities=3, residual_ssm=False):
    return torch.ops.dmm.metamamba_block_fwd(h, *p, mixer, n_modalities, residual_ssm, 1e-5)[0]


def step_op(h_t, cache, p, mixer, position, residual_ssm=False):
    A = -torch.exp(p.A_log.to(cache["ssm_state"].dtype))
    return torch.ops.dmm.metamamba_step(h_t, cache["mixer1_cache"], cache["mixer2_cache"],
                                        cache["ssm_state"], *p, A, mixer, 3, residual_ssm, 1e-5,
                                        position)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("window", [1, 16])
@pytest.mark.parametrize("mixer", ["conv", "double-conv"])
def test_block_window_edges_fuzzed(mixer, window, seed):
    """The fused preproj / silu_mix2 kernels at W = 1 and W = 16 (their register window's edges);
    batch 1; L = 70 > 64 crosses the fused scan's chunks; D = 40, E = 80 are no multiples of 32."""
    torch.ops.dmm_emu.set_schedule_seed(seed)
    p = block_params(40, mixer, seed=window, window=window)
    h = randn(1, 70, 40, seed=window + 1)
    assert rel_err(block_op(h, p, mixer), ref.metamamba_block_ref(h, p, mixer)) < 1e-10


def test_block_one_modality_residual_fuzzed():
    torch.ops.dmm_emu.set_schedule_seed(2)
    p = block_params(24, "conv", seed=3, n_modalities=1, expand=1, d_state=32)
    h = randn(2, 9, 24, seed=4)
    out = block_op(h, p, "conv", n_modalities=1, residual_ssm=True)
    expected = ref.metamamba_block_ref(h, p, "conv", n_modalities=1, residual_ssm=True)
    assert rel_err(out, expected) < 1e-10


@pytest.mark.parametrize("mixer", ["conv", "double-conv"])
def test_block_empty_inner_width(mixer):
    """Bug (block.cu before 88d0999): E == 0 launched a zero-size grid, "invalid configuration
    argument" on the GPU and an error in the emulator, which rejects a 0 grid dimension as the
    hardware does; the block now falls back to the composite."""
    p = block_params(8, mixer, seed=1, expand=1)
    # The same parameters with E = 0: every E-sized dimension emptied.
    E_dims = {"in_proj_weight": 0, "x_proj_weight": 1, "dt_proj_weight": 0, "dt_proj_bias": 0,
              "A_log": 0, "D": 0, "out_proj_weight": 1, "mixer2_weight": 2, "mixer2_bias": 1}
    p = p._replace(**{k: v.narrow(E_dims[k], 0, 0).contiguous()
                      for k, v in p.present().items() if k in E_dims})
    h = randn(2, 5, 8, seed=2)
    out = block_op(h, p, mixer)
    torch.testing.assert_close(out, ref.metamamba_block_ref(h, p, mixer), rtol=1e-10, atol=1e-10)


def test_block_no_states_no_dt_rank():
    """Bug (block.cu before 88d0999): N == 0 with R == 0 gave row_bytes == 0 and an integer
    division by zero in the fused plan (SIGFPE); it now falls back to the composite."""
    p = block_params(8, "conv", seed=1, d_state=0)
    E = p.in_proj_weight.shape[0] // 2
    p = p._replace(x_proj_weight=torch.zeros(0, E, dtype=torch.float64),
                   dt_proj_weight=torch.zeros(E, 0, dtype=torch.float64))
    h = randn(2, 5, 8, seed=2)
    out = block_op(h, p, "conv")
    torch.testing.assert_close(out, ref.metamamba_block_ref(h, p, "conv"), rtol=1e-10, atol=1e-10)


def test_empty_inner_width_scan():
    """E == 0 through the scan: no launch (a 0 grid dimension is an error in the emulator, as on
    the hardware: ctest emu_tests.error_zero_grid)."""
    x = scan_inputs(batch=1, E=0, L=5, N=4)
    out, last = torch.ops.dmm.selective_scan_fwd(*(x[k] for k in NAMES), True)
    assert out.shape == (1, 0, 5) and last.shape == (1, 0, 4)


@pytest.mark.parametrize("mixer", ["conv", "double-line"])
def test_step_fuzzed_equals_block(mixer):
    torch.ops.dmm_emu.set_schedule_seed(3)
    p = block_params(40, mixer, seed=5)
    h = randn(2, 8, 40, seed=6)
    cache = ref.allocate_step_cache_ref(2, p, mixer, torch.float64, "cpu")
    outs = [step_op(h[:, t], cache, p, mixer, t) for t in range(8)]
    assert rel_err(torch.stack(outs, 1), ref.metamamba_block_ref(h, p, mixer)) < 1e-10


# ---- which path ran: the fused kernels, not the composite ---------------------------------------------
def blocks_during(fn):
    before = torch.ops.dmm_emu.blocks_run()
    result = fn()
    return result, torch.ops.dmm_emu.blocks_run() - before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_wide_step_and_block(dtype):
    """D = 1024: the step's stages spread its rows over many blocks; the fused forward shrinks its
    preproj tile below 8 tokens. Low precisions round like the composite."""
    p = block_params(1024, "conv", seed=22, dtype=dtype).map(torch.Tensor.float, SCAN_PARAMS)
    h = randn(2, 4, 1024, dtype=dtype, seed=23)
    cache = ref.allocate_step_cache_ref(2, p, "conv", dtype, "cpu")
    outs = []
    for t in range(4):
        out, blocks = blocks_during(lambda: step_op(h[:, t], cache, p, "conv", t))
        # in_proj 4096 rows, x_proj 96, out_proj 1024, 16 rows a block; the scan 16 channels a block
        assert blocks == 2 * (4096 // 16 + 6 + 2048 // 16 + 1024 // 16)
        outs.append(out)
    expected = ref.metamamba_block_ref(h.double(), p.map(torch.Tensor.double), "conv")
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert rel_err(torch.stack(outs, 1), expected) < tol
    fused, blocks = blocks_during(lambda: block_op(h, p, "conv"))
    assert blocks > 0
    assert rel_err(fused, expected) < tol


@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_step_batch_one_spreads_rows_over_blocks(mixer):
    """Batch 1 at the paper's width (D 128, E 256, N 16): each stage spreads its weight rows over
    blocks (one block per batch row was the old kernel), launches 4 stages for "conv", one more for
    the line mixer_1 and one more for mixer_2, and equals the reference step by step."""
    p = block_params(128, mixer, seed=4)
    h = randn(1, 6, 128, seed=5)
    cache = ref.allocate_step_cache_ref(1, p, mixer, torch.float64, "cpu")
    ref_cache = {k: None if v is None else v.clone() for k, v in cache.items()}
    launches = 4 + mixer.endswith("line") + mixer.startswith("double-")
    blocks = (128 // 16 if mixer.endswith("line") else 0) + 512 // 16 \
        + (256 // 16 if mixer.startswith("double-") else 0) + 3 + 256 // 16 + 128 // 16
    for t in range(6):
        before = torch.ops.dmm_emu.launches_run()
        out, n_blocks = blocks_during(lambda: step_op(h[:, t], cache, p, mixer, t))
        assert torch.ops.dmm_emu.launches_run() - before == launches
        assert n_blocks == blocks
        expected, ref_cache = ref.metamamba_step_ref(h[:, t], ref_cache, p, mixer, position=t)
        assert rel_err(out, expected) < 1e-12
        for key, value in cache.items():
            if value is not None:
                assert rel_err(value, ref_cache[key]) < 1e-12, key


@pytest.mark.parametrize("mixer", ["line", "double-line"])
def test_line_block_runs_kernels(mixer):
    p = block_params(40, mixer, seed=8)
    h = randn(1, 31, 40, seed=9)
    out, blocks = blocks_during(lambda: block_op(h, p, mixer))
    assert blocks > 0
    assert rel_err(out, ref.metamamba_block_ref(h, p, mixer)) < 1e-10
