"""Selective scan in Triton: forward and backward, for both layouts the package uses.

One program owns one batch row and BLOCK_E channels of one B/C group, with the (BLOCK_E, N)
state in registers, and walks time step by step. Every tensor is addressed through its strides,
so the op's (batch, E, L) layout, the block's (batch, L, E) layout and non-contiguous views need
no copies. The block's form also folds in dt_proj (delta = round(W_dt @ dt_low) before the bias
and softplus), as csrc/cuda/block_kernels.cuh does.

Backward (recompute, nothing of size (batch, E, L, N) is stored): a forward pass saves the state
entering each chunk of CHUNK steps; then the chunks run in reverse: recompute the chunk's states
into a per-program scratch, walk the adjoint recursion
    h_t = g_t C_t + exp(delta_{t+1} A) h_{t+1}
backwards, and write du, ddelta, dz directly. dA, dD, ddelta_bias (per batch row) and dB, dC
(per channel block) are written as partial sums that the host adds up: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from dmm_kernels.triton.common import sigmoid, softplus


@triton.jit
def _channels(A_ptr, D_ptr, bias_ptr, N, group_size, blocks_per_group, HAS_D: tl.constexpr,
              HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
              ACC: tl.constexpr):
    """This program's group g, channels e (BLOCK_E of one group), states n, their masks, and the
    per-channel parameters: A (BLOCK_E, BLOCK_N), D, delta_bias (0 where absent)."""
    g = tl.program_id(1) // blocks_per_group
    e_in_group = (tl.program_id(1) % blocks_per_group) * BLOCK_E + tl.arange(0, BLOCK_E)
    e = g * group_size + e_in_group
    n = tl.arange(0, BLOCK_N)
    mask_e = e_in_group < group_size
    mask_n = n < N
    mask_en = mask_e[:, None] & mask_n[None, :]
    a = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(ACC)
    dskip = tl.load(D_ptr + e, mask=mask_e & HAS_D, other=0.0).to(ACC)
    dbias = tl.load(bias_ptr + e, mask=mask_e & HAS_BIAS, other=0.0).to(ACC)
    return g, e, n, mask_e, mask_n, mask_en, a, dskip, dbias


@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dt_w_ptr,
    out_ptr, last_ptr, chunk_ptr,
    E, L, N, R, group_size, blocks_per_group, n_chunks,
    s_ub, s_ue, s_ut, s_db, s_de, s_dt, s_dr, s_bb, s_bg, s_bn, s_bt, s_cb, s_cg, s_cn, s_ct,
    s_zb, s_ze, s_zt, s_ob, s_oe, s_ot,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DT_PROJ: tl.constexpr, WRITE_OUT: tl.constexpr, SAVE_CHUNKS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    ACC: tl.constexpr,
):
    b = tl.program_id(0)
    g, e, n, mask_e, mask_n, mask_en, a, dskip, dbias = _channels(
        A_ptr, D_ptr, bias_ptr, N, group_size, blocks_per_group, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, ACC)
    r = tl.arange(0, BLOCK_R)
    if HAS_DT_PROJ:  # W_dt (E, R), resident for the whole walk
        w_dt = tl.load(dt_w_ptr + e[:, None] * R + r[None, :], mask=mask_e[:, None] & (r[None, :] < R),
                       other=0.0).to(ACC)
    s = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    for t in range(L):
        if HAS_DT_PROJ:  # delta = round(W_dt @ dt_low_t), dt_low_t = delta[b, t, :R]
            low = tl.load(delta_ptr + b * s_db + t * s_dt + r * s_dr, mask=r < R, other=0.0).to(ACC)
            dt = tl.sum(w_dt * low[None, :], axis=1).to(out_ptr.dtype.element_ty).to(ACC)
        else:
            dt = tl.load(delta_ptr + b * s_db + e * s_de + t * s_dt, mask=mask_e, other=0.0).to(ACC)
        dt = dt + dbias
        if SOFTPLUS:
            dt = softplus(dt)
        x = tl.load(u_ptr + b * s_ub + e * s_ue + t * s_ut, mask=mask_e, other=0.0).to(ACC)
        Bt = tl.load(B_ptr + b * s_bb + g * s_bg + n * s_bn + t * s_bt, mask=mask_n, other=0.0).to(ACC)
        s = tl.exp(dt[:, None] * a) * s + (dt * x)[:, None] * Bt[None, :]
        if SAVE_CHUNKS:
            if (t + 1) % CHUNK == 0:
                k = (t + 1) // CHUNK
                tl.store(chunk_ptr + ((b * E + e[:, None]) * n_chunks + k) * N + n[None, :], s,
                         mask=mask_en & (k < n_chunks))
        if WRITE_OUT:
            Ct = tl.load(C_ptr + b * s_cb + g * s_cg + n * s_cn + t * s_ct, mask=mask_n,
                         other=0.0).to(ACC)
            y = tl.sum(s * Ct[None, :], axis=1) + dskip * x
            if HAS_Z:
                zz = tl.load(z_ptr + b * s_zb + e * s_ze + t * s_zt, mask=mask_e, other=0.0).to(ACC)
                y = y * zz * sigmoid(zz)
            tl.store(out_ptr + b * s_ob + e * s_oe + t * s_ot, y, mask=mask_e)
    if WRITE_OUT:
        tl.store(last_ptr + (b * E + e[:, None]) * N + n[None, :], s, mask=mask_en)


@triton.jit
def scan_bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, chunk_ptr, scratch_ptr,
    E, L, N, group_size, blocks_per_group, n_chunks,
    s_ub, s_ue, s_ut, s_db, s_de, s_dt, s_bb, s_bg, s_bn, s_bt, s_cb, s_cg, s_cn, s_ct,
    s_zb, s_ze, s_zt, s_gb, s_ge, s_gt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Outputs: du, ddelta, dz (batch, E, L) contiguous; dA (batch, E, N), dD / dbias (batch, E)
    per batch row; dB, dC (batch, G, blocks_per_group, N, L) per channel block."""
    b = tl.program_id(0)
    blk = tl.program_id(1)
    g, e, n, mask_e, mask_n, mask_en, a, dskip, dbias = _channels(
        A_ptr, D_ptr, bias_ptr, N, group_size, blocks_per_group, HAS_D, HAS_BIAS, BLOCK_E, BLOCK_N, ACC)
    # This program's scratch: (CHUNK, BLOCK_E, BLOCK_N) states of the current chunk.
    scratch = scratch_ptr + (b * tl.num_programs(1) + blk) * (CHUNK * BLOCK_E * BLOCK_N)
    sc_off = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    partial = (b * tl.num_programs(1) + blk) * N  # row of the dB / dC partials (times L)

    hn = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    dD = tl.zeros((BLOCK_E,), dtype=ACC)
    dbias_sum = tl.zeros((BLOCK_E,), dtype=ACC)
    for kk in range(n_chunks):
        t0 = (n_chunks - 1 - kk) * CHUNK
        s0 = tl.load(chunk_ptr + ((b * E + e[:, None]) * n_chunks + t0 // CHUNK) * N + n[None, :],
                     mask=mask_en & (t0 > 0), other=0.0).to(ACC)
        # Recompute the chunk's states into the scratch (steps past L are never read back).
        s = s0
        for i in range(CHUNK):
            t = t0 + i
            m_e = mask_e & (t < L)
            dt = tl.load(delta_ptr + b * s_db + e * s_de + t * s_dt, mask=m_e, other=0.0).to(ACC) + dbias
            if SOFTPLUS:
                dt = softplus(dt)
            x = tl.load(u_ptr + b * s_ub + e * s_ue + t * s_ut, mask=m_e, other=0.0).to(ACC)
            Bt = tl.load(B_ptr + b * s_bb + g * s_bg + n * s_bn + t * s_bt, mask=mask_n & (t < L),
                         other=0.0).to(ACC)
            s = tl.exp(dt[:, None] * a) * s + (dt * x)[:, None] * Bt[None, :]
            tl.store(scratch + i * (BLOCK_E * BLOCK_N) + sc_off, s)
        tl.debug_barrier()
        # Walk the chunk backwards; a step past L leaves hn, dA and the sums unchanged.
        for ii in range(CHUNK):
            i = CHUNK - 1 - ii
            t = t0 + i
            valid = t < L
            m_e = mask_e & valid
            m_n = mask_n & valid
            raw = tl.load(delta_ptr + b * s_db + e * s_de + t * s_dt, mask=m_e, other=0.0).to(ACC) + dbias
            dt = raw
            if SOFTPLUS:
                dt = softplus(raw)
            dt = tl.where(m_e, dt, 0.0)
            x = tl.load(u_ptr + b * s_ub + e * s_ue + t * s_ut, mask=m_e, other=0.0).to(ACC)
            Bt = tl.load(B_ptr + b * s_bb + g * s_bg + n * s_bn + t * s_bt, mask=m_n, other=0.0).to(ACC)
            Ct = tl.load(C_ptr + b * s_cb + g * s_cg + n * s_cn + t * s_ct, mask=m_n, other=0.0).to(ACC)
            dy = tl.load(dout_ptr + b * s_gb + e * s_ge + t * s_gt, mask=m_e, other=0.0).to(ACC)
            s_t = tl.load(scratch + i * (BLOCK_E * BLOCK_N) + sc_off).to(ACC)
            s_prev = tl.load(scratch + (i - 1) * (BLOCK_E * BLOCK_N) + sc_off, mask=(i > 0) & mask_en,
                             other=0.0).to(ACC)
            s_prev = tl.where(i > 0, s_prev, s0)
            gg = dy
            if HAS_Z:
                zz = tl.load(z_ptr + b * s_zb + e * s_ze + t * s_zt, mask=m_e, other=0.0).to(ACC)
                sg = sigmoid(zz)
                y = tl.sum(s_t * Ct[None, :], axis=1) + dskip * x
                gg = dy * zz * sg
                tl.store(dz_ptr + (b * E + e) * L + t, dy * y * sg * (1.0 + zz * (1.0 - sg)), mask=m_e)
            decay = tl.exp(dt[:, None] * a)
            h = tl.where(mask_en, gg[:, None] * Ct[None, :] + hn, 0.0)
            tl.store(dC_ptr + (partial + n) * L + t, tl.sum(gg[:, None] * s_t, axis=0), mask=m_n)
            tl.store(dB_ptr + (partial + n) * L + t, tl.sum(h * (dt * x)[:, None], axis=0), mask=m_n)
            ddt = tl.sum(h * (a * decay * s_prev + Bt[None, :] * x[:, None]), axis=1)
            if SOFTPLUS:
                ddt = ddt * tl.where(raw <= 20.0, sigmoid(raw), 1.0)
            ddt = tl.where(m_e, ddt, 0.0)
            dx = tl.sum(h * Bt[None, :], axis=1) * dt + dskip * gg
            dA += h * dt[:, None] * decay * s_prev
            hn = h * decay
            tl.store(du_ptr + (b * E + e) * L + t, dx, mask=m_e)
            tl.store(ddelta_ptr + (b * E + e) * L + t, ddt, mask=m_e)
            dD += gg * x
            dbias_sum += ddt
        tl.debug_barrier()
    tl.store(dA_ptr + (b * E + e[:, None]) * N + n[None, :], dA, mask=mask_en)
    tl.store(dD_ptr + b * E + e, dD, mask=mask_e & HAS_D)
    tl.store(dbias_ptr + b * E + e, dbias_sum, mask=mask_e & HAS_BIAS)


# ---- host side ---------------------------------------------------------------------------------
def _acc(*tensors):
    """Accumulation dtype: float64 when any input is float64 (exact tests), else float32."""
    double = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return (torch.float64, tl.float64) if double else (torch.float32, tl.float32)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def _bc_strides(t):
    """(b, g, n, t) strides of B / C given as (batch, N, L) or (batch, G, N, L)."""
    return (t.stride(0), 0, t.stride(1), t.stride(2)) if t.dim() == 3 else t.stride()


def _blocks(E, n_groups, N):
    group_size = E // n_groups
    block_e = min(32, triton.next_power_of_2(group_size))
    return group_size, block_e, triton.cdiv(group_size, block_e), triton.next_power_of_2(N)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *, layout="bel",
             dt_proj_weight=None, out_dtype=None, chunk_states=None, chunk=None):
    """out, last_state of the selective scan.

    layout "bel": u, delta, z (batch, E, L), the op's layout; "ble": (batch, L, E), the block's,
    where `delta` may be dt_low (batch, L, R) with dt_proj_weight (E, R) folded in. B, C:
    (batch, [G,] N, L) in "bel", (batch, L, N) views in "ble". chunk_states (batch, E, n_chunks, N):
    filled with the state entering each chunk of `chunk` steps (the backward's first pass)."""
    if layout == "bel":
        batch, E, L = u.shape
        ui, ti = 1, 2
    else:
        batch, L, E = u.shape
        ui, ti = 2, 1
    N = A.shape[1]
    n_groups = 1 if B.dim() == 3 else B.shape[1]
    torch_acc, acc = _acc(u, delta, A, B, C, D, z, delta_bias)
    A, D, delta_bias = _contiguous(A, D, delta_bias)  # small, indexed flat by the kernels
    out = torch.empty(u.shape, device=u.device, dtype=out_dtype or u.dtype)
    last = torch.empty(batch, E, N, device=u.device, dtype=torch_acc)
    group_size, block_e, per_group, block_n = _blocks(E, n_groups, N)
    if out.numel() == 0:
        return out, last.zero_()
    if layout == "bel":
        sb = _bc_strides(B)
        sc = _bc_strides(C)
    else:  # (batch, L, N) views of x_dbl: b, g, n, t
        sb = (B.stride(0), 0, B.stride(2), B.stride(1))
        sc = (C.stride(0), 0, C.stride(2), C.stride(1))
    dz = z if z is not None else u
    has_proj = dt_proj_weight is not None
    R = dt_proj_weight.shape[1] if has_proj else 1
    s_dr = delta.stride(2) if has_proj else 0
    n_chunks = chunk_states.shape[2] if chunk_states is not None else 1
    scan_fwd_kernel[(batch, n_groups * per_group)](
        u, delta, A, B, C, D if D is not None else A, dz, delta_bias if delta_bias is not None else A,
        dt_proj_weight if has_proj else A, out, last,
        chunk_states if chunk_states is not None else last,
        E, L, N, R, group_size, per_group, n_chunks,
        u.stride(0), u.stride(ui), u.stride(ti),
        delta.stride(0), 0 if has_proj else delta.stride(ui), delta.stride(ti), s_dr,
        *sb, *sc, dz.stride(0), dz.stride(ui), dz.stride(ti),
        out.stride(0), out.stride(ui), out.stride(ti),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_DT_PROJ=has_proj, WRITE_OUT=chunk_states is None,
        SAVE_CHUNKS=chunk_states is not None, CHUNK=chunk or 1, BLOCK_E=block_e, BLOCK_N=block_n,
        BLOCK_R=triton.next_power_of_2(R), ACC=acc,
    )
    return out, last


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk=None):
    """Gradients of the "bel"-layout scan, in the op's order and dtypes (numel-0 for absent)."""
    batch, E, L = u.shape
    N = A.shape[1]
    n_groups = 1 if B.dim() == 3 else B.shape[1]
    torch_acc, acc = _acc(dout, u, delta, A, B, C, D, z, delta_bias)
    A, D, delta_bias = _contiguous(A, D, delta_bias)
    group_size, block_e, per_group, block_n = _blocks(E, n_groups, N)
    chunk = chunk or min(64, triton.next_power_of_2(max(L, 1)))
    n_chunks = max(1, triton.cdiv(L, chunk))
    dev = u.device
    du = torch.empty(batch, E, L, device=dev, dtype=torch_acc)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else None
    dA = torch.zeros(batch, E, N, device=dev, dtype=torch_acc)
    dB = torch.zeros(batch, n_groups * per_group, N, L, device=dev, dtype=torch_acc)
    dC = torch.zeros_like(dB)
    dD = torch.zeros(batch, E, device=dev, dtype=torch_acc)
    dbias = torch.zeros(batch, E, device=dev, dtype=torch_acc)
    if du.numel() > 0:
        states = torch.zeros(batch, E, n_chunks, N, device=dev, dtype=torch_acc)
        scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_states=states, chunk=chunk)
        scratch = torch.empty(batch * n_groups * per_group * chunk * block_e * block_n, device=dev,
                              dtype=torch_acc)
        sb, sc = _bc_strides(B), _bc_strides(C)
        zz = z if z is not None else u
        scan_bwd_kernel[(batch, n_groups * per_group)](
            dout, u, delta, A, B, C, D if D is not None else A, zz,
            delta_bias if delta_bias is not None else A,
            du, ddelta, dz if dz is not None else du, dA, dB, dC, dD, dbias, states, scratch,
            E, L, N, group_size, per_group, n_chunks,
            *u.stride(), *delta.stride(), *sb, *sc, *zz.stride(), *dout.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n, ACC=acc,
        )
    bc_shape = (batch, N, L) if B.dim() == 3 else (batch, n_groups, N, L)
    dB = dB.view(batch, n_groups, per_group, N, L).sum(2).view(bc_shape)
    dC = dC.view(batch, n_groups, per_group, N, L).sum(2).view(bc_shape)
    absent = torch.empty(0, device=dev)
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype),
            dC.to(C.dtype), dD.sum(0).to(D.dtype) if D is not None else absent,
            dz.to(z.dtype) if z is not None else absent,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else absent)
