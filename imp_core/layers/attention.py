"""Scaled-dot-product attention over a KV cache, with causal / sliding-window masks built on
the device from positions (no host sync, static shapes).

The core's two reference backends (registered in the attention registry by the built-in plugin):
``eager`` reproduces transformers' eager attention step for step (scores in the activation
dtype, softmax in fp32, probabilities cast back) and is the parity oracle; ``sdpa`` calls torch's
fused scaled_dot_product_attention with the same mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imp_core.plugin.attention_registry import AttentionBackend


def visibility_mask(q_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """[T, S] bool: key j is visible to query i iff 0 <= pos_j <= pos_i (and pos_j > pos_i - W)."""
    kp = key_pos[None, :]
    qp = q_pos[:, None]
    mask = (kp >= 0) & (kp <= qp)
    if window is not None:
        mask = mask & (kp > qp - window)
    return mask


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, D] -> [B, Hkv*n_rep, S, D]; query head h uses kv head h // n_rep."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def _masked_inputs(q, k, v, q_pos, key_pos, window):
    n_rep = q.shape[1] // k.shape[1]
    return repeat_kv(k, n_rep), repeat_kv(v, n_rep), visibility_mask(q_pos, key_pos, window)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                    key_pos: torch.Tensor, *, scale: float, window: int | None = None) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D(v)] -> [B, H, T, Dv], as transformers' eager path."""
    k, v, mask = _masked_inputs(q, k, v, q_pos, key_pos, window)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


FLASH_MAX_HEAD_DIM = 256  # the widest head torch's flash-attention kernel takes


def is_fresh_causal(t: int, s: int, window: int | None) -> bool:
    """Whether a call's visibility is exactly the causal triangle, known from shapes alone: the
    cache hands over as many keys as queries only when they are the chunk's own keys from
    position 0 (a full cache trimmed to its span, or a still-empty ring), and no window bites."""
    return t > 1 and t == s and (window is None or t <= window)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                   key_pos: torch.Tensor, *, scale: float, window: int | None = None) -> torch.Tensor:
    """The same through torch's scaled_dot_product_attention. A fresh prefill chunk goes without a
    mask (is_causal, grouped heads not expanded), which lets torch take its flash kernel; any
    other call carries the position mask (memory-efficient or math kernel)."""
    if is_fresh_causal(q.shape[2], k.shape[2], window):
        if max(q.shape[-1], v.shape[-1]) <= FLASH_MAX_HEAD_DIM:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=q.shape[1] != k.shape[1])
        # wider heads have no flash kernel, and with enable_gqa torch would take its math kernel
        # (a full score matrix): expanded heads let the memory-efficient kernel serve them
        n_rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True,
                                              scale=scale)
    k, v, mask = _masked_inputs(q, k, v, q_pos, key_pos, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


ANY_DEVICE = frozenset({"cpu", "cuda"})
SDPA = AttentionBackend("sdpa", sdpa_attention, ANY_DEVICE,
                        description="torch scaled_dot_product_attention with a position mask")
EAGER = AttentionBackend("eager", eager_attention, ANY_DEVICE,
                         description="explicit matmul/softmax, step-for-step like transformers' eager")
