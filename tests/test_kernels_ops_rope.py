"""Fused q/k norm + RoPE + KV-cache write (imp_kernels.rope) under the CUDA simulator, against
the module's torch reference and imp_core's norms / Rotary."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.layers.rope import Rotary, default_inv_freq, proportional_inv_freq
from imp_kernels.errors import KernelError
from imp_kernels.rope import rope_cache, rope_cache_ref, rope_cos_sin
from kernel_oracles import rope_cache_engine

pytestmark = sim_skip
NAN = float("nan")


def _ulps(a, b) -> int:
    return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())


def _case(name):
    # (B, H, Hkv, D, inv_freq, cap, ring, pos, norm, offset, mode, v_mode)
    if name == "qwen_partial":  # 64 of 256 rotated -> tiny: 32 of 128, zero-centred q/k norms
        return 1, 4, 2, 128, default_inv_freq(1e7, 32), 24, False, 17, True, 1.0, "fp32", "copy"
    if name == "gemma_sliding_ring":  # full rotation, ring wrap-around, v_norm
        return 2, 4, 2, 64, default_inv_freq(1e4, 64), 8, True, 21, True, 0.0, "fp32", "norm"
    if name == "gemma_global_kv":  # proportional: pairs (i, i+64) of 128, i < 16; K = V
        return 1, 4, 1, 128, proportional_inv_freq(1e6, 128, 16), 40, False, 33, True, 0.0, "fp32", "from_k"
    if name == "mistral_llama":  # no q/k norm, theta 1e9
        return 1, 8, 2, 64, default_inv_freq(1e9, 64), 16, False, 9, False, 0.0, "llama", "copy"
    raise KeyError(name)


def _inputs(b, h, hkv, d, cap, pos, seed):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, d, generator=g) * 2).bfloat16()
    k = (torch.randn(b, hkv, d, generator=g) * 2).bfloat16()
    v = torch.randn(b, hkv, d, generator=g).bfloat16()
    kc = torch.randn(b, hkv, cap, d, generator=g).bfloat16()
    vc = torch.randn(b, hkv, cap, d, generator=g).bfloat16()
    sp = torch.full((cap,), -1, dtype=torch.int64)
    sp[: cap // 2] = torch.randperm(cap, generator=g)[: cap // 2]  # partially filled
    qw = (torch.randn(d, generator=g) * 0.3 + 0.5).bfloat16()
    kw = (torch.randn(d, generator=g) * 0.3 + 0.5).bfloat16()
    return q, k, v, kc, vc, sp, qw, kw, torch.tensor([pos])


@pytest.mark.parametrize("name,table", [
    ("qwen_partial", False), ("gemma_sliding_ring", False), ("gemma_global_kv", False), ("mistral_llama", False),
    ("gemma_global_kv", True), ("mistral_llama", True),  # cos/sin read from a bf16 table
])
def test_rope_cache_matches_reference(name, table):
    b, h, hkv, d, inv, cap, ring, p, norm, off, mode, vmode = _case(name)
    q, k, v, kc, vc, sp, qw, kw, pos = _inputs(b, h, hkv, d, cap, p, seed=len(name) + table)
    kw_args = dict(ring=ring, q_norm=qw if norm else None, k_norm=kw if norm else None, norm_mode=mode,
                   norm_offset=off, eps=1e-6, v_mode=vmode)
    if table:
        cos, sin = Rotary(inv).cos_sin(torch.arange(64), torch.bfloat16)
        kw_args.update(cos_table=cos.contiguous(), sin_table=sin.contiguous())
    else:
        kw_args.update(inv_freq=inv)
    vin = None if vmode == "from_k" else v
    ref = [t.clone() if t is not None else None for t in (q, k, vin, kc, vc, sp)]
    got = [t.clone() if t is not None else None for t in (q, k, vin, kc, vc, sp)]
    rope_cache_ref(ref[0], ref[1], ref[2], pos, ref[3], ref[4], ref[5], **kw_args)
    # the engine's path (imp_core rms_norm + Rotary/apply_rotary) writes the same bits
    eng = [t.clone() if t is not None else None for t in (q, k, vin, kc, vc, sp)]
    rope_cache_engine(eng[0], eng[1], eng[2], pos, eng[3], eng[4], eng[5], **kw_args)
    for e, r in zip(eng, ref):
        assert (e is None and r is None) or torch.equal(e, r)
    # poison every slot the kernel must write
    slot = p % cap if ring else p
    got[3][:, :, slot] = NAN
    got[4][:, :, slot] = NAN
    got[5][slot] = -7
    rope_cache(got[0], got[1], got[2], pos, got[3], got[4], got[5], **kw_args)
    for a, r, what in zip(got, ref, ("q", "k", "v", "k_cache", "v_cache")):
        if a is None:
            continue
        assert torch.isfinite(a.float()).all(), what
        assert _ulps(a, r) <= 1, what  # cos/sin may round differently (fp32 libm) by one bf16 ulp
        assert (a != r).float().mean() < 0.02, what
    assert torch.equal(got[5], ref[5])
    untouched = [s for s in range(cap) if s != slot]
    assert torch.equal(got[3][:, :, untouched], kc[:, :, untouched])

    # independent float64 check of the rotation itself (no norms, to isolate RoPE)
    if not norm and not table:
        ang = p * inv.double()
        c, s = ang.cos(), ang.sin()
        r2 = inv.numel()
        x = q.double()
        x1, x2 = x[..., :r2], x[..., r2:2 * r2]
        want = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * r2:]), dim=-1)
        assert rel_err(got[0], want) < 1e-2


def test_rope_cos_sin_matches_rotary():
    for inv in (default_inv_freq(1e4, 64), proportional_inv_freq(1e6, 128, 16)):
        pos = torch.arange(300)
        for got, want in zip(rope_cos_sin(inv, pos, torch.bfloat16, scaling=0.7),
                             Rotary(inv, attention_scaling=0.7).cos_sin(pos, torch.bfloat16)):
            assert torch.equal(got, want)


def test_rope_cache_without_cache_and_bad_args():
    q, k, v, kc, vc, sp, qw, kw, pos = _inputs(1, 2, 1, 64, 8, 5, seed=3)
    inv = default_inv_freq(1e4, 64)
    qr, kr = q.clone(), k.clone()
    rope_cache_ref(qr, kr, v, pos, None, None, None, inv_freq=inv)
    rope_cache(q, k, v, pos, None, None, None, inv_freq=inv)
    assert _ulps(q, qr) <= 1 and _ulps(k, kr) <= 1
    with pytest.raises(KernelError):
        rope_cache(q, k, v, pos, kc, vc, None, inv_freq=inv)  # slot_pos missing
    with pytest.raises(KernelError):
        rope_cache(q, k, v, pos.int(), kc, vc, sp, inv_freq=inv)  # int32 position
    with pytest.raises(KernelError):
        rope_cache(q[:, :, :48].contiguous(), k, v, pos, None, None, None, inv_freq=inv)
