"""CUDA registration of the block ops (csrc/cuda/block.cu): fused forward, step kernel, composite
backward. Every check compares with dmm_kernels.reference in float64. Runs on a GPU, or on the CPU
against the emulated kernels (DMM_KERNELS_LIBRARY=build/libdmm_emulated.so: the same block.cu
compiled under the CUDA emulator and registered for CPU tensors).
"""
import pytest
import torch

import dmm_kernels
from conftest import EMULATED
from dmm_kernels import mixers
from dmm_kernels import reference as ref
from dmm_kernels.params import SCAN_PARAMS  # kept in fp32 for low-precision blocks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available() and not EMULATED,
                       reason="needs a CUDA GPU or the emulated kernels' library"),
    pytest.mark.skipif(not dmm_kernels.HAS_EXTENSION, reason="compiled dmm ops not loaded"),
]

MIXERS = mixers.BLOCK_MIXERS
# Bound on ||out - ref|| / ||ref|| against the float64 reference evaluated on the same (rounded)
# inputs. Low precisions round each stored intermediate (u, h1, v, xz, xs, x_dbl, y, out) once.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 GEMMs must be true fp32 for the float32 tolerance."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def make_params(d_model, mixer, dtype, seed, d_state=16, window=6, n_modalities=3, expand=2):
    gen = torch.Generator().manual_seed(seed)
    p = ref.make_block_params(d_model, mixer, expand=expand, d_state=d_state, window=window,
                              n_modalities=n_modalities, dtype=torch.float64, device=DEVICE,
                              generator=gen)
    scan_dtype = torch.float32 if dtype != torch.float64 else dtype
    return p.map(lambda v: v.to(dtype)).map(lambda v: v.to(scan_dtype), SCAN_PARAMS)


def block_op(h, p, mixer, n_modalities=3, residual_ssm=False, eps=1e-5):
    return torch.ops.dmm.metamamba_block_fwd(h, *p, mixer, n_modalities, residual_ssm, eps)[0]


def step_op(h_t, cache, p, mixer, position, n_modalities=3, residual_ssm=False, eps=1e-5):
    A = -torch.exp(p.A_log.to(cache["ssm_state"].dtype))
    return torch.ops.dmm.metamamba_step(h_t, cache["mixer1_cache"], cache["mixer2_cache"],
                                        cache["ssm_state"], *p, A, mixer, n_modalities,
                                        residual_ssm, eps, position)


def ref64(h, p, mixer, **kw):
    return ref.metamamba_block_ref(h.double(), p.map(torch.Tensor.double), mixer, **kw)


def rel_err(out, expected):
    assert torch.isfinite(out).all(), "non-finite output"
    out, expected = out.double(), expected.double()
    return ((out - expected).norm() / expected.norm()).item()


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)


# ---- forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("batch,length,d_model", [(2, 24, 32), (1, 7, 48), (3, 61, 64), (1, 1, 32),
                                                  (2, 130, 40)])  # L > 64: scan chunks
def test_block_float64_matches_reference(mixer, batch, length, d_model):
    p = make_params(d_model, mixer, torch.float64, seed=length)
    h = randn(batch, length, d_model, dtype=torch.float64, seed=length + 1)
    out = block_op(h, p, mixer)
    assert out.shape == h.shape and out.dtype == h.dtype
    assert rel_err(out, ref64(h, p, mixer)) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("mixer", ("conv", "line"))
def test_block_residual_ssm_and_modalities(mixer):
    """residual_ssm adds h1; one modality is the v2 "dense" layout; N = 32 uses 8 lanes/channel."""
    for n_modalities, d_state in ((3, 16), (1, 32), (2, 8)):
        p = make_params(32, mixer, torch.float64, seed=3, d_state=d_state,
                        n_modalities=n_modalities, expand=1)
        h = randn(2, 13, 32, dtype=torch.float64, seed=4)
        out = block_op(h, p, mixer, n_modalities=n_modalities, residual_ssm=True)
        expected = ref64(h, p, mixer, n_modalities=n_modalities, residual_ssm=True)
        assert rel_err(out, expected) < TOLERANCE[torch.float64], (n_modalities, d_state)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("mixer", MIXERS)
def test_block_low_precision_tolerance(mixer, dtype):
    p = make_params(64, mixer, dtype, seed=5)
    h = randn(4, 24, 64, dtype=dtype, seed=6)
    out = block_op(h, p, mixer)
    assert out.dtype == dtype
    assert rel_err(out, ref64(h, p, mixer)) < TOLERANCE[dtype]


def test_wide_model_paths():
    """D = 1024: the preproj tile shrinks below 8 tokens to fit 48 KB, and the step kernel needs
    more than 48 KB of shared memory (the opt-in path)."""
    mixer = "conv"
    p = make_params(1024, mixer, torch.float32, seed=22)
    h = randn(2, 11, 1024, dtype=torch.float32, seed=23)
    assert rel_err(block_op(h, p, mixer), ref64(h, p, mixer)) < TOLERANCE[torch.float32]
    cache = ref.allocate_step_cache_ref(2, p, mixer, torch.float32, DEVICE)
    steps = torch.stack([step_op(h[:, t], cache, p, mixer, position=t) for t in range(11)], 1)
    assert rel_err(steps, ref64(h, p, mixer)) < TOLERANCE[torch.float32]


def test_block_rejects_what_backward_rejects():
    """A window over the kernels' limit fails in the forward already, with the modal_mix message."""
    p = make_params(32, "conv", torch.float32, seed=24, window=17)
    h = randn(2, 5, 32, dtype=torch.float32, seed=25)
    with pytest.raises(RuntimeError, match="window W = 17"):
        block_op(h, p, "conv")


def test_block_noncontiguous_and_empty():
    p = make_params(32, "conv", torch.float64, seed=7)
    h = randn(9, 2, 32, dtype=torch.float64, seed=8).transpose(0, 1)  # (2, 9, 32), strided
    assert rel_err(block_op(h, p, "conv"), ref64(h, p, "conv")) < TOLERANCE[torch.float64]
    for shape in ((0, 9, 32), (2, 0, 32)):
        out = block_op(torch.empty(shape, dtype=torch.float64, device=DEVICE), p, "conv")
        assert out.shape == shape


# ---- backward (composite on CUDA) --------------------------------------------------------------
@pytest.mark.parametrize("mixer", ("conv", "double-line"))
def test_block_backward_float64(mixer):
    p = make_params(32, mixer, torch.float64, seed=9)
    h = randn(2, 12, 32, dtype=torch.float64, seed=10)
    dout = randn(2, 12, 32, dtype=torch.float64, seed=11)
    names = list(p.present())

    def grads(fn):
        hh = h.clone().requires_grad_()
        pp = p.map(lambda v: v.clone().requires_grad_())
        fn(hh, pp).backward(dout)
        return [hh.grad] + [v.grad for v in pp.present().values()]

    got = grads(lambda hh, pp: dmm_kernels.metamamba_block(hh, pp, mixer))
    expected = grads(lambda hh, pp: ref.metamamba_block_ref(hh, pp, mixer))
    for name, g, e in zip(["h"] + names, got, expected):
        assert rel_err(g, e) < 1e-9, name


# ---- opcheck -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mixer", ("conv", "double-line"))
def test_opcheck_block_ops(mixer):
    p = make_params(32, mixer, torch.float64, seed=12)
    h = randn(2, 9, 32, dtype=torch.float64, seed=13)
    fwd_args = (h.clone().requires_grad_(), *p.map(lambda v: v.clone().requires_grad_()),
                mixer, 3, False, 1e-5)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_fwd.default, fwd_args)
    _, *saved = torch.ops.dmm.metamamba_block_fwd(h, *p, mixer, 3, False, 1e-5)
    dout = randn(2, 9, 32, dtype=torch.float64, seed=14)
    torch.library.opcheck(torch.ops.dmm.metamamba_block_bwd.default,
                          (dout, h, *p, *saved, mixer, 3, False, 1e-5))


@pytest.mark.parametrize("mixer", ("conv", "double-line"))
def test_opcheck_step(mixer):
    p = make_params(32, mixer, torch.float64, seed=15)
    cache = ref.allocate_step_cache_ref(2, p, mixer, torch.float64, DEVICE)
    cache["ssm_state"].copy_(randn(*cache["ssm_state"].shape, dtype=torch.float64, seed=16))
    h_t = randn(2, 32, dtype=torch.float64, seed=17)
    torch.library.opcheck(
        torch.ops.dmm.metamamba_step.default,
        (h_t, cache["mixer1_cache"], cache["mixer2_cache"], cache["ssm_state"], *p,
         -torch.exp(p.A_log), mixer, 3, False, 1e-5, 4))


# ---- step ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("batch,length", [(2, 13), (1, 7)])
def test_step_sequence_equals_block(mixer, dtype, batch, length):
    p = make_params(32, mixer, dtype, seed=18)
    h = randn(batch, length, 32, dtype=dtype, seed=19)
    cache = ref.allocate_step_cache_ref(batch, p, mixer, dtype, DEVICE)
    ref_cache = {k: None if v is None else v.double().clone() for k, v in cache.items()}
    p64 = p.map(torch.Tensor.double)
    outs = []
    for t in range(length):
        outs.append(step_op(h[:, t], cache, p, mixer, position=t))
        _, ref_cache = ref.metamamba_step_ref(h[:, t].double(), ref_cache, p64, mixer, position=t)
    steps = torch.stack(outs, dim=1)  # (B, L, D)
    tol = TOLERANCE[dtype]
    assert rel_err(steps, ref64(h, p, mixer)) < tol
    assert rel_err(steps, block_op(h, p, mixer)) < tol
    for key, value in cache.items():  # the in-place cache equals the functional reference's
        if value is not None:
            assert rel_err(value, ref_cache[key]) < tol, key


def test_step_empty_batch():
    p = make_params(32, "conv", torch.float32, seed=20)
    cache = ref.allocate_step_cache_ref(0, p, "conv", torch.float32, DEVICE)
    out = step_op(torch.empty(0, 32, device=DEVICE), cache, p, "conv", position=0)
    assert out.shape == (0, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mixer", ("conv", "double-line"))
def test_step_cuda_graph_equals_eager(mixer):
    """The step kernel is capturable: replays equal eager calls from the same cache."""
    torch.manual_seed(0)
    p = make_params(64, mixer, torch.float32, seed=21)
    cache = ref.allocate_step_cache_ref(4, p, mixer, torch.float32, DEVICE)
    for v in cache.values():
        if v is not None:
            v.copy_(torch.randn_like(v))
    start = {k: None if v is None else v.clone() for k, v in cache.items()}
    h_static = torch.randn(4, 64, device=DEVICE)
    position = 5

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for _ in range(2):
            step_op(h_static, cache, p, mixer, position)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_static = step_op(h_static, cache, p, mixer, position)

    inputs = [torch.randn(4, 64, device=DEVICE) for _ in range(3)]
    for k, v in cache.items():
        if v is not None:
            v.copy_(start[k])
    eager = [step_op(x, cache, p, mixer, position) for x in inputs]
    eager_cache = {k: None if v is None else v.clone() for k, v in cache.items()}

    for k, v in cache.items():
        if v is not None:
            v.copy_(start[k])
    for x, expected in zip(inputs, eager):
        h_static.copy_(x)
        graph.replay()
        torch.testing.assert_close(out_static, expected, rtol=0, atol=0)
    for k, v in cache.items():
        if v is not None:
            torch.testing.assert_close(v, eager_cache[k], rtol=0, atol=0)


# ---- half precision against the same-precision composite -----------------------------------------
# The unfused composite (csrc/block/composite.cpp, the ops' CompositeExplicitAutograd kernel) runs
# the same block in the activation dtype with ATen GEMMs and the scan / mixer ops: the fused kernels
# round the same intermediates, so the two differ only where a float32 difference flips a rounding
# of a stored intermediate, which the layers after it carry on (and the step's state over tokens).
# Error measure: max |fused - composite| / max |composite|. Measured on the emulated kernels, worst
# over the four mixers, random and cancelling parameters: block bf16 0, fp16 5.7e-5 (the composite
# runs the same scan kernel); step (six tokens, outputs and caches) bf16 1.5e-2, fp16 1.9e-3.
# Tolerances: for the block one rounding of the activation type at the output's scale (2^-7, 2^-10:
# a flipped rounding of a large element, which a GPU's FMA contraction can cause), for the step
# about twice its error. A half-type accumulator of the scan's y is what the cancelling parameters are for: with
# them the partial sums are K times the total, so its rounding errors grow K-fold (ctest
# fault.half_accumulation: the step's scan stage with such an accumulator, 1.0 / 0.15 of the output
# in bf16 / fp16; fault.scan_half_accumulation: the scan's).
BLOCK_HALF_TOLERANCE = {torch.bfloat16: 8e-3, torch.float16: 1e-3}
STEP_HALF_TOLERANCE = {torch.bfloat16: 2.5e-2, torch.float16: 4e-3}


def composite(op, *args):
    """The op's composite kernel on the same arguments (the fused path's same-precision twin)."""
    return op.default._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args)


def max_error(out, expected):
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def cancelling(p, K=8.0):
    """Parameters under which the terms s_n C_n of the scan's y cancel in pairs, exactly, whatever
    the roundings before the scan: A equal over n, the C rows of x_proj equal (one C for every n),
    and the B rows scaled by K with B_2k+1 = -B_2k, so that from a zero state (or one with
    s_2k+1 = -s_2k) s_2k+1 = -s_2k: partial sums of size K |s C| and a total of zero."""
    N, R = p.A_log.shape[1], p.dt_proj_weight.shape[1]
    A = p.A_log.clone()
    A[:] = A[:, :1]
    w = p.x_proj_weight.double().clone()  # (R + 2N, E) = [dt | B | C] rows
    w[R:R + N:2] *= K
    w[R + 1:R + N:2] = -w[R:R + N:2]
    w[R + N:] = w[R + N]
    return p._replace(A_log=A, x_proj_weight=w.to(p.x_proj_weight.dtype))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("cancel", [False, True])
def test_half_block_matches_composite(mixer, dtype, cancel):
    p = make_params(64, mixer, dtype, seed=31)
    p = cancelling(p) if cancel else p
    h = randn(3, 24, 64, dtype=dtype, seed=32)
    args = (h, *p, mixer, 3, False, 1e-5)
    out = block_op(h, p, mixer)
    assert out.dtype == dtype
    expected = composite(torch.ops.dmm.metamamba_block_fwd, *args)[0]
    assert max_error(out, expected) <= BLOCK_HALF_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("cancel", [False, True])
def test_half_step_matches_composite(mixer, dtype, cancel):
    """Six tokens through the fused step and the composite step, from a state with s_2k+1 = -s_2k
    (so that under cancelling parameters the pairs keep cancelling)."""
    p = make_params(64, mixer, dtype, seed=33)
    p = cancelling(p) if cancel else p
    h = randn(3, 6, 64, dtype=dtype, seed=34)
    fused = ref.allocate_step_cache_ref(3, p, mixer, dtype, DEVICE)
    state = randn(3, fused["ssm_state"].shape[1], fused["ssm_state"].shape[2] // 2, dtype=torch.float32, seed=35)
    fused["ssm_state"].copy_(4 * torch.stack([state, -state], -1).flatten(-2))
    comp = {k: None if v is None else v.clone() for k, v in fused.items()}
    for t in range(6):
        out = step_op(h[:, t], fused, p, mixer, position=t)
        A = -torch.exp(p.A_log.to(comp["ssm_state"].dtype))
        expected = composite(torch.ops.dmm.metamamba_step, h[:, t], comp["mixer1_cache"],
                             comp["mixer2_cache"], comp["ssm_state"], *p, A, mixer, 3, False, 1e-5,
                             t)
        assert max_error(out, expected) <= STEP_HALF_TOLERANCE[dtype], t
    for k, v in fused.items():
        if v is not None:
            assert max_error(v, comp[k]) <= STEP_HALF_TOLERANCE[dtype], k
