"""The GGUF extension points a family plugin fills in, and the generic glue that uses them.

A family that reads GGUF implements three methods on its ``Family`` (all optional; a family
without ``gguf_names`` cannot open GGUF files):

- ``gguf_names() -> GGUFNameTable``: GGUF tensor names <-> the family's HF names, as data
  (top-level names, and per-block names under ``blk.N.`` / ``model.layers.N.``);
- ``config_from_gguf(metadata, tensors) -> dict``: a config.json-like dict built from the
  ``<arch>.*`` metadata keys (and tensor shapes when a key is missing), which the family's own
  ``parse_config`` then validates like any config.json;
- ``gguf_transforms(config, metadata) -> dict[str, Callable]``: the converter's transforms to
  undo, keyed by HF name (a full name, or the part after ``model.layers.N.`` for every layer).
  Each callable takes the stored tensor (dense torch tensor, or a ``QTensor`` for block
  types) and returns the HF-layout tensor (dense or ``QTensor``). ``permute_rows`` works on
  both.

The core composes them: ``gguf_rename`` (for the WeightStore), ``gguf_transform``, and
``config_for_gguf`` (runtime). GGUF names the table does not know are left as they are, so a
missing entry is reported as an unused tensor with its GGUF name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from imp_core.checkpoint.gguf_metadata_checks import check_arch_metadata
from imp_core.errors import CheckpointError, QuantError
from imp_core.quant import QTensor

_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


# Top-level tensors every llama.cpp text architecture names the same way.
COMMON_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass(frozen=True)
class GGUFNameTable:
    """GGUF <-> HF tensor names of one family (both directions)."""

    top: Mapping[str, str]  # e.g. "token_embd.weight" -> "model.embed_tokens.weight"
    block: Mapping[str, str]  # e.g. "attn_q.weight" -> "self_attn.q_proj.weight"
    skip: frozenset[str] = field(default_factory=frozenset)  # GGUF names the model does not read

    def to_hf(self, name: str) -> str | None:
        """The HF name of a GGUF tensor; None to skip it; unknown names come back unchanged."""
        if name in self.skip:
            return None
        if name in self.top:
            return self.top[name]
        m = _BLK.match(name)
        if m and m.group(2) in self.block:
            return f"model.layers.{m.group(1)}.{self.block[m.group(2)]}"
        return name

    def to_gguf(self, name: str) -> str | None:
        """The GGUF name of an HF tensor (for fixture writers), or None if the table lacks it."""
        for g, h in self.top.items():
            if h == name:
                return g
        m = _LAYER.match(name)
        if m:
            for g, h in self.block.items():
                if h == m.group(2):
                    return f"blk.{m.group(1)}.{g}"
        return None


def permute_rows(w: Any, perm: torch.Tensor) -> Any:
    """``w[perm]`` along the output rows (dim -2 of a matrix / expert stack), dense or packed.

    GGUF block types, NVFP4 and per-tensor/per-channel FP8 keep whole rows per block, so the
    packed bytes and row scales are permuted as they are; a block-FP8 weight is dequantised
    (float32) first.
    """
    if isinstance(w, torch.Tensor):
        return w.index_select(-2 if w.dim() > 1 else 0, perm.to(w.device))
    if not isinstance(w, QTensor):
        raise QuantError(f"permute_rows: expected a tensor or QTensor, got {type(w).__name__}")
    p = perm.to(w.data.device)
    if w.qtype.startswith("gguf:") or w.qtype == "nvfp4" or w.qtype == "mxfp4":
        scales = {k: (v.index_select(-2, p) if k == "block" else v) for k, v in w.scales.items()}
        return QTensor(w.qtype, w.data.index_select(-2, p), w.shape, scales=scales, meta=dict(w.meta))
    if w.qtype == "fp8" and w.meta.get("granularity") in ("tensor", "channel"):
        s = w.scales["scale"]
        if w.meta["granularity"] == "channel":
            s = s.reshape(*w.shape[:-1]).index_select(-1, p).reshape(s.shape)
        return QTensor("fp8", w.data.index_select(-2, p), w.shape, scales={"scale": s}, meta=dict(w.meta))
    return w.dequantize(torch.float32).index_select(-2, p)


def llama_unpermute(n_head: int) -> Callable[[Any], Any]:
    """Undo llama.cpp's ``LlamaModel.permute`` (HF rotate-half rows -> interleaved pairs) on Q/K.

    The converter wrote ``W.reshape(n_head, 2, d/2, K).swapaxes(1, 2)``; stored row
    ``h*d + 2i + j`` holds HF row ``h*d + j*d/2 + i``, so HF row r is stored row perm[r].
    """
    def undo(w: Any) -> Any:
        rows = int(w.shape[-2])
        if rows % (2 * n_head):
            raise CheckpointError(f"Q/K weight with {rows} rows cannot hold {n_head} heads of even size")
        d = rows // n_head
        stored_of_hf = torch.arange(rows).reshape(n_head, d // 2, 2).transpose(1, 2).reshape(rows)
        return permute_rows(w, stored_of_hf)

    return undo


def gguf_rename(table: GGUFNameTable, after: Callable[[str], str | None] | None = None
                ) -> Callable[[str], str | None]:
    """The WeightStore rename: GGUF -> HF names, then the family's own rename if any."""
    def rename(name: str) -> str | None:
        hf = table.to_hf(name)
        return after(hf) if hf is not None and after is not None else hf

    return rename


def gguf_transform(transforms: Mapping[str, Callable[[Any], Any]]) -> Callable[[str, Any], Any] | None:
    """One ``(hf_name, tensor) -> tensor`` callable from a family's transforms table."""
    if not transforms:
        return None

    def apply(name: str, w: Any) -> Any:
        fn = transforms.get(name)
        if fn is None:
            m = _LAYER.match(name)
            fn = transforms.get(m.group(2)) if m else None
        return fn(w) if fn is not None else w

    return apply


def metadata_value(metadata: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    """A required (or defaulted) GGUF metadata value; a missing key names the file and key."""
    if key in metadata:
        return metadata[key]
    if default is ...:
        raise CheckpointError(f"{where}: GGUF metadata key '{key}' is missing")
    return default


def config_for_gguf(family: Any, checkpoint: Any) -> dict[str, Any]:
    """The config.json-like dict of a GGUF checkpoint, from its family's ``config_from_gguf``."""
    build = getattr(family, "config_from_gguf", None)
    if build is None or getattr(family, "gguf_names", lambda: None)() is None:
        raise CheckpointError(f"{checkpoint.path}: family '{family.name}' cannot read GGUF files "
                              f"(its plugin declares no GGUF name table)")
    where = str(checkpoint.path)
    check_arch_metadata(checkpoint.metadata, checkpoint.gguf_architecture or "", where)
    try:
        return build(checkpoint.metadata, checkpoint.tensors, where=where)
    except (TypeError, ValueError, ArithmeticError, IndexError, KeyError) as exc:
        # a metadata value of a shape the family did not expect (the checks above cover the usual keys)
        detail = " ".join(str(exc).split())[:100]
        raise CheckpointError(f"{where}: GGUF metadata does not describe a valid '{family.name}' model "
                              f"({type(exc).__name__}: {detail})") from None
