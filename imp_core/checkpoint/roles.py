"""Tensor roles: what a stored tensor is for, from its name and rank alone (no family knowledge).

Used by `imp info` (a table of roles x qtype with bytes), by quant detection (which stored
tensors are Linear weights that a ``targets: ["Linear"]`` config must cover), and by the
phase pipeline (policies restrict phases by role; embeddings are always made dense at load).
Both HF names (``model.layers.3.self_attn.q_proj.weight``) and GGUF names
(``blk.3.attn_q.weight``) are understood.
"""

from __future__ import annotations

import re

ROLES = ("embedding", "lm_head", "attention", "linear_attention", "mlp", "experts", "shared_expert",
         "router", "norm", "conv", "other")

_NORM = re.compile(r"(^|[._])(norm|layernorm|[a-z_]*_norm|[a-z_]*_layernorm|ln_f)(_\d+)?(\.weight|\.bias)?$")
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("embedding", re.compile(r"(embed_tokens|token_embd|embed_tokens_per_layer|wte|per_layer_token_embd)")),
    ("lm_head", re.compile(r"(^|\.)(lm_head|output)\.(weight|scale)$|^output\.")),
    ("conv", re.compile(r"(conv1d|ssm_conv1d)")),
    ("router", re.compile(r"(mlp\.gate\.|router\.|ffn_gate_inp|shared_expert_gate|block_sparse_moe\.gate\.)")),
    ("experts", re.compile(r"(\.experts\.|_exps\b|_exps\.)")),
    ("shared_expert", re.compile(r"(shared_expert\.|_shexp)")),
    ("linear_attention", re.compile(r"(linear_attn\.|\.ssm_|attn_qkv|attn_gate\b)")),
    ("attention", re.compile(r"(self_attn\.|\.attn_(q|k|v|output|q_norm|k_norm)\b)")),
    ("mlp", re.compile(r"(\.mlp\.|\.ffn_(gate|up|down)\b|\.feed_forward\.)")),
)


def tensor_role(name: str) -> str:
    """The role of a tensor name (one of ``ROLES``)."""
    if _NORM.search(name):
        return "norm"
    for role, pattern in _RULES:
        if pattern.search(name):
            return role
    return "other"


def module_of(name: str) -> str:
    """``a.b.q_proj.weight`` -> ``a.b.q_proj`` (the module a parameter belongs to)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """True for the 2-D ``.weight`` of an ``nn.Linear`` (not an embedding, norm or conv)."""
    if not name.endswith(".weight") or len(shape) != 2:
        return False
    return tensor_role(name) not in ("embedding", "norm", "conv")
