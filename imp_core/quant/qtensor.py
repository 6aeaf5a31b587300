"""QTensor: a packed weight, its scales and its logical shape, dequantizable on demand."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from imp_core.errors import QuantError
from imp_core.quant.fp8 import DEFAULT_BLOCK, dequant_fp8
from imp_core.quant.gguf_blocks import dequant_gguf, normalize_gguf_type
from imp_core.quant.mxfp4 import dequant_mxfp4
from imp_core.quant.nvfp4 import dequant_nvfp4

QTYPES = ("nvfp4", "mxfp4", "fp8", "gguf:<TYPE>")


@dataclass
class QTensor:
    """A packed weight plus its scales, with its logical [out, in] (or [E, out, in]) shape.

    qtype and the tensors it expects:
    - "nvfp4": data uint8 [..., N, K/2] (even element low nibble); scales["block"] float8_e4m3fn
      [..., N, K/16]; scales["global"] float32 MULTIPLIER ([] or [E]).
    - "mxfp4": data uint8 [..., N, K/2]; scales["block"] uint8 E8M0 [..., N, K/32].
    - "fp8": data float8_e4m3fn [..., N, K]; scales["scale"] (multiplier; per-tensor, per-channel or
      per-block); meta may hold "granularity" and "block_size" (its presence means block scales;
      default tile [128, 128]).
    - "gguf:<TYPE>" (e.g. "gguf:Q4_K"): data = the raw bytes, uint8; optional scales["global"],
      a float32 multiplier ([] or one per leading index) applied after block decoding (GGUF NVFP4's
      ``.scale`` tensor).
    meta["name"], when present, is used in error messages.
    """

    qtype: str
    data: torch.Tensor
    shape: tuple[int, ...]
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or "")

    def _scale(self, key: str) -> torch.Tensor:
        if key not in self.scales:
            who = f"'{self.name}'" if self.name else "tensor"
            raise QuantError(f"{self.qtype} {who} has no scales[{key!r}] (has {sorted(self.scales)})")
        return self.scales[key]

    def rows(self, start: int, stop: int) -> QTensor | None:
        """Rows [start, stop) of a 2-D weight as a QTensor sharing storage (scales sliced with
        them), or None where a scale block would be cut or the layout is not known here."""
        if len(self.shape) != 2:
            return None
        n, k = self.shape
        stop = min(stop, n)
        shape = (stop - start, k)
        if self.qtype == "nvfp4":
            return QTensor("nvfp4", self.data[start:stop], shape,
                           {"block": self.scales["block"][start:stop], "global": self.scales["global"]}, self.meta)
        if self.qtype.lower().startswith("gguf:"):
            if any(v.numel() > 1 for v in self.scales.values()):
                return None
            return QTensor(self.qtype, self.data.reshape(n, -1)[start:stop], shape, self.scales, self.meta)
        if self.qtype == "fp8":
            s = self.scales["scale"]
            block = "block_size" in self.meta or self.meta.get("granularity") == "block" or \
                (s.dim() == 2 and s.shape[-1] > 1)
            if block:
                bn = tuple(self.meta.get("block_size") or DEFAULT_BLOCK)[0]
                if start % bn or (stop % bn and stop != n):
                    return None
                s = s[start // bn:-(-stop // bn)]
            elif s.numel() == n:
                s = s.reshape(n)[start:stop]
            return QTensor("fp8", self.data[start:stop], shape, {"scale": s}, self.meta)
        return None

    def dequantize(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The full-precision weight of logical ``shape`` in ``dtype`` (computed in float32)."""
        name = self.name or None
        f32 = torch.float32
        if self.qtype == "nvfp4":
            out = dequant_nvfp4(self.data, self._scale("block"), self._scale("global"), f32, device, name=name)
        elif self.qtype == "mxfp4":
            out = dequant_mxfp4(self.data, self._scale("block"), f32, device, name=name)
        elif self.qtype == "fp8":
            granularity = self.meta.get("granularity") or ("block" if "block_size" in self.meta else None)
            block_size = tuple(self.meta.get("block_size") or DEFAULT_BLOCK)
            out = dequant_fp8(
                self.data, self._scale("scale"), f32, device,
                granularity=granularity, block_size=block_size, name=name,
            )
        elif self.qtype.lower().startswith("gguf:"):
            qtype = normalize_gguf_type(self.qtype)
            out = dequant_gguf(self.data, qtype, self.shape, f32, device, name=name)
            if "global" in self.scales:
                out = out * self._gguf_global(out)
        else:
            raise QuantError(f"unknown QTensor qtype {self.qtype!r}, expected one of {QTYPES}")
        if tuple(out.shape) != self.shape:
            who = f"'{self.name}'" if self.name else "QTensor"
            raise QuantError(
                f"{who} ({self.qtype}) decodes to shape {list(out.shape)}, "
                f"but its logical shape is {list(self.shape)}"
            )
        return out.to(dtype)

    def _gguf_global(self, out: torch.Tensor) -> torch.Tensor:
        g = self.scales["global"].to(out.device).float()
        if g.numel() == 1:
            return g.reshape(())
        lead = out.shape[:-2]
        if g.numel() != lead.numel() or not lead:
            raise QuantError(
                f"{self.qtype} '{self.name}' global scale has {g.numel()} values, expected 1 or {list(lead)}"
            )
        return g.reshape(*lead, 1, 1)

    @property
    def nbytes(self) -> int:
        """Bytes held: packed data plus every scale tensor."""
        tensors = [self.data, *self.scales.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device) -> QTensor:
        """A copy with data and scales on ``device`` (meta shared)."""
        return replace(
            self,
            data=self.data.to(device),
            scales={k: v.to(device) for k, v in self.scales.items()},
            meta=dict(self.meta),
        )


def dequantize(w: torch.Tensor | QTensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Dequantize a QTensor, or move/cast a plain tensor, to ``dtype`` on ``device``."""
    if isinstance(w, QTensor):
        return w.dequantize(dtype=dtype, device=device)
    if isinstance(w, torch.Tensor):
        return w.to(device=device, dtype=dtype) if device is not None else w.to(dtype=dtype)
    raise QuantError(f"dequantize expects a torch.Tensor or QTensor, got {type(w).__name__}")
