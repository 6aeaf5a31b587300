"""Fused per-head q/k norm + RoPE + KV-cache write for one decode token (one launch).

``rope_cache(q, k, v, pos, k_cache, v_cache, slot_pos, inv_freq=..., ...)``, with q [B, H, D],
k [B, Hkv, D], v [B, Hkv, D] bf16 and ``pos`` a [1] int64 device tensor:

1. optional per-head RMSNorm of q and k (``q_norm`` / ``k_norm`` weights [D], ``norm_mode`` and
   ``norm_offset`` as in ``imp_kernels.rmsnorm``), result rounded to bf16;
2. rotate-half RoPE on the first R dims (pairs (i, i + R/2)), R = 2 * len(inv_freq): cos/sin are
   ``bf16(cos(float32(pos) * inv_freq[i]) * scaling)`` as transformers computes them, or read from
   a bf16 table row ``cos_table[pos]`` / ``sin_table[pos]`` ([P, R], e.g. ``rope_cos_sin``);
   the rotation is bf16 arithmetic: ``bf16(bf16(x·cos) + bf16(±x'·sin))``. Partial rotary
   (Qwen: R=64 of 256) passes dims >= R through; Gemma's proportional RoPE is R = D with zero
   frequencies beyond the rotated pairs (cos=1, sin=0 there, an exact identity);
3. q and k written back in place; k and v written to ``k_cache`` / ``v_cache`` [B, Hkv, S, D] at
   slot ``pos % S`` (``ring=True``, a sliding-window ring) or ``pos``, and ``slot_pos[slot] = pos``.

``v_mode``: ``"copy"`` (v as given), ``"norm"`` (weightless RMSNorm of v first, Gemma's v_norm;
v is also updated in place) or ``"from_k"`` (Gemma's K=V layers: v = weightless norm of the raw k
row, computed in the k block from the same mean square; ``v`` may be None). One block per head
row (q heads, k heads, then v heads), D/2 threads, each owning elements t and t + D/2; the
normalised row goes through shared memory so partners of a partial rotation are reachable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels.compat import cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import bf16_round, block_sum, check, ld_bf16, st_bf16, want
from imp_kernels.rmsnorm import rms_norm_torch

__all__ = ["rope_cache", "rope_cache_ref", "rope_cos_sin", "apply_rotary_torch", "MAX_D"]

MAX_D = 1024
_VMODES = {"copy": 1, "norm": 2, "from_k": 3}
_NMODES = {"fp32": 1, "llama": 2}


@device_jit(inline="always")
def _rotate(row, j, x, pos, inv_freq, half, use_table, cos_t, sin_t, scaling):
    if j >= 2 * half:
        return x
    i = j if j < half else j - half
    if use_table:
        c = ld_bf16(cos_t, pos * 2 * half + j)
        s = ld_bf16(sin_t, pos * 2 * half + j)
    else:
        f = np.float32(pos) * inv_freq[i]
        c = bf16_round(np.float32(math.cos(f)) * scaling)
        s = bf16_round(np.float32(math.sin(f)) * scaling)
    if j < half:
        return bf16_round(bf16_round(x * c) - bf16_round(row[j + half] * s))
    return bf16_round(bf16_round(x * c) + bf16_round(row[j - half] * s))


@jit
def _rope_cache_kernel(q, k, v, pos_arr, kc, vc, slot_pos, has_cache, n_heads, n_kv, d, cap, ring,
                       inv_freq, half, use_table, cos_t, sin_t, scaling, qw, kw, has_qn, has_kn,
                       nmode, noffset, eps, vmode):
    row = cuda.shared.array(MAX_D, np.float32)
    scratch = cuda.shared.array(32, np.float32)
    hb = cuda.blockIdx.x
    b = cuda.blockIdx.y
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    pos = pos_arr[0]
    slot = pos % cap if ring else pos
    # which row: 0 = q head, 1 = k head, 2 = v head
    kind = 0
    head = hb
    if hb >= n_heads:
        kind = 1
        head = hb - n_heads
        if head >= n_kv:
            kind = 2
            head -= n_kv
    if kind == 0:
        base = (b * n_heads + head) * d
        src = q
    elif kind == 1:
        base = (b * n_kv + head) * d
        src = k
    else:
        base = (b * n_kv + head) * d
        src = v
    e0 = t
    e1 = t + nt
    x0 = ld_bf16(src, base + e0)
    x1 = ld_bf16(src, base + e1)
    cbase = ((b * n_kv + head) * cap + slot) * d
    do_norm = (kind == 0 and has_qn) or (kind == 1 and (has_kn or vmode == 3)) or (kind == 2 and vmode == 2)
    inv = np.float32(1.0)
    if do_norm:
        ss = block_sum(x0 * x0 + x1 * x1, scratch)
        inv = np.float32(1.0) / np.float32(math.sqrt(np.float32(ss / np.float32(d)) + eps))
    if kind == 1 and vmode == 3:  # K=V: v = weightless norm of the raw k row, cached unrotated
        if has_cache:
            st_bf16(vc, cbase + e0, x0 * inv)
            st_bf16(vc, cbase + e1, x1 * inv)
    if kind == 2:
        if vmode == 2:
            x0 = bf16_round(x0 * inv)
            x1 = bf16_round(x1 * inv)
            st_bf16(v, base + e0, x0)
            st_bf16(v, base + e1, x1)
        if has_cache:
            st_bf16(vc, cbase + e0, x0)
            st_bf16(vc, cbase + e1, x1)
        return
    has_w = (kind == 0 and has_qn) or (kind == 1 and has_kn)
    if has_w:
        w = qw if kind == 0 else kw
        w0 = ld_bf16(w, e0)
        w1 = ld_bf16(w, e1)
        if nmode == 1:
            x0 = bf16_round(x0 * inv * (w0 + noffset))
            x1 = bf16_round(x1 * inv * (w1 + noffset))
        else:
            x0 = bf16_round(bf16_round(x0 * inv) * bf16_round(w0 + noffset))
            x1 = bf16_round(bf16_round(x1 * inv) * bf16_round(w1 + noffset))
    row[e0] = x0
    row[e1] = x1
    cuda.syncthreads()
    y0 = _rotate(row, e0, x0, pos, inv_freq, half, use_table, cos_t, sin_t, scaling)
    y1 = _rotate(row, e1, x1, pos, inv_freq, half, use_table, cos_t, sin_t, scaling)
    st_bf16(src, base + e0, y0)
    st_bf16(src, base + e1, y1)
    if kind == 1 and has_cache:
        st_bf16(kc, cbase + e0, y0)
        st_bf16(kc, cbase + e1, y1)
        if b == 0 and head == 0 and t == 0:
            slot_pos[slot] = pos


def _check(q, k, v, pos, k_cache, v_cache, slot_pos, inv_freq, cos_table, sin_table, q_norm, k_norm,
           norm_mode, v_mode):
    kn = "rope_cache"
    check(q.dim() == 3 and q.dtype == torch.bfloat16 and q.is_contiguous(),
          f"{kn}: q must be contiguous bf16 [B, H, D], got {q.dtype} {list(q.shape)}")
    b, h, d = q.shape
    check(d % 64 == 0 and d <= MAX_D, f"{kn}: head_dim {d} must be a multiple of 64 up to {MAX_D}")
    check(k.dim() == 3 and k.shape[0] == b and k.shape[2] == d and h % k.shape[1] == 0,
          f"{kn}: k must be [B, Hkv, D] with Hkv dividing H={h}, got {list(k.shape)}")
    hkv = k.shape[1]
    want(k, "k", kn, torch.bfloat16, (b, hkv, d))
    want(pos, "pos", kn, torch.int64, (1,))
    check(v_mode in _VMODES, f"{kn}: v_mode must be one of {sorted(_VMODES)}, got {v_mode!r}")
    if v_mode != "from_k" or v is not None:
        want(v, "v", kn, torch.bfloat16, (b, hkv, d))
    check((k_cache is None) == (v_cache is None) == (slot_pos is None),
          f"{kn}: k_cache, v_cache and slot_pos go together")
    if k_cache is not None:
        check(k_cache.dim() == 4, f"{kn}: k_cache must be [B, Hkv, S, D], got {list(k_cache.shape)}")
        s = k_cache.shape[2]
        want(k_cache, "k_cache", kn, torch.bfloat16, (b, hkv, s, d))
        want(v_cache, "v_cache", kn, torch.bfloat16, (b, hkv, s, d))
        want(slot_pos, "slot_pos", kn, torch.int64, (s,))
    check((inv_freq is None) != (cos_table is None), f"{kn}: give inv_freq or cos_table/sin_table, not both")
    if inv_freq is not None:
        check(inv_freq.dim() == 1 and 2 * inv_freq.numel() <= d and inv_freq.numel() >= 1,
              f"{kn}: inv_freq must be float32 [R/2] with R <= head_dim {d}, got {list(inv_freq.shape)}")
        want(inv_freq, "inv_freq", kn, torch.float32, (inv_freq.numel(),))
    else:
        check(cos_table.dim() == 2 and cos_table.shape[1] <= d and cos_table.shape[1] % 2 == 0,
              f"{kn}: cos_table must be bf16 [P, R] with even R <= {d}, got {list(cos_table.shape)}")
        want(cos_table, "cos_table", kn, torch.bfloat16, tuple(cos_table.shape))
        want(sin_table, "sin_table", kn, torch.bfloat16, tuple(cos_table.shape))
    for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
        if w is not None:
            want(w, name, kn, torch.bfloat16, (d,))
    check(norm_mode in _NMODES, f"{kn}: norm_mode must be 'fp32' or 'llama', got {norm_mode!r}")
    return b, h, hkv, d


def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, pos: torch.Tensor,
               k_cache: torch.Tensor | None, v_cache: torch.Tensor | None, slot_pos: torch.Tensor | None, *,
               inv_freq: torch.Tensor | None = None, cos_table: torch.Tensor | None = None,
               sin_table: torch.Tensor | None = None, scaling: float = 1.0, ring: bool = False,
               q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None,
               norm_mode: str = "fp32", norm_offset: float = 0.0, eps: float = 1e-6,
               v_mode: str = "copy") -> None:
    """Norm + RoPE q and k in place and append k/v to the cache at ``pos`` (see module doc).
    No allocation, no host sync: ``pos`` is read on the device."""
    b, h, hkv, d = _check(q, k, v, pos, k_cache, v_cache, slot_pos, inv_freq, cos_table, sin_table,
                          q_norm, k_norm, norm_mode, v_mode)
    vm = _VMODES[v_mode]
    qb = q.view(torch.uint16).reshape(-1)
    kb = k.view(torch.uint16).reshape(-1)
    vb = v.view(torch.uint16).reshape(-1) if v is not None else kb
    has_cache = k_cache is not None
    kc = k_cache.view(torch.uint16).reshape(-1) if has_cache else kb
    vc = v_cache.view(torch.uint16).reshape(-1) if has_cache else kb
    sp = slot_pos if has_cache else pos
    cap = k_cache.shape[2] if has_cache else 1
    use_table = cos_table is not None
    half = (inv_freq.numel() if not use_table else cos_table.shape[1] // 2)
    f = inv_freq if not use_table else pos.view(torch.float32)  # unused float32 placeholder
    ct = cos_table.view(torch.uint16).reshape(-1) if use_table else kb
    st = sin_table.view(torch.uint16).reshape(-1) if use_table else kb
    qw = q_norm.view(torch.uint16) if q_norm is not None else kb
    kw = k_norm.view(torch.uint16) if k_norm is not None else kb
    rows = h + hkv + (hkv if vm in (1, 2) else 0)
    launch(_rope_cache_kernel, (rows, b), d // 2, qb, kb, vb, pos, kc, vc, sp, int(has_cache), h, hkv, d,
           cap, int(ring), f, half, int(use_table), ct, st, np.float32(scaling), qw, kw,
           int(q_norm is not None), int(k_norm is not None), _NMODES[norm_mode], np.float32(norm_offset),
           np.float32(eps), vm)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, *,
                 scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] int64 -> cos, sin [T, R] in ``dtype`` (R = 2 * len(inv_freq)), computed in
    fp32 from the fp32 inverse frequencies and cast, as transformers does; also the layout of
    ``rope_cache``'s ``cos_table`` / ``sin_table``."""
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def apply_rotary_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first R = ``cos.shape[-1]`` dims of x [..., D] in x's dtype: pairs
    (i, i + R/2), ``x·cos + rotate_half(x)·sin``; dims >= R pass through."""
    r = cos.shape[-1]
    rot = x[..., :r]
    half = r // 2
    rotated = rot * cos + torch.cat((-rot[..., half:], rot[..., :half]), dim=-1) * sin
    return rotated if r == x.shape[-1] else torch.cat((rotated, x[..., r:]), dim=-1)


def rope_cache_ref(q, k, v, pos, k_cache, v_cache, slot_pos, *, inv_freq=None, cos_table=None,
                   sin_table=None, scaling=1.0, ring=False, q_norm=None, k_norm=None, norm_mode="fp32",
                   norm_offset=0.0, eps=1e-6, v_mode="copy") -> None:
    """Torch reference of ``rope_cache`` (same arguments): ``rms_norm_torch``, ``rope_cos_sin``
    and ``apply_rotary_torch``, then index writes into the cache at slot ``pos`` (or ``pos % S``)."""
    _check(q, k, v, pos, k_cache, v_cache, slot_pos, inv_freq, cos_table, sin_table, q_norm, k_norm,
           norm_mode, v_mode)
    k_raw = k.clone()
    if v_mode == "norm":
        v.copy_(rms_norm_torch(v, None, eps))
    qn = rms_norm_torch(q, q_norm, eps, mode=norm_mode, offset=norm_offset) if q_norm is not None else q
    kn = rms_norm_torch(k, k_norm, eps, mode=norm_mode, offset=norm_offset) if k_norm is not None else k
    if cos_table is not None:
        cos, sin = cos_table[pos], sin_table[pos]
    else:
        cos, sin = rope_cos_sin(inv_freq, pos, torch.bfloat16, scaling=scaling)
    # cos/sin are [1, R]: they broadcast over [B, H, D]'s leading dims
    q.copy_(apply_rotary_torch(qn, cos, sin))
    k.copy_(apply_rotary_torch(kn, cos, sin))
    if k_cache is not None:
        vv = rms_norm_torch(k_raw, None, eps) if v_mode == "from_k" else v
        slot = pos % k_cache.shape[2] if ring else pos
        k_cache.index_copy_(2, slot, k[:, :, None])
        v_cache.index_copy_(2, slot, vv[:, :, None])
        slot_pos.index_copy_(0, slot, pos)


def kernel_sigs(T) -> dict:
    """Argument types of the kernel as the wrapper launches it (for imp_kernels.bench.ptx_report)."""
    sig = (T.U16, T.U16, T.U16, T.I64, T.U16, T.U16, T.I64, T.I, T.I, T.I, T.I, T.I, T.I, T.F32A, T.I, T.I,
           T.U16, T.U16, T.F, T.U16, T.U16, T.I, T.I, T.I, T.F, T.F, T.I)
    return {"rope_cache": (_rope_cache_kernel, sig)}
