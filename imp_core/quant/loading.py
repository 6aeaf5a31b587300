"""Phase 0's tensor work: one packed weight and its sidecar scales -> one ``QTensor``.

Called by ``WeightStore.get`` for every non-dense entry of the quant plan. The global scale is
turned into a MULTIPLIER here (compressed-tensors stores its inverse), llm-compressor's
gate/up-concatenated 3-D block scales are put back in row order, and the logical shape and
dtypes are checked once more against the bytes actually read.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.errors import QuantError
from imp_core.quant import QTensor
from imp_core.quant.nvfp4 import global_scale_from_compressed_tensors, global_scale_from_modelopt
from imp_core.quant.plan import TensorQuant


def _sidecar(store: Any, tq: TensorQuant, role: str) -> torch.Tensor:
    try:
        stored = tq.scale_tensors[role]
    except KeyError:
        raise QuantError(f"{store.checkpoint.path}: '{tq.name}' ({tq.format}) has no {role} scale in the "
                         f"quant plan") from None
    return store.checkpoint.read(stored)


def _nvfp4(store: Any, tq: TensorQuant, data: torch.Tensor) -> QTensor:
    block = _sidecar(store, tq, "block")
    *lead, n, half = data.shape
    if lead and tuple(block.shape) == (*lead, n // 2, 2 * (half * 2 // 16)):
        # llm-compressor repack_moe: torch.cat([gate_scale, up_scale], dim=-1) per expert
        gate, up = block.chunk(2, dim=-1)
        block = torch.cat((gate, up), dim=-2)
    raw_global = _sidecar(store, tq, "global")
    if tq.convention == "divide":
        g = global_scale_from_compressed_tensors(raw_global)
    elif tq.convention == "multiply":
        g = global_scale_from_modelopt(raw_global)
    else:
        raise QuantError(f"'{tq.name}': unknown NVFP4 global-scale convention {tq.convention!r}")
    return QTensor("nvfp4", data, tq.logical_shape or (*lead, n, 2 * half),
                   scales={"block": block, "global": g}, meta={"name": tq.name, "scheme": tq.scheme})


def _fp8(store: Any, tq: TensorQuant, data: torch.Tensor) -> QTensor:
    meta: dict[str, Any] = {"name": tq.name, "scheme": tq.scheme}
    if tq.granularity:
        meta["granularity"] = tq.granularity
    if tq.block_size:
        meta["block_size"] = tuple(tq.block_size)
    return QTensor("fp8", data, tq.logical_shape or tuple(data.shape),
                   scales={"scale": _sidecar(store, tq, "scale")}, meta=meta)


def _gguf(store: Any, tq: TensorQuant, data: torch.Tensor) -> QTensor:
    scales = {}
    if "global" in tq.scale_tensors:
        scales["global"] = _sidecar(store, tq, "global").float()
    return QTensor(tq.format, data, tq.logical_shape or tuple(data.shape), scales=scales,
                   meta={"name": tq.name, "scheme": tq.scheme})


def load_qtensor(store: Any, name: str, tq: TensorQuant, device: torch.device | None) -> QTensor:
    """The QTensor of the weight ``name`` (codes + scales + logical shape) on ``device``."""
    data = store.raw(name)
    if tq.format == "nvfp4":
        qt = _nvfp4(store, tq, data)
    elif tq.format == "fp8":
        qt = _fp8(store, tq, data)
    elif tq.format.startswith("gguf:"):
        qt = _gguf(store, tq, data)
    else:
        raise QuantError(f"{store.checkpoint.path}: '{name}' has format '{tq.format}', which no loader handles")
    return qt.to(device) if device is not None and torch.device(device) != data.device else qt
