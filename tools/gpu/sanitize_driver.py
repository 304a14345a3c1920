"""Every CUDA kernel of dmm once on tiny shapes, for compute-sanitizer (tools/gpu_check.sh).

Shapes end mid-tile and mid-chunk (L = 13, 7, 130), D is not a multiple of 32, N = 32 and 64
(more states per lane), one modality, W = 1, float32 / bfloat16 / float64; forward, backward and
step of the block, and the selective_scan and modal_mix ops on their own.
    python -m tools.gpu.sanitize_driver [--device cuda]
"""
import argparse

import torch

import dmm_kernels
from dmm_kernels import reference as ref

BLOCK_CASES = [  # (mixer, B, L, D, N, window, M)
    ("conv", 2, 13, 32, 16, 6, 3), ("line", 1, 7, 48, 16, 6, 3), ("double-conv", 2, 13, 40, 32, 4, 2),
    ("double-line", 1, 13, 32, 16, 6, 1), ("conv", 1, 5, 32, 8, 1, 3),
]


def scan_and_mix(device, dtype):
    for N, L, grouped in ((16, 130, False), (64, 13, True)):
        E, batch = 6, 2
        bc = (batch, 2, N, L) if grouped else (batch, N, L)
        u, delta, z = (torch.randn(batch, E, L, device=device, dtype=dtype) for _ in range(3))
        B, C = torch.randn(*bc, device=device, dtype=dtype), torch.randn(*bc, device=device, dtype=dtype)
        A = -torch.rand(E, N, device=device) - 0.1
        D, bias = torch.randn(E, device=device), torch.randn(E, device=device)
        leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
        out = dmm_kernels.selective_scan(*leaves, delta_softplus=True)
        torch.autograd.grad(out.float().sum(), leaves)
    for kind, d_out in (("conv", 5), ("line", 7)):
        u = torch.randn(2, 7, 5, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(*((3, 4, 5) if kind == "conv" else (3, d_out, 20)), device=device, dtype=dtype,
                        requires_grad=True)
        b = torch.randn(3, d_out, device=device, dtype=dtype, requires_grad=True)
        y = dmm_kernels.modal_mix(u, w, b, kind=kind, n_modalities=3, phase=1)
        torch.autograd.grad(y.float().sum(), (u, w, b))


def blocks(device, dtype):
    for mixer, B, L, D, N, W, M in BLOCK_CASES:
        p = ref.make_block_params(D, mixer, d_state=N, window=W, n_modalities=M, dtype=dtype, device=device)
        h = torch.randn(B, L, D, device=device, dtype=dtype)
        out, *saved = torch.ops.dmm.metamamba_block_fwd(h, *p, mixer, M, False, 1e-5)
        if dtype != torch.bfloat16:
            torch.ops.dmm.metamamba_block_bwd(torch.randn_like(out), h, *p, *saved, mixer, M, False,
                                              1e-5)
        cache = ref.allocate_step_cache_ref(B, p, mixer, dtype, device)
        A = -torch.exp(p.A_log.to(cache["ssm_state"].dtype))
        for t in range(4):
            torch.ops.dmm.metamamba_step(h[:, t % L], cache["mixer1_cache"], cache["mixer2_cache"],
                                         cache["ssm_state"], *p, A, mixer, M, True, 1e-5, t)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    assert dmm_kernels.HAS_EXTENSION, dmm_kernels.EXTENSION_ERROR
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        scan_and_mix(device, dtype)
        blocks(device, dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    print("sanitize driver done")


if __name__ == "__main__":
    main()
