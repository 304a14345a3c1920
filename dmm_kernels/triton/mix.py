"""Modal mixer in Triton (kind "conv"); kind "line" is a GEMM per modality and stays torch.

u, y, dy: (batch, L, D) channels-last; token i has modality (phase + i) % M and sees
u[i-W+1 .. i] (zeros before token 0). conv: weight (M, W, D), bias (M, D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def conv_fwd_kernel(u_ptr, w_ptr, b_ptr, y_ptr, L, D, W, M, phase, s_ub, s_ut, s_ud,
                    HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                    ACC: tl.constexpr):
    """y[b, i, d] = bias[m_i, d] + sum_k weight[m_i, k, d] * u[b, i-W+1+k, d]. y contiguous."""
    b = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (i < L)[:, None] & (d < D)[None, :]
    m = (phase + i) % M
    acc = tl.load(b_ptr + m[:, None] * D + d[None, :], mask=mask & HAS_BIAS, other=0.0).to(ACC)
    for k in range(W):
        j = i - W + 1 + k
        x = tl.load(u_ptr + b * s_ub + j[:, None] * s_ut + d[None, :] * s_ud,
                    mask=mask & (j >= 0)[:, None], other=0.0).to(ACC)
        w = tl.load(w_ptr + (m[:, None] * W + k) * D + d[None, :], mask=mask, other=0.0).to(ACC)
        acc += w * x
    tl.store(y_ptr + (b * L + i[:, None]) * D + d[None, :], acc, mask=mask)


@triton.jit
def conv_bwd_input_kernel(dy_ptr, w_ptr, du_ptr, L, D, W, M, phase, s_gb, s_gt, s_gd,
                          BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """du[b, j, d] = sum_k dy[b, i, d] * weight[m_i, k, d] with i = j + W - 1 - k < L."""
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (j < L)[:, None] & (d < D)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=ACC)
    for k in range(W):
        i = j + W - 1 - k
        ok = mask & (i < L)[:, None]
        m = (phase + i) % M
        g = tl.load(dy_ptr + b * s_gb + i[:, None] * s_gt + d[None, :] * s_gd, mask=ok, other=0.0).to(ACC)
        w = tl.load(w_ptr + (m[:, None] * W + k) * D + d[None, :], mask=ok, other=0.0).to(ACC)
        acc += g * w
    tl.store(du_ptr + (b * L + j[:, None]) * D + d[None, :], acc, mask=mask)


@triton.jit
def conv_bwd_weight_kernel(dy_ptr, u_ptr, part_ptr, L, D, W, M, phase, s_gb, s_gt, s_gd,
                           s_ub, s_ut, s_ud, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                           ACC: tl.constexpr):
    """One batch row's share of dweight[m, k, d] (slot k < W) and dbias[m, d] (slot k == W):
    part[b, m, k, d] = sum over tokens i of modality m of dy[b, i, d] * (u[b, i-W+1+k, d] or 1).
    Grid (batch, M * (W + 1), ceil(D / BLOCK_D)); the host sums over b (deterministic)."""
    b = tl.program_id(0)
    m = tl.program_id(1) // (W + 1)
    k = tl.program_id(1) % (W + 1)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    first = ((m - phase) % M + M) % M  # first token of modality m
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=ACC)
    for i0 in range(0, L, BLOCK_T * M):
        i = first + i0 + tl.arange(0, BLOCK_T) * M
        ok = (i < L)[:, None] & (d < D)[None, :]
        g = tl.load(dy_ptr + b * s_gb + i[:, None] * s_gt + d[None, :] * s_gd, mask=ok, other=0.0).to(ACC)
        j = i - W + 1 + k
        x = tl.load(u_ptr + b * s_ub + j[:, None] * s_ut + d[None, :] * s_ud,
                    mask=ok & (j >= 0)[:, None] & (k < W), other=0.0).to(ACC)
        acc += g * tl.where(k < W, x, 1.0)
    tl.store(part_ptr + ((b * M + m) * (W + 1) + k) * D + d, tl.sum(acc, axis=0), mask=d < D)


def _acc(*tensors):
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return (torch.float64, tl.float64) if double else (torch.float32, tl.float32)


def _grid(batch, L, D, block_t=16, block_d=32):
    return (batch, triton.cdiv(L, block_t), triton.cdiv(D, block_d)), block_t, block_d


def conv_fwd(u, weight, bias, n_modalities, phase, out_dtype=None):
    batch, L, D = u.shape
    W = weight.shape[1]
    torch_acc, acc = _acc(u, weight, bias)
    y = torch.empty(batch, L, D, device=u.device, dtype=out_dtype or u.dtype)
    if y.numel():
        grid, bt, bd = _grid(batch, L, D)
        conv_fwd_kernel[grid](u, weight.contiguous(), bias.contiguous() if bias is not None else weight,
                              y, L, D, W, n_modalities, phase, *u.stride(), HAS_BIAS=bias is not None,
                              BLOCK_T=bt, BLOCK_D=bd, ACC=acc)
    return y


def conv_bwd(dy, u, weight, bias, n_modalities, phase):
    batch, L, D = u.shape
    M, W = weight.shape[0], weight.shape[1]
    torch_acc, acc = _acc(dy, u, weight, bias)
    du = torch.empty(batch, L, D, device=u.device, dtype=u.dtype)
    part = torch.zeros(batch, M, W + 1, D, device=u.device, dtype=torch_acc)
    if du.numel():
        grid, bt, bd = _grid(batch, L, D)
        w = weight.contiguous()
        conv_bwd_input_kernel[grid](dy, w, du, L, D, W, M, phase, *dy.stride(), BLOCK_T=bt,
                                    BLOCK_D=bd, ACC=acc)
        conv_bwd_weight_kernel[(batch, M * (W + 1), triton.cdiv(D, bd))](
            dy, u, part, L, D, W, M, phase, *dy.stride(), *u.stride(), BLOCK_T=bt, BLOCK_D=bd, ACC=acc)
    part = part.sum(0)                                                    # (M, W + 1, D)
    dbias = part[:, W].to(bias.dtype).contiguous() if bias is not None else torch.empty(0, device=u.device)
    return du, part[:, :W].to(weight.dtype).contiguous(), dbias


# ---- kind "line": cuBLAS / MKL GEMMs per modality, as the CUDA kernels do -------------------------
def _windows(u, W):
    """cols (batch, L, W*D) with column k*D + d = u[i-W+1+k, d] (zero before token 0)."""
    batch, L, D = u.shape
    return F.pad(u, (0, 0, W - 1, 0)).unfold(1, W, 1).transpose(2, 3).reshape(batch, L, W * D)


def line_fwd(u, weight, bias, n_modalities, phase):
    batch, L, D = u.shape
    torch_acc, _ = _acc(u, weight, bias)
    W = weight.shape[2] // D
    y = torch.zeros(batch, L, weight.shape[1], device=u.device, dtype=torch_acc)
    if y.numel() == 0:
        return y.to(u.dtype)
    cols = _windows(u.to(torch_acc), W)                                   # (batch, L, W*D)
    for m in range(n_modalities):
        rows = slice((m - phase) % n_modalities, L, n_modalities)
        y[:, rows] = cols[:, rows] @ weight[m].to(torch_acc).T
        if bias is not None:
            y[:, rows] += bias[m].to(torch_acc)
    return y.to(u.dtype)


def line_bwd(dy, u, weight, bias, n_modalities, phase):
    batch, L, D = u.shape
    torch_acc, _ = _acc(dy, u, weight, bias)
    W = weight.shape[2] // D
    dweight = torch.zeros(weight.shape, device=u.device, dtype=torch_acc)  # (M, D_out, W*D)
    dbias = torch.zeros(n_modalities, weight.shape[1], device=u.device, dtype=torch_acc)
    if u.numel() == 0:
        return (torch.zeros_like(u), dweight.to(weight.dtype),
                dbias.to(bias.dtype) if bias is not None else torch.empty(0, device=u.device))
    cols = _windows(u.to(torch_acc), W)                                   # (batch, L, W*D)
    dyc = dy.to(torch_acc)
    dcols = torch.zeros_like(cols)
    for m in range(n_modalities):
        rows = slice((m - phase) % n_modalities, L, n_modalities)
        g = dyc[:, rows]                                                  # (batch, L_m, D_out)
        dweight[m] = g.flatten(0, 1).T @ cols[:, rows].flatten(0, 1)
        dbias[m] = g.sum((0, 1))
        dcols[:, rows] = g @ weight[m].to(torch_acc)
    du = torch.zeros(batch, L, D, device=u.device, dtype=torch_acc)
    for k in range(max(W - L, 0), W):  # column block k holds u[i - (W-1-k)]
        shift = W - 1 - k
        du[:, : L - shift] += dcols[:, shift:, k * D:(k + 1) * D]
    return (du.to(u.dtype), dweight.to(weight.dtype),
            dbias.to(bias.dtype) if bias is not None else torch.empty(0, device=u.device))
