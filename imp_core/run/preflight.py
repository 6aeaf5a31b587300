"""Checks that need the plan but no tensor bytes, run before any weight is read.

- ``check_embedding``: the config's vocab_size against the embedding tensor's stored shape, so a
  config that disagrees with its weights is refused at inspection, naming both;
- ``plan_memory`` / ``check_memory``: the weights at their loaded size, the KV/state cache for the
  requested context and the workspaces of one prefill chunk, summed and compared with the free
  memory of the target device (CPU: MemAvailable; CUDA: ``torch.cuda.mem_get_info``). Too much is
  one error line with the planned and free bytes and the setting to change, instead of an
  allocation that fails deep in torch (or succeeds and swaps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from imp_core.checkpoint.base import TensorInfo
from imp_core.checkpoint.names import normalize_name
from imp_core.errors import CheckpointError, OutOfMemoryError
from imp_core.units import human_bytes

EMBEDDING = "model.embed_tokens.weight"
FLOAT_STORED = {"F64", "F32", "F16", "BF16"}
WORKSPACE_MARGIN = 64 << 20  # allocator slack, rotary tables, small buffers


def model_tensors(insp: Any) -> dict[str, TensorInfo]:
    """The checkpoint's tensors the model will read, by the name the model reads them under."""
    from imp_core.run.session import renames

    rename, _ = renames(insp)
    plan = insp.quant_plan
    out: dict[str, TensorInfo] = {}
    for stored, info in insp.checkpoint.tensors.items():
        if stored in plan.sidecars:
            continue
        name = normalize_name(plan.logical_name(stored), insp.family.skip_prefixes)
        if name is not None and rename is not None:
            name = rename(name)
        if name is not None:
            out[name] = info
    return out


def check_embedding(insp: Any, tensors: dict[str, TensorInfo]) -> None:
    emb = tensors.get(EMBEDDING)
    vocab = insp.info.vocab_size
    if emb is None:
        return  # the family reads its embedding under another name; the load-time check covers it
    if len(emb.shape) != 2:
        raise CheckpointError(f"{insp.checkpoint.path}: embedding '{emb.name}' is stored with shape "
                              f"{list(emb.shape)}, expected 2 dims [vocab_size, hidden_size]")
    if emb.shape[0] != vocab:
        raise CheckpointError(f"{insp.checkpoint.path}: config key 'vocab_size' is {vocab} but the embedding "
                              f"'{emb.name}' has {emb.shape[0]} rows")


@dataclass(frozen=True)
class MemoryPlan:
    device: torch.device
    weights: int
    cache: int
    workspace: int
    free: int | None  # None: the free memory of this device is unknown
    prefill_chunk: int = 2048  # tokens a prefill forward takes at once
    prefill_chunk_reason: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.cache + self.workspace

    def describe(self) -> str:
        free = "unknown" if self.free is None else human_bytes(self.free)
        return (f"{human_bytes(self.total)} planned (weights {human_bytes(self.weights)}, cache "
                f"{human_bytes(self.cache)}, workspace {human_bytes(self.workspace)}); {free} free on {self.device}; "
                f"prefill chunks of {self.prefill_chunk} tokens"
                + (f" ({self.prefill_chunk_reason})" if self.prefill_chunk_reason else ""))


def _loaded_bytes(info: TensorInfo, quantized: bool, dtype: torch.dtype) -> int:
    if quantized or info.dtype not in FLOAT_STORED:
        return info.nbytes  # packed weights stay at their stored size
    numel = 1
    for d in info.shape:
        numel *= d
    return numel * torch.empty(0, dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int | None:
    from imp_core.device_memory import free_bytes as _free

    return _free(device)


SMALLEST_PREFILL_CHUNK = 128


def choose_prefill_chunk(free: int | None, fixed: int, per_token: int, largest: int) -> tuple[int, str]:
    """(tokens per prefill chunk, reason): the largest power-of-two halving of ``largest`` whose
    transient memory (``per_token`` bytes a token) fits in half of what the weights, the cache
    and the fixed workspace (``fixed``) leave free."""
    if free is None:
        return largest, "free memory unknown"
    budget = (free - fixed) // 2
    chunk = largest
    while chunk > SMALLEST_PREFILL_CHUNK and chunk * per_token > budget:
        chunk //= 2
    if chunk == largest:
        return chunk, f"{human_bytes(chunk * per_token)} of prefill transients fit"
    return chunk, (f"{largest} tokens would need {human_bytes(largest * per_token)} of prefill transients; "
                   f"{human_bytes(max(budget, 0))} is half of what is left")


def plan_memory(insp: Any, tensors: dict[str, TensorInfo], prompt_tokens: int) -> MemoryPlan:
    from imp_core.run.generator import PREFILL_CHUNK

    quantized = set(insp.quant_plan.tensors)
    weights = sum(_loaded_bytes(info, name in quantized, insp.dtype) for name, info in tensors.items())
    weights += sum(insp.checkpoint.tensors[s].nbytes for s in insp.quant_plan.sidecars
                   if s in insp.checkpoint.tensors)
    cache = insp.family.cache_bytes(insp.config, insp.dtype, insp.context)
    info = insp.info
    heads = max((a.num_heads for a in info.attention_layers), default=1)
    elsize = torch.empty(0, dtype=insp.dtype).element_size()
    # the eager path (and torch's CPU math fallback) holds a chunk's scores against the whole cache;
    # CUDA's fused SDPA kernels (flash, memory-efficient) hold none
    scores = any(a.backend == "eager" for a in insp.attention) or insp.device.type == "cpu"
    per_token = info.hidden_size * elsize * 16 + (insp.context * heads * 4 if scores else 0)
    fixed = info.vocab_size * 4 * 8 + WORKSPACE_MARGIN  # fp32 logits and the sampler's sort/mask buffers
    free = free_bytes(insp.device)
    chunk, why = choose_prefill_chunk(None if free is None else free - weights - cache, fixed, per_token,
                                      PREFILL_CHUNK)
    planned = max(1, min(prompt_tokens, chunk))
    return MemoryPlan(insp.device, weights, cache, fixed + planned * per_token, free, chunk, why)


def check_memory(plan: MemoryPlan, context_source: str) -> None:
    """Refuse a plan that does not fit, naming the setting to change."""
    if plan.free is None or plan.total <= plan.free:
        return
    hint = ("lower runtime.context (--context)" if plan.cache + plan.workspace > plan.weights
            else "use a smaller or more strongly quantized checkpoint, or another --device")
    raise OutOfMemoryError(f"not enough memory on {plan.device}: {human_bytes(plan.total)} planned (weights "
                           f"{human_bytes(plan.weights)}, KV/state cache for context {context_source} "
                           f"{human_bytes(plan.cache)}, workspace {human_bytes(plan.workspace)}) but "
                           f"{human_bytes(plan.free)} free; {hint}")
