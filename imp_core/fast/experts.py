"""Routed experts on the decode fast path: device-side routing, no host sync, capturable.

``bind_experts(gate_up, down, act=..., shared=...)`` takes the fused expert stacks the reference
path holds (``gate_up`` [E, 2I, H], ``down`` [E, H, I], dense or ``QTensor``) and returns a
``FastExperts`` whose call reads the top-k ids and weights on the device:

- NVFP4 stacks -> ``imp_kernels.moe_nvfp4`` on one contiguous tiled buffer per projection (phase
  3-MoE), with a same-shaped NVFP4 shared expert fused into the same two launches;
- bf16 / fp8 / GGUF stacks -> the format's MoE kernel (``moe_bf16``, ``moe_fp8``, ``moe_gguf``,
  bound in ``experts_formats``), the shared expert fused where its format matches;
- otherwise the gathered path: the k routed experts' packed rows are selected on the device and
  dequantised to bf16 for two batched matmuls (the reference path's own numbers; slower).
Each choice carries a one-line reason for the plan.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from imp_core.fast.ops import SILU
from imp_core.quant import QTensor
from imp_core.quant.gguf_widen import WIDENS_TO_Q8_0, widen_to_q8_0


GGUF_MOE_TYPES = ("Q8_0", "Q4_K", "Q6_K")  # the block types imp_kernels.moe_gguf decodes


def _has(module: str) -> bool:
    return importlib.util.find_spec(f"imp_kernels.{module}") is not None


def _act_code(act: str) -> int:
    from imp_kernels import moe_nvfp4

    return moe_nvfp4.SILU if act == SILU else moe_nvfp4.GELU_TANH


@dataclass
class FastExperts:
    """``self(x, ids, weights, out, residual=None, shared_gate_logit=None)``: x [M, H] bf16,
    ids [M, k] int32, weights [M, k] fp32, out [M, H] bf16 (may alias ``residual``)."""

    kind: str
    reason: str
    top_k: int
    intermediate: int
    run: Callable[..., None]
    nbytes_per_token: int  # weight bytes one token reads: k experts (+ the fused shared expert)
    tensors: dict[str, Any] = field(default_factory=dict)
    shared_fused: bool = False

    def __call__(self, x, ids, weights, out, *, residual=None, shared_gate_logit=None):
        self.run(x, ids, weights, out, residual=residual, shared_gate_logit=shared_gate_logit)
        return out


def _expert_bytes(w: Any) -> int:
    if isinstance(w, torch.Tensor):
        return w[0].numel() * w.element_size()
    if isinstance(w, TiledNVFP4Stack):  # the packed bytes it stands for: codes, e4m3 scales, global
        n, k = w.shape[1], w.shape[2]
        return n * k // 2 + n * k // 16 + w.glob.numel() * 4 // w.shape[0]
    tensors = [w.data, *w.scales.values()]
    e = w.shape[0]
    return sum(t.numel() * t.element_size() for t in tensors) // e


def _nvfp4_stack(qt: Any):
    from imp_kernels import repack

    if isinstance(qt, TiledNVFP4Stack):  # bound before: its tiled buffers are the kernel's form
        return qt.codes, qt.scales, qt.glob
    codes, scales = repack.nvfp4_experts_tile(qt.data, qt.scales["block"].view(torch.uint8))
    g = qt.scales["global"].float().contiguous()
    return codes, scales, g


def _bind_nvfp4(gate_up: QTensor, down: QTensor, act: str, top_k: int, shared) -> FastExperts:
    from imp_kernels import moe_nvfp4

    gu, dn = _nvfp4_stack(gate_up), _nvfp4_stack(down)
    inter = gate_up.shape[1] // 2
    fused = None
    if shared is not None and all(isinstance(s, QTensor) and s.qtype == "nvfp4" for s in shared) \
            and tuple(shared[0].shape) == tuple(gate_up.shape[1:]) and tuple(shared[1].shape) == tuple(down.shape[1:]):
        sgu = QTensor("nvfp4", shared[0].data[None], (1, *shared[0].shape),
                      {"block": shared[0].scales["block"][None], "global": shared[0].scales["global"].reshape(1, -1)})
        sdn = QTensor("nvfp4", shared[1].data[None], (1, *shared[1].shape),
                      {"block": shared[1].scales["block"][None], "global": shared[1].scales["global"].reshape(1)})
        fused = (*_nvfp4_stack(sgu), *_nvfp4_stack(sdn))
    code = _act_code(act)
    scratch: dict[int, torch.Tensor] = {}

    def run(x, ids, weights, out, *, residual=None, shared_gate_logit=None):
        m = x.shape[0]
        h = scratch.get(m)
        if h is None:
            h = torch.empty(moe_nvfp4.moe_scratch_shape(m, top_k, inter, fused is not None),
                            dtype=torch.float32, device=x.device)
            scratch[m] = h
        moe_nvfp4.moe_nvfp4(x, ids, weights, gu, dn, out, h, activation=code, shared=fused,
                            shared_gate_logit=shared_gate_logit, residual=residual)

    per_token = top_k * (_expert_bytes(gate_up) + _expert_bytes(down))
    if fused is not None:
        per_token += sum(_expert_bytes(t) for t in (sgu, sdn))
    return FastExperts("nvfp4", "nvfp4 experts: one contiguous tiled buffer per projection (phase 3-MoE), "
                       "moe_nvfp4 with device-side ids" + (", shared expert fused" if fused else ""),
                       top_k, inter, run, per_token, {"gate_up": gu, "down": dn}, shared_fused=fused is not None)


class TiledNVFP4Stack:
    """An NVFP4 expert stack kept only in the decode kernels' tiled buffers (phase 3-MoE). The
    reference path (prefill without phase 3b copies, ``imp check``) dequantises it from them with
    ``imp_kernels.dequant_nvfp4``: the same values as the packed stack it replaces."""

    qtype = "nvfp4"

    def __init__(self, tiled: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shape: tuple[int, ...],
                 meta: dict[str, Any]) -> None:
        self.codes, self.scales, self.glob = tiled
        self.shape = torch.Size(shape)
        self.meta = meta

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or "")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.glob))

    def dequantize(self, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
        from imp_kernels.dequant_nvfp4 import nvfp4_tiled_dequant

        kernel_dtype = dtype if dtype in (torch.bfloat16, torch.float32) else torch.float32
        dense = nvfp4_tiled_dequant(self.codes, self.scales, self.glob, self.shape[1], self.shape[2], kernel_dtype)
        dense = dense if dense.dtype == dtype else dense.to(dtype)
        return dense if device is None else dense.to(device)


def release_packed_stacks(experts: Any, fast: FastExperts) -> None:
    """Phase 3-MoE's memory half: once a layer's NVFP4 stacks live in their tiled buffers, the
    reference ``Experts`` reads them from there and the checkpoint-layout stacks are dropped, layer
    by layer as the family binds (one copy of the experts, peak about one layer above it)."""
    if fast.kind != "nvfp4":
        return
    for attr in ("gate_up", "down"):
        old = getattr(experts, attr)
        setattr(experts, attr, TiledNVFP4Stack(fast.tensors[attr], tuple(old.shape), dict(getattr(old, "meta", {}))))
    fast.reason += "; the checkpoint-layout stacks released (the reference path dequantises the tiled ones)"


def _select(qt: Any, ids: torch.Tensor) -> Any:
    """The rows of expert stack ``qt`` for the flat expert ids (on the device, no host sync)."""
    if isinstance(qt, torch.Tensor):
        return qt.index_select(0, ids)
    e = qt.shape[0]
    pick = lambda t: t.index_select(0, ids) if t.dim() and t.shape[0] == e else t  # noqa: E731
    data = qt.data.reshape(e, -1) if qt.qtype.startswith("gguf:") else qt.data
    return QTensor(qt.qtype, pick(data), (ids.numel(), *qt.shape[1:]),
                   {k: pick(v) for k, v in qt.scales.items()}, dict(qt.meta))


def _bind_gathered(gate_up: Any, down: Any, act: str, top_k: int, why: str) -> FastExperts:
    inter = int(gate_up.shape[1]) // 2
    fn = F.silu if act == SILU else (lambda v: F.gelu(v, approximate="tanh"))

    def run(x, ids, weights, out, *, residual=None, shared_gate_logit=None):
        flat = ids.reshape(-1).long()
        gu_w = _select(gate_up, flat)
        dn_w = _select(down, flat)
        gu_w = gu_w if isinstance(gu_w, torch.Tensor) else gu_w.dequantize(torch.bfloat16)
        dn_w = dn_w if isinstance(dn_w, torch.Tensor) else dn_w.dequantize(torch.bfloat16)
        m, k = ids.shape
        xs = x[:, None, :].expand(m, k, x.shape[1]).reshape(m * k, x.shape[1], 1)
        gu = torch.bmm(gu_w.to(x.dtype), xs).squeeze(-1)
        h = fn(gu[:, :inter]) * gu[:, inter:]
        y = torch.bmm(dn_w.to(x.dtype), h[..., None]).squeeze(-1).view(m, k, -1)
        y = (y * weights[..., None]).sum(dim=1)
        if residual is not None:
            y = y + residual.float()
        out.copy_(y.to(out.dtype))

    per_token = top_k * (_expert_bytes(gate_up) + _expert_bytes(down))
    return FastExperts("gathered", why, top_k, inter, run, per_token)


def _kind(w: Any) -> str:
    if isinstance(w, torch.Tensor):
        return "bf16"
    return w.qtype


def _widened(w: Any) -> Any:
    """GGUF Q4_0 / Q5_0 stacks as Q8_0 (phase 3a: exact, see imp_core.quant.gguf_widen)."""
    if not isinstance(w, QTensor) or w.qtype.split(":", 1)[-1].upper() not in WIDENS_TO_Q8_0 or "global" in w.scales:
        return w
    raw = w.data.reshape(*w.shape[:-1], -1)
    return QTensor("gguf:Q8_0", widen_to_q8_0(raw, w.qtype.split(":", 1)[1].upper()), w.shape, {}, dict(w.meta))


def bind_experts(gate_up: Any, down: Any, *, act: str, top_k: int, shared: tuple[Any, Any] | None = None
                 ) -> FastExperts:
    """The kernel form of one layer's routed experts (see module doc)."""
    gate_up, down = _widened(gate_up), _widened(down)
    if shared is not None and shared[0] is not None:
        shared = (_widened(shared[0]), _widened(shared[1]))  # llama-quantize gives shared down Q5_0 at times
    kinds = {_kind(gate_up), _kind(down)}
    if kinds == {"nvfp4"}:
        return _bind_nvfp4(gate_up, down, act, top_k, shared)
    kind = kinds.pop() if len(kinds) == 1 else "gguf:mixed" if all(k.startswith("gguf:") for k in kinds) else "mixed"
    module = {"bf16": "moe_bf16", "fp8": "moe_fp8"}.get(kind, "moe_gguf" if kind.startswith("gguf:") else "")
    if module == "moe_gguf" and not {_kind(gate_up), _kind(down)} <= {f"gguf:{t}" for t in GGUF_MOE_TYPES}:
        module = ""
    if module and _has(module):
        from imp_core.fast import experts_formats

        return experts_formats.bind(module, gate_up, down, act, top_k, shared)
    return _bind_gathered(gate_up, down, act, top_k,
                          f"{kind} experts: no MoE kernel for this format; the k routed experts are gathered on "
                          f"the device and dequantised to bf16 (the reference path's numbers)")
