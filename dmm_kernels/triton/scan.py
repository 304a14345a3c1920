"""Selective scan in Triton: a chunked parallel scan over tiles [channels, chunk of time].

Each program owns BLOCK_E channels of one batch row (and group) and walks L in chunks of CHUNK
steps. Per chunk it loads the [BLOCK_E, CHUNK] tiles of u, delta (and z, dout) once, contiguous
along whichever of L or E is contiguous in memory, and for each state n runs the recurrence
s_t = exp(delta_t A_n) s_{t-1} + delta_t u_t B_t[n] as tl.associative_scan over the chunk; the
state entering the next chunk stays in registers. exp is exp2 with A pre-scaled by log2(e).

The backward first recomputes the state entering every chunk (one forward pass over the chunk
totals, tl.reduce, into a (batch, chunks, E, N) buffer: no per-step state is ever stored), then
walks the chunks in reverse: the chunk's states again by a forward scan from its entry state,
the adjoint h_t = dy_t C_t + exp(delta_{t+1} A) h_{t+1} by a reverse scan, dA / dD / dbias
reduced in registers, dB / dC reduced over the program's channels per chunk. du, ddelta and dz are
written in their final dtype.

Tile sizes and warps are autotuned per (batch, E, L, N, layout) on the GPU (one configuration
under the interpreter); each choice is logged to the "dmm_kernels.triton" logger at INFO and
`tuned_configs()` lists them.

Layouts: "bel", the op's (batch, E, L), any strides; "ble", the block's (batch, L, E), where delta
may be dt_low (batch, L, R) with dt_proj_weight (E, R) folded in.
"""
from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from dmm_kernels.triton import interpret
from dmm_kernels.triton.common import INTERPRETING, sigmoid, softplus

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

if INTERPRETING:
    interpret.install()


# ---- autotuning -------------------------------------------------------------------------------
def _config(block_e, chunk, warps, vec=8, stages=1):
    """A tile of BLOCK_E channels x CHUNK steps, VEC consecutive steps per thread."""
    return triton.Config({"BLOCK_E": block_e, "CHUNK": chunk, "VEC": vec}, num_warps=warps,
                         num_stages=stages)


# The interpreter runs one configuration (autotuning would time it on a GPU); its CHUNK of 64 puts
# chunk edges at the tests' L = 63 / 64 / 65 / 4097.
INTERPRETER_CONFIGS = [_config(16, 64, 4)]
# Tile elements per thread: 8 in the forward (~200 registers, no spills at 4 or 8 warps), 4 in the
# backward, which holds ~20 chunk tiles per state (~240 registers; at 8 it spills). At most 8
# warps: more would cap the registers at 65536 / threads and spill.
FWD_CONFIGS = [_config(32, 32, 4), _config(16, 64, 4), _config(64, 32, 8), _config(32, 64, 8)]
BWD_CONFIGS = [_config(16, 32, 4), _config(32, 32, 8), _config(16, 64, 8)]
TUNING_KEY = ["batch", "E", "L", "N", "T_CONTIG"]


def _prune(configs, named_args, **kwargs):
    """Drop tiles much larger than the problem (a 128-channel tile for 5 channels), keeping the
    smallest when none fits."""
    e_cap = max(16, triton.next_power_of_2(named_args["group_size"]))
    l_cap = max(16, triton.next_power_of_2(named_args["L"]))
    kept = [c for c in configs if c.kwargs["BLOCK_E"] <= e_cap and c.kwargs["CHUNK"] <= l_cap]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_E"] * c.kwargs["CHUNK"])]


def _autotune(configs):
    return triton.autotune(configs=INTERPRETER_CONFIGS if INTERPRETING else configs, key=TUNING_KEY,
                           prune_configs_by={"early_config_prune": _prune})


# ---- device helpers ----------------------------------------------------------------------------
@triton.jit
def _linear(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2): s -> a2 (a1 s + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _adjoint(f_late, p_late, s_late, f_early, p_early, s_early):
    """Segments of h_t = c_t + a_{t+1} h_{t+1}, combined in reverse time (later one first):
    f = a of the segment's first step, p = product of its other a's, s = its h with h after it 0."""
    m = p_early * f_late
    return f_early, m * p_late, s_early + m * s_late


@triton.jit
def _program(batch, n_groups, group_size, BLOCK_E: tl.constexpr):
    """Program -> (batch row b (int64), group g, channel block j, channels e, their mask); channel
    blocks vary fastest so programs sharing B / C run side by side."""
    pid = tl.program_id(0)
    per_group = tl.cdiv(group_size, BLOCK_E)
    j = pid % per_group
    g = (pid // per_group) % n_groups
    b = (pid // (per_group * n_groups)).to(tl.int64)
    e_in = j * BLOCK_E + tl.arange(0, BLOCK_E)
    return b, g, j, g * group_size + e_in, e_in < group_size


@triton.jit
def _chunk_delta(delta_base, e, mask_e, t, m_et, mask_t, w_dt_ptr, dbias, s_de, s_dt, s_dr, R,
                 HAS_DT_PROJ: tl.constexpr, SOFTPLUS: tl.constexpr, ACT: tl.constexpr,
                 ACC: tl.constexpr):
    """raw = delta + bias and dt = softplus(raw) on a [BLOCK_E, CHUNK] tile; dt is 0 outside the
    tile's valid steps, so a step past L has decay 1 and drive 0 and carries the state through.
    With HAS_DT_PROJ delta is dt_low and the tile is round(W_dt @ dt_low) (the block's dt_proj)."""
    if HAS_DT_PROJ:  # rank-1 updates over R: no (BLOCK_E, R, CHUNK) product tile in registers
        raw = tl.zeros(m_et.shape, dtype=ACC)
        for r in range(R):
            w = tl.load(w_dt_ptr + e * R + r, mask=mask_e, other=0.0).to(ACT).to(ACC)  # (BLOCK_E,)
            low = tl.load(delta_base + r * s_dr + t * s_dt, mask=mask_t, other=0.0).to(ACC)  # (CHUNK,)
            raw += w[:, None] * low[None, :]
        raw = raw.to(ACT).to(ACC)
    else:
        raw = tl.load(delta_base + e[:, None] * s_de + t[None, :] * s_dt, mask=m_et, other=0.0).to(ACC)
    raw = raw + dbias[:, None]
    dt = softplus(raw) if SOFTPLUS else raw
    return raw, tl.where(m_et, dt, 0.0)


@triton.jit
def _params(A_ptr, D_ptr, bias_ptr, e, mask_e, N, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
            BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """States n, the [channels, states] mask, A * log2(e) (0 past N: such a state decays by 1,
    is driven by 0 and stays 0), D and delta_bias (0 where absent)."""
    n = tl.arange(0, BLOCK_N)
    mask_en = mask_e[:, None] & (n < N)[None, :]
    a2 = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(ACC) * LOG2E
    dskip = tl.load(D_ptr + e, mask=mask_e & HAS_D, other=0.0).to(ACC)
    dbias = tl.load(bias_ptr + e, mask=mask_e & HAS_BIAS, other=0.0).to(ACC)
    return n, mask_en, a2, dskip, dbias


@triton.jit
def _column(tile, sel):
    """Column i of a [channels, states] tile (sel: n == i) as a (channels,) vector."""
    return tl.sum(tl.where(sel, tile, 0.0), axis=1)


# ---- forward -----------------------------------------------------------------------------------
@_autotune(FWD_CONFIGS)
@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dt_w_ptr, out_ptr, last_ptr,
    batch, E, L, N, R, n_groups, group_size,
    s_ub, s_ue, s_ut, s_db, s_de, s_dt, s_dr, s_bb, s_bg, s_bn, s_bt, s_cb, s_cg, s_cn, s_ct,
    s_zb, s_ze, s_zt, s_ob, s_oe, s_ot,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DT_PROJ: tl.constexpr, T_CONTIG: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
    VEC: tl.constexpr,
):
    """out (batch, E, L) or (batch, L, E) per out's strides, in out's dtype; last (batch, E, N)."""
    b, g, j, e, mask_e = _program(batch, n_groups, group_size, BLOCK_E)
    ACT: tl.constexpr = out_ptr.dtype.element_ty
    # The states stay a loop, not an unrolled tuple: unrolled, every state's chunk tiles are live
    # at once and spill. State i of the carry is column i of a [channels, states] tile.
    n, mask_en, a2, dskip, dbias = _params(A_ptr, D_ptr, bias_ptr, e, mask_e, N, HAS_D, HAS_BIAS,
                                           BLOCK_N, ACC)
    state = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    u_base, d_base, z_base = u_ptr + b * s_ub, delta_ptr + b * s_db, z_ptr + b * s_zb
    b_base, c_base = B_ptr + b * s_bb + g * s_bg, C_ptr + b * s_cb + g * s_cg
    tt = tl.max_contiguous(tl.arange(0, CHUNK), VEC)  # VEC steps per thread: registers per tile
    last_step = tt[None, :] == CHUNK - 1
    for c0 in range(0, L, CHUNK):
        t = c0 + tt
        mask_t = t < L
        m_et = mask_e[:, None] & mask_t[None, :]
        _, dt = _chunk_delta(d_base, e, mask_e, t, m_et, mask_t, dt_w_ptr, dbias, s_de, s_dt, s_dr,
                             R, HAS_DT_PROJ, SOFTPLUS, ACT, ACC)
        x = tl.load(u_base + e[:, None] * s_ue + t[None, :] * s_ut, mask=m_et, other=0.0).to(ACC)
        dtu = dt * x
        y = dskip[:, None] * x
        for i in range(N):
            sel = n[None, :] == i
            Bi = tl.load(b_base + i * s_bn + t * s_bt, mask=mask_t, other=0.0).to(ACC)
            Ci = tl.load(c_base + i * s_cn + t * s_ct, mask=mask_t, other=0.0).to(ACC)
            decay = tl.exp2(dt * _column(a2, sel)[:, None])
            pa, pb = tl.associative_scan((decay, dtu * Bi[None, :]), 1, _linear)
            s = pa * _column(state, sel)[:, None] + pb                     # (BLOCK_E, CHUNK)
            y += s * Ci[None, :]
            state = tl.where(sel, tl.sum(tl.where(last_step, s, 0.0), axis=1)[:, None], state)
        if HAS_Z:
            zz = tl.load(z_base + e[:, None] * s_ze + t[None, :] * s_zt, mask=m_et, other=0.0).to(ACC)
            y = y * zz * sigmoid(zz)
        tl.store(out_ptr + b * s_ob + e[:, None] * s_oe + t[None, :] * s_ot, y.to(ACT), mask=m_et)
    tl.store(last_ptr + (b * E + e[:, None]) * N + n[None, :], state, mask=mask_en)


# ---- backward ----------------------------------------------------------------------------------
@_autotune(BWD_CONFIGS)
@triton.jit
def scan_bwd_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, entry_ptr,
    batch, E, L, N, n_groups, group_size, max_chunks, max_blocks,
    s_ub, s_ue, s_ut, s_db, s_de, s_dt, s_bb, s_bg, s_bn, s_bt, s_cb, s_cg, s_cn, s_ct,
    s_zb, s_ze, s_zt, s_gb, s_ge, s_gt,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    T_CONTIG: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr,
    CHUNK: tl.constexpr, VEC: tl.constexpr,
):
    """du, ddelta, dz (batch, E, L) contiguous in u's / delta's / z's dtype; per batch row dA
    (batch, E, N), dD / dbias (batch, E); per channel block dB, dC (batch, G, max_blocks, N, L).
    entry (batch, max_chunks, E, N): the state entering each chunk (chunk 0's is never stored)."""
    b, g, j, e, mask_e = _program(batch, n_groups, group_size, BLOCK_E)
    n, mask_en, a2, dskip, dbias = _params(A_ptr, D_ptr, bias_ptr, e, mask_e, N, HAS_D, HAS_BIAS,
                                           BLOCK_N, ACC)
    u_base, d_base, z_base, g_base = u_ptr + b * s_ub, delta_ptr + b * s_db, z_ptr + b * s_zb, dout_ptr + b * s_gb
    b_base, c_base = B_ptr + b * s_bb + g * s_bg, C_ptr + b * s_cb + g * s_cg
    entry_base = entry_ptr + b * max_chunks * E * N + e[:, None] * N
    part = ((b * n_groups + g) * max_blocks + j) * N * L  # this program's dB / dC rows
    tt = tl.max_contiguous(tl.arange(0, CHUNK), VEC)  # VEC steps per thread: registers per tile
    n_chunks = tl.cdiv(L, CHUNK)

    # 1. The state entering chunks 1 .. n_chunks - 1, from each chunk's total (a, b) pair.
    state = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    for k in range(n_chunks - 1):
        t = k * CHUNK + tt
        mask_t = t < L
        m_et = mask_e[:, None] & mask_t[None, :]
        _, dt = _chunk_delta(d_base, e, mask_e, t, m_et, mask_t, A_ptr, dbias, s_de, s_dt, 0, 0,
                             False, SOFTPLUS, ACC, ACC)
        dtu = dt * tl.load(u_base + e[:, None] * s_ue + t[None, :] * s_ut, mask=m_et, other=0.0).to(ACC)
        for i in range(N):
            sel = n[None, :] == i
            Bi = tl.load(b_base + i * s_bn + t * s_bt, mask=mask_t, other=0.0).to(ACC)
            a2_i = _column(a2, sel)
            ta, tb = tl.reduce((tl.exp2(dt * a2_i[:, None]), dtu * Bi[None, :]), 1, _linear)
            state = tl.where(sel, ta[:, None] * state + tb[:, None], state)
        tl.store(entry_base + (k + 1) * E * N + n[None, :], state, mask=mask_en)
    tl.debug_barrier()  # the entries are read back by other threads of this program

    # 2. The chunks in reverse. carry[:, i] = a_t0 h_t0 of the chunk after the current one.
    carry = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=ACC)
    dD = tl.zeros((BLOCK_E,), dtype=ACC)
    dbias_sum = tl.zeros((BLOCK_E,), dtype=ACC)
    ones = tl.full((BLOCK_E, CHUNK), 1.0, ACC)
    first_step = tt[None, :] == 0
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        t = k * CHUNK + tt
        mask_t = t < L
        m_et = mask_e[:, None] & mask_t[None, :]
        raw, dt = _chunk_delta(d_base, e, mask_e, t, m_et, mask_t, A_ptr, dbias, s_de, s_dt, 0, 0,
                               False, SOFTPLUS, ACC, ACC)
        # d softplus / d raw, and dz / y: the factors applied after the states' loop
        dsp = tl.where(raw <= 20.0, sigmoid(raw), 1.0) if SOFTPLUS else 1.0
        x = tl.load(u_base + e[:, None] * s_ue + t[None, :] * s_ut, mask=m_et, other=0.0).to(ACC)
        gg = tl.load(g_base + e[:, None] * s_ge + t[None, :] * s_gt, mask=m_et, other=0.0).to(ACC)
        if HAS_Z:  # gg: d out / d (y before the gate)
            zz = tl.load(z_base + e[:, None] * s_ze + t[None, :] * s_zt, mask=m_et, other=0.0).to(ACC)
            sg = sigmoid(zz)
            dz_dy = gg * sg * (1.0 + zz * (1.0 - sg))
            gg = gg * zz * sg
        dtu = dt * x
        y = dskip[:, None] * x
        hB = tl.zeros((BLOCK_E, CHUNK), dtype=ACC)   # sum_n h B
        hAs = tl.zeros((BLOCK_E, CHUNK), dtype=ACC)  # sum_n A h a_t s_{t-1}
        for i in range(N):
            sel = n[None, :] == i
            Bi = tl.load(b_base + i * s_bn + t * s_bt, mask=mask_t, other=0.0).to(ACC)
            Ci = tl.load(c_base + i * s_cn + t * s_ct, mask=mask_t, other=0.0).to(ACC)
            s_entry = tl.load(entry_base + k * E * N + i, mask=mask_e[:, None] & (k > 0), other=0.0)
            a2_i = _column(a2, sel)
            decay = tl.exp2(dt * a2_i[:, None])
            drive = dtu * Bi[None, :]
            pa, pb = tl.associative_scan((decay, drive), 1, _linear)
            s = pa * s_entry.to(ACC) + pb                                  # s_t
            y += s * Ci[None, :]
            # h_t = gg_t C_t + decay_{t+1} h_{t+1}: a forward scan over the flipped chunk (Triton's
            # reverse scan costs ~15 shuffles per element more than flip + scan + flip).
            _, p, h0 = tl.associative_scan((tl.flip(decay, 1), ones, tl.flip(gg * Ci[None, :], 1)), 1, _adjoint)
            h = tl.flip(h0 + p * tl.sum(tl.where(sel, carry, 0.0), axis=1)[:, None], 1)  # dloss/ds_t
            carry = tl.where(sel, tl.sum(tl.where(first_step, decay * h, 0.0), axis=1)[:, None], carry)
            hs = h * (s - drive)                                          # h a_t s_{t-1}
            hB += h * Bi[None, :]
            hAs += (a2_i * LN2)[:, None] * hs
            dA += tl.where(sel, tl.sum(dt * hs, axis=1)[:, None], 0.0)
            # state i's row of this program's dB / dC partials, reduced over its channels
            tl.store(dB_ptr + part + i * L + t, tl.sum(h * dtu, axis=0), mask=mask_t)
            tl.store(dC_ptr + part + i * L + t, tl.sum(gg * s, axis=0), mask=mask_t)
        ddt = tl.where(m_et, (hB * x + hAs) * dsp, 0.0)
        out_offs = (b * E + e[:, None]) * L + t[None, :]
        tl.store(du_ptr + out_offs, (hB * dt + dskip[:, None] * gg).to(du_ptr.dtype.element_ty), mask=m_et)
        tl.store(ddelta_ptr + out_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_et)
        if HAS_Z:
            tl.store(dz_ptr + out_offs, (y * dz_dy).to(dz_ptr.dtype.element_ty), mask=m_et)
        dD += tl.sum(gg * x, axis=1)
        dbias_sum += tl.sum(ddt, axis=1)
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


def _grid(batch, n_groups, group_size):
    return lambda meta: (batch * n_groups * triton.cdiv(group_size, meta["BLOCK_E"]),)


def _smallest(configs, name):
    return min(c.kwargs[name] for c in configs)


_log = logging.getLogger("dmm_kernels.triton")
_logged: set = set()


def _log_choice(kernel):
    """Log each configuration the autotuner picks, once per tuning key."""
    for key, config in kernel.cache.items():
        if (kernel.base_fn.__name__, key) not in _logged:
            _logged.add((kernel.base_fn.__name__, key))
            _log.info("%s: autotuned %s for (batch, E, L, N, T_CONTIG, dtypes) = %s",
                      kernel.base_fn.__name__, config, key)


def _launcher(kernel, config):
    """The autotuned kernel, or (config given: tests, reports) the plain kernel with that
    configuration's meta-parameters."""
    return (kernel, {}) if config is None else (kernel.fn, config.all_kwargs())


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *, layout="bel",
             dt_proj_weight=None, out_dtype=None, config=None):
    """out, last_state of the selective scan.

    layout "bel": u, delta, z (batch, E, L), the op's layout; "ble": (batch, L, E), the block's,
    where `delta` may be dt_low (batch, L, R) with dt_proj_weight (E, R) folded in. B, C:
    (batch, [G,] N, L) in "bel", (batch, L, N) views in "ble". config: a triton.Config to run
    instead of autotuning."""
    ui, ti = (1, 2) if layout == "bel" else (2, 1)
    batch, E, L = u.shape[0], u.shape[ui], u.shape[ti]
    N = A.shape[1]
    n_groups = 1 if B.dim() == 3 else B.shape[1]
    torch_acc, acc = _acc(u, delta, A, B, C, D, z, delta_bias)
    A, D, delta_bias = _contiguous(A, D, delta_bias)  # small, indexed flat by the kernels
    out = torch.empty(u.shape, device=u.device, dtype=out_dtype or u.dtype)
    last = torch.empty(batch, E, N, device=u.device, dtype=torch_acc)
    if out.numel() == 0:
        return out, last.zero_()
    if layout == "bel":
        sb, sc = _bc_strides(B), _bc_strides(C)
    else:  # (batch, L, N) views of x_dbl: b, g, n, t
        sb = (B.stride(0), 0, B.stride(2), B.stride(1))
        sc = (C.stride(0), 0, C.stride(2), C.stride(1))
    zz = z if z is not None else u
    has_proj = dt_proj_weight is not None
    R = dt_proj_weight.shape[1] if has_proj else 1
    kernel, meta = _launcher(scan_fwd_kernel, config)
    kernel[_grid(batch, n_groups, E // n_groups)](
        u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
        dt_proj_weight if has_proj else A, out, last,
        batch, E, L, N, R, n_groups, E // n_groups,
        u.stride(0), u.stride(ui), u.stride(ti),
        delta.stride(0), 0 if has_proj else delta.stride(ui), delta.stride(ti),
        delta.stride(2) if has_proj else 0,
        *sb, *sc, zz.stride(0), zz.stride(ui), zz.stride(ti),
        out.stride(0), out.stride(ui), out.stride(ti),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_DT_PROJ=has_proj, T_CONTIG=u.stride(ti) == 1,
        BLOCK_N=triton.next_power_of_2(N), ACC=acc, **meta,
    )
    if config is None:
        _log_choice(scan_fwd_kernel)
    return out, last


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *, config=None):
    """Gradients of the "bel"-layout scan, in the op's order and dtypes (numel-0 for absent).
    config: a triton.Config to run instead of autotuning."""
    batch, E, L = u.shape
    N = A.shape[1]
    n_groups = 1 if B.dim() == 3 else B.shape[1]
    group_size = E // n_groups
    torch_acc, acc = _acc(dout, u, delta, A, B, C, D, z, delta_bias)
    A, D, delta_bias = _contiguous(A, D, delta_bias)
    dev = u.device
    du = torch.empty(batch, E, L, device=dev, dtype=u.dtype)
    ddelta = torch.empty(batch, E, L, device=dev, dtype=delta.dtype)
    dz = torch.empty(batch, E, L, device=dev, dtype=z.dtype) if z is not None else None
    # Per batch row; every element is stored by the kernel (no fills), except with nothing to scan.
    dA = torch.empty(batch, E, N, device=dev, dtype=torch_acc)
    dD = torch.empty(batch, E, device=dev, dtype=torch_acc)
    dbias = torch.empty(batch, E, device=dev, dtype=torch_acc)
    bc_shape = (batch, N, L) if B.dim() == 3 else (batch, n_groups, N, L)
    if du.numel() == 0:
        dA, dD, dbias = dA.zero_(), dD.zero_(), dbias.zero_()
        dB = torch.zeros(bc_shape, device=dev, dtype=B.dtype)
        dC = torch.zeros(bc_shape, device=dev, dtype=C.dtype)
    else:
        # Sized for the smallest tiles any configuration uses; the kernel indexes with its own.
        configs = [config] if config else INTERPRETER_CONFIGS if INTERPRETING else BWD_CONFIGS
        max_chunks = triton.cdiv(L, _smallest(configs, "CHUNK"))
        max_blocks = triton.cdiv(group_size, _smallest(configs, "BLOCK_E"))
        entry = torch.empty(batch, max_chunks, E, N, device=dev, dtype=torch_acc)
        dB_part = torch.empty(batch, n_groups, max_blocks, N, L, device=dev, dtype=torch_acc)
        dC_part = torch.empty_like(dB_part)
        zz = z if z is not None else u
        kernel, meta = _launcher(scan_bwd_kernel, config)
        kernel[_grid(batch, n_groups, group_size)](
            dout, u, delta, A, B, C, D if D is not None else A, zz,
            delta_bias if delta_bias is not None else A,
            du, ddelta, dz if dz is not None else du, dA, dB_part, dC_part, dD, dbias, entry,
            batch, E, L, N, n_groups, group_size, max_chunks, max_blocks,
            *u.stride(), *delta.stride(), *_bc_strides(B), *_bc_strides(C), *zz.stride(),
            *dout.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), T_CONTIG=u.stride(2) == 1,
            BLOCK_N=triton.next_power_of_2(N), ACC=acc, **meta,
        )
        if config is None:
            _log_choice(scan_bwd_kernel)
        chosen = scan_bwd_kernel.best_config if config is None else config
        blocks = triton.cdiv(group_size, chosen.kwargs["BLOCK_E"])
        dB = dB_part[:, :, :blocks].sum(2).view(bc_shape).to(B.dtype)
        dC = dC_part[:, :, :blocks].sum(2).view(bc_shape).to(C.dtype)
    absent = torch.empty(0, device=dev)
    return (du, ddelta, dA.sum(0).to(A.dtype), dB, dC,
            dD.sum(0).to(D.dtype) if D is not None else absent,
            dz if z is not None else absent,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else absent)


def tuned_configs():
    """{kernel name: {tuning key: chosen configuration}} for the shapes run in this process."""
    return {k.base_fn.__name__: dict(k.cache) for k in (scan_fwd_kernel, scan_bwd_kernel)}
