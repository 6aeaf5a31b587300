"""Mistral's decode step on the fast path: the reference forward (model.py) with kernels.

Per layer: RMSNorm -> q|k|v in one GEMV -> RoPE + KV write in one launch -> split-K decode
attention -> o GEMV with the residual add fused -> RMSNorm -> gate|up GEMV -> SiLU * up -> down
GEMV with the residual add fused. Then the final norm and the lm_head GEMV.
"""

from __future__ import annotations

import torch

from imp_core.fast import ops
from imp_core.fast.blocks import FastGatedMLP, FusedProjection
from imp_core.fast.linear import bind_linear
from imp_core.fast.model import Decoder, FastModel, group_choices
from imp_mistral.model import MistralModel


class MistralFast(FastModel):
    def __init__(self, model: MistralModel) -> None:
        self.model = model
        cfg = model.cfg
        self.layers = []
        for layer in model.layers:
            qkv = FusedProjection([layer.q, layer.k, layer.v], name="qkv")
            o = bind_linear(layer.o.weight, name="o_proj")
            mlp = FastGatedMLP(layer.mlp.gate, layer.mlp.up, layer.mlp.down, "silu")
            self.layers.append((layer, qkv, o, mlp))
        self.lm_head = bind_linear(model.lm_head.weight, name="lm_head")
        self.inv_freq = model.rotary.inv_freq.float().contiguous()
        self.embed = model.embed.weight
        self.hidden, self.vocab = cfg.hidden_size, int(model.lm_head.weight.shape[0])
        choices = []
        for _, qkv, o, mlp in self.layers:
            choices += [("qkv", qkv.reason), ("o_proj", o.reason), ("gate_up", mlp.gate_up.reason),
                        ("down", mlp.down.reason)]
        choices.append(("lm_head", self.lm_head.reason))
        self.plan = group_choices(choices)

    def weight_bytes_per_token(self) -> int:
        per_layer = sum(q.nbytes + o.nbytes + m.nbytes for _, q, o, m in self.layers)
        return per_layer + self.lm_head.nbytes + self.hidden * 2

    def decoder(self, cache) -> Decoder:
        return MistralDecoder(self, cache)


class MistralDecoder(Decoder):
    def __init__(self, fast: MistralFast, cache) -> None:
        cfg = fast.model.cfg
        bf = self.setup(fast, cache, cfg.hidden_size, fast.vocab)
        self.h, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv = torch.empty(1, (self.h + 2 * self.hkv) * self.d, **bf)
        self.attn = torch.empty(1, self.h, self.d, **bf)
        self.mlp_buf = fast.layers[0][3].buffers(1, fast.model.device)

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        f, cfg = self.f, self.f.model.cfg
        torch.index_select(f.embed, 0, token.view(1), out=self.resid)
        nq, nkv = self.h * self.d, self.hkv * self.d
        for i, ((layer, qkv, o, mlp), c) in enumerate(zip(f.layers, self.cache.layers)):
            ops.norm(self.resid, layer.input_norm.weight, self.normed, eps=cfg.rms_norm_eps, mode="llama")
            qkv(self.normed, self.qkv)
            q = self.qkv[:, :nq].view(1, self.h, self.d)
            k = self.qkv[:, nq:nq + nkv].view(1, self.hkv, self.d)
            v = self.qkv[:, nq + nkv:].view(1, self.hkv, self.d)
            ops.rope_into_cache(q, k, v, pos, c, inv_freq=f.inv_freq)
            ops.decode_attention(self.backends[i], q, c, pos, self.attn, scale=layer.scale, window=layer.window,
                                 plans=self.plans)
            o(self.attn.view(1, nq), self.resid, residual=self.resid)
            ops.norm(self.resid, layer.post_norm.weight, self.normed, eps=cfg.rms_norm_eps, mode="llama")
            mlp(self.normed, self.mlp_buf, self.resid, residual=self.resid)
            if self.trace is not None:
                self.trace.append(self.resid.clone())
        ops.norm(self.resid, f.model.norm.weight, self.normed, eps=cfg.rms_norm_eps, mode="llama")
        return f.lm_head(self.normed, self.logits)
