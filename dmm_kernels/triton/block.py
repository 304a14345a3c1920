"""The MetaMamba block in Triton: the forward (GEMMs stay torch) and the staged step.

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


def _cast(params, cdt, A=None):
    """Matrices in h's dtype; A (given, else -exp(A_log)), D and dt_proj_bias in the state dtype
    (no copies for tensors already so)."""
    (n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A_log, Dskip, w_out) = params
    sdt = torch.float64 if cdt == torch.float64 else torch.float32
    c = lambda t: None if t is None else t.to(cdt).contiguous()  # noqa: E731
    s = lambda t: t.to(sdt).contiguous()  # noqa: E731
    return (c(n1w), c(n1b), c(m1w), c(m1b), c(n2w), c(n2b), c(w_in), c(m2w), c(m2b), c(w_x),
            c(w_dt), s(dt_bias), -torch.exp(s(A_log)) if A is None else s(A), s(Dskip), c(w_out))


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
# One token through the block as stages, each a launch whose programs split the rows of one weight
# matrix (grid (row blocks, batch)), so batch 1 spreads over many SMs and each program holds one
# small tile; the launch boundary is the only barrier between programs (as csrc/cuda/block.cu):
#   _step_mix1   (line mixers) LN_1 + mixer_1 rows + residual              -> ws.h1, ws.u
#   _step_in     [conv: LN_1 + mixer_1 + residual] + LN_2 + in_proj rows   -> ws.xz (ws.h1, ws.u)
#   _step_mix2   (double mixers) mixer_2 rows + SiLU                       -> ws.xs
#   _step_x      x_proj rows; row block 0 shifts the caches                -> ws.xd
#   _step_scan   dt_proj + softplus + one scan step + D skip + SiLU(z) gate -> ws.ys, ssm_state
#   _step_out    out_proj rows (+ h1)                                      -> out
# The caches shift only in _step_x, after every stage that reads them. Each stage recomputes what
# it needs of a row cheaply (LayerNorm statistics, SiLU). Every intermediate is rounded to the
# activation dtype where the composite stores it in that dtype.
STEP_TILE = 4096  # elements of a program's weight tile: rows x next_pow2(columns); 32 per thread


@triton.jit
def _rows_matvec(w_ptr, rows, n_rows, n_cols, cols, x, ACT: tl.constexpr, ACC: tl.constexpr):
    """W[rows, :] @ x for a row-major W (n_rows, n_cols) and x (BLOCK_C) in registers."""
    w = tl.load(w_ptr + rows[:, None] * n_cols + cols[None, :],
                mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :], other=0.0)
    return tl.sum(w.to(ACT).to(ACC) * x[None, :], axis=1)


@triton.jit
def _ln1_row(h_ptr, n1w, n1b, b, d, D, eps, ACT: tl.constexpr, ACC: tl.constexpr):
    """(h_t, round(LN_1(h_t))) of batch row b, both (BLOCK_D) in registers."""
    mask = d < D
    h = tl.load(h_ptr + b * D + d, mask=mask, other=0.0).to(ACC)
    return h, _layer_norm(h, mask, n1w, n1b, d, D, eps, ACT, ACC)


@triton.jit
def _step_mix1(h_ptr, c1_ptr, n1w, n1b, m1w, m1b, ws_ptr, WS, D, W1, m, eps,
               HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               ACC: tl.constexpr):
    """Line mixer_1: h1[rows] = h[rows] + M_m[rows] @ [cache rows | LN_1(h_t)] (+ bias)."""
    rb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = m1w.dtype.element_ty
    d = tl.arange(0, BLOCK_D)
    rows = rb * ROWS + tl.arange(0, ROWS)
    mask_r = rows < D
    h, u = _ln1_row(h_ptr, n1w, n1b, b, d, D, eps, ACT, ACC)
    w_m = m1w + m * D * W1 * D                         # M_m (D, W1 * D), window oldest first
    acc = tl.load(m1b + m * D + rows, mask=mask_r & HAS_BIAS, other=0.0).to(ACT).to(ACC)
    for k in range(W1 - 1):
        x = tl.load(c1_ptr + (b * (W1 - 1) + k) * D + d, mask=d < D, other=0.0).to(ACC)
        acc += _rows_matvec(w_m + k * D, rows, D, W1 * D, d, x, ACT, ACC)
    acc += _rows_matvec(w_m + (W1 - 1) * D, rows, D, W1 * D, d, u, ACT, ACC)
    h_r = tl.load(h_ptr + b * D + rows, mask=mask_r, other=0.0).to(ACC)
    ws = ws_ptr + b * WS
    tl.store(ws + D + rows, (h_r + acc.to(ACT).to(ACC)).to(ACT), mask=mask_r)    # ws.h1
    if rb == 0:
        tl.store(ws + d, u, mask=d < D)                                          # ws.u


@triton.jit
def _step_in(h_ptr, c1_ptr, n1w, n1b, m1w, m1b, n2w, n2b, w_in, ws_ptr, WS, D, E, W1, m, eps,
             IS_LINE: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr,
             BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """xz[rows] = W_in[rows] @ LN_2(h1); conv mixers compute h1 = h + conv(window) here."""
    rb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = w_in.dtype.element_ty
    d = tl.arange(0, BLOCK_D)
    mask_d = d < D
    ws = ws_ptr + b * WS
    if IS_LINE:
        h1 = tl.load(ws + D + d, mask=mask_d, other=0.0).to(ACC)
    else:
        h, u = _ln1_row(h_ptr, n1w, n1b, b, d, D, eps, ACT, ACC)
        mixed = tl.load(m1b + m * D + d, mask=mask_d & HAS_BIAS, other=0.0).to(ACT).to(ACC)
        for k in range(W1 - 1):
            w = tl.load(m1w + (m * W1 + k) * D + d, mask=mask_d, other=0.0).to(ACT).to(ACC)
            mixed += w * tl.load(c1_ptr + (b * (W1 - 1) + k) * D + d, mask=mask_d, other=0.0).to(ACC)
        w = tl.load(m1w + (m * W1 + W1 - 1) * D + d, mask=mask_d, other=0.0).to(ACT).to(ACC)
        h1 = (h + (mixed + w * u).to(ACT).to(ACC)).to(ACT).to(ACC)
        if rb == 0:
            tl.store(ws + d, u, mask=mask_d)                                     # ws.u
            tl.store(ws + D + d, h1, mask=mask_d)                                # ws.h1
    v = _layer_norm(h1, mask_d, n2w, n2b, d, D, eps, ACT, ACC)
    rows = rb * ROWS + tl.arange(0, ROWS)
    xz = _rows_matvec(w_in, rows, 2 * E, D, d, v, ACT, ACC)
    tl.store(ws + 2 * D + rows, xz.to(ACT), mask=rows < 2 * E)                  # ws.xz


@triton.jit
def _xs_row(ws, e, E, D, IS_DOUBLE: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr):
    """xs at channels e: ws.xs (double mixers) or round(SiLU(x)) of the x half of ws.xz."""
    if IS_DOUBLE:
        return tl.load(ws + 2 * D + 2 * E + e, mask=e < E, other=0.0).to(ACC)
    x = tl.load(ws + 2 * D + e, mask=e < E, other=0.0).to(ACC)
    return silu(x).to(ACT).to(ACC)


@triton.jit
def _step_mix2(c2_ptr, m2w, m2b, ws_ptr, WS, D, E, W2, m, IS_LINE: tl.constexpr,
               HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_E: tl.constexpr,
               ACC: tl.constexpr):
    """Double mixers: xs[rows] = SiLU(mixer_2 over [cache rows | x half of xz])."""
    rb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = m2w.dtype.element_ty
    ws = ws_ptr + b * WS
    rows = rb * ROWS + tl.arange(0, ROWS)
    mask_r = rows < E
    acc = tl.load(m2b + m * E + rows, mask=mask_r & HAS_BIAS, other=0.0).to(ACT).to(ACC)
    if IS_LINE:
        e = tl.arange(0, BLOCK_E)
        w_m = m2w + m * E * W2 * E                     # M_m (E, W2 * E)
        for k in range(W2 - 1):
            x = tl.load(c2_ptr + (b * (W2 - 1) + k) * E + e, mask=e < E, other=0.0).to(ACC)
            acc += _rows_matvec(w_m + k * E, rows, E, W2 * E, e, x, ACT, ACC)
        x = tl.load(ws + 2 * D + e, mask=e < E, other=0.0).to(ACC)
        acc += _rows_matvec(w_m + (W2 - 1) * E, rows, E, W2 * E, e, x, ACT, ACC)
    else:
        for k in range(W2 - 1):
            w = tl.load(m2w + (m * W2 + k) * E + rows, mask=mask_r, other=0.0).to(ACT).to(ACC)
            acc += w * tl.load(c2_ptr + (b * (W2 - 1) + k) * E + rows, mask=mask_r, other=0.0).to(ACC)
        w = tl.load(m2w + (m * W2 + W2 - 1) * E + rows, mask=mask_r, other=0.0).to(ACT).to(ACC)
        acc += w * tl.load(ws + 2 * D + rows, mask=mask_r, other=0.0).to(ACC)
    tl.store(ws + 2 * D + 2 * E + rows, silu(acc.to(ACT).to(ACC)).to(ACT), mask=mask_r)


@triton.jit
def _shift_cache(c_ptr, new_ptr, n, C, W, BLOCK_C: tl.constexpr):
    """Cache row n (W-1, C): drop the oldest row, append `new` (C). Each lane moves its own
    columns, oldest first, so no lane reads a value another lane has overwritten."""
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = c < C
        for k in range(W - 2):
            tl.store(c_ptr + (n * (W - 1) + k) * C + c,
                     tl.load(c_ptr + (n * (W - 1) + k + 1) * C + c, mask=mask), mask=mask)
        tl.store(c_ptr + (n * (W - 1) + W - 2) * C + c, tl.load(new_ptr + c, mask=mask), mask=mask)


@triton.jit
def _step_x(c1_ptr, c2_ptr, w_x, ws_ptr, WS, D, E, P, W1, W2, IS_DOUBLE: tl.constexpr,
            ROWS: tl.constexpr, BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    """xd[rows] = W_x[rows] @ xs = [dt_low | B | C]; row block 0 then shifts the caches (every
    stage that reads them has finished)."""
    rb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = w_x.dtype.element_ty
    ws = ws_ptr + b * WS
    e = tl.arange(0, BLOCK_E)
    xs = _xs_row(ws, e, E, D, IS_DOUBLE, ACT, ACC)
    rows = rb * ROWS + tl.arange(0, ROWS)
    xd = _rows_matvec(w_x, rows, P, E, e, xs, ACT, ACC)
    tl.store(ws + 2 * D + 3 * E + rows, xd.to(ACT), mask=rows < P)              # ws.xd
    if rb == 0:
        _shift_cache(c1_ptr, ws, b, D, W1, BLOCK_E)                              # new row: ws.u
        if IS_DOUBLE:
            _shift_cache(c2_ptr, ws + 2 * D, b, E, W2, BLOCK_E)                  # x half of ws.xz


@triton.jit
def _step_scan(st_ptr, w_dt, dt_bias, A_ptr, Dskip, ws_ptr, WS, D, E, N, R,
               IS_DOUBLE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    """Channels e: delta = softplus(W_dt[e] @ dt_low + bias); s = exp(delta A) s + delta x B;
    ys = (C . s + D x) SiLU(z)."""
    eb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = w_dt.dtype.element_ty
    ws = ws_ptr + b * WS
    xd = ws + 2 * D + 3 * E
    e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = e < E
    n = tl.arange(0, BLOCK_N)
    mask_n = n < N
    r = tl.arange(0, BLOCK_R)
    low = tl.load(xd + r, mask=r < R, other=0.0).to(ACC)
    Bt = tl.load(xd + R + n, mask=mask_n, other=0.0).to(ACC)
    Ct = tl.load(xd + R + N + n, mask=mask_n, other=0.0).to(ACC)
    dt = _rows_matvec(w_dt, e, E, R, r, low, ACT, ACC).to(ACT).to(ACC)
    delta = softplus(dt + tl.load(dt_bias + e, mask=mask_e, other=0.0).to(ACC))
    x = _xs_row(ws, e, E, D, IS_DOUBLE, ACT, ACC)
    mask_en = mask_e[:, None] & mask_n[None, :]
    a = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(ACC)
    sp = st_ptr + (b * E + e[:, None]) * N + n[None, :]
    s = tl.exp(delta[:, None] * a) * tl.load(sp, mask=mask_en, other=0.0).to(ACC) \
        + (delta * x)[:, None] * Bt[None, :]
    tl.store(sp, s, mask=mask_en)
    y = tl.sum(s * Ct[None, :], axis=1) + tl.load(Dskip + e, mask=mask_e, other=0.0).to(ACC) * x
    z = tl.load(ws + 2 * D + E + e, mask=mask_e, other=0.0).to(ACC)
    tl.store(ws + 2 * D + 3 * E + R + 2 * N + e, (y * z * sigmoid(z)).to(ACT), mask=mask_e)


@triton.jit
def _step_out(out_ptr, w_out, ws_ptr, WS, D, E, P, RESIDUAL: tl.constexpr, ROWS: tl.constexpr,
              BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    """out[rows] = W_out[rows] @ ys (+ h1[rows])."""
    rb, b = tl.program_id(0), tl.program_id(1)
    ACT: tl.constexpr = out_ptr.dtype.element_ty
    ws = ws_ptr + b * WS
    e = tl.arange(0, BLOCK_E)
    ys = tl.load(ws + 2 * D + 3 * E + P + e, mask=e < E, other=0.0).to(ACC)
    rows = rb * ROWS + tl.arange(0, ROWS)
    o = _rows_matvec(w_out, rows, D, E, e, ys, ACT, ACC).to(ACT).to(ACC)
    if RESIDUAL:
        o = o + tl.load(ws + D + rows, mask=rows < D, other=0.0).to(ACC)
    tl.store(out_ptr + b * D + rows, o, mask=rows < D)


def _rows_per_program(n_cols: int, tile: int = STEP_TILE) -> int:
    """Weight rows per program: a tile of about `tile` elements, 1 to 64 rows."""
    return max(1, min(64, tile // triton.next_power_of_2(n_cols)))


def step(h_t, mixer1_cache, mixer2_cache, ssm_state, params, A, mixer, n_modalities, residual_ssm,
         eps, position):
    """One token: h_t (batch, D) -> (batch, D); the caches and ssm_state are updated in place.
    A = -exp(A_log) (E, N) in the state dtype, made once per parameter version by the caller."""
    _, kind, double, _ = mixers.parse(mixer)
    cdt = h_t.dtype
    (n1w, n1b, m1w, m1b, n2w, n2b, w_in, m2w, m2b, w_x, w_dt, dt_bias, A, Dskip, w_out) = _cast(
        params, cdt, A)
    batch, Dm = h_t.shape
    E, N = A.shape
    R = w_dt.shape[1]
    P = R + 2 * N
    out = torch.empty(batch, Dm, device=h_t.device, dtype=cdt)
    if batch == 0:
        return out
    sdt = ssm_state.dtype
    W1 = mixer1_cache.shape[1] + 1
    W2 = mixer2_cache.shape[1] + 1 if double else 1
    # The caches are updated in place: work on contiguous ones and copy back if they were not.
    c1 = mixer1_cache.contiguous()
    c2 = mixer2_cache.contiguous() if double else c1
    st = ssm_state.contiguous()
    WS = 2 * Dm + 4 * E + P                       # a row's [u | h1 | xz | xs | xd | ys]
    ws = torch.empty(batch, WS, device=h_t.device, dtype=sdt)
    h = h_t.contiguous()
    m = position % n_modalities
    BD, BE = triton.next_power_of_2(Dm), triton.next_power_of_2(E)
    acc = _acc(cdt)
    grid = lambda n_rows, r: (triton.cdiv(n_rows, r), batch)  # noqa: E731
    m1b_ = m1b if m1b is not None else m1w
    rows = _rows_per_program
    if kind == "line":  # a line mixer's rows loop over W window rows: half the tile (registers)
        r = rows(Dm, STEP_TILE // 2)
        _step_mix1[grid(Dm, r)](h, c1, n1w, n1b, m1w, m1b_, ws, WS, Dm, W1, m, eps,
                                HAS_BIAS=m1b is not None, ROWS=r, BLOCK_D=BD, ACC=acc)
    r = rows(Dm)
    _step_in[grid(2 * E, r)](h, c1, n1w, n1b, m1w, m1b_, n2w, n2b, w_in, ws, WS, Dm, E, W1, m, eps,
                             IS_LINE=kind == "line", HAS_BIAS=m1b is not None, ROWS=r, BLOCK_D=BD,
                             ACC=acc)
    if double:
        r = rows(E, STEP_TILE // 2) if kind == "line" else 64
        _step_mix2[grid(E, r)](c2, m2w, m2b if m2b is not None else m2w, ws, WS, Dm, E, W2, m,
                               IS_LINE=kind == "line", HAS_BIAS=m2b is not None, ROWS=r,
                               BLOCK_E=BE, ACC=acc)
    r = rows(E)
    _step_x[grid(P, r)](c1, c2, w_x, ws, WS, Dm, E, P, W1, W2, IS_DOUBLE=double, ROWS=r,
                        BLOCK_E=BE, ACC=acc)
    be = min(64, BE)
    _step_scan[grid(E, be)](st, w_dt, dt_bias, A, Dskip, ws, WS, Dm, E, N, R, IS_DOUBLE=double,
                            BLOCK_E=be, BLOCK_N=triton.next_power_of_2(N),
                            BLOCK_R=triton.next_power_of_2(R), ACC=acc)
    r = rows(E)
    _step_out[grid(Dm, r)](out, w_out, ws, WS, Dm, E, P, RESIDUAL=bool(residual_ssm or double),
                           ROWS=r, BLOCK_E=BE, ACC=acc)
    for cache, work in ((mixer1_cache, c1), (mixer2_cache if double else None, c2), (ssm_state, st)):
        if cache is not None and work.data_ptr() != cache.data_ptr():
            cache.copy_(work)
    return out
