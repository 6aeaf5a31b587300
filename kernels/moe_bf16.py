"""BF16 MoE GEMV for decode: top-k routed experts (+ an optional shared expert) in two launches.

Layout (native, no repack): ``gate_up`` bf16 [E, 2I, H] (per expert rows 0..I-1 gate, I..2I-1 up:
the fused layout Qwen3.6 / Gemma-4 publish), ``down`` bf16 [E, H, I]; the shared expert is
``(gate_up [1, 2I_s, H], down [1, H, I_s])`` and its I_s may differ from I (then the scratch
``h`` is [M, S, max(I, I_s)], S = k + 1). ``topk_ids`` (int32/int64 [M, k]) and ``topk_weights``
(float32 [M, k]) are read on the device: no host sync, no allocation, graph-capturable.

CUDA-core fp32 FMA on 16-byte loads (8 bf16 per lane and load; bf16 -> fp32 is a shift, the
products are exact, sums fp32). Needs H % 8 == 0 and I % 8 == 0.
Launch 1 (grid ceil(max(I, I_s)/8) x M*S, 8 warps): warp w of block (b, slot) owns intermediate row
``i = 8b + w`` of one (token m, slot j) pair; its lanes stride the H columns of the gate row and
the up row (256 columns per warp step, two steps in flight), a warp butterfly sums, and lane 0
writes ``act(gate) * up`` (SiLU or GELU-tanh) in fp32 to ``h[m, j, i]``: the activation is fused.
Launch 2 (grid ceil(H/8) x M, 8 warps): warp w owns output row ``n = 8b + w`` of token m and walks
the S slots: ``sum_j coef_j * down_e(j)[n, :] . h[m, j, :]`` with coef_j = topk_weight (routed) or
sigmoid(shared_gate_logit[m]) / 1 (shared), then stores bf16/fp32 out (+ fused residual).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import cuda
from imp_kernels.errors import KernelError
from imp_kernels.gguf_common import bf16_hi, bf16_lo, warp_sum
from imp_kernels.launch import device_jit, jit, launch, require_aligned
from imp_kernels.mma_frag import store_out
from imp_kernels.moe_common import GELU_TANH, SILU, act as _act, check_h, check_out, check_residual
from imp_kernels.moe_common import check_routing, check_shared_logit, expert_id as _expert, logit_args, moe_ref_combine
from imp_kernels.moe_common import out_args, scratch_shape, warmup_moe

__all__ = ["warmup", "moe_bf16", "moe_bf16_ref", "SILU", "GELU_TANH", "moe_bf16_scratch_shape"]

ROWS = 8  # warps per block = rows per block
moe_bf16_scratch_shape = scratch_shape  # (m, topk, inter, shared_inter=None)


@device_jit(inline="always")
def _dot8_bf16(w, xq):
    """8 bf16 weights (4 words) . 8 bf16 activations (4 words), fp32."""
    s = np.float32(0.0)
    for i in range(4):
        s += bf16_lo(w[i]) * bf16_lo(xq[i]) + bf16_hi(w[i]) * bf16_hi(xq[i])
    return s


@device_jit(inline="always")
def _dot8_f32(w, ha, hb):
    """8 bf16 weights (4 words) . 8 fp32 activations (two 4-word quads of float bits)."""
    return (bf16_lo(w[0]) * ptx.bits_to_f32(ha[0]) + bf16_hi(w[0]) * ptx.bits_to_f32(ha[1])
            + bf16_lo(w[1]) * ptx.bits_to_f32(ha[2]) + bf16_hi(w[1]) * ptx.bits_to_f32(ha[3])
            + bf16_lo(w[2]) * ptx.bits_to_f32(hb[0]) + bf16_hi(w[2]) * ptx.bits_to_f32(hb[1])
            + bf16_lo(w[3]) * ptx.bits_to_f32(hb[2]) + bf16_hi(w[3]) * ptx.bits_to_f32(hb[3]))


@jit
def _moe_bf16_gu_kernel(x32, hdim, ids, topk, e_count, gu32, inter, sh32, sh_inter, n_slots, h_stride,
                        act_kind, h):
    lane = cuda.threadIdx.x & 31
    warp = cuda.threadIdx.x >> 5
    slot = cuda.blockIdx.y
    m = slot // n_slots
    j = slot - m * n_slots
    i = cuda.blockIdx.x * ROWS + warp
    e = _expert(ids, m, j, topk, e_count)
    w32 = gu32
    ni = inter
    if j >= topk:
        w32 = sh32
        ni = sh_inter
    if i < ni:  # warp-uniform
        hw = hdim >> 1  # words per row
        gbase = (e * 2 * ni + i) * hw
        ubase = gbase + ni * hw
        xbase = m * hw
        zw = np.uint32(0)
        zq = (zw, zw, zw, zw)
        ag = np.float32(0.0)
        au = np.float32(0.0)
        col = lane * 8
        while col < hdim:  # two 256-column steps in flight
            c1 = col + 256
            wg0 = ptx.ld_v4(w32, gbase + (col >> 1))
            wu0 = ptx.ld_v4(w32, ubase + (col >> 1))
            x0 = ptx.ld_v4_cached(x32, xbase + (col >> 1))
            wg1, wu1, x1 = zq, zq, zq
            if c1 < hdim:
                wg1 = ptx.ld_v4(w32, gbase + (c1 >> 1))
                wu1 = ptx.ld_v4(w32, ubase + (c1 >> 1))
                x1 = ptx.ld_v4_cached(x32, xbase + (c1 >> 1))
            ag += _dot8_bf16(wg0, x0) + _dot8_bf16(wg1, x1)
            au += _dot8_bf16(wu0, x0) + _dot8_bf16(wu1, x1)
            col += 512
        gate = warp_sum(ag)
        up = warp_sum(au)
        if lane == 0:
            h[slot * h_stride + i] = _act(gate, act_kind) * up


@jit
def _moe_bf16_dn_kernel(h32, h_stride, ids, wts, topk, e_count, dn32, inter, sh32, sh_inter, logit,
                        has_logit, n_slots, out, n_cols, out_f32, res, has_res):
    lane = cuda.threadIdx.x & 31
    warp = cuda.threadIdx.x >> 5
    n = cuda.blockIdx.x * ROWS + warp
    m = cuda.blockIdx.y
    if n < n_cols:  # warp-uniform
        zw = np.uint32(0)
        zq = (zw, zw, zw, zw)
        acc = np.float32(0.0)
        for j in range(n_slots):
            e = _expert(ids, m, j, topk, e_count)
            w32 = dn32
            ni = inter
            if j < topk:
                coef = wts[m * topk + j]
            else:
                w32 = sh32
                ni = sh_inter
                coef = np.float32(1.0)
                if has_logit:
                    coef = np.float32(1.0) / (np.float32(1.0) + math.exp(-logit[m]))
            hw = ni >> 1
            wbase = (e * n_cols + n) * hw
            hbase = (m * n_slots + j) * h_stride
            s = np.float32(0.0)
            col = lane * 8
            while col < ni:  # two 256-column steps in flight
                c1 = col + 256
                w0 = ptx.ld_v4(w32, wbase + (col >> 1))
                ha0 = ptx.ld_v4_cached(h32, hbase + col)
                hb0 = ptx.ld_v4_cached(h32, hbase + col + 4)
                w1, ha1, hb1 = zq, zq, zq
                if c1 < ni:
                    w1 = ptx.ld_v4(w32, wbase + (c1 >> 1))
                    ha1 = ptx.ld_v4_cached(h32, hbase + c1)
                    hb1 = ptx.ld_v4_cached(h32, hbase + c1 + 4)
                s += _dot8_f32(w0, ha0, hb0) + _dot8_f32(w1, ha1, hb1)
                col += 512
            acc += coef * s
        acc = warp_sum(acc)
        if lane == 0:
            store_out(out, out_f32, res, has_res, m, n_cols, n, acc)


def _check(x, ids, wts, gate_up, down, out, h, shared, shared_gate_logit, residual):
    name = "moe_bf16"
    m, hdim = check_routing(name, x, ids, wts, h_multiple=8)
    for what, t in (("gate_up", gate_up), ("down", down)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bfloat16 or t.dim() != 3 or not t.is_contiguous():
            raise KernelError(f"{name}: {what} must be a contiguous bf16 [E, rows, cols] expert stack")
    e, two_i, k_gu = gate_up.shape
    inter = two_i // 2
    if two_i % 2 or k_gu != hdim or tuple(down.shape) != (e, hdim, inter) or inter % 8:
        raise KernelError(f"{name}: need gate_up [E, 2I, {hdim}] and down [E, {hdim}, I] with I % 8 == 0, got "
                          f"gate_up {list(gate_up.shape)}, down {list(down.shape)}")
    topk = ids.shape[1]
    sh_inter = 0
    if shared is not None:
        if not isinstance(shared, (tuple, list)) or len(shared) != 2:
            raise KernelError(f"{name}: shared must be (gate_up [1, 2I_s, H], down [1, H, I_s]) bf16")
        sgu, sdn = shared
        for what, t in (("shared gate_up", sgu), ("shared down", sdn)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bfloat16 or t.dim() != 3 or not t.is_contiguous():
                raise KernelError(f"{name}: {what} must be a contiguous bf16 [1, rows, cols] tensor")
        sh_inter = sgu.shape[1] // 2
        if sgu.shape[0] != 1 or sgu.shape[1] % 2 or sgu.shape[2] != hdim or tuple(sdn.shape) != (1, hdim, sh_inter) \
                or sh_inter % 8:
            raise KernelError(f"{name}: shared must be gate_up [1, 2I_s, {hdim}], down [1, {hdim}, I_s] with "
                              f"I_s % 8 == 0, got {list(sgu.shape)}, {list(sdn.shape)}")
    check_shared_logit(name, shared, shared_gate_logit, m, f" (or [{m}, 1])")
    want_h = scratch_shape(m, topk, inter, sh_inter if shared is not None else None)
    check_h(name, h, want_h)
    check_out(name, out, m, hdim)
    check_residual(name, residual, out)
    for t in (x, ids, wts, gate_up, down, out, h) + tuple(shared or ()):
        if t.device != x.device:
            raise KernelError(f"{name}: all tensors must be on {x.device}, got one on {t.device}")
    return m, hdim, e, inter, sh_inter, topk, want_h[1], want_h[2]


def moe_bf16(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU, shared=None,
             shared_gate_logit=None, residual=None) -> None:
    """``out[m] = sum_j w[m,j] * down_e(act(gate_e x) * up_e x) (+ sigmoid(l[m]) * shared) (+ res)``.

    gate_up bf16 [E, 2I, H], down bf16 [E, H, I]; shared: optional (gate_up [1, 2I_s, H],
    down [1, H, I_s]); h: fp32 scratch of ``moe_bf16_scratch_shape``. No allocation, no host sync."""
    m, hdim, e_count, inter, sh_inter, topk, n_slots, h_stride = _check(
        x, topk_ids, topk_weights, gate_up, down, out, h, shared, shared_gate_logit, residual)
    sgu, sdn = shared if shared is not None else (gate_up[:1], down[:1])  # dummies: never read
    require_aligned("moe_bf16", x, gate_up, down, h, sgu, sdn)
    grid_gu = (-(-max(inter, sh_inter) // ROWS), m * n_slots)
    launch(_moe_bf16_gu_kernel, grid_gu, 32 * ROWS,
           x.view(torch.int32).reshape(-1), hdim, topk_ids.reshape(-1), topk, e_count,
           gate_up.view(torch.int32).reshape(-1), inter, sgu.view(torch.int32).reshape(-1), sh_inter,
           n_slots, h_stride, int(activation), h.reshape(-1))
    launch(_moe_bf16_dn_kernel, (-(-hdim // ROWS), m), 32 * ROWS,
           h.view(torch.int32).reshape(-1), h_stride, topk_ids.reshape(-1), topk_weights.reshape(-1), topk,
           e_count, down.view(torch.int32).reshape(-1), inter, sdn.view(torch.int32).reshape(-1), sh_inter,
           *logit_args(shared_gate_logit, topk_weights), n_slots, *out_args(out, hdim, residual))


def moe_bf16_ref(x, topk_ids, topk_weights, gate_up, down, out, h, *, activation: int = SILU, shared=None,
                 shared_gate_logit=None, residual=None) -> None:
    """Torch reference of ``moe_bf16`` (same arguments; fills ``h`` too): fp32 math on the bf16 values."""
    _check(x, topk_ids, topk_weights, gate_up, down, out, h, shared, shared_gate_logit, residual)

    def experts(j, e):
        if j is None:
            return shared[0][0].float(), shared[1][0].float()
        return gate_up[e].float(), down[e].float()

    moe_ref_combine(x, topk_ids, topk_weights, experts, out, h, activation, shared_gate_logit, residual)


def warmup(device="cuda") -> None:
    """Compile and load both kernels for the specialisations real calls use (int32/int64 ids,
    bf16/fp32 out, +-residual, +-shared with and without its gate logit)."""
    e, inter, hdim = 2, 8, 64
    gu = torch.zeros(e, 2 * inter, hdim, dtype=torch.bfloat16, device=device)
    dn = torch.zeros(e, hdim, inter, dtype=torch.bfloat16, device=device)
    warmup_moe(moe_bf16, (gu, dn), hdim, inter, shared=(gu[:1].clone(), dn[:1].clone()), device=device)
