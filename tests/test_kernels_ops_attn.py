"""Decode attention kernel (imp_kernels.attn_decode) under the CUDA simulator: GQA groups,
ring / sliding window, partially filled caches, split-K merge, Qwen's output gate."""

from kernels_sim import rel_err, sim_skip  # noqa: I001  (must precede imp_kernels)

import pytest
import torch

from imp_core.layers.attention import eager_attention
from imp_kernels.attn_decode import (MAX_REP, MERGE_COLS, MERGE_THREADS, _attn_merge_kernel, attn_decode,
                                     attn_decode_plan, attn_decode_ref, default_splits)
from imp_kernels.errors import KernelError
from imp_kernels.launch import launch
from imp_kernels.ops_common import u32
from kernel_oracles import attn_decode_engine

pytestmark = sim_skip


def _cache(b, hkv, cap, d, pos, ring, seed, holes=2):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, hkv, cap, d, generator=g).bfloat16()
    v = torch.randn(b, hkv, cap, d, generator=g).bfloat16()
    sp = torch.full((cap,), -1, dtype=torch.int64)
    for p in range(max(0, pos - (cap if ring else pos + 1) + 1), pos + 1):  # what KVCache would hold
        sp[p % cap if ring else p] = p
    live = (sp >= 0).nonzero().flatten()
    sp[live[torch.randperm(live.numel(), generator=g)[:holes]]] = -1  # some empty slots in the middle
    sp[pos % cap if ring else pos] = pos  # the current token is always present
    return k, v, sp


@pytest.mark.parametrize("b,h,hkv,d,cap,pos,ring,window,scale,gated,splits", [
    (1, 4, 1, 64, 40, 29, False, None, 0.125, False, 1),    # GQA 4, one split writes out directly
    (1, 4, 1, 64, 40, 29, False, None, 0.125, False, 3),    # same, split-K + merge
    (2, 2, 2, 128, 16, 37, True, 16, 1.0, False, 2),        # ring wrapped twice, group 1, scale 1
    (1, 8, 1, 64, 48, 40, False, 20, 0.125, True, 2),       # window on a full cache, group 8, gate
    (1, 6, 2, 64, 64, 9, False, None, 0.125, False, 4),     # early position: some splits empty
    (1, 8, 1, 64, 48, 40, False, None, 0.125, False, 5),    # 5 splits of 1 tile: most merge groups idle
])
def test_attn_decode_matches_reference(b, h, hkv, d, cap, pos, ring, window, scale, gated, splits):
    seed = b * 100 + h * 10 + cap + splits
    k, v, sp = _cache(b, hkv, cap, d, pos, ring, seed)
    g = torch.Generator().manual_seed(seed + 1)
    q = (torch.randn(b, h, d, generator=g) * (d ** -0.25 if scale == 1.0 else 1.0)).bfloat16()
    gate = torch.randn(b, h * d, generator=g).bfloat16() if gated else None
    pos_t = torch.tensor([pos])
    plan = attn_decode_plan(b, hkv, d, cap, "cpu", splits=splits)
    if plan.part_o is not None:
        plan.part_o.fill_(float("nan"))
        plan.part_ml.fill_(float("nan"))
    out = torch.full((b, h, d), float("nan")).bfloat16()
    attn_decode(q, k, v, sp, pos_t, out, scale=scale, window=window, ring=ring, gate=gate, plan=plan)

    ref64 = eager_attention(q[:, :, None].double(), k.double(), v.double(), pos_t, sp, scale=scale,
                            window=window)[:, :, 0]
    if gate is not None:
        ref64 = ref64 * torch.sigmoid(gate.double().view(b, h, d))
    assert rel_err(out, ref64) < 8e-3
    out_ref = torch.full_like(out, float("nan"))
    attn_decode_ref(q, k, v, sp, pos_t, out_ref, scale=scale, window=window, ring=ring, gate=gate, plan=plan)
    assert rel_err(out_ref, ref64) < 2e-2
    assert rel_err(out, out_ref) < 2e-2
    # the module's reference is imp_core's eager attention, bit for bit
    out_eng = torch.full_like(out, float("nan"))
    attn_decode_engine(q, k, v, sp, pos_t, out_eng, scale=scale, window=window, ring=ring, gate=gate, plan=plan)
    assert torch.equal(out_ref, out_eng)


@pytest.mark.parametrize("n_rep,d,splits", [(3, 64, 70), (5, 128, 37)])
def test_attn_merge_many_splits(n_rep, d, splits):
    """The merge alone on random partials (some splits empty), against a float64 log-sum-exp merge:
    16 split groups x several rounds of 4, indices past the end, a partial last column chunk."""
    g = torch.Generator().manual_seed(splits)
    hkv, b = (2, 1) if d == 64 else (1, 1)
    h = n_rep * hkv
    part_o = torch.full((b, hkv, splits, MAX_REP, d), float("nan"))
    part_ml = torch.full((b, hkv, splits, MAX_REP, 2), float("nan"))
    part_o[:, :, :, :n_rep] = torch.randn(b, hkv, splits, n_rep, d, generator=g) * 3
    part_ml[..., :n_rep, 0] = torch.randn(b, hkv, splits, n_rep, generator=g) * 4
    part_ml[..., :n_rep, 1] = torch.rand(b, hkv, splits, n_rep, generator=g) * 5 + 0.5
    empty = torch.randperm(splits, generator=g)[: splits // 3]
    part_ml[:, :, empty, :, 0] = float("-inf")
    part_ml[:, :, empty, :, 1] = 0.0
    part_o[:, :, empty] = 0.0
    gate = torch.randn(b, h * d, generator=g).bfloat16()
    out = torch.full((b, h, d), float("nan")).bfloat16()
    chunks = -(-(n_rep * d // 4) // MERGE_COLS)
    launch(_attn_merge_kernel, (chunks, hkv, b), MERGE_THREADS, u32(part_o), part_ml.reshape(-1), h, hkv, n_rep, d,
           splits, out.view(torch.uint16).reshape(-1), gate.view(torch.uint16).reshape(-1), 1)

    m = part_ml[..., :n_rep, 0].double()
    wgt = torch.exp(m - m.amax(dim=2, keepdim=True))  # [b, hkv, splits, n_rep]
    num = (wgt[..., None] * part_o[:, :, :, :n_rep].double()).sum(2)
    den = (wgt * part_ml[..., :n_rep, 1].double()).sum(2)
    ref = (num / den[..., None]).reshape(b, h, d) * torch.sigmoid(gate.double().view(b, h, d))
    assert rel_err(out, ref) < 8e-3


def test_attn_splits_and_bad_args():
    assert default_splits(1, 2, 256, 4096) == 128       # Qwen full attention at 4k: 256 blocks of 2 tiles
    assert default_splits(1, 2, 256, 32768) == 256      # Qwen at 32k: 512 blocks of 4 warps (<= 4 per SM)
    assert default_splits(1, 8, 256, 1024) == 32        # Gemma sliding window ring
    assert default_splits(1, 8, 128, 32768) == 128      # Mistral at 32k: 1024 blocks of 2 warps (<= 8 per SM)
    assert default_splits(1, 2, 512, 32768) == 128      # Gemma global at 32k: 256 blocks of 8 warps
    assert default_splits(1, 2, 256, 32) == 1
    k, v, sp = _cache(1, 1, 16, 64, 5, False, 0)
    q = torch.randn(1, 2, 64).bfloat16()
    out = torch.empty(1, 2, 64).bfloat16()
    with pytest.raises(KernelError):
        attn_decode(q, k, v, sp.int(), torch.tensor([5]), out, scale=1.0)
    with pytest.raises(KernelError):
        attn_decode(torch.randn(1, 9, 64).bfloat16(), k, v, sp, torch.tensor([5]), torch.empty(1, 9, 64).bfloat16(),
                    scale=1.0)
    with pytest.raises(KernelError):
        attn_decode(q, k, v, sp, torch.tensor([5]), out, scale=1.0,
                    plan=attn_decode_plan(1, 2, 64, 16, "cpu", splits=2))  # workspace for 2 kv heads
