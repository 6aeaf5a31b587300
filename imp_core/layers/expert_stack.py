"""Per-expert or split expert weights -> the fused stacks ``Experts`` runs, kept packed where possible.

Quantized MoE exports store each expert's gate/up/down as separate 2-D Linear weights (ModelOpt,
llm-compressor), and GGUF stores gate and up as two 3-D stacks; ``imp_core.layers.moe.Experts``
takes one ``gate_up`` [E, 2I, H] (gate rows first) and one ``down`` [E, H, I]. These helpers build
them without dequantising when every part is a ``QTensor`` of one encoding whose blocks are whole
rows, so the memory rule's "on the fly" mode still holds the experts packed:

- NVFP4: codes and block scales stacked / concatenated; the global multipliers become one per
  expert ([E]), or one per expert and half ([E, 2]) when gate and up differ;
- FP8 per-tensor / per-channel: data stacked; per-tensor scales become [E], or one per row
  (per-channel) when concatenated parts have different scales;
- GGUF block types (one type, equal or no global scales): the raw rows stacked / concatenated.

Anything else (dense parts, mixed encodings, block FP8, ...) is made dense in ``dtype`` first;
the values are the same either way (dequantisation is per row and per block).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from imp_core.layers.linear import dense_weight
from imp_core.quant import QTensor


def _dense(parts: Sequence[Any], dtype: torch.dtype) -> list[torch.Tensor]:
    return [dense_weight(p, dtype) for p in parts]


def _same_kind(parts: Sequence[Any]) -> str | None:
    """The common packed kind of ``parts`` ("nvfp4", "fp8:tensor", "fp8:channel", "gguf:Q4_K"), or None."""
    kinds = set()
    for p in parts:
        if not isinstance(p, QTensor):
            return None
        if p.qtype == "fp8":
            g = p.meta.get("granularity")
            if g not in ("tensor", "channel"):
                return None
            kinds.add(f"fp8:{g}")
        elif p.qtype == "nvfp4" or p.qtype.startswith("gguf:"):
            kinds.add(p.qtype)
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _meta(first: QTensor, name: str | None) -> dict[str, Any]:
    meta = dict(first.meta)
    if name:
        meta["name"] = name
    return meta


def stack_experts_packed(parts: Sequence[Any], dtype: torch.dtype, *, name: str | None = None) -> Any:
    """E per-expert weights [N, K] -> one [E, N, K] weight (a QTensor when the parts allow)."""
    kind = _same_kind(parts)
    if kind is None:
        return torch.stack(_dense(parts, dtype), dim=0)
    first = parts[0]
    shape = (len(parts), *first.shape)
    if kind == "nvfp4":
        glob = torch.stack([p.scales["global"].float().reshape(()) for p in parts])
        scales = {"block": torch.stack([p.scales["block"] for p in parts]), "global": glob}
    elif kind == "fp8:tensor":
        scales = {"scale": torch.stack([p.scales["scale"].float().reshape(()) for p in parts])}
    elif kind == "fp8:channel":
        scales = {"scale": torch.stack([p.scales["scale"].float().reshape(-1) for p in parts])}
    else:  # gguf block types
        if "global" in first.scales:
            return torch.stack(_dense(parts, dtype), dim=0)
        scales = {}
    return QTensor(first.qtype, torch.stack([p.data for p in parts]), shape, scales=scales,
                   meta=_meta(first, name))


def _row_scales(scale: torch.Tensor, lead: tuple[int, ...], rows: int) -> torch.Tensor:
    """FP8 per-tensor ([] / [E]) or per-channel ([..., N] / [..., N, 1]) scales -> one per row [..., N]."""
    s = scale.float()
    if s.numel() == 1:
        return s.reshape(()).expand(*lead, rows).clone()
    if s.numel() == (torch.Size(lead).numel() if lead else 1) * rows:
        return s.reshape(*lead, rows)
    return s.reshape(*lead, 1).expand(*lead, rows).clone()


def concat_rows(a: Any, b: Any, dtype: torch.dtype, *, name: str | None = None) -> Any:
    """[..., Na, K] and [..., Nb, K] -> [..., Na + Nb, K] (gate rows, then up rows), packed if possible."""
    kind = _same_kind((a, b))
    lead = tuple(a.shape[:-2])
    if kind is None or tuple(b.shape[:-2]) != lead or a.shape[-1] != b.shape[-1]:
        return torch.cat(_dense((a, b), dtype), dim=-2)
    shape = (*lead, a.shape[-2] + b.shape[-2], a.shape[-1])
    data = torch.cat((a.data, b.data), dim=-2)
    meta = _meta(a, name)
    if kind == "nvfp4":
        ga, gb = a.scales["global"].float(), b.scales["global"].float()
        if torch.equal(ga, gb):
            glob = ga
        elif lead and a.shape[-2] == b.shape[-2] and ga.shape == gb.shape == torch.Size(lead):
            glob = torch.stack((ga, gb), dim=-1)  # [E, 2]: one multiplier per expert and half
        else:
            return torch.cat(_dense((a, b), dtype), dim=-2)
        block = torch.cat((a.scales["block"], b.scales["block"]), dim=-2)
        return QTensor("nvfp4", data, shape, scales={"block": block, "global": glob}, meta=meta)
    if kind.startswith("fp8:"):
        sa, sb = a.scales["scale"].float(), b.scales["scale"].float()
        if kind == "fp8:tensor" and torch.equal(sa, sb):
            return QTensor("fp8", data, shape, scales={"scale": sa}, meta=meta)
        rows = torch.cat((_row_scales(sa, lead, a.shape[-2]), _row_scales(sb, lead, b.shape[-2])), dim=-1)
        meta["granularity"] = "channel"
        return QTensor("fp8", data, shape, scales={"scale": rows}, meta=meta)
    ga, gb = a.scales.get("global"), b.scales.get("global")
    if (ga is None) != (gb is None) or (ga is not None and not torch.equal(ga, gb)):
        return torch.cat(_dense((a, b), dtype), dim=-2)
    return QTensor(a.qtype, data, shape, scales=dict(a.scales), meta=meta)
