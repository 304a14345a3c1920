"""The MetaMamba block in Triton: the forward (GEMMs stay torch) and the one-launch step.

Forward, as csrc/cuda/block.cu fuses it:
  conv mixers  ln_mix_ln_kernel: LN_1 + mixer_1 + residual + LN_2 -> h1, v     (one launch)
  line mixers  LN_1, the line mixer (a GEMM per modality), LN_2 of h + mixed
  in_proj GEMM; [mixer_2]; SiLU; x_proj GEMM
  the scan with dt_proj, bias, softplus, D skip and SiLU(z) folded in (scan.scan_fwd, "ble")
  out_proj GEMM (+ h1)
Every intermediate is rounded to h's dtype where the composite (csrc/block/composite.cpp) stores
it in that dtype, so all backends agree to one rounding per stored intermediate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dmm_kernels import mixers
from dmm_kernels.triton import mix
from dmm_kernels.triton.common import sigmoid, silu, softplus
from dmm_kernels.triton.scan import scan_fwd


@triton.jit
def _layer_norm(x, mask, w_ptr, b_ptr, offs, D, eps, ACT: tl.constexpr, ACC: tl.constexpr):
    """round(LN(x)) of one row held in registers (masked lanes -> 0)."""
    mean = tl.sum(x, axis=0) / D
    c = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, axis=0) / D + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(ACT).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACT).to(ACC)
    return tl.where(mask, (c * rstd * w + b).to(ACT).to(ACC), 0.0)


@triton.jit
def ln_mix_ln_kernel(h_ptr, n1w, n1b, m1w, m1b, n2w, n2b, h1_ptr, v_ptr, L, D, W, M, eps,
                     HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """One token row: h1 = h + conv_mixer(LN_1(h window)), v = LN_2(h1). LN_1 of the W-1 rows
    before the token is recomputed here instead of read from another program."""
    row = tl.program_id(0)  # b * L + t
    t = row % L
    d = tl.arange(0, BLOCK_D)
    mask = d < D
    ACT: tl.constexpr = h1_ptr.dtype.element_ty
    m = t % M
    mixed = tl.load(m1b + m * D + d, mask=mask & HAS_BIAS, other=0.0).to(ACT).to(ACC)
    for k in range(W):
        j = t - W + 1 + k
        x = tl.load(h_ptr + (row - t + j) * D + d, mask=mask & (j >= 0), other=0.0).to(ACC)
        u = _layer_norm(x, mask, n1w, n1b, d, D, eps, ACT, ACC)
        w = tl.load(m1w + (m * W + k) * D + d, mask=mask, other=0.0).to(ACT).to(ACC)
        mixed += tl.where(j >= 0, w * u, 0.0)
    h = tl.load(h_ptr + row * D + d, mask=mask, other=0.0).to(ACC)
    h1 = (h + mixed.to(ACT).to(ACC)).to(ACT).to(ACC)
    tl.store(h1_ptr + row * D + d, h1, mask=mask)
    tl.store(v_ptr + row * D + d, _layer_norm(h1, mask, n2w, n2b, d, D, eps, ACT, ACC), mask=mask)


def _cast(params, cdt):
    """Matrices in h's dtype; A = -exp(A_log), D and dt_proj_bias in the state dtype."""
    (n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A_log, Dskip, w_out) = params
    sdt = torch.float64 if cdt == torch.float64 else torch.float32
    c = lambda t: None if t is None else t.to(cdt).contiguous()  # noqa: E731
    s = lambda t: t.to(sdt).contiguous()  # noqa: E731
    return (c(n1w), c(n1b), c(m1w), c(m1b), c(n2w), c(n2b), c(w_in), c(m2w), c(m2b), c(w_x),
            c(w_dt), s(dt_bias), -torch.exp(s(A_log)), s(Dskip), c(w_out))


def _acc(cdt):
    return tl.float64 if cdt == torch.float64 else tl.float32


def block_fwd(h, params, mixer, n_modalities, residual_ssm, eps):
    """-> (out, saved): saved the activations metamamba_block_bwd reads (h1, v, xz, xm, xs,
    x_dbl, y; xm numel 0 for single mixers), as csrc/block/params.h lists them."""
    _, kind, double, _ = mixers.parse(mixer)
    cdt = h.dtype
    (n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A, Dskip, w_out) = _cast(params, cdt)
    h = h.contiguous()
    batch, L, Dm = h.shape
    E, N = A.shape
    R = w_dt.shape[1]
    if h.numel() == 0:
        width = [Dm, Dm, 2 * E, E if double else None, E, R + 2 * N, E]
        return torch.empty_like(h), tuple(h.new_empty(0) if w is None else h.new_empty(batch, L, w)
                                          for w in width)
    if kind == "conv":
        h1, v = torch.empty_like(h), torch.empty_like(h)
        ln_mix_ln_kernel[(batch * L,)](h, n1w, n1b, m1w, m1b if m1b is not None else m1w, n2w, n2b,
                                       h1, v, L, Dm, m1w.shape[1], n_modalities, eps,
                                       HAS_BIAS=m1b is not None,
                                       BLOCK_D=triton.next_power_of_2(Dm), ACC=_acc(cdt))
    else:
        u = F.layer_norm(h, (Dm,), n1w, n1b, eps)
        h1 = h + mix.line_fwd(u, m1w, m1b, n_modalities, 0)
        v = F.layer_norm(h1, (Dm,), n2w, n2b, eps)
    xz = F.linear(v, w_in)                                                # (B, L, 2E)
    x, z = xz[..., :E], xz[..., E:]
    xm = h.new_empty(0)
    if double:
        x = xm = (mix.conv_fwd(x, m2w, m2b, n_modalities, 0) if kind == "conv"
                  else mix.line_fwd(x, m2w, m2b, n_modalities, 0))
    xs = F.silu(x)                                                        # (B, L, E)
    x_dbl = F.linear(xs, w_x)                                             # (B, L, R + 2N)
    y, _ = scan_fwd(xs, x_dbl[..., :R], A, x_dbl[..., R:R + N], x_dbl[..., R + N:], Dskip, z,
                    dt_bias, True, layout="ble", dt_proj_weight=w_dt)     # (B, L, E)
    out = F.linear(y, w_out)                                              # (B, L, D)
    out = out + h1 if (residual_ssm or double) else out
    return out, (h1, v, xz, xm, xs, x_dbl, y.contiguous())


# ---- step --------------------------------------------------------------------------------------
@triton.jit
def _matvec(w_ptr, rows, n_rows, n_cols, x_ptr, ACT: tl.constexpr, ACC: tl.constexpr,
            BLOCK_K: tl.constexpr):
    """sum_c W[rows, c] * x[c] for a row-major W (n_rows, n_cols), rows past n_rows masked to 0;
    x is read from memory (a vector an earlier stage wrote)."""
    acc = tl.zeros(rows.shape, dtype=ACC)
    for c0 in range(0, n_cols, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        mask_c = c < n_cols
        x = tl.load(x_ptr + c, mask=mask_c, other=0.0).to(ACC)
        w = tl.load(w_ptr + rows[:, None] * n_cols + c[None, :],
                    mask=(rows < n_rows)[:, None] & mask_c[None, :], other=0.0).to(ACT).to(ACC)
        acc += tl.sum(w * x[None, :], axis=1)
    return acc


@triton.jit
def _window_mix(w_ptr, b_ptr, win, m, W, C, idx, IS_LINE: tl.constexpr, HAS_BIAS: tl.constexpr,
                ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """Modality m's mixer over a window win (W, C) in memory (oldest row first), at the output
    channels idx: line M_m (C, W*C) @ window, or depthwise conv w_m (W, C); plus the bias."""
    mask = idx < C
    if IS_LINE:
        y = _matvec(w_ptr + m * C * W * C, idx, C, W * C, win, ACT, ACC, BLOCK_K)
    else:
        y = tl.zeros(idx.shape, dtype=ACC)
        for k in range(W):
            w = tl.load(w_ptr + (m * W + k) * C + idx, mask=mask, other=0.0).to(ACT).to(ACC)
            y += w * tl.load(win + k * C + idx, mask=mask, other=0.0).to(ACC)
    return y + tl.load(b_ptr + m * C + idx, mask=mask & HAS_BIAS, other=0.0).to(ACT).to(ACC)


@triton.jit
def step_kernel(h_ptr, c1_ptr, c2_ptr, st_ptr, n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x,
                w_dt, dt_bias, A_ptr, Dskip, w_out, out_ptr, ws_ptr, D, E, N, R, W1, W2, m, eps,
                IS_LINE: tl.constexpr, IS_DOUBLE: tl.constexpr, RESIDUAL: tl.constexpr,
                HAS_M1B: tl.constexpr, HAS_M2B: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """One token of batch row b through the whole block; caches and state updated in place.
    ws: this row's workspace [win1 (W1*D) | win2 (W2*E) | xz (2E) | xs (E) | xd (R+2N) | ys (E)],
    the vectors that a later stage reads across lanes (a barrier between writer and readers)."""
    b = tl.program_id(0)
    ACT: tl.constexpr = out_ptr.dtype.element_ty
    P = R + 2 * N
    ws = ws_ptr + b * (W1 * D + W2 * E + 4 * E + P)
    win1 = ws
    win2 = win1 + W1 * D
    xz = win2 + W2 * E
    xs = xz + 2 * E
    xd = xs + E
    ys = xd + P
    d = tl.arange(0, BLOCK_D)
    mask_d = d < D

    # 1. LN_1(h_t) joins the cached window (oldest first); the cache shifts by one.
    hrow = tl.load(h_ptr + b * D + d, mask=mask_d, other=0.0).to(ACC)
    u = _layer_norm(hrow, mask_d, n1w, n1b, d, D, eps, ACT, ACC)
    for k in range(W1 - 1):
        tl.store(win1 + k * D + d, tl.load(c1_ptr + (b * (W1 - 1) + k) * D + d, mask=mask_d), mask=mask_d)
    tl.store(win1 + (W1 - 1) * D + d, u, mask=mask_d)
    tl.debug_barrier()
    for k in range(W1 - 1):
        tl.store(c1_ptr + (b * (W1 - 1) + k) * D + d, tl.load(win1 + (k + 1) * D + d, mask=mask_d),
                 mask=mask_d)
    mixed = _window_mix(m1w, m1b, win1, m, W1, D, d, IS_LINE, HAS_M1B, ACT, ACC, BLOCK_K)
    h1 = (hrow + mixed.to(ACT).to(ACC)).to(ACT).to(ACC)

    # 2. LN_2 and in_proj: xz = W_in (2E, D) @ v.
    v = _layer_norm(h1, mask_d, n2w, n2b, d, D, eps, ACT, ACC)
    tl.debug_barrier()  # every read of the window is done: its first row takes v
    tl.store(win1 + d, v, mask=mask_d)
    tl.debug_barrier()
    e = tl.arange(0, BLOCK_E)
    for r0 in range(0, 2 * E, BLOCK_E):
        tl.store(xz + r0 + e, _matvec(w_in, r0 + e, 2 * E, D, win1, ACT, ACC, BLOCK_K).to(ACT),
                 mask=r0 + e < 2 * E)
    tl.debug_barrier()

    # 3. [mixer_2 over the x half, with its cache] + SiLU -> xs.
    if IS_DOUBLE:
        for e0 in range(0, E, BLOCK_E):
            ee = e0 + e
            mask_e = ee < E
            for k in range(W2 - 1):
                tl.store(win2 + k * E + ee, tl.load(c2_ptr + (b * (W2 - 1) + k) * E + ee, mask=mask_e),
                         mask=mask_e)
            tl.store(win2 + (W2 - 1) * E + ee, tl.load(xz + ee, mask=mask_e), mask=mask_e)
        tl.debug_barrier()
        for e0 in range(0, E, BLOCK_E):
            ee = e0 + e
            mask_e = ee < E
            for k in range(W2 - 1):
                tl.store(c2_ptr + (b * (W2 - 1) + k) * E + ee, tl.load(win2 + (k + 1) * E + ee, mask=mask_e),
                         mask=mask_e)
            x = _window_mix(m2w, m2b, win2, m, W2, E, ee, IS_LINE, HAS_M2B, ACT, ACC, BLOCK_K)
            tl.store(xs + ee, silu(x.to(ACT).to(ACC)).to(ACT), mask=mask_e)
    else:
        for e0 in range(0, E, BLOCK_E):
            ee = e0 + e
            x = tl.load(xz + ee, mask=ee < E, other=0.0).to(ACC)
            tl.store(xs + ee, silu(x).to(ACT), mask=ee < E)
    tl.debug_barrier()

    # 4. x_proj: xd = W_x (R + 2N, E) @ xs = [dt_low | B | C].
    p = tl.arange(0, BLOCK_P)
    tl.store(xd + p, _matvec(w_x, p, P, E, xs, ACT, ACC, BLOCK_K).to(ACT), mask=p < P)
    tl.debug_barrier()

    # 5. dt_proj + softplus + one scan step per channel, gated by SiLU(z) -> ys.
    n = tl.arange(0, BLOCK_N)
    mask_n = n < N
    rr = tl.arange(0, BLOCK_P)
    low = tl.load(xd + rr, mask=rr < R, other=0.0).to(ACC)
    Bt = tl.load(xd + R + n, mask=mask_n, other=0.0).to(ACC)
    Ct = tl.load(xd + R + N + n, mask=mask_n, other=0.0).to(ACC)
    for e0 in range(0, E, BLOCK_E):
        ee = e0 + e
        mask_e = ee < E
        mask_en = mask_e[:, None] & mask_n[None, :]
        wdt = tl.load(w_dt + ee[:, None] * R + rr[None, :], mask=mask_e[:, None] & (rr < R)[None, :],
                      other=0.0).to(ACT).to(ACC)
        dt = tl.sum(wdt * low[None, :], axis=1).to(ACT).to(ACC)
        delta = softplus(dt + tl.load(dt_bias + ee, mask=mask_e, other=0.0).to(ACC))
        x = tl.load(xs + ee, mask=mask_e, other=0.0).to(ACC)
        a = tl.load(A_ptr + ee[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(ACC)
        sp = st_ptr + (b * E + ee[:, None]) * N + n[None, :]
        s = tl.exp(delta[:, None] * a) * tl.load(sp, mask=mask_en, other=0.0).to(ACC) \
            + (delta * x)[:, None] * Bt[None, :]
        tl.store(sp, s, mask=mask_en)
        y = tl.sum(s * Ct[None, :], axis=1) + tl.load(Dskip + ee, mask=mask_e, other=0.0).to(ACC) * x
        zz = tl.load(xz + E + ee, mask=mask_e, other=0.0).to(ACC)
        tl.store(ys + ee, (y * zz * sigmoid(zz)).to(ACT), mask=mask_e)
    tl.debug_barrier()

    # 6. out_proj (+ h1).
    o = _matvec(w_out, d, D, E, ys, ACT, ACC, BLOCK_K).to(ACT).to(ACC)
    if RESIDUAL:
        o = o + h1
    tl.store(out_ptr + b * D + d, o, mask=mask_d)


def step(h_t, mixer1_cache, mixer2_cache, ssm_state, params, mixer, n_modalities, residual_ssm,
         eps, position):
    _, kind, double, _ = mixers.parse(mixer)
    cdt = h_t.dtype
    (n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A, Dskip, w_out) = _cast(params, cdt)
    batch, Dm = h_t.shape
    E, N = A.shape
    R = w_dt.shape[1]
    out = torch.empty(batch, Dm, device=h_t.device, dtype=cdt)
    if batch == 0:
        return out
    W1 = mixer1_cache.shape[1] + 1
    W2 = mixer2_cache.shape[1] + 1 if double else 0
    # The caches are updated in place: work on contiguous ones and copy back if they were not.
    c1 = mixer1_cache.contiguous()
    c2 = mixer2_cache.contiguous() if double else c1
    st = ssm_state.contiguous()
    ws = torch.empty(batch, W1 * Dm + W2 * E + 4 * E + R + 2 * N, device=h_t.device, dtype=st.dtype)
    step_kernel[(batch,)](
        h_t.contiguous(), c1, c2, st, n1w, n1b, m1w, m1b if m1b is not None else m1w, n2w, n2b, w_in,
        m2w if m2w is not None else m1w, m2b if m2b is not None else m1w, w_x, w_dt, dt_bias, A, Dskip,
        w_out, out, ws, Dm, E, N, R, W1, W2, position % n_modalities, eps,
        IS_LINE=kind == "line", IS_DOUBLE=double, RESIDUAL=bool(residual_ssm or double),
        HAS_M1B=m1b is not None, HAS_M2B=m2b is not None,
        BLOCK_D=triton.next_power_of_2(Dm), BLOCK_E=min(64, triton.next_power_of_2(E)),
        BLOCK_N=triton.next_power_of_2(N), BLOCK_P=triton.next_power_of_2(R + 2 * N),
        BLOCK_K=32, ACC=_acc(cdt),
    )
    for cache, work in ((mixer1_cache, c1), (mixer2_cache if double else None, c2), (ssm_state, st)):
        if cache is not None and work.data_ptr() != cache.data_ptr():
            cache.copy_(work)
    return out
