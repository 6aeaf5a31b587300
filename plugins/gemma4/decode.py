"""Gemma-4's decode step on the fast path: the reference forward (model.py, layers.py) with kernels.

Per layer: RMSNorm -> q|k(|v) in one GEMV -> q/k norms + RoPE (default or proportional) + the
weightless v norm (K=V on global layers: v from the raw k) + KV write at the ring or full slot in
one launch -> split-K attention (scale 1, window on sliding layers) -> o GEMV -> post-attention
norm added to the residual (one launch). Feed-forward: the pre-norm and pre-norm-2 of the residual
(one launch), the dense MLP (gate|up, GELU-tanh, down) beside the MoE (router with its scale and
per-expert scale on the device, experts on the pre-norm-2 input), each normed and summed (the
second norm adds the first), normed once more, added and times ``layer_scalar`` (one launch).
The sandwich norms' adds and multiply are the rmsnorm kernel's epilogue, with torch's bf16
roundings. The tied lm_head is a bf16 GEMV over the embedding, soft-capped as the reference does.
"""

from __future__ import annotations

import torch

from imp_core.fast import ops
from imp_core.fast.blocks import FastGatedMLP, FusedProjection
from imp_core.fast.experts import bind_experts, release_packed_stacks
from imp_core.fast.linear import bind_linear
from imp_core.fast.model import Decoder, FastModel, group_choices
from imp_core.layers.linear import dense_weight
from imp_gemma4.model import Gemma4Model


class _Layer:
    def __init__(self, layer, spec, cfg) -> None:
        a = layer.attn
        self.mod, self.spec = layer, spec
        self.qkv = FusedProjection([a.q, a.k] + ([a.v] if a.v is not None else []), name="qkv")
        self.o = bind_linear(a.o.weight, name="o_proj")
        self.mlp = FastGatedMLP(layer.mlp.gate, layer.mlp.up, layer.mlp.down, cfg.hidden_activation)
        if layer.moe:
            r = layer.router
            self.router = dense_weight(r.proj, torch.bfloat16).contiguous()
            self.router_scale = r.scale.to(torch.bfloat16).contiguous()
            self.per_expert_scale = r.per_expert_scale.to(torch.bfloat16).contiguous()
            self.experts = bind_experts(layer.experts.gate_up, layer.experts.down, act=cfg.hidden_activation,
                                        top_k=r.k)
            release_packed_stacks(layer.experts, self.experts)

    @property
    def nbytes(self) -> int:
        n = self.qkv.nbytes + self.o.nbytes + self.mlp.nbytes
        if self.mod.moe:
            n += self.router.numel() * 2 + self.experts.nbytes_per_token
        return n


class Gemma4Fast(FastModel):
    def __init__(self, model: Gemma4Model) -> None:
        self.model = model
        cfg = self.cfg = model.cfg
        self.layers = [_Layer(layer, spec, cfg) for layer, spec in zip(model.layers, cfg.layers)]
        self.lm_head = bind_linear(model.lm_head.weight, name="lm_head")
        self.inv_freq = {t: rot.inv_freq.float().contiguous() for t, rot in model.rotary.items()}
        self.scaling = {t: rot.attention_scaling for t, rot in model.rotary.items()}
        self.embed = model.embed.weight
        self.embed_scale = torch.tensor(model.embed.scale, dtype=torch.float32).to(self.embed.dtype)
        self.vocab = int(model.lm_head.weight.shape[0])
        choices = []
        for ly in self.layers:
            kind = ly.spec.layer_type
            choices += [(f"{kind} qkv", ly.qkv.reason), (f"{kind} o_proj", ly.o.reason),
                        ("mlp gate_up", ly.mlp.gate_up.reason), ("mlp down", ly.mlp.down.reason)]
            if ly.mod.moe:
                choices.append(("moe", ly.experts.reason))
        choices.append(("lm_head", self.lm_head.reason))
        self.plan = group_choices(choices)

    def weight_bytes_per_token(self) -> int:
        return sum(ly.nbytes for ly in self.layers) + self.lm_head.nbytes + self.cfg.hidden_size * 2

    def decoder(self, cache) -> Decoder:
        return Gemma4Decoder(self, cache)


class Gemma4Decoder(Decoder):
    def __init__(self, fast: Gemma4Fast, cache) -> None:
        cfg = fast.cfg
        dev = fast.model.device
        hid = cfg.hidden_size
        bf = self.setup(fast, cache, hid, fast.vocab)
        self.tmp, self.dense, self.moe_out, self.normed2 = (torch.empty(1, hid, **bf) for _ in range(4))
        width = max(ly.qkv.out_features for ly in fast.layers)
        self.qkv = torch.empty(1, width, **bf)
        self.attn = {ly.spec.head_dim: torch.empty(1, cfg.num_attention_heads, ly.spec.head_dim, **bf)
                     for ly in fast.layers}
        self.mlp_buf = fast.layers[0].mlp.buffers(1, dev)
        if any(ly.mod.moe for ly in fast.layers):
            k = cfg.top_k_experts
            self.router_ws = ops.router_workspace(cfg.num_experts, dev)
            self.ids = torch.zeros(1, k, dtype=torch.int32, device=dev)
            self.weights = torch.zeros(1, k, dtype=torch.float32, device=dev)

    def _attention(self, i: int, ly: _Layer, c, pos) -> None:
        a, spec, eps = ly.mod.attn, ly.spec, self.f.cfg.rms_norm_eps
        nq, nkv = a.h * a.d, a.hkv * a.d
        proj = self.qkv[:, :ly.qkv.out_features]
        ly.qkv(self.normed, proj)
        q = proj[:, :nq].view(1, a.h, a.d)
        k = proj[:, nq:nq + nkv].view(1, a.hkv, a.d)
        v = proj[:, nq + nkv:].view(1, a.hkv, a.d) if a.v is not None else None
        t = spec.layer_type
        ops.rope_into_cache(q, k, v, pos, c, inv_freq=self.f.inv_freq[t], scaling=self.f.scaling[t],
                            q_norm=a.q_norm.weight, k_norm=a.k_norm.weight, norm_mode="fp32", eps=eps,
                            v_mode="from_k" if v is None else "norm")
        out = self.attn[a.d]
        ops.decode_attention(self.backends[i], q, c, pos, out, scale=1.0, window=a.window,
                             plans=self.plans)
        ly.o(out.view(1, nq), self.tmp)
        ops.norm(self.tmp, ly.mod.post_attention_norm.weight, self.resid, eps=eps, add=self.resid)

    def _feed_forward(self, ly: _Layer) -> None:
        m, eps = ly.mod, self.f.cfg.rms_norm_eps
        if m.moe:  # both pre-norms of the residual in one launch
            ops.norm(self.resid, m.pre_ff_norm.weight, self.normed, eps=eps, weight2=m.pre_ff_norm_2.weight,
                     out2=self.normed2)
        else:
            ops.norm(self.resid, m.pre_ff_norm.weight, self.normed, eps=eps)
        ly.mlp(self.normed, self.mlp_buf, self.dense)
        if m.moe:
            ops.route(self.resid, ly.router, self.ids, self.weights, top_k=m.router.k, workspace=self.router_ws,
                      norm_scale=ly.router_scale, per_expert_scale=ly.per_expert_scale, eps=eps)
            self.follow_routing(self.ids, self.weights)
            ly.experts(self.normed2, self.ids, self.weights, self.moe_out)
            ops.norm(self.dense, m.post_ff_norm_1.weight, self.tmp, eps=eps)
            ops.norm(self.moe_out, m.post_ff_norm_2.weight, self.dense, eps=eps, add=self.tmp)
        ops.norm(self.dense, m.post_ff_norm.weight, self.resid, eps=eps, add=self.resid, scale=m.layer_scalar)

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        f, cfg = self.f, self.f.cfg
        torch.index_select(f.embed, 0, token.view(1), out=self.resid)
        self.resid.mul_(f.embed_scale)
        for i, (ly, c) in enumerate(zip(f.layers, self.cache.layers)):
            ops.norm(self.resid, ly.mod.input_norm.weight, self.normed, eps=cfg.rms_norm_eps)
            self._attention(i, ly, c, pos)
            self._feed_forward(ly)
            if self.trace is not None:
                self.trace.append(self.resid.clone())
        ops.norm(self.resid, f.model.norm.weight, self.normed, eps=cfg.rms_norm_eps)
        f.lm_head(self.normed, self.logits)
        cap = cfg.final_logit_softcapping
        if cap:
            self.logits.div_(cap).tanh_().mul_(cap)
        return self.logits
