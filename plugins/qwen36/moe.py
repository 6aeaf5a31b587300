"""Qwen3.5/3.6 feed-forward: the sparse MoE block (transformers 5.24 ``Qwen3_5MoeSparseMoeBlock``) or, for the dense
qwen3_5 sibling, a SwiGLU MLP.

MoE: router logits in the activation dtype, softmax in fp32, top-k, renormalise, then the
weights are cast to the activation dtype before they scale the experts (as transformers'
``Qwen3_5MoeTopKRouter`` does, so bf16 runs round like it); routed experts are SwiGLU; the shared
expert is scaled by sigmoid(shared_expert_gate(x)), a scalar per token.
"""

from __future__ import annotations

from typing import Any

import torch

from imp_core.layers.linear import Linear
from imp_core.layers.mlp import GatedMLP
from imp_core.layers.moe import Experts, RouteTrace, softmax_topk
from imp_qwen36.config import Qwen36Config
from imp_core.model.loading import checked, load_experts


def _swiglu(cfg: Qwen36Config, w: Any, prefix: str, inter: int, inter_key: str) -> GatedMLP:
    h, keys = cfg.hidden_size, f"hidden_size, {inter_key}"
    return GatedMLP(Linear(checked(w, prefix + "gate_proj.weight", (inter, h), keys=keys)),
                    Linear(checked(w, prefix + "up_proj.weight", (inter, h), keys=keys)),
                    Linear(checked(w, prefix + "down_proj.weight", (h, inter), keys=keys)), cfg.hidden_act)


class SparseMoE:
    def __init__(self, cfg: Qwen36Config, w: Any, prefix: str) -> None:
        p = prefix + "mlp."
        h = cfg.hidden_size
        self.router = Linear(checked(w, p + "gate.weight", (cfg.num_experts, h), keys="num_experts, hidden_size"))
        gate_up, down = load_experts(w, p, cfg.num_experts, h, cfg.moe_intermediate_size,
                                     keys="num_experts, hidden_size, moe_intermediate_size")
        self.experts = Experts(gate_up, down, cfg.hidden_act)
        self.top_k = cfg.num_experts_per_tok
        self.shared = _swiglu(cfg, w, p + "shared_expert.", cfg.shared_expert_intermediate_size,
                              "shared_expert_intermediate_size")
        self.shared_gate = Linear(checked(w, p + "shared_expert_gate.weight", (1, h), keys="hidden_size"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat)
        weights, ids = softmax_topk(logits, self.top_k)
        RouteTrace.record(ids, weights.to(logits.dtype))
        routed = self.experts(flat, ids, weights.to(logits.dtype))
        shared = torch.sigmoid(self.shared_gate(flat)) * self.shared(flat)
        return (routed + shared).reshape(shape)


def build_mlp(cfg: Qwen36Config, w: Any, prefix: str):
    """The layer's feed-forward: SparseMoE (qwen3_5_moe) or a dense SwiGLU (qwen3_5)."""
    if cfg.moe:
        return SparseMoE(cfg, w, prefix)
    return _swiglu(cfg, w, prefix + "mlp.", cfg.intermediate_size, "intermediate_size")
