"""Routed experts stored as bf16, FP8 or GGUF blocks, bound to their MoE decode kernels.

``bind(module, gate_up, down, act, top_k, shared)`` returns a ``FastExperts`` over
``imp_kernels.moe_bf16`` / ``moe_fp8`` / ``moe_gguf``, or None when the stacks are not in the form
that kernel reads (the caller then takes the gathered path). The layouts:

- bf16: the fused stacks as the reference holds them ([E, 2I, H] gate rows first, [E, H, I]); no copy;
- FP8: each expert's e4m3 rows re-tiled once (``fp8_experts_tile``), scales as float32 (per-tensor
  [E] or [E, 2], per-channel [E, N], or 128x128 blocks);
- GGUF: gate and up split back into their own stacks (llama.cpp's ``ffn_gate_exps`` /
  ``ffn_up_exps``), down as stored; re-tiled for ``moe_gguf_tc`` (tensor cores, each weight rounded
  once to f16) where every part is Q4_K / Q6_K / Q8_0 with scales f16 holds, else kept as raw blocks
  for ``moe_gguf`` (exact fp32 decoding on CUDA cores; the reason names why).
A shared expert of the same format rides in the same two launches (its own intermediate size).
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.fast.experts import FastExperts, _act_code, _expert_bytes
from imp_core.quant import QTensor


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous bf16 tensor starting on a 16-byte boundary (the kernels' vector loads;
    a memory-mapped checkpoint tensor on the CPU can start anywhere)."""
    t = t.to(torch.bfloat16).contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _kernel(module: str):
    import importlib

    return importlib.import_module(f"imp_kernels.{module}")


def _fp8_scale(qt: QTensor) -> torch.Tensor:
    s = qt.scales["scale"].float()
    e, n = qt.shape[0], qt.shape[1]
    if s.numel() in (e, 2 * e):
        return s.reshape(e, -1).squeeze(-1).contiguous() if s.numel() == e else s.reshape(e, 2).contiguous()
    if s.numel() == e * n:
        return s.reshape(e, n).contiguous()
    return s.reshape(e, *s.shape[-2:]).contiguous()


def _fp8_pair(qt: QTensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernel("moe_fp8").fp8_experts_tile(qt.data), _fp8_scale(qt)


def _gguf_pair(qt: QTensor, rows: slice | None = None) -> tuple[torch.Tensor, str]:
    from imp_kernels import gguf_common

    raw = qt.data.reshape(qt.shape[0], qt.shape[1], -1)
    if rows is not None:
        raw = raw[:, rows].contiguous()
    return gguf_common.gguf_device_buffer(raw), qt.qtype.split(":", 1)[1].upper()


def _gguf_tc(gate_up: QTensor, down: QTensor, inter: int) -> tuple[tuple | None, str]:
    """((gate, up, down) ``moe_gguf_tc`` stacks, "") or (None, why the raw blocks stay)."""
    from imp_kernels.moe_gguf_tc import experts_tc_tile
    from imp_kernels.repack_gguf import TC_TYPES, tc_exponent

    qg, qd = (w.qtype.split(":", 1)[1].upper() for w in (gate_up, down))
    if qg not in TC_TYPES or qd not in TC_TYPES:
        return None, f"no tensor-core form for {qg if qg not in TC_TYPES else qd}"
    e, hdim = int(gate_up.shape[0]), int(gate_up.shape[2])
    raw_gu = gate_up.data.reshape(e, 2 * inter, -1)
    raw_dn = down.data.reshape(e, hdim, -1)
    exps = []
    for raw, q, n, k in ((raw_gu[:, :inter], qg, inter, hdim), (raw_gu[:, inter:], qg, inter, hdim),
                         (raw_dn, qd, hdim, inter)):
        p, why = tc_exponent(raw.reshape(e * n, -1), q, e * n, k)
        if p is None:
            return None, why
        exps.append(p)
    return (experts_tc_tile(raw_gu[:, :inter].contiguous(), qg, e, inter, hdim, exps[0]),
            experts_tc_tile(raw_gu[:, inter:].contiguous(), qg, e, inter, hdim, exps[1]),
            experts_tc_tile(raw_dn, qd, e, hdim, inter, exps[2])), ""


def _tc_bytes(stacks: tuple) -> int:
    """Bytes one expert of ``stacks`` (gate, up, down) occupies in the tiled form."""
    return sum((c.numel() * 4 + s.numel() * s.element_size()) // c.shape[0] for _, c, s, _ in stacks)


def _as_stack(w: Any) -> Any:
    """A 2-D shared-expert weight as a 1-expert stack."""
    if isinstance(w, torch.Tensor):
        return w[None]
    return QTensor(w.qtype, w.data.reshape(1, *w.data.shape), (1, *w.shape),
                   {k: (v.reshape(1, *v.shape) if v.dim() else v.reshape(1)) for k, v in w.scales.items()},
                   dict(w.meta))


def bind(module: str, gate_up: Any, down: Any, act: str, top_k: int,
         shared: tuple[Any, Any] | None) -> FastExperts | None:
    kern = _kernel(module)
    inter = int(gate_up.shape[1]) // 2
    kind = "bf16" if module == "moe_bf16" else "fp8" if module == "moe_fp8" else gate_up.qtype
    sh = None
    sh_inter = None
    if shared is not None and shared[0] is not None:
        sgu, sdn = _as_stack(shared[0]), _as_stack(shared[1])
        same = (isinstance(sgu, torch.Tensor) and isinstance(sdn, torch.Tensor)) if module == "moe_bf16" else \
            all(isinstance(t, QTensor) and t.qtype.split(":")[0] == kind.split(":")[0] for t in (sgu, sdn))
        if same and module == "moe_gguf":  # each part must be a block type the kernel decodes
            same = all(t.qtype.split(":", 1)[1].upper() in kern.SUPPORTED for t in (sgu, sdn))
        if same:
            sh_inter = int(sgu.shape[1]) // 2
    if module == "moe_bf16":
        args = (_aligned(gate_up), _aligned(down))
        if sh_inter is not None:
            sh = (_aligned(sgu), _aligned(sdn))
    elif module == "moe_fp8":
        args = (_fp8_pair(gate_up), _fp8_pair(down))
        if sh_inter is not None:
            sh = (*_fp8_pair(sgu), *_fp8_pair(sdn))
    else:
        tc, tc_why = _gguf_tc(gate_up, down, inter)
        if tc is not None:
            module, kern, args = "moe_gguf_tc", _kernel("moe_gguf_tc"), tc
            if sh_inter is not None:
                sh, _ = _gguf_tc(sgu, sdn, sh_inter)
                if sh is None or sh[0][0] != tc[0][0] or sh[2][0] != tc[2][0]:
                    sh, sh_inter = None, None  # the shared expert runs beside the launches
        else:
            args = (_gguf_pair(gate_up, slice(0, inter)), _gguf_pair(gate_up, slice(inter, 2 * inter)),
                    _gguf_pair(down))
            if sh_inter is not None:
                sh = (_gguf_pair(sgu, slice(0, sh_inter)), _gguf_pair(sgu, slice(sh_inter, 2 * sh_inter)),
                      _gguf_pair(sdn))
    code = _act_code(act)
    scratch: dict[int, torch.Tensor] = {}
    fn = getattr(kern, module)
    extra = {"n_experts": int(gate_up.shape[0]), "inter": inter, "shared_inter": sh_inter} \
        if module == "moe_gguf" else {"inter": inter, "shared_inter": sh_inter} if module == "moe_gguf_tc" else {}
    shape_of = _kernel("moe_bf16").moe_bf16_scratch_shape

    def run(x, ids, weights, out, *, residual=None, shared_gate_logit=None):
        m = x.shape[0]
        h = scratch.get(m)
        if h is None:
            h = torch.empty(shape_of(m, top_k, inter, sh_inter), dtype=torch.float32, device=x.device)
            scratch[m] = h
        fn(x, ids, weights, *args, out, h, activation=code, shared=sh, shared_gate_logit=shared_gate_logit,
           residual=residual, **extra)

    if module == "moe_gguf_tc":
        per_token = top_k * _tc_bytes(args) + (_tc_bytes(sh) if sh is not None else 0)
    else:
        per_token = top_k * (_expert_bytes(gate_up) + _expert_bytes(down))
        if sh is not None:
            per_token += _expert_bytes(sgu) + _expert_bytes(sdn)
    gguf = f"gguf {kind.split(':', 1)[-1]}"
    what = {"moe_bf16": "bf16", "moe_fp8": "fp8", "moe_gguf": gguf, "moe_gguf_tc": gguf}[module]
    how = " (tensor cores, weights rounded once to f16)" if module == "moe_gguf_tc" else \
        f" (native blocks: {tc_why})" if module == "moe_gguf" else ""
    return FastExperts(kind, f"{what} experts: {module}{how} with device-side ids"
                       + (", shared expert fused" if sh else ""), top_k, inter, run, per_token,
                       shared_fused=sh is not None)
