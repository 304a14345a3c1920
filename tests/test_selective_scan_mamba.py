"""selective_scan as a drop-in for mamba-ssm's selective_scan_fn, on mamba-ssm's own test grid.

The axes and values are those of mamba-ssm's tests/ops/test_selective_scan.py, the active ones
and the wider grid its authors left commented out: wtype (float32, complex64), itype, seqlen,
return_last_state, has_delta_bias, delta_softplus, has_z, has_D, varBC_groups, is_variable_C,
is_variable_B. The full product is ~20k cases, so it is covered in two parts:
  * test_flag_grid: the full product of every flag with wtype and itype, each case at one
    sequence length of the wide grid (round-robin over the shorter ones);
  * test_seqlen_grid: every sequence length of the wide grid with every itype, at mamba-ssm's
    active flag setting.
Every case runs on each backend (the compiled kernels, the pure-PyTorch reference) and is
compared, output, last state and every gradient, with an independent float64 scan written here.
Complex A (mamba-ssm's complex mode) must be rejected with a clear error.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import dmm_kernels
from dmm_kernels.reference import selective_scan_ref

WTYPES = [torch.float32, torch.complex64]
ITYPES = [torch.float32, torch.float16, torch.bfloat16]
SEQLENS = [8, 16, 32, 64, 128, 256, 372, 512, 784, 1024, 1134, 2048, 4096]
FLAGS = ("return_last_state", "has_delta_bias", "delta_softplus", "has_z", "has_D",
         "varBC_groups", "is_variable_C", "is_variable_B")
FLAG_VALUES = [(False, True)] * 5 + [(1, 2), (False, True), (False, True)]
BACKENDS = {"compiled": dmm_kernels.selective_scan, "reference": selective_scan_ref}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]
BATCH, DIM, DSTATE = 2, 4, 8  # mamba-ssm's sizes


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: threads only add overhead (conftest's one_thread)."""


def _flag_cases():
    short = [L for L in SEQLENS if L <= 372]
    for i, values in enumerate(itertools.product(*FLAG_VALUES)):
        yield pytest.param(short[i % len(short)], *values,
                           id="-".join(f"{k}={v}" for k, v in zip(FLAGS, values)))


def scan_oracle(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk=32):
    """float64 selective scan in closed form, mamba-ssm's semantics: B / C constant (E, N),
    (b, N, L) or grouped (b, G, N, L). Returns out (b, E, L) and the last state (b, E, N).

    Within a chunk of T steps, with P_t = sum_{r<=t} delta_r A (the log of the decay),
    x_t = exp(P_t) x_start + sum_{s<=t} exp(P_t - P_s) delta_s u_s B_s: a (T, T) weighted sum
    instead of a per-step loop, so autograd stays cheap at L = 4096."""
    u, delta, A = u.double(), delta.double(), A.double()
    batch, E, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def per_channel(X):  # -> (b, E, L, N)
        X = X.double()
        if X.dim() == 2:
            return X[None, :, None, :].expand(batch, E, L, X.shape[1])
        if X.dim() == 3:
            X = X[:, None]
        return torch.repeat_interleave(X, E // X.shape[1], dim=1).transpose(2, 3)

    B, C = per_channel(B), per_channel(C)
    log_decay = delta[..., None] * A[:, None, :]                     # (b, E, L, N)
    drive = (delta * u)[..., None] * B                                # (b, E, L, N)
    x = u.new_zeros(batch, E, A.shape[1])                             # (b, E, N)
    ys = []
    for start in range(0, L, chunk):
        part = slice(start, min(start + chunk, L))
        P = log_decay[:, :, part].cumsum(2)                           # (b, E, T, N)
        T = P.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()[..., None]  # (t, s, 1)
        gaps = torch.where(causal, P[:, :, :, None] - P[:, :, None], -torch.inf)        # (b, E, t, s, N)
        states = (P.exp() * x[:, :, None]
                  + torch.einsum("betsn,besn->betn", gaps.exp(), drive[:, :, part]))   # (b, E, T, N)
        ys.append((states * C[:, :, part]).sum(-1))                   # (b, E, T)
        x = states[:, :, -1]
    y = torch.cat(ys, dim=2)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, x


def make_inputs(seqlen, itype, wtype, has_delta_bias, has_z, has_D, varBC_groups, is_variable_C,
                is_variable_B, device, seed=0):
    """mamba-ssm's test inputs (same shapes, dtypes and distributions)."""
    g = torch.Generator().manual_seed(seed)
    is_complex = wtype == torch.complex64

    def randn(*shape, dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(device, dtype)

    def rand(*shape, dtype):
        return torch.rand(*shape, generator=g, dtype=torch.float32).to(device, dtype)

    def bc(variable):
        if not variable:
            return randn(DIM, DSTATE, dtype=wtype)
        length = seqlen * 2 if is_complex else seqlen
        shape = (BATCH, DSTATE, length) if varBC_groups == 1 else (BATCH, varBC_groups, DSTATE, length)
        return randn(*shape, dtype=itype)

    return {
        "u": randn(BATCH, DIM, seqlen, dtype=itype),
        "delta": 0.5 * rand(BATCH, DIM, seqlen, dtype=itype),
        "A": -0.5 * rand(DIM, DSTATE, dtype=wtype),
        "B": bc(is_variable_B),
        "C": bc(is_variable_C),
        "D": randn(DIM, dtype=torch.float32) if has_D else None,
        "z": randn(BATCH, DIM, seqlen, dtype=itype) if has_z else None,
        "delta_bias": 0.5 * rand(DIM, dtype=torch.float32) if has_delta_bias else None,
    }


def _tolerance(dtype):
    # The kernels accumulate in fp32 from the same rounded inputs the oracle reads; what is left
    # is fp32 accumulation (float32) and the final rounding to the input dtype (half types).
    return {torch.float32: 5e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def check_against_oracle(fn, x, delta_softplus, return_last_state):
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if v is not None}
    args = {k: leaves.get(k) for k in x}
    result = fn(**args, delta_softplus=delta_softplus, return_last_state=return_last_state)
    out, state = result if return_last_state else (result, None)
    assert out.dtype == x["u"].dtype and out.shape == x["u"].shape
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    ref_out, ref_state = scan_oracle(**{k: ref_leaves.get(k) for k in x},
                                     delta_softplus=delta_softplus)
    tol = _tolerance(x["u"].dtype)
    scale = ref_out.abs().max().item()
    torch.testing.assert_close(out.double(), ref_out.detach(), rtol=tol, atol=tol * scale)
    if return_last_state:
        assert state.dtype == torch.float32 and state.shape == (BATCH, DIM, DSTATE)
        torch.testing.assert_close(state.double(), ref_state.detach(), rtol=1e-4,
                                   atol=1e-4 * ref_state.abs().max().item())
    # The output gradient in out's dtype: what the kernels receive, and so what the oracle gets.
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
    out.backward(g)
    ref_out.backward(g.double())
    for k, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape, k
        ref_grad = ref_leaves[k].grad
        # Gradients of half-precision inputs come back rounded to that precision; sums over
        # batch / length (dA, dD, constant dB) accumulate fp32 rounding.
        gtol = max(tol, 1e-4) if leaf.dtype == torch.float32 else _tolerance(leaf.dtype)
        gscale = ref_grad.abs().max().item()
        torch.testing.assert_close(leaf.grad.double(), ref_grad, rtol=gtol, atol=gtol * gscale,
                                   msg=lambda m, k=k: f"d{k}: {m}")


def run_case(backend, device, seqlen, itype, wtype, flags):
    if backend == "compiled":
        assert dmm_kernels.HAS_EXTENSION, f"compiled ops not in use: {dmm_kernels.EXTENSION_ERROR}"
    if flags["varBC_groups"] > 1 and (not flags["is_variable_B"] or not flags["is_variable_C"]):
        pytest.skip("not applicable (as in mamba-ssm's test): groups need variable B and C")
    x = make_inputs(seqlen, itype, wtype, flags["has_delta_bias"], flags["has_z"], flags["has_D"],
                    flags["varBC_groups"], flags["is_variable_C"], flags["is_variable_B"], device)
    fn = BACKENDS[backend]
    if wtype == torch.complex64:
        with pytest.raises(ValueError, match=r"selective_scan: A is complex .*only real A, B and C"):
            fn(**x, delta_softplus=flags["delta_softplus"],
               return_last_state=flags["return_last_state"])
        return
    check_against_oracle(fn, x, flags["delta_softplus"], flags["return_last_state"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("wtype", WTYPES, ids=["real", "complex"])
@pytest.mark.parametrize("itype", ITYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("seqlen," + ",".join(FLAGS), list(_flag_cases()))
def test_flag_grid(seqlen, return_last_state, has_delta_bias, delta_softplus, has_z, has_D,
                   varBC_groups, is_variable_C, is_variable_B, itype, wtype, backend, device):
    flags = dict(zip(FLAGS, (return_last_state, has_delta_bias, delta_softplus, has_z, has_D,
                             varBC_groups, is_variable_C, is_variable_B)))
    run_case(backend, device, seqlen, itype, wtype, flags)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("itype", ITYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("seqlen", SEQLENS)
def test_seqlen_grid(seqlen, varBC_groups, itype, backend, device):
    # mamba-ssm's active setting: every flag on, variable B and C.
    flags = dict(zip(FLAGS, (True, True, True, True, True, varBC_groups, True, True)))
    run_case(backend, device, seqlen, itype, torch.float32, flags)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_constant_bc_shape_errors(backend):
    x = make_inputs(16, torch.float32, torch.float32, True, True, True, 1, False, True, "cpu")
    bad = dict(x, C=x["C"][:, :5])  # N = 5, A has N = 8
    with pytest.raises(ValueError, match=r"a constant C must be \(E, N\) = \(4, 8\) like A; "
                                         r"got \(4, 5\)"):
        BACKENDS[backend](**bad)
    bad = dict(x, B=x["B"][..., :-1])  # variable B one step short, next to a constant C
    with pytest.raises((ValueError, RuntimeError), match=r"B must be .*\(batch, N, L\)"):
        BACKENDS[backend](**bad)
