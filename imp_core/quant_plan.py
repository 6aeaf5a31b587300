"""The quant plan: how each stored weight is encoded, decided from metadata alone.

The ``imp_detect_quant`` hook returns one of these. A plain BF16/FP16/FP32 checkpoint gets a
plan whose every tensor is ``dense``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorQuant:
    """The encoding of one logical weight (by its normalised name)."""

    name: str
    format: str  # "dense", "nvfp4", "fp8", "gguf:Q4_K", ...
    scale_tensors: dict[str, str] = field(default_factory=dict)  # role -> stored tensor name
    convention: str | None = None  # e.g. "multiply" (ModelOpt) / "divide" (compressed-tensors)
    logical_shape: tuple[int, ...] | None = None


@dataclass
class QuantPlan:
    """Per-tensor encodings plus the producer that wrote them."""

    producer: str = "none"  # "none", "modelopt", "compressed-tensors", "fp8", "gguf"
    tensors: dict[str, TensorQuant] = field(default_factory=dict)  # only non-dense entries
    ignore: tuple[str, ...] = ()
    sidecars: frozenset[str] = frozenset()  # stored names consumed as scales, not weights

    def format_of(self, name: str) -> str:
        tq = self.tensors.get(name)
        return tq.format if tq else "dense"

    @property
    def formats(self) -> frozenset[str]:
        return frozenset(t.format for t in self.tensors.values()) | {"dense"}

    def summary(self) -> str:
        if not self.tensors:
            return "unquantized (dense weights)"
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.format] = counts.get(t.format, 0) + 1
        parts = ", ".join(f"{n} {fmt}" for fmt, n in sorted(counts.items()))
        return f"{self.producer}: {parts}"
