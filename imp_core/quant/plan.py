"""The quant plan: how each stored weight is encoded, decided from metadata alone.

The ``imp_detect_quant`` hook returns one of these. A plain BF16/FP16/FP32 checkpoint gets a
plan whose every tensor is ``dense``. The detector keys ``tensors`` by the *logical stored
name* (the stored name of the packed weight with a producer suffix such as ``_packed``
removed, e.g. ``model.language_model.layers.0.mlp.down_proj.weight``); the ``WeightStore``
re-keys its own copy by the model's names (after prefix normalisation and a family rename).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# formats a TensorQuant can carry (gguf block types are "gguf:<TYPE>")
NVFP4 = "nvfp4"
FP8 = "fp8"


@dataclass(frozen=True)
class TensorQuant:
    """The encoding of one logical weight.

    ``scale_tensors`` maps a role to a stored tensor name: "block" (NVFP4 E4M3 block scales),
    "global" (NVFP4 per-tensor scale, ``convention`` says whether it multiplies or divides),
    "scale" (FP8 weight scale, always multiplies), "input" (activation scale, kept for the
    fast path; the reference path does not need it).
    """

    name: str
    format: str  # "dense", "nvfp4", "fp8", "gguf:Q4_K", ...
    scale_tensors: dict[str, str] = field(default_factory=dict)  # role -> stored tensor name
    convention: str | None = None  # NVFP4 global: "multiply" (ModelOpt) / "divide" (compressed-tensors)
    logical_shape: tuple[int, ...] | None = None
    stored: str = ""  # the stored name of the packed data ("" = same as name)
    granularity: str | None = None  # FP8: "tensor", "channel" or "block"
    block_size: tuple[int, int] | None = None  # FP8 block tile
    scheme: str = ""  # producer wording for logs, e.g. "ModelOpt W4A16_NVFP4"

    @property
    def stored_name(self) -> str:
        return self.stored or self.name

    @property
    def sidecars(self) -> tuple[str, ...]:
        return tuple(self.scale_tensors.values())


@dataclass
class QuantPlan:
    """Per-tensor encodings plus the producer that wrote them."""

    producer: str = "none"  # "none", "modelopt", "compressed-tensors", "fp8", "gguf"
    tensors: dict[str, TensorQuant] = field(default_factory=dict)  # only non-dense entries
    ignore: tuple[str, ...] = ()
    sidecars: frozenset[str] = frozenset()  # stored names consumed as scales, not weights
    logical_names: dict[str, str] = field(default_factory=dict)  # stored -> logical, when they differ
    details: tuple[str, ...] = ()  # one-line facts for logs (e.g. "kv cache: FP8 (not used)")

    def format_of(self, name: str) -> str:
        tq = self.tensors.get(name)
        return tq.format if tq else "dense"

    def logical_name(self, stored: str) -> str:
        """The weight name a stored tensor stands for (``x.weight_packed`` -> ``x.weight``)."""
        return self.logical_names.get(stored, stored)

    def rekeyed(self, names: dict[str, str]) -> "QuantPlan":
        """A copy keyed by model names; ``names`` maps model name -> logical stored name."""
        by_logical = {v: k for k, v in names.items()}
        tensors = {by_logical[k]: replace(t, name=by_logical[k], stored=t.stored_name)
                   for k, t in self.tensors.items() if k in by_logical}
        return replace(self, tensors=tensors)

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
