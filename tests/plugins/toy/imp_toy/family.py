"""The toy family: embed -> RMSNorm -> gated MLP (residual) -> RMSNorm -> tied head.

No attention, so each token only sees itself: enough to show a plugin adding a family
without touching imp's core.
"""

import torch
from pydantic import BaseModel

from imp_core.model.family import CausalLM, Family, parse_config
from imp_core.layers.embedding import Embedding, LMHead
from imp_core.layers.linear import Linear
from imp_core.layers.mlp import GatedMLP
from imp_core.layers.norms import RMSNorm
from imp_core.plugin.plan_types import ModelInfo


class ToyConfig(BaseModel):
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048


class NoCache:
    def reset(self):
        pass


class ToyModel(CausalLM):
    def __init__(self, cfg, w, info):
        self.info, self.device, self.dtype = info, w.device, w.dtype
        self.embed = Embedding(w.get("model.embed_tokens.weight"))
        self.norm1 = RMSNorm(w.get("model.norm1.weight"), cfg.rms_norm_eps)
        self.mlp = GatedMLP(*(Linear(w.get(f"model.mlp.{p}_proj.weight")) for p in ("gate", "up", "down")))
        self.norm2 = RMSNorm(w.get("model.norm2.weight"), cfg.rms_norm_eps)
        self.head = LMHead(self.embed.weight)

    def new_cache(self, batch, context):
        return NoCache()

    @torch.inference_mode()
    def forward(self, ids, positions, cache, *, last_only=False):
        x = self.embed(ids)
        x = x + self.mlp(self.norm1(x))
        if last_only:
            x = x[:, -1:]
        return self.head(self.norm2(x)).float()


class ToyFamily(Family):
    name = "toy"

    def parse_config(self, checkpoint):
        return parse_config(ToyConfig, checkpoint.text_config, f"{checkpoint.path}/config.json")

    def model_info(self, cfg, checkpoint):
        return ModelInfo(family="toy", architecture="ToyForCausalLM", num_layers=1,
                         hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                         layer_kinds=("mlp",), attention_layers=())

    def build(self, cfg, weights):
        return ToyModel(cfg, weights, self.model_info(cfg, None))

    def max_context(self, cfg):
        return cfg.max_position_embeddings
