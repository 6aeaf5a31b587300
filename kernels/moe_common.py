"""What the MoE GEMV modules (``moe_bf16``, ``moe_fp8``, ``moe_gguf``, ``moe_nvfp4``) share.

Device helpers (the activation fused into the gate/up launch, a slot's expert id) and host-side
code: the argument checks of x / topk_ids / topk_weights / shared_gate_logit / h / out / residual
(with the kernel's name in the message), the fp32 scratch shape, the warps-per-block heuristic,
the launch arguments of the down pass's output, the torch reference's combine step and the warmup
driver that runs a kernel's specialisations on tiny inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imp_kernels.errors import KernelError
from imp_kernels.launch import device_jit
from imp_kernels.launch import warmup as _run_calls

__all__ = ["SILU", "GELU_TANH", "MAX_M", "act", "expert_id", "act_ref", "scratch_shape",
           "check_routing", "check_shared_logit", "check_h", "check_out", "check_residual", "logit_args",
           "out_args", "moe_ref_combine", "warmup_moe"]

SILU, GELU_TANH = 0, 1
MAX_M = 8  # tokens per call


# ------------------------------------------------------------------------------------ device
@device_jit(inline="always")
def act(v, kind):
    if kind == 0:
        return v / (np.float32(1.0) + math.exp(-v))
    inner = np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)
    return np.float32(0.5) * v * (np.float32(1.0) + math.tanh(inner))


@device_jit(inline="always")
def expert_id(ids, m, j, topk, e_count):
    """Expert id of slot j (the shared expert is slot topk and lives in its own buffer: 0)."""
    if j < topk:
        e = int(ids[m * topk + j])
        if e < 0 or e >= e_count:  # a bad id must not read out of bounds
            e = 0
        return e
    return 0


# -------------------------------------------------------------------------------------- host
def act_ref(v: torch.Tensor, activation: int) -> torch.Tensor:
    """Torch twin of ``act``."""
    if activation == SILU:
        return torch.nn.functional.silu(v)
    return torch.nn.functional.gelu(v, approximate="tanh")


def scratch_shape(m: int, topk: int, inter: int, shared_inter: int | None = None) -> tuple[int, int, int]:
    """Shape of the fp32 scratch ``h`` (``shared_inter`` None: no shared expert)."""
    if shared_inter is None:
        return (m, topk, inter)
    return (m, topk + 1, max(inter, shared_inter))


def check_routing(name, x, ids, wts, *, max_m=MAX_M, h_multiple=None, x_shape=None, ids_form=None,
                  wts_form="contiguous float32"):
    """Check x (bf16 [M, H]), topk_ids and topk_weights; returns (m, hdim). ``x_shape`` / ``ids_form`` /
    ``wts_form``: the wording of the messages (defaults: ``[M<=max_m, H]``, ``int32/int64 [m, k]``)."""
    if x.dtype != torch.bfloat16 or x.dim() != 2 or not x.is_contiguous() or not 1 <= x.shape[0] <= max_m:
        raise KernelError(f"{name}: x must be contiguous bf16 {x_shape or f'[M<={max_m}, H]'}, "
                          f"got {x.dtype} {list(x.shape)}")
    m, hdim = x.shape
    if h_multiple and hdim % h_multiple:
        raise KernelError(f"{name}: H must be a multiple of {h_multiple}, got {hdim}")
    if ids.dim() != 2 or ids.shape[0] != m or ids.dtype not in (torch.int32, torch.int64) or not ids.is_contiguous():
        raise KernelError(f"{name}: topk_ids must be contiguous {ids_form or f'int32/int64 [{m}, k]'}, "
                          f"got {ids.dtype} {list(ids.shape)}")
    if tuple(wts.shape) != tuple(ids.shape) or wts.dtype != torch.float32 or not wts.is_contiguous():
        raise KernelError(f"{name}: topk_weights must be {wts_form} {list(ids.shape)}, "
                          f"got {wts.dtype} {list(wts.shape)}")
    return m, hdim


def check_shared_logit(name, shared, shared_gate_logit, m, note=""):
    """``shared_gate_logit`` needs a shared expert and is contiguous float32 [m] (``note``: more wording)."""
    if shared is None and shared_gate_logit is not None:
        raise KernelError(f"{name}: shared_gate_logit given without a shared expert")
    if shared_gate_logit is not None and (shared_gate_logit.dtype != torch.float32 or shared_gate_logit.numel() != m
                                          or not shared_gate_logit.is_contiguous()):
        raise KernelError(f"{name}: shared_gate_logit must be contiguous float32 [{m}]{note}")


def check_h(name, h, want_h):
    if tuple(h.shape) != want_h or h.dtype != torch.float32 or not h.is_contiguous():
        raise KernelError(f"{name}: h scratch must be contiguous float32 {list(want_h)}, got {h.dtype} {list(h.shape)}")


def check_out(name, out, m, hdim):
    if tuple(out.shape) != (m, hdim) or out.dtype not in (torch.bfloat16, torch.float32) or not out.is_contiguous():
        raise KernelError(f"{name}: out must be contiguous bf16/fp32 [{m}, {hdim}], got {out.dtype} {list(out.shape)}")


def check_residual(name, residual, out):
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.bfloat16
                                 or not residual.is_contiguous()):
        raise KernelError(f"{name}: residual must be contiguous bf16 {list(out.shape)}")


def logit_args(shared_gate_logit, topk_weights):
    """(logit, has_logit) launch arguments (topk_weights stands in, never read, when there is no logit)."""
    logit = shared_gate_logit if shared_gate_logit is not None else topk_weights
    return logit.reshape(-1), int(shared_gate_logit is not None)


def out_args(out, n_cols, residual):
    """(out, n_cols, out_f32, res, has_res) launch arguments of ``mma_frag.store_out``."""
    res = residual if residual is not None else out
    return (out.reshape(-1), n_cols, int(out.dtype == torch.float32),
            res.reshape(-1).view(torch.int16) if res.dtype == torch.bfloat16 else res.reshape(-1),
            int(residual is not None))


def moe_ref_combine(x, topk_ids, topk_weights, experts, out, h, activation, shared_gate_logit, residual):
    """Shared torch reference body: ``experts(j_or_None, e) -> (w_gate_up [2I, H], w_down [H, I])`` in
    float32 (j None: the shared expert). Fills ``h`` (zeros past a slot's own I) and ``out``."""
    m = x.shape[0]
    topk = topk_ids.shape[1]
    n_slots = h.shape[1]
    y = torch.zeros(m, out.shape[1], dtype=torch.float32, device=x.device)
    for mi in range(m):
        xm = x[mi].float()
        for j in range(n_slots):
            if j < topk:
                wgu, wdn = experts(j, int(topk_ids[mi, j]))
                coef = topk_weights[mi, j].float()
            else:
                wgu, wdn = experts(None, 0)
                coef = torch.sigmoid(shared_gate_logit.reshape(-1)[mi].float()) if shared_gate_logit is not None \
                    else torch.ones((), device=x.device)
            ni = wgu.shape[0] // 2
            gu = wgu @ xm
            hv = act_ref(gu[:ni], activation) * gu[ni:]
            h[mi, j].zero_()
            h[mi, j, :ni] = hv
            y[mi] += coef * (wdn[:, :ni] @ hv)
    if residual is not None:
        y = y + residual.float()
    out.copy_(y.to(out.dtype))


def warmup_moe(fn, weights, hdim, inter, *, shared=None, device="cuda", **kwargs) -> None:
    """Compile and load a MoE kernel pair for the specialisations real calls use: one token and one
    slot, int32/int64 ids, bf16/fp32 out, +-residual, and (``shared`` given) + the shared expert with
    its gate logit. ``weights``: fn's positional weight arguments between topk_weights and out;
    ``kwargs``: more keyword arguments of every call."""
    x = torch.zeros(1, hdim, dtype=torch.bfloat16, device=device)
    wts = torch.ones(1, 1, device=device)
    logit = torch.zeros(1, device=device) if shared is not None else None
    res = torch.zeros(1, hdim, dtype=torch.bfloat16, device=device)
    calls = []
    for ids_dt in (torch.int32, torch.int64):
        ids = torch.zeros(1, 1, dtype=ids_dt, device=device)
        for dt in (torch.bfloat16, torch.float32):
            for r in (None, res):
                out = torch.empty(1, hdim, dtype=dt, device=device)
                calls.append((fn, (x, ids, wts, *weights, out,
                                   torch.empty(scratch_shape(1, 1, inter), device=device)),
                              {"residual": r, **kwargs}))
                if shared is not None:
                    calls.append((fn, (x, ids, wts, *weights, out,
                                       torch.empty(scratch_shape(1, 1, inter, inter), device=device)),
                                  {"residual": r, **kwargs, "shared": shared, "shared_gate_logit": logit}))
    _run_calls(*calls)
