"""The Gemma-4 text decoder on the reference path (transformers 5.24 ``Gemma4TextModel``).

Top: ``embed[ids] · bf16(sqrt(hidden))`` (the scale rounded to the activation dtype), one cos/sin
table per layer type (default RoPE on sliding layers, proportional RoPE on global ones), the
decoder layers, the final norm, the tied lm_head and the final softcap ``c · tanh(x / c)``.

The softcap is applied in the activation dtype, exactly where transformers applies it (on its
logits, which are in the model dtype), and only then are the logits widened to fp32; so a bf16
run returns transformers' bf16 logits value for value, and fp32 runs are unaffected.

The cache is one preallocated ``KVCache`` per layer with that layer's own shape: sliding layers
keep a ring of ``min(window, context)`` slots, global layers keep K and V for the whole context.
"""

from __future__ import annotations

import torch

from imp_core.model.cache import KVCache, LayerCaches
from imp_core.model.family import CausalLM
from imp_core.layers.embedding import Embedding, LMHead
from imp_core.layers.norms import RMSNorm
from imp_core.layers.rope import Rotary
from imp_core.plugin.plan_types import ModelInfo
from imp_core.model.weights import WeightStore
from imp_gemma4.config import Gemma4Config, Gemma4LayerConfig
from imp_gemma4.gguf import check_rope_freqs
from imp_core.model.loading import checked
from imp_gemma4.layers import Gemma4DecoderLayer
from imp_gemma4.names import ROPE_FREQS


def cache_capacity(layer: Gemma4LayerConfig, context: int) -> int:
    """Slots one layer keeps for ``context`` tokens (the window bounds a sliding layer)."""
    return min(context, layer.sliding_window) if layer.sliding_window else context


class Gemma4Model(CausalLM):
    def __init__(self, cfg: Gemma4Config, w: WeightStore, info: ModelInfo) -> None:
        self.cfg, self.info = cfg, info
        self.device, self.dtype = w.device, w.dtype
        hid = cfg.hidden_size
        self.embed = Embedding(checked(w, "model.embed_tokens.weight", (cfg.vocab_size, hid), keys="vocab_size, hidden_size"), scale=hid ** 0.5)
        self.layers = [Gemma4DecoderLayer(cfg, layer, w) for layer in cfg.layers]
        self.norm = RMSNorm(checked(w, "model.norm.weight", (hid,), keys="hidden_size"), cfg.rms_norm_eps)
        head = self.embed.weight if cfg.tie_word_embeddings else checked(w, "lm_head.weight", (cfg.vocab_size, hid), keys="vocab_size, hidden_size")
        self.lm_head = LMHead(head, softcap=cfg.final_logit_softcapping)
        if ROPE_FREQS in w:  # GGUF: the converter's generated frequency factors, a check only
            full = [layer.head_dim // 2 for layer in cfg.layers if layer.kind == "full"][:1]
            freqs = checked(w, ROPE_FREQS, tuple(full) or tuple(w.shape(ROPE_FREQS)),
                            keys="half the global head_dim", dtype=torch.float32)
            check_rope_freqs(freqs, cfg, str(w.checkpoint.path))
        self.rotary = {t: Rotary(cfg.rope[t].inv_freq(cfg.first_layer(t).head_dim)).to(self.device)
                       for t in cfg.layer_types_present()}

    def new_cache(self, batch: int, context: int) -> LayerCaches:
        return LayerCaches([
            KVCache(batch=batch, num_kv_heads=layer.num_kv_heads, head_dim=layer.head_dim,
                    capacity=cache_capacity(layer, context), dtype=self.dtype, device=self.device,
                    window=layer.sliding_window)
            for layer in self.cfg.layers])

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: LayerCaches, *,
                last_only: bool = False) -> torch.Tensor:
        x = self.embed(ids)
        tables = {t: rot.cos_sin(positions, x.dtype) for t, rot in self.rotary.items()}
        for i, (spec, layer, c) in enumerate(zip(self.cfg.layers, self.layers, cache.layers)):
            cos, sin = tables[spec.layer_type]
            x = layer(x, cos, sin, positions, c, self.attention_for(i))
            if self.layer_trace is not None:
                self.layer_trace.append(x[:, -1].clone())
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()
