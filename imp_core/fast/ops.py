"""Thin adapters from imp's caches, norms and activations to imp_kernels, for the families'
decode steps. Every op writes into buffers the caller allocated once (no allocation and no host
sync here), so a step written with them can be captured in a CUDA graph.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from imp_core.layers.attention import sdpa_attention
from imp_core.model.cache import KVCache
from imp_core.plugin.attention_registry import AttentionBackend

SILU, GELU_TANH = "silu", "gelu_pytorch_tanh"


def kernels():
    """The imp_kernels modules the ops use (imported on first use: numba.cuda is heavy)."""
    import imp_kernels.compat  # noqa: F401  (numpy shim before numba.cuda)
    from imp_kernels import attn_decode, gdn_decode, rmsnorm, rope, router, sample

    return attn_decode, gdn_decode, rmsnorm, rope, router, sample


def norm(x: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, *, eps: float, mode: str = "fp32",
         offset: float = 0.0, residual: torch.Tensor | None = None, add: torch.Tensor | None = None,
         scale: torch.Tensor | None = None, weight2: torch.Tensor | None = None,
         out2: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of bf16 rows into ``out``; with ``residual``: residual += x first, then norm it;
    with ``add`` (may be ``out``): out = add + norm, then with ``scale`` (one bf16 element on the
    device): out *= scale, each op rounded to bf16 as in torch; with ``weight2``: also the norm
    with that weight into ``out2``."""
    kernels()[2].rmsnorm(x, weight, out, eps=eps, mode=mode, offset=offset, residual=residual, add=add, scale=scale,
                         weight2=weight2, out2=out2)
    return out


def gated_act(gate_up: torch.Tensor, out: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up`` of a fused [M, 2I] gate|up row into ``out`` [M, I] (bf16, as the
    reference's GatedMLP rounds)."""
    i = out.shape[-1]
    g, u = gate_up[..., :i], gate_up[..., i:]
    a = F.silu(g) if act == SILU else F.gelu(g, approximate="tanh")
    torch.mul(a, u, out=out)
    return out


def rope_into_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, pos: torch.Tensor, cache: KVCache,
                    **kw) -> None:
    """Norm + RoPE q [B, H, D] and k [B, Hkv, D] in place and append k/v to ``cache`` at ``pos``."""
    kernels()[3].rope_cache(q, k, v, pos, cache.k, cache.v, cache.slot_pos, ring=cache.ring, **kw)


class AttentionPlans:
    """The decode attention's split-K workspace per cache shape, allocated once (outside capture)."""

    def __init__(self) -> None:
        self._plans: dict[tuple, object] = {}

    def get(self, k_cache: torch.Tensor):
        b, hkv, s, d = k_cache.shape
        key = (b, hkv, s, d, k_cache.device)
        plan = self._plans.get(key)
        if plan is None:
            plan = kernels()[0].attn_decode_plan(b, hkv, d, s, k_cache.device)
            self._plans[key] = plan
        return plan


def attend_cache(q: torch.Tensor, cache: KVCache, pos: torch.Tensor, out: torch.Tensor, *, scale: float,
                 window: int | None, plans: AttentionPlans, gate: torch.Tensor | None = None) -> torch.Tensor:
    """One-token attention of q [B, H, D] over ``cache`` into ``out`` [B, H, D] (optional output gate)."""
    kernels()[0].attn_decode(q, cache.k, cache.v, cache.slot_pos, pos, out, scale=scale, window=window,
                             ring=cache.ring, gate=gate, plan=plans.get(cache.k))
    return out


_DECODE_PLANS = AttentionPlans()


def _decode_attention(q, k, v, q_pos, key_pos, *, scale, window=None):
    """The registry form: one query token through the kernel, longer queries (prefill) through
    torch SDPA. A ring cache holds at most ``window`` slots, so ``ring`` follows from the shape."""
    if q.shape[2] != 1 or k.shape[2] != key_pos.shape[0]:
        return sdpa_attention(q, k, v, q_pos, key_pos, scale=scale, window=window)
    b, h, _, d = q.shape
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    ring = window is not None and k.shape[2] <= window
    kernels()[0].attn_decode(q[:, :, 0].contiguous(), k, v, key_pos, q_pos.reshape(1), out, scale=scale,
                             window=window, ring=ring, plan=_DECODE_PLANS.get(k))
    return out[:, :, None]


NUMBA_DECODE = AttentionBackend(
    "numba-decode", _decode_attention, frozenset({"cuda"}), max_head_dim=512, head_dim_multiple=64,
    dtypes=frozenset({torch.bfloat16}), fast_path_only=True,
    description="split-K tensor-core decode attention (imp_kernels.attn_decode); prefill through torch SDPA")


def decode_attention(backend: AttentionBackend, q: torch.Tensor, cache: KVCache, pos: torch.Tensor,
                     out: torch.Tensor, *, scale: float, window: int | None, plans: AttentionPlans,
                     gate: torch.Tensor | None = None) -> torch.Tensor:
    """One-token attention through the layer's chosen backend: the kernel (with the output gate
    fused) for ``numba-decode``, else the backend's own ``run`` (then the gate, if any, is the
    caller's: pass gate=None and apply it)."""
    if backend is NUMBA_DECODE or backend.name == NUMBA_DECODE.name:
        return attend_cache(q, cache, pos, out, scale=scale, window=window, plans=plans, gate=gate)
    o = backend.run(q[:, :, None], cache.k, cache.v, pos, cache.slot_pos, scale=scale, window=window)
    out.copy_(o[:, :, 0])
    if gate is not None:
        out.mul_(torch.sigmoid(gate.view_as(out)))
    return out


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def gdn_step(mixed, state, conv_w, a, b, a_log, dt_bias, z, norm_w, out, *, eps: float, n_k_heads: int,
             workspace) -> torch.Tensor:
    """One Gated DeltaNet token: conv + gates + recurrent update + gated norm, state in place."""
    kernels()[1].gdn_decode(mixed, state.conv, conv_w, a, b, a_log, dt_bias, z, norm_w, state.recurrent, out,
                            eps=eps, n_k_heads=n_k_heads, workspace=workspace)
    return out


def gdn_workspace(batch: int, n_k_heads: int, device):
    return kernels()[1].gdn_decode_workspace(batch, n_k_heads, device)


def router_workspace(n_experts: int, device):
    return kernels()[4].router_workspace(n_experts, device)


def route(x, weight, ids, weights, *, top_k: int, workspace, norm_scale=None, per_expert_scale=None,
          eps: float = 1e-6, extra_weight=None, extra_out=None, round_weights_bf16: bool = False) -> None:
    """Router GEMV + softmax + top-k + renormalise on the device (Qwen; Gemma with its scales), plus
    ``extra_weight``'s rows dotted with x into ``extra_out`` (Qwen's shared-expert gate) in the same
    launch; ``round_weights_bf16`` stores fp32 weights rounded to bf16."""
    kernels()[4].route(x, weight, ids, weights, top_k=top_k, workspace=workspace, norm_scale=norm_scale,
                       per_expert_scale=per_expert_scale, eps=eps, extra_weight=extra_weight, extra_out=extra_out,
                       round_weights_bf16=round_weights_bf16)
