"""Linear projections that accept dense or quantized weights.

A dense weight is a [out, in] tensor. A quantized one is an ``imp_core.quant.QTensor``; on the
reference path it is dequantised (once, or per call, by the quant module's memory rule) and
then used like a dense weight, so the math stays that of the dequantised model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# a quantized weight whose dense form would exceed this is dequantised and multiplied a slab of
# rows at a time (an lm_head of 248k rows is 1 GiB in bf16, plus 2 GiB of decode temporaries)
SLAB_BYTES = 256 * 2 ** 20


def dense_weight(w: Any, dtype: torch.dtype) -> torch.Tensor:
    """The weight as a dense tensor in ``dtype`` (dequantising a QTensor)."""
    if isinstance(w, torch.Tensor):
        return w if w.dtype == dtype else w.to(dtype)
    return w.dequantize(dtype=dtype, device=None)


class Linear:
    """y = x @ W.T (+ b)."""

    def __init__(self, weight: Any, bias: torch.Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.prefill_dense: dict[str, torch.Tensor] = {}  # Phase 3b's dense copy of a packed weight

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        copy = self.prefill_dense.get("weight")
        if copy is not None and copy.dtype == dtype:
            return copy
        return dense_weight(self.weight, dtype)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if "weight" in self.prefill_dense or isinstance(w, torch.Tensor) or len(w.shape) != 2:
            return F.linear(x, self.dense(x.dtype), self.bias)
        n, k = w.shape
        step = max(128, (SLAB_BYTES // (2 * k)) // 128 * 128)
        if n <= step or w.rows(0, step) is None:
            return F.linear(x, self.dense(x.dtype), self.bias)
        # the same dequantised rows, a slab at a time: peak memory one slab, not the whole weight
        y = torch.cat([F.linear(x, dense_weight(w.rows(r, r + step), x.dtype)) for r in range(0, n, step)], dim=-1)
        return y if self.bias is None else y + self.bias
