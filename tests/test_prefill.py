"""Prefill machinery on the CPU: the grouped MoE against the expert loop, the trimmed KV span and
the unmasked causal attention against the masked reference, the rules (MoE strategy, gated delta
rule, Phase 3b's form) as pure functions, Phase 3b's dense copies (same logits, roles honoured),
and a chunked prefill of every mini preset with the span against the same prefill without it."""

from __future__ import annotations

import pytest
import torch

from imp_core.bench.presets import find_preset
from imp_core.layers.attention import eager_attention, is_fresh_causal, sdpa_attention
from imp_core.layers.linear import Linear
from imp_core.layers.moe import Experts, moe_strategy
from imp_core.layers.gated_delta import prefill_rule
from imp_core.model.cache import KVCache
from imp_core.model.prefill_forms import COPY_FRACTION, build_prefill_forms, choose_prefill_form
from imp_core.model.synthetic import SyntheticWeights
from imp_core.model.synthetic_quant import mix_formats
from imp_core.model.walk import iter_instances
from imp_core.plugin.manager import load_plugins
from imp_core.quant import QTensor
from imp_core.run.generator import Generator


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_experts_equal_the_loop(dtype, monkeypatch):
    import imp_core.layers.moe as moe

    monkeypatch.setattr(moe, "GATHER_BLOCK_BYTES", 4 * 3 * 32 * 64 * 4 * 7)  # 7 tokens a block in fp32
    g = torch.Generator().manual_seed(3)
    e, h, i, n, k = 16, 64, 32, 50, 4
    ex = Experts((torch.randn(e, 2 * i, h, generator=g) / 8).to(dtype), (torch.randn(e, h, i, generator=g) / 8).to(dtype))
    x = torch.randn(n, h, generator=g).to(dtype)
    # experts 0..5 only: most experts receive no token (empty groups)
    ids = torch.stack([torch.randperm(6, generator=g)[:k] for _ in range(n)])
    w = torch.rand(n, k, generator=g)
    ref = ex.loop(x, ids, w)
    got = ex.grouped(x, ids, w)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert _rel(got, ref) < (1e-6 if dtype == torch.float32 else 1e-2)
    blocks = ex.gather_blocks(x, ids, w)  # the no-sync fallback, in blocks smaller than the prompt
    assert _rel(blocks, ref) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_moe_strategy_rule():
    assert moe_strategy(1, "cuda", True)[0] == "gather"
    assert moe_strategy(2048, "cuda", True)[0] == "grouped"
    assert moe_strategy(2048, "cuda", False)[0] == "gather_blocks" and "no host sync" in moe_strategy(2048, "cuda", False)[1]
    assert moe_strategy(2048, "cpu", True)[0] == "loop"


def test_gated_delta_prefill_rule():
    bf16, f32 = torch.bfloat16, torch.float32
    assert prefill_rule("cuda", bf16, True)[0] == "fla"
    assert prefill_rule("cuda", f32, True)[0] == "torch-chunk"  # fla refuses float32 inputs
    assert "imp[cuda]" in prefill_rule("cuda", bf16, False)[1] and prefill_rule("cuda", bf16, False)[0] == "torch-chunk"
    assert prefill_rule("cpu", bf16, True)[0] == "torch-chunk"


def test_prefill_form_rule():
    assert choose_prefill_form(0, 10)[0] == "none"
    assert choose_prefill_form(70, 100)[0] == "dense copies"
    assert choose_prefill_form(int(COPY_FRACTION * 100) + 1, 100)[0] == "per-layer dequant"
    assert choose_prefill_form(10, None)[0] == "per-layer dequant"


def test_fresh_causal_is_decided_by_shapes():
    assert is_fresh_causal(8, 8, None) and is_fresh_causal(8, 8, 8)
    assert not is_fresh_causal(8, 8, 4)  # the window bites inside the chunk
    assert not is_fresh_causal(8, 16, None) and not is_fresh_causal(1, 1, None)


@pytest.mark.parametrize("window", [None, 5])
def test_span_trims_keys_and_matches_the_full_cache(window):
    """A chunked prefill through a span-trimmed cache (and the unmasked causal call for the first
    chunk) gives the attention the full, masked cache gives."""
    g = torch.Generator().manual_seed(1)
    hkv, h, d, cap, t = 2, 4, 16, 32, 12
    cap_ring = window if window else cap
    full = KVCache(batch=1, num_kv_heads=hkv, head_dim=d, capacity=cap_ring, dtype=torch.float32,
                   device=torch.device("cpu"), window=window)
    trim = KVCache(batch=1, num_kv_heads=hkv, head_dim=d, capacity=cap_ring, dtype=torch.float32,
                   device=torch.device("cpu"), window=window)
    for start in (0, t):
        pos = torch.arange(start, start + t)
        q = torch.randn(1, h, t, d, generator=g)
        k = torch.randn(1, hkv, t, d, generator=g)
        v = torch.randn(1, hkv, t, d, generator=g)
        keys, values, kpos = full.update(k, v, pos)
        ref = eager_attention(q, keys, values, pos, kpos, scale=d ** -0.5, window=window)
        trim.span = (start, start + t)
        tk, tv, tpos = trim.update(k, v, pos)
        trim.span = None
        if window is None:
            assert tk.shape[2] == start + t  # only the filled slots
        got = sdpa_attention(q, tk, tv, pos, tpos, scale=d ** -0.5, window=window)
        assert _rel(got, ref) < 1e-5
    assert torch.equal(full.k, trim.k) and torch.equal(full.slot_pos, trim.slot_pos)


def _mini(name: str, fmt: str = "bf16", dtype=torch.float32):
    plugins = load_plugins(env={})
    preset = find_preset(plugins, name)
    family = preset.family
    cfg = family.config_from_dict(preset.config)
    mix = family.format_mixes().get(fmt)
    w = SyntheticWeights(family.synthetic_spec(cfg), device=torch.device("cpu"), dtype=dtype, seed=0,
                         progress=False, formats=mix_formats(mix) if mix else None)
    model = family.build(cfg, w)
    w.finish()
    return model, cfg


@pytest.mark.parametrize("name", ["qwen3.6-mini", "gemma-4-mini", "mistral-mini"])
def test_chunked_prefill_with_span_matches_without(name, monkeypatch):
    model, cfg = _mini(name)
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    with_span = Generator(model, 64, prefill_chunk=16)
    a = with_span.prefill(ids)
    no_span = Generator(model, 64, prefill_chunk=16)
    monkeypatch.setattr(no_span.cache, "set_span", lambda span: None)
    b = no_span.prefill(ids)
    assert torch.isfinite(a).all()
    assert _rel(a, b) < 1e-4
    # and the decode step after it reads the same cache
    with_span.token_buf.fill_(3)
    no_span.token_buf.fill_(3)
    assert _rel(with_span.decode_step(), no_span.decode_step()) < 1e-4


def test_phase_3b_dense_copies_keep_logits_and_roles():
    model, cfg = _mini("mistral-mini", "nvfp4")
    packed = [lin for lin in iter_instances(model, (Linear,)) if isinstance(lin.weight, QTensor)]
    assert packed
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(12)
    before = model.forward(ids, pos, model.new_cache(1, 16))
    line = build_prefill_forms(model, roles=frozenset({"mlp"}), dtype=model.dtype, device=torch.device("cpu"))
    assert line.startswith("dense copies")
    copied = [lin for lin in packed if lin.prefill_dense]
    assert copied and all("mlp" in lin.weight.name for lin in copied)
    assert len(copied) < len(packed)  # attention weights were outside the roles
    after = model.forward(ids, pos, model.new_cache(1, 16))
    assert torch.equal(before, after)  # the copies are the packed weights' own dequantisation


def test_walk_finds_nested_layers_once():
    a = Linear(torch.ones(2, 2))

    class Holder:
        def __init__(self):
            self.items = [a, {"x": a, "y": (Linear(torch.ones(1, 1)),)}]
            self.me = self

    assert len(list(iter_instances(Holder(), (Linear,)))) == 2


def test_prefill_chunk_from_the_memory_plan():
    from imp_core.run.preflight import SMALLEST_PREFILL_CHUNK, choose_prefill_chunk

    assert choose_prefill_chunk(None, 0, 10, 2048)[0] == 2048
    assert choose_prefill_chunk(10 * 2**30, 0, 2**20, 2048)[0] == 2048  # 2 GiB of transients in 5 GiB
    chunk, why = choose_prefill_chunk(2 * 2**30, 0, 2**20, 2048)  # 1 GiB budget: 1024 tokens
    assert chunk == 1024 and "2048 tokens would need 2.0 GiB" in why
    assert choose_prefill_chunk(2**20, 0, 2**20, 2048)[0] == SMALLEST_PREFILL_CHUNK


def test_wide_heads_take_the_expanded_causal_call(monkeypatch):
    """Heads wider than flash takes (Gemma-4's 512) go unmasked with expanded K/V heads (no
    enable_gqa, which would force torch's math kernel); same result as the masked reference."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 9, 320, generator=g)
    k = torch.randn(1, 2, 9, 320, generator=g)
    v = torch.randn(1, 2, 9, 320, generator=g)
    pos = torch.arange(9)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        seen.append((a[1].shape[1], kw.get("is_causal"), kw.get("enable_gqa", False), kw.get("attn_mask")))
        return real(*a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    got = sdpa_attention(q, k, v, pos, pos, scale=0.05)
    assert seen == [(4, True, False, None)]
    assert _rel(got, eager_attention(q, k, v, pos, pos, scale=0.05)) < 1e-5


def test_grouped_experts_count_without_bincount(monkeypatch):
    """torch.bincount reads min/max on the host on CUDA; the grouped path must not call it."""
    def no_bincount(*a, **kw):
        raise AssertionError("bincount syncs with the host on CUDA")

    monkeypatch.setattr(torch, "bincount", no_bincount)
    g = torch.Generator().manual_seed(8)
    ex = Experts(torch.randn(8, 16, 32, generator=g), torch.randn(8, 32, 8, generator=g))
    x, ids, w = torch.randn(9, 32, generator=g), torch.randint(0, 8, (9, 2), generator=g), torch.rand(9, 2, generator=g)
    assert _rel(ex.grouped(x, ids, w), ex.loop(x, ids, w)) < 1e-6


def test_phase_3b_reserves_the_cache(monkeypatch):
    import imp_core.model.phases as phases

    model, _ = _mini("mistral-mini", "nvfp4")
    free = 4 * 2**30
    monkeypatch.setattr(phases, "available_memory", lambda device: free)
    line = build_prefill_forms(model, roles=None, dtype=model.dtype, device=torch.device("cpu"), reserve=free - 2**20)
    assert line.startswith("per-layer dequant")  # what the cache will take is not offered to the copies
    assert not [lin for lin in iter_instances(model, (Linear,)) if lin.prefill_dense]
    assert build_prefill_forms(model, roles=None, dtype=model.dtype, device=torch.device("cpu")).startswith("dense")


def test_gather_blocks_dequantise_a_packed_stack_once(monkeypatch):
    import imp_core.layers.moe as moe
    from imp_core.quant.gguf_quantize import quantize_gguf

    monkeypatch.setattr(moe, "GATHER_BLOCK_BYTES", 2 * 3 * 32 * 64 * 4 * 3)  # 3 tokens a block in fp32
    g = torch.Generator().manual_seed(9)
    q = lambda w: QTensor("gguf:Q8_0", torch.from_numpy(quantize_gguf(w, "Q8_0")), tuple(w.shape))  # noqa: E731
    ex = Experts(q(torch.randn(4, 64, 64, generator=g) * 0.1), q(torch.randn(4, 64, 32, generator=g) * 0.1))
    calls = []
    real = QTensor.dequantize
    monkeypatch.setattr(QTensor, "dequantize", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    x, ids, w = torch.randn(10, 64, generator=g), torch.randint(0, 4, (10, 2), generator=g), torch.rand(10, 2, generator=g)
    got = ex.gather_blocks(x, ids, w)
    assert len(calls) == 2  # gate_up and down, once each for the 4 blocks
    assert _rel(got, ex.loop(x, ids, w)) < 1e-5
