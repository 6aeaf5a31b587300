"""Linear projections on the decode fast path: one kernel per weight, chosen once at build time.

``bind_linear(weight)`` looks at the weight as the reference path holds it (a dense tensor or a
``QTensor``) and returns a ``FastLinear`` that computes ``out = x @ W^T (+ residual)`` for the M <= 8
rows of a decode step with the kernel for its format:

| weight                         | kernel                                   | layout built here        |
|--------------------------------|------------------------------------------|--------------------------|
| dense bf16                     | ``linear_bf16`` (cuBLAS or the numba GEMV, whichever measured faster) | none |
| fp8 per-tensor/channel/block   | ``gemv_fp8`` (128x128 blocks, or 32x128 where rows are joined or regrouped 32 at a time) | ``repack.fp8_tile`` |
| nvfp4 (ModelOpt, compressed-tensors) | ``gemv_nvfp4``                     | ``repack.nvfp4_tile``    |
| gguf Q4_K / Q6_K / Q8_0        | ``gemv_gguf_tc`` (tensor cores)          | ``repack_gguf.tc_tile``  |
| gguf Q4_0 / Q5_0 (phase 3a)    | ``gemv_gguf_tc`` Q8_0                    | widened exactly to Q8_0, tiled |
| gguf scales f16 cannot hold    | ``gemv_gguf`` on the native blocks       | padded byte buffer       |
| anything else (phase 3a)       | ``linear_bf16`` on the weight dequantised to bf16 | dense copy      |

The tensor-core GGUF form stores each group's scale (and Q4_K's offset) as f16 and rounds each
weight once to f16 before the tensor cores (11 bits; the reference path's bf16 has 8), so it is
the same dequantised model; where f16 cannot hold a tensor's scales, the native-block kernel
(exact fp32 decoding, CUDA cores, several times slower) serves it and the reason says so.

The "anything else" row is phase 3a's rule: a format with no kernel is dequantised to the compute dtype,
which is exactly what the reference path multiplies with (``Linear`` dequantises to the
activation dtype), so the fast path computes the same model and never a coarser one. Every
choice carries a one-line reason for the resolved plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from imp_core.quant import QTensor
from imp_core.quant.gguf_widen import WIDENS_TO_Q8_0, widen_to_q8_0

GGUF_KERNEL_TYPES = ("Q8_0", "Q4_K", "Q6_K")


def _kernels():
    from imp_kernels import gemv_bf16, gemv_fp8, gemv_gguf, gemv_gguf_tc, gemv_nvfp4, gguf_common, repack

    return gemv_bf16, gemv_fp8, gemv_gguf, gemv_nvfp4, gguf_common, repack, gemv_gguf_tc


@dataclass
class FastLinear:
    """One bound projection: ``self(x, out, residual=None)`` with x [M, K] bf16, out [M, N]."""

    kind: str  # "bf16", "fp8", "nvfp4", "gguf-tc:<TYPE>", "gguf:<TYPE>"
    reason: str
    n: int
    k: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes one call reads from weights (what the roofline counts)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __call__(self, x: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        gemv_bf16, gemv_fp8, gemv_gguf, gemv_nvfp4, _, _, gemv_gguf_tc = _kernels()
        t = self.tensors
        ws = self.meta.get("splitk")
        if self.kind == "bf16":
            gemv_bf16.linear_bf16(x, t["weight"], out, residual=residual)
        elif self.kind == "fp8":
            gemv_fp8.gemv_fp8(x, t["codes"], t["scale"], out, residual=residual, workspace=ws)
        elif self.kind == "nvfp4":
            gemv_nvfp4.gemv_nvfp4(x, t["codes"], t["scales"], t["gscale"], out, residual=residual, workspace=ws)
        elif self.kind.startswith("gguf-tc:"):
            gemv_gguf_tc.gemv_gguf_tc(x, self.meta["tc"], t["codes"], t["scales"], out, unscale=self.meta["unscale"],
                                      residual=residual, workspace=ws)
        else:
            gemv_gguf.gemv_gguf(x, t["raw32"], self.meta["qtype"], self.n, out, residual=residual)
        return out


def _with_splitk(lin: FastLinear) -> FastLinear:
    """Give a tiled tensor-core GEMV whose rows fill fewer than two waves of blocks its split-K
    workspace (allocated once here; the plan says how many splits). Not FP8: its kernel was not
    measured faster split (kernels/bench/gemv.py has both)."""
    from imp_kernels.mma_frag import split_plan, splitk_workspace

    codes = lin.tensors["codes"]
    splits = split_plan(codes.shape[0] // 2, codes.shape[1])
    if splits > 1:
        lin.meta["splitk"] = splitk_workspace(lin.n, codes.device)
        lin.reason += f", K split {splits} ways"
    return lin


def _dense(w: torch.Tensor, reason: str) -> FastLinear:
    w = w.to(torch.bfloat16).contiguous()
    return FastLinear("bf16", reason, int(w.shape[0]), int(w.shape[1]), {"weight": w})


def _fp8_scale(qt: QTensor) -> torch.Tensor | None:
    """The scale in the shape ``gemv_fp8`` reads, or None when its granularity has no kernel."""
    n, k = qt.shape
    s = qt.scales["scale"].float()
    granularity = qt.meta.get("granularity") or ("block" if "block_size" in qt.meta else None)
    if granularity == "block" or (s.dim() == 2 and s.shape[1] > 1):
        block = tuple(qt.meta.get("block_size") or (128, 128))
        if block not in ((128, 128), (32, 128)) or tuple(s.shape) != (-(-n // block[0]), -(-k // 128)):
            return None
        return s.contiguous()
    if s.numel() == 1:
        return s.reshape(1).contiguous()
    if s.numel() == n:
        return s.reshape(n).contiguous()
    return None


def _rows32(qt: QTensor, scale: torch.Tensor) -> torch.Tensor:
    """An FP8 block scale at 32-row granularity (a 128-row block repeated four times: exact)."""
    n = qt.shape[0]
    if tuple(qt.meta.get("block_size") or (128, 128)) == (32, 128):
        return scale
    return scale.repeat_interleave(4, dim=0)[:-(-n // 32)]


def _bind_gguf(raw: torch.Tensor, gtype: str, n: int, k: int, what: str) -> FastLinear:
    """The tensor-core form of GGUF blocks where f16 holds their scales, else the native blocks."""
    from imp_kernels import repack_gguf

    _, _, _, _, gguf_common, _, _ = _kernels()
    exponent, why = repack_gguf.tc_exponent(raw, gtype, n, k)
    if exponent is not None:
        tc, codes, scales, unscale = repack_gguf.tc_tile(raw, gtype, n, k, exponent)
        return _with_splitk(FastLinear(f"gguf-tc:{gtype}", f"{what}: tensor-core GEMV, weights rounded once to f16",
                                       n, k, {"codes": codes, "scales": scales},
                                       {"qtype": gtype, "tc": tc, "unscale": unscale}))
    return FastLinear(f"gguf:{gtype}", f"{what}: GEMV on the native blocks ({why})", n, k,
                      {"raw32": gguf_common.gguf_device_buffer(raw)}, {"qtype": gtype})


def bind_linear(weight: Any, *, name: str = "") -> FastLinear:
    """The kernel form of one [N, K] weight (dense tensor or QTensor), with the reason."""
    _, _, _, _, gguf_common, repack, _ = _kernels()
    if isinstance(weight, torch.Tensor):
        return _dense(weight, "bf16 weight: cuBLAS / numba GEMV")
    qt: QTensor = weight
    if len(qt.shape) != 2:
        raise ValueError(f"bind_linear: '{name or qt.name}' has shape {list(qt.shape)}, expected [N, K]")
    n, k = qt.shape
    if qt.qtype == "nvfp4":
        codes, scales = repack.nvfp4_tile(qt.data, qt.scales["block"].view(torch.uint8))
        gscale = qt.scales["global"].float().reshape(1).contiguous()
        return _with_splitk(FastLinear("nvfp4", "nvfp4: tensor-core GEMV on the packed codes", n, k,
                                       {"codes": codes, "scales": scales, "gscale": gscale}))
    if qt.qtype == "fp8":
        scale = _fp8_scale(qt)
        if scale is not None:
            return FastLinear("fp8", "fp8: tensor-core GEMV on the e4m3 codes", n, k,
                          {"codes": repack.fp8_tile(qt.data), "scale": scale})
        return _dense(qt.dequantize(torch.bfloat16),
                      "fp8 with a scale granularity the kernel lacks: dequantised to bf16 (phase 3a)")
    if qt.qtype.startswith("gguf:"):
        gtype = qt.qtype.split(":", 1)[1].upper()
        if gtype in WIDENS_TO_Q8_0 and "global" not in qt.scales:
            wide = widen_to_q8_0(qt.data.reshape(n, -1), gtype)
            return _bind_gguf(wide, "Q8_0", n, k, f"gguf {gtype} widened to Q8_0 exactly (phase 3a)")
        if gtype in GGUF_KERNEL_TYPES and "global" not in qt.scales:
            return _bind_gguf(qt.data, gtype, n, k, f"gguf {gtype}")
        return _dense(qt.dequantize(torch.bfloat16),
                      f"gguf {gtype} has no kernel: dequantised to bf16, the reference path's own numbers "
                      f"(phase 3a)")
    return _dense(qt.dequantize(torch.bfloat16),
                  f"{qt.qtype} has no kernel: dequantised to bf16, the reference path's own numbers (phase 3a)")


def fuse_rows(weights: list[Any]) -> Any | None:
    """One weight whose rows are ``weights``' rows in order (q|k|v, gate|up), or None when
    their formats cannot be joined without changing a number (different qtypes or scales)."""
    if all(isinstance(w, torch.Tensor) for w in weights):
        return torch.cat([w.to(torch.bfloat16) for w in weights], dim=0)
    if not all(isinstance(w, QTensor) for w in weights):
        return None
    first = weights[0]
    if any(w.qtype != first.qtype or len(w.shape) != 2 or w.shape[1] != first.shape[1] for w in weights):
        return None
    rows = sum(w.shape[0] for w in weights)
    shape = (rows, first.shape[1])
    if first.qtype.startswith("gguf:") and not any("global" in w.scales for w in weights):
        return QTensor(first.qtype, torch.cat([w.data.reshape(w.shape[0], -1) for w in weights]), shape)
    if first.qtype == "nvfp4":
        g = [w.scales["global"].float().reshape(-1) for w in weights]
        if any(not torch.equal(x, g[0]) for x in g[1:]):
            return None
        return QTensor("nvfp4", torch.cat([w.data for w in weights]), shape,
                       {"block": torch.cat([w.scales["block"] for w in weights]), "global": first.scales["global"]})
    if first.qtype == "fp8":
        scales = [_fp8_scale(w) for w in weights]
        if any(s is None for s in scales):
            return None
        if all(s.numel() == w.shape[0] for s, w in zip(scales, weights)):  # per-channel
            return QTensor("fp8", torch.cat([w.data for w in weights]), shape, {"scale": torch.cat(scales)},
                           {"granularity": "channel"})
        blocks = [tuple(w.meta.get("block_size") or (128, 128)) for w in weights]
        if all(s.dim() == 2 for s in scales) and all(b == (128, 128) for b in blocks) \
                and all(w.shape[0] % 128 == 0 for w in weights[:-1]):
            return QTensor("fp8", torch.cat([w.data for w in weights]), shape, {"scale": torch.cat(scales)},
                           {"granularity": "block", "block_size": (128, 128)})
        if all(s.dim() == 2 for s in scales) and all(w.shape[0] % 32 == 0 for w in weights[:-1]):
            # e.g. Qwen3.6's DeltaNet b / a rows (32 each): joined at 32-row granularity
            return QTensor("fp8", torch.cat([w.data for w in weights]), shape,
                           {"scale": torch.cat([_rows32(w, s) for w, s in zip(weights, scales)])},
                           {"granularity": "block", "block_size": (32, 128)})
        if all(s.numel() == 1 for s in scales) and all(torch.equal(s, scales[0]) for s in scales[1:]):
            return QTensor("fp8", torch.cat([w.data for w in weights]), shape, {"scale": scales[0]})
    return None


def bind_fused(weights: list[Any], *, name: str = "") -> tuple[FastLinear, list[int]] | tuple[list[FastLinear], None]:
    """(one FastLinear over the joined rows, the split sizes), or (one FastLinear each, None)."""
    fused = fuse_rows(weights)
    if fused is None:
        return [bind_linear(w, name=name) for w in weights], None
    lin = bind_linear(fused, name=name)
    lin.reason = f"{len(weights)} projections in one launch; {lin.reason}"
    return lin, [int(w.shape[0]) for w in weights]


def select_rows(weight: Any, ranges: list[tuple[int, int]]) -> Any:
    """A weight whose rows are ``weight``'s rows ``ranges`` in the given order (e.g. Qwen's
    per-head interleaved query|gate rows regrouped as all queries, then all gates). Exact: rows
    move with their scales; FP8 128-row blocks become 32-row ones where a range needs it. Returns
    None where a scale block would still be split."""
    if isinstance(weight, torch.Tensor):
        return torch.cat([weight[a:b] for a, b in ranges])
    qt: QTensor = weight
    n, k = qt.shape
    rows = sum(b - a for a, b in ranges)
    if qt.qtype == "fp8":
        s = qt.scales["scale"]
        meta = dict(qt.meta)
        block = meta.get("granularity") == "block" or "block_size" in meta or (s.dim() == 2 and s.shape[-1] > 1)
        rows = tuple(meta.get("block_size") or (128, 128))[0] if block else 1
        def split(r):  # a scale block cut by a range (only the last range may end at a partial block)
            return any(a % r for a, _ in ranges) or any(b % r for _, b in ranges[:-1]) \
                or (ranges[-1][1] % r and ranges[-1][1] != n)

        if block and rows == 128 and split(128):
            s, rows = _rows32(qt, s), 32
            meta.update(granularity="block", block_size=(32, 128))
        if block and split(rows):
            return None
        if block:
            scale = torch.cat([s[a // rows:-(-b // rows)] for a, b in ranges])
        elif s.numel() == n:
            flat = s.reshape(n)
            scale = torch.cat([flat[a:b] for a, b in ranges])
        else:
            scale = s
        return QTensor("fp8", torch.cat([qt.data[a:b] for a, b in ranges]), (sum(b - a for a, b in ranges), k),
                       {"scale": scale}, meta)
    if qt.qtype == "nvfp4":
        blk = qt.scales["block"]
        return QTensor("nvfp4", torch.cat([qt.data[a:b] for a, b in ranges]), (rows, k),
                       {"block": torch.cat([blk[a:b] for a, b in ranges]), "global": qt.scales["global"]},
                       dict(qt.meta))
    if qt.qtype.startswith("gguf:"):
        raw = qt.data.reshape(n, -1)
        return QTensor(qt.qtype, torch.cat([raw[a:b] for a, b in ranges]), (rows, k), dict(qt.scales),
                       dict(qt.meta))
    return select_rows(qt.dequantize(torch.bfloat16), ranges)
