"""The gated delta rule (Gated DeltaNet linear attention) on the reference path, in fp32.

Per value head, with state S in R^{dk x dv} and per-token log-decay g <= 0 and rate beta:

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T q_t

Two forms compute it (they agree to fp32 rounding; tests/test_gated_delta.py checks it):

- ``chunk_gated_delta_rule``: the chunked (WY / UT-transform) form for prefill and every
  multi-token continuation; within a chunk of C tokens the recurrence becomes matmuls and two
  unit-lower-triangular solves, and only the C-token chunks are scanned in sequence. Written in
  the same arrangement as transformers' ``torch_chunk_gated_delta_rule`` (and fla's
  ``chunk_gated_delta_rule``) so that fp32 results match it closely.
- ``recurrent_gated_delta_rule``: token by token, for single-token decode (and as the oracle).

Both take q/k with Hk heads and v with Hv heads (Hv a multiple of Hk; value head j reads key
head j // (Hv/Hk), i.e. repeat_interleave), optionally L2-normalise q and k (eps 1e-6 inside
the rsqrt of the sum of squares), scale q by ``scale`` (default dk^-0.5), start from
``initial_state`` [B, Hv, dk, dv] (zeros if None) and return (o [B, T, Hv, dv] in q's dtype,
final state [B, Hv, dk, dv] fp32). The state is never written in place here; the caller owns
its buffer (see ``imp_qwen36`` for a preallocated per-layer state).

On CUDA, prefill may instead run flash-linear-attention's Triton ``chunk_gated_delta_rule`` (the
same chunked algorithm; bf16 inputs, fp32 state and accumulation), when that optional package is
installed (the ``cuda`` extra): ``prefill_rule`` is the choice, a pure function; ``fla_chunk``
adapts the call (key heads repeated to the value heads here, L2 norm and scale in the kernel).

``gated_rms_norm`` is the Gated DeltaNet output norm: RMSNorm with a plain weight, then times
silu(gate) (norm-then-gate, as fla's FusedRMSNormGated and transformers' RMSNormGated).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64
L2_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) over the last dim (eps inside the square root)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, l2norm_qk: bool, scale: float | None):
    """Expand key heads to the value heads; [B, T, H, d] -> [B, H, T, d]; all fp32."""
    hk, hv = k.shape[2], v.shape[2]
    if hv % hk:
        raise ValueError(f"value heads ({hv}) must be a multiple of key heads ({hk})")
    if hv != hk:
        q = q.repeat_interleave(hv // hk, dim=2)
        k = k.repeat_interleave(hv // hk, dim=2)
    q, k, v, beta, g = (x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                        for x in (q, k, v, beta, g))
    if l2norm_qk:
        q, k = l2norm(q), l2norm(k)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    return q, k, v, g, beta


def _initial(initial_state, b, h, dk, dv, like: torch.Tensor) -> torch.Tensor:
    if initial_state is None:
        return torch.zeros(b, h, dk, dv, dtype=torch.float32, device=like.device)
    return initial_state.to(torch.float32)


def recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, initial_state: torch.Tensor | None = None, *,
                               l2norm_qk: bool = True, scale: float | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule.

    q, k [B, T, Hk, dk]; v [B, T, Hv, dv]; g, beta [B, T, Hv] (g is the log-decay, <= 0).
    Returns (o [B, T, Hv, dv] in q's dtype, final state [B, Hv, dk, dv] fp32).
    """
    out_dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, l2norm_qk, scale)
    b, h, t, dk = k.shape
    dv = v.shape[-1]
    state = _initial(initial_state, b, h, dk, dv, v)
    outs = []
    for i in range(t):
        state = state * g[:, :, i].exp()[..., None, None]
        kv_mem = (state * k[:, :, i, :, None]).sum(dim=-2)
        delta = (v[:, :, i] - kv_mem) * beta[:, :, i, None]
        state = state + k[:, :, i, :, None] * delta[:, :, None, :]
        outs.append((state * q[:, :, i, :, None]).sum(dim=-2))
    o = torch.stack(outs, dim=2) if t > 1 else outs[0][:, :, None]
    return o.transpose(1, 2).contiguous().to(out_dtype), state


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, initial_state: torch.Tensor | None = None, *,
                           chunk_size: int = CHUNK_SIZE, l2norm_qk: bool = True,
                           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule (same arguments and results as ``recurrent_gated_delta_rule``).

    The sequence is zero-padded to a multiple of ``chunk_size``; padded steps have g = 0 and
    beta = 0, so they leave the state unchanged. Per chunk, with γ the in-chunk cumsum of g,
    Γ_ij = exp(γ_i - γ_j) (j <= i) and L the strictly lower part of diag(β) K Kᵀ ⊙ Γ:
    U = (I+L)⁻¹ diag(β) V, W = (I+L)⁻¹ (diag(β) K ⊙ exp(γ)); then with the entering state S,
    V' = U - W S, O = (Q ⊙ exp(γ)) S + (Q Kᵀ ⊙ Γ) V', S <- exp(γ_C) S + (K ⊙ exp(γ_C - γ))ᵀ V'.
    """
    out_dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, l2norm_qk, scale)
    b, h, t, dk = k.shape
    dv = v.shape[-1]
    c = chunk_size
    pad = (c - t % c) % c
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    n = (t + pad) // c

    v_beta = v * beta[..., None]
    k_beta = k * beta[..., None]
    q, k, k_beta, v_beta = (x.reshape(b, h, n, c, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    gamma = g.reshape(b, h, n, c).cumsum(dim=-1)

    upper = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(upper, float("-inf")).exp()
    system = (k_beta @ k.transpose(-1, -2)) * decay  # its diagonal is ignored (unitriangular)
    intra = (q @ k.transpose(-1, -2)) * decay
    u = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(system, k_beta * gamma.exp()[..., None], upper=False,
                                      unitriangular=True)

    q = q * gamma.exp()[..., None]
    k = k * (gamma[..., -1:] - gamma).exp()[..., None]
    chunk_decay = gamma[..., -1].exp()[..., None, None]

    state = _initial(initial_state, b, h, dk, dv, v)
    out = torch.empty_like(u)
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ state
        out[:, :, i] = q[:, :, i] @ state + intra[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + k[:, :, i].transpose(-1, -2) @ v_new
    o = out.reshape(b, h, n * c, dv)[:, :, :t]
    return o.transpose(1, 2).contiguous().to(out_dtype), state


_FLA: list[bool] = []


def fla_installed() -> bool:
    """Whether flash-linear-attention's gated delta rule imports here (checked once)."""
    if not _FLA:
        ok = importlib.util.find_spec("fla") is not None
        if ok:
            try:
                import fla.ops.gated_delta_rule  # noqa: F401
            except Exception:  # a broken optional install must not break the run: torch ops instead
                ok = False
        _FLA.append(ok)
    return _FLA[0]


FLA_DTYPES = (torch.bfloat16, torch.float16)  # fla's chunked kernel refuses float32 inputs


def prefill_rule(device_type: str, dtype: torch.dtype, fla_ok: bool) -> tuple[str, str]:
    """(rule, reason) for multi-token steps of the gated delta rule."""
    if device_type == "cuda" and fla_ok and dtype in FLA_DTYPES:
        return "fla", "flash-linear-attention's Triton chunked kernel (the cuda extra is installed)"
    if device_type == "cuda" and fla_ok:
        return "torch-chunk", f"chunked rule in torch ops (flash-linear-attention takes bf16/fp16, the run is {dtype})"
    if device_type == "cuda":
        return "torch-chunk", "chunked rule in torch ops (install imp[cuda] for flash-linear-attention's kernel)"
    return "torch-chunk", "chunked rule in torch ops (the reference)"


def fla_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``chunk_gated_delta_rule``'s contract (L2-normalised q/k, scale dk^-0.5) through fla."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_rule

    hk, hv = k.shape[2], v.shape[2]
    if hv != hk:
        q = q.repeat_interleave(hv // hk, dim=2)
        k = k.repeat_interleave(hv // hk, dim=2)
    state = None if initial_state is None else initial_state.float().contiguous()
    o, final = fla_rule(q.contiguous(), k.contiguous(), v.contiguous(), g=g.float().contiguous(),
                        beta=beta.to(q.dtype).contiguous(), initial_state=state,
                        output_final_state=True, use_qk_l2norm_in_kernel=True)
    return o.to(q.dtype), final.float()


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """w · RMSNorm(x) · silu(gate): normalise in fp32, multiply by w in x's dtype, gate in fp32,
    cast back to x's dtype (transformers' ``Qwen3_5MoeRMSNormGated``; weight is plain, not 1+w)."""
    dtype = x.dtype
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    n = weight * n.to(dtype)
    return (n * F.silu(gate.float())).to(dtype)
