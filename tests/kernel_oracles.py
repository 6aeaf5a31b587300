"""The engine's side of the kernel comparisons: the decode ops through imp_core's layers.

imp_kernels is a leaf library (it never imports imp_core), so each kernel module's torch
reference is its own code. The kernels must also reproduce what the engine computes; those
comparisons live here, on the tests' side, which may import both packages. Each ``*_engine``
function takes the same arguments as the kernel wrapper it stands for and writes the same
outputs. ``engine_cases`` turns the cases of ``imp_kernels.bench.ops_cases`` into "vs engine"
rows for ``tests/gpu/check_kernels_ops.py``.

This module imports no imp_kernels module at import time (the attention comparison imports
``imp_kernels.bench.ops_cases`` when it is built), so it does not decide whether numba runs the
CUDA simulator: simulator tests import ``kernels_sim`` first, as usual.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from imp_core.layers.attention import eager_attention
from imp_core.layers.causal_conv import causal_conv1d
from imp_core.layers.gated_delta import gated_rms_norm, recurrent_gated_delta_rule
from imp_core.layers.moe import softmax_topk
from imp_core.layers.norms import rms_norm
from imp_core.layers.rope import Rotary, apply_rotary
from imp_core.run.sampling import Sampler, SamplingParams

__all__ = ["rmsnorm_engine", "rope_cache_engine", "attend_decode", "attn_decode_engine", "route_engine", "gdn_decode_imp_core",
           "sample_engine", "sampling_params", "engine_cases"]


def rmsnorm_engine(x, weight, out, *, eps, mode="fp32", offset=0.0, residual=None, add=None, scale=None,
                   weight2=None, out2=None) -> None:
    """``imp_kernels.rmsnorm.rmsnorm`` through ``imp_core.layers.norms.rms_norm`` (the epilogue as
    Gemma's reference layer computes it: ``(add + norm) * scale`` in bf16)."""
    h = x
    if residual is not None:
        h = x + residual
        residual.copy_(h)
    o = rms_norm(h, weight, eps, mode=mode, offset=offset)
    o2 = rms_norm(h, weight2, eps, mode=mode, offset=offset) if weight2 is not None else None
    if add is not None:
        o = add + o
    if scale is not None:
        o = o * scale
    out.copy_(o)
    if o2 is not None:
        out2.copy_(o2)


def rope_cache_engine(q, k, v, pos, k_cache, v_cache, slot_pos, *, inv_freq=None, cos_table=None,
                      sin_table=None, scaling=1.0, ring=False, q_norm=None, k_norm=None, norm_mode="fp32",
                      norm_offset=0.0, eps=1e-6, v_mode="copy") -> None:
    """``imp_kernels.rope.rope_cache`` through imp_core's rms_norm and Rotary / apply_rotary, then
    index writes into the cache (as ``KVCache._write``)."""
    k_raw = k.clone()
    if v_mode == "norm":
        v.copy_(rms_norm(v, None, eps))
    qn = rms_norm(q, q_norm, eps, mode=norm_mode, offset=norm_offset) if q_norm is not None else q
    kn = rms_norm(k, k_norm, eps, mode=norm_mode, offset=norm_offset) if k_norm is not None else k
    if cos_table is not None:
        cos, sin = cos_table[pos], sin_table[pos]
    else:
        cos, sin = Rotary(inv_freq, attention_scaling=scaling).cos_sin(pos, torch.bfloat16)
    # apply_rotary wants [B, H, T, D] and cos/sin [T, R]
    q.copy_(apply_rotary(qn[:, :, None], cos, sin)[:, :, 0])
    k.copy_(apply_rotary(kn[:, :, None], cos, sin)[:, :, 0])
    if k_cache is not None:
        vv = rms_norm(k_raw, None, eps) if v_mode == "from_k" else v
        slot = pos % k_cache.shape[2] if ring else pos
        k_cache.index_copy_(2, slot, k[:, :, None])
        v_cache.index_copy_(2, slot, vv[:, :, None])
        slot_pos.index_copy_(0, slot, pos)


def attend_decode(q, k_cache, v_cache, slot_pos, pos, *, scale, window=None, gate=None):
    """One query token [B, H, D] through imp_core's eager attention, then the gate."""
    o = eager_attention(q[:, :, None], k_cache, v_cache, pos, slot_pos, scale=scale, window=window)[:, :, 0]
    if gate is not None:
        o = o * torch.sigmoid(gate.view(o.shape))
    return o


def attn_decode_engine(q, k_cache, v_cache, slot_pos, pos, out, *, scale, window=None, ring=False, gate=None,
                       plan=None) -> None:
    """``imp_kernels.attn_decode.attn_decode`` through imp_core's eager attention (bf16 scores,
    fp32 softmax, bf16 probabilities), then the gate in bf16."""
    out.copy_(attend_decode(q, k_cache, v_cache, slot_pos, pos, scale=scale, window=window, gate=gate))


def route_engine(x, weight, ids, weights, *, top_k, workspace=None, norm_scale=None, per_expert_scale=None,
                 eps=1e-6, extra_weight=None, extra_out=None, round_weights_bf16=False) -> None:
    """``imp_kernels.router.route`` through the engine's router code (rms_norm, softmax_topk; the
    extra rows as Qwen's shared-expert gate, a bf16 linear)."""
    if extra_weight is not None:
        extra_out.copy_(torch.nn.functional.linear(x, extra_weight))
    if norm_scale is not None:
        rn = rms_norm(x, None, eps) * norm_scale * (x.shape[1] ** -0.5)
        logits = torch.nn.functional.linear(rn, weight)
        w, i = softmax_topk(logits, top_k, renormalize=True)
        w = w * per_expert_scale[i]
    else:
        logits = torch.nn.functional.linear(x, weight)
        w, i = softmax_topk(logits, top_k, renormalize=True)
    ids.copy_(i)
    weights.copy_(w.bfloat16() if round_weights_bf16 else w)


def gdn_decode_imp_core(mixed, conv_state, conv_w, a, b, a_log, dt_bias, z, norm_w, state, out, *, eps, n_k_heads,
                        workspace=None) -> None:
    """``imp_kernels.gdn_decode.gdn_decode`` through ``imp_core.layers`` (causal_conv1d,
    recurrent_gated_delta_rule, gated_rms_norm), as the Qwen plugin's decode path runs it. Needs a
    K-1 column conv state (the engine's layout)."""
    bsz, hv, dk, dv = state.shape
    kconv = conv_w.shape[1]
    if conv_state.shape[2] != kconv - 1:
        raise ValueError("gdn_decode_imp_core: the engine keeps K-1 conv columns")
    kd = n_k_heads * dk
    y = causal_conv1d(mixed[:, :, None], conv_w, conv_state, activation=F.silu)[:, :, 0]
    q = y[:, :kd].reshape(bsz, 1, n_k_heads, dk)
    k = y[:, kd:2 * kd].reshape(bsz, 1, n_k_heads, dk)
    v = y[:, 2 * kd:].reshape(bsz, 1, hv, dv)
    g = -a_log.exp() * F.softplus(a.float() + dt_bias)
    o, st = recurrent_gated_delta_rule(q, k, v, g[:, None], b.sigmoid()[:, None], state)
    state.copy_(st)
    out.copy_(gated_rms_norm(o, z.view(bsz, 1, hv, dv), norm_w, eps).reshape(bsz, hv * dv))


def sampling_params(settings, seed: int) -> SamplingParams:
    """The engine's SamplingParams for ``imp_kernels.sample.SampleSettings`` and a seed."""
    return SamplingParams(**dataclasses.asdict(settings), seed=seed)


def sample_engine(logits, row_keys, step, tokens, *, params: SamplingParams, vocab: int) -> None:
    """One step of the engine's ``Sampler`` from step 0 (``row_keys`` are the seed's, as
    ``Sampler`` derives them); advances ``step`` like ``imp_kernels.sample.sample``."""
    tokens.copy_(Sampler(params, vocab, logits.device, batch=logits.shape[0]).sample(logits))
    step.add_(1)


def _attn_compare_engine(scale, window, plan):
    """The ops_cases attention comparison with imp_core's fp32 attention as the oracle."""
    from imp_kernels.bench.ops_cases import rel_err

    def compare(a, b):
        o32 = attend_decode(a["q"].float(), a["k_cache"].float(), a["v_cache"].float(), a["slot_pos"], a["pos"],
                            scale=scale, window=window,
                            gate=a["gate"].float() if a["gate"] is not None else None)
        e_k, e_r = rel_err(a["out"], o32), rel_err(b["out"], o32)
        return e_k < 1e-2, (f"rel err {e_k:.1e} vs imp_core fp32 attention (imp_core eager bf16: {e_r:.1e}), "
                            f"splits {plan.splits}")

    return compare


def engine_cases(cases: list) -> list:
    """A "vs engine" copy of every ``ops_cases`` case: same inputs, kernel and comparison, with the
    engine's implementation as the reference (for attention also imp_core's fp32 oracle)."""
    out = []
    for c in cases:
        kw = dict(c.extra.get("kwargs") or {})
        compare = c.compare
        if c.kernel == "rmsnorm":
            ref = lambda kw=kw, **a: rmsnorm_engine(**a, **kw)  # noqa: E731
            what = "imp_core rms_norm (+add)"
        elif c.kernel == "rope_cache":
            ref = lambda kw=kw, **a: rope_cache_engine(**a, **kw)  # noqa: E731
            what = "imp_core norm + apply_rotary + index_copy_"
        elif c.kernel == "attn_decode":
            ref = lambda kw=kw, **a: attn_decode_engine(**a, **kw)  # noqa: E731
            compare = _attn_compare_engine(kw["scale"], kw["window"], kw["plan"])
            what = "imp_core attend (eager) + gate"
        elif c.kernel == "gdn_decode":
            ref = lambda kw=kw, **a: gdn_decode_imp_core(**a, **kw)  # noqa: E731
            what = "imp_core conv + recurrent rule + gated norm"
        elif c.kernel == "router":
            ref = lambda kw=kw, **a: route_engine(**a, **kw)  # noqa: E731
            what = "imp_core router (linear + softmax_topk)"
        elif c.kernel == "sample":
            params = sampling_params(c.extra["params"], c.extra["seed"])
            ref = lambda params=params, **a: sample_engine(**a, params=params, vocab=a["logits"].shape[1])  # noqa: E731
            what = "imp_core Sampler"
        else:
            continue
        out.append(dataclasses.replace(c, shape=f"{c.shape} vs engine", ref=ref, compare=compare, torch_fn=None,
                                       torch_what=what))
    return out
