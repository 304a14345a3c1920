"""Guard zones around the Triton kernels' memory, for Triton's interpreter, which does not catch
out-of-bounds accesses itself: every input is a strided view inside a larger NaN-filled buffer
(a read outside the view poisons the result, which must still equal the reference), and every
tensor the kernels allocate sits inside a larger buffer of a sentinel value that must be intact
afterwards (a write outside the view). Runs where the Triton kernels run CPU tensors:
TRITON_INTERPRET=1 DMM_KERNELS_BACKEND=triton."""
import pytest
import torch

pytest.importorskip("triton")

import dmm_kernels  # noqa: E402
from conftest import TRITON_INTERPRETED  # noqa: E402
from dmm_kernels import reference as ref  # noqa: E402
from dmm_kernels.triton import block, mix, scan  # noqa: E402

pytestmark = pytest.mark.skipif(not TRITON_INTERPRETED, reason="needs TRITON_INTERPRET=1 and "
                                "DMM_KERNELS_BACKEND=triton")
GUARD = 64          # elements of guard on each side
SENTINEL = 1.25e7   # what the output guards hold


class _GuardedTorch:
    """Stands in for the `torch` module inside dmm_kernels.triton: allocations come back as views
    into guarded buffers, recorded for the check."""

    def __init__(self):
        self.buffers = []

    def _alloc(self, shape, dtype=None, device=None, fill=None):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape
        numel = 1
        for s in shape:
            numel *= s
        buf = torch.full((numel + 2 * GUARD,), SENTINEL, dtype=dtype or torch.float32, device=device)
        self.buffers.append((buf, numel))
        view = buf[GUARD:GUARD + numel].view(shape)
        return view.fill_(fill) if fill is not None else view

    def empty(self, *shape, dtype=None, device=None):
        return self._alloc(shape, dtype, device)

    def zeros(self, *shape, dtype=None, device=None):
        return self._alloc(shape, dtype, device, fill=0)

    def empty_like(self, t, dtype=None):
        return self._alloc(t.shape, dtype or t.dtype, t.device)

    def zeros_like(self, t, dtype=None):
        return self._alloc(t.shape, dtype or t.dtype, t.device, fill=0)

    def __getattr__(self, name):
        return getattr(torch, name)

    def check(self):
        assert self.buffers, "nothing was allocated through the guard"
        for buf, numel in self.buffers:
            outside = torch.cat([buf[:GUARD], buf[GUARD + numel:]])
            assert (outside == SENTINEL).all(), "a kernel wrote outside its output"


@pytest.fixture
def guarded(monkeypatch):
    fake = _GuardedTorch()
    for module in (block, mix, scan):
        monkeypatch.setattr(module, "torch", fake)
    yield fake
    fake.check()


def poisoned(t):
    """t as a non-contiguous view (last two dims swapped in memory) inside a NaN-filled buffer."""
    if t is None:
        return None
    if t.dim() < 2:
        buf = torch.full((t.numel() + 2 * GUARD,), float("nan"), dtype=t.dtype)
        return buf[GUARD:GUARD + t.numel()].view(t.shape).copy_(t)
    swapped = t.transpose(-1, -2).contiguous()
    buf = torch.full((swapped.numel() + 2 * GUARD,), float("nan"), dtype=t.dtype)
    view = buf[GUARD:GUARD + swapped.numel()].view(swapped.shape).transpose(-1, -2)
    return view.copy_(t)


@pytest.mark.parametrize("grouped", [False, True])
def test_scan_guarded(guarded, grouped):
    batch, E, L, N = 2, 6, 11, 5
    bc = (batch, 2, N, L) if grouped else (batch, N, L)
    x = [torch.randn(batch, E, L, dtype=torch.float64), torch.randn(batch, E, L, dtype=torch.float64) - 1,
         -torch.rand(E, N, dtype=torch.float64) - 0.1, torch.randn(*bc, dtype=torch.float64),
         torch.randn(*bc, dtype=torch.float64), torch.randn(E, dtype=torch.float64),
         torch.randn(batch, E, L, dtype=torch.float64), torch.randn(E, dtype=torch.float64)]
    leaves = [poisoned(t).requires_grad_() for t in x]
    out = dmm_kernels.selective_scan(*leaves, delta_softplus=True)
    dout = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.clone().requires_grad_() for t in x]
    ref_out = ref.selective_scan_ref(*ref_leaves, delta_softplus=True)
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, dout)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["conv", "line"])
def test_modal_mix_guarded(guarded, kind):
    u = torch.randn(2, 9, 5, dtype=torch.float64)
    w = torch.randn(*((3, 4, 5) if kind == "conv" else (3, 7, 20)), dtype=torch.float64)
    b = torch.randn(3, 5 if kind == "conv" else 7, dtype=torch.float64)
    leaves = [poisoned(t).requires_grad_() for t in (u, w, b)]
    y = dmm_kernels.modal_mix(*leaves, kind=kind, phase=2)
    dy = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_leaves = [t.clone().requires_grad_() for t in (u, w, b)]
    ref_y = ref.modal_mix_ref(*ref_leaves, kind=kind, phase=2)
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, torch.autograd.grad(ref_y, ref_leaves, dy)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mixer", ["conv", "line", "double-conv", "double-line"])
def test_block_and_step_guarded(guarded, mixer):
    p = ref.make_block_params(12, mixer, d_state=5, window=3, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(0))
    h = torch.randn(2, 7, 12, dtype=torch.float64)
    out = dmm_kernels.metamamba_block(poisoned(h), type(p)(*map(poisoned, p)), mixer)
    torch.testing.assert_close(out, ref.metamamba_block_ref(h, p, mixer), rtol=1e-10, atol=1e-10)
    cache = ref.allocate_step_cache_ref(2, p, mixer, torch.float64)
    ref_cache = {k: None if v is None else v.clone() for k, v in cache.items()}
    for t in range(4):
        step = dmm_kernels.metamamba_step(poisoned(h[:, t]), cache, p, mixer, position=t)
        expected, ref_cache = ref.metamamba_step_ref(h[:, t], ref_cache, p, mixer, position=t)
        torch.testing.assert_close(step, expected, rtol=1e-10, atol=1e-10)
