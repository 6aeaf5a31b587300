"""Qwen3.6's decode step on the fast path: the reference forward (model.py) with kernels.

Gated attention layers: RMSNorm -> q|gate|k|v in one GEMV (the query rows regrouped at bind time
from per-head [q_h | gate_h] to [all q | all gates], an exact row move) -> q/k zero-centred norm
+ partial RoPE + KV write in one launch -> split-K attention with the sigmoid output gate fused
-> o GEMV with the residual fused. Gated DeltaNet layers: in_proj qkv|z|b|a in one GEMV -> the
one-launch DeltaNet step (conv, gates, state update, gated norm) -> out_proj with the residual
fused. MoE: router + softmax + top-k on the device, then the experts (and the shared expert,
fused where the format allows) with the residual fused; where the shared expert is fused, the
router launch also computes its gate logit and writes the routing weights bf16-rounded in fp32;
dense variant: gate|up, act, down.
"""

from __future__ import annotations

import torch

from imp_core.fast import ops
from imp_core.fast.blocks import FastGatedMLP, FusedProjection
from imp_core.fast.experts import bind_experts, release_packed_stacks
from imp_core.fast.linear import bind_linear, fuse_rows, select_rows
from imp_core.fast.model import Decoder, FastModel, group_choices
from imp_core.layers.linear import Linear, dense_weight
from imp_qwen36.model import Qwen36Model

ZERO_CENTRED = dict(mode="fp32", offset=1.0)
DELTANET_KEY_HEAD_DIM = 128  # what imp_kernels.gdn_decode's one-launch step is written for


def fast_path_reasons(info) -> list[str]:
    """Qwen3.6's veto: the DeltaNet step kernel takes key heads of 128 and value heads of a
    multiple of 32 up to 256 (the published models' 128 / 128)."""
    dk, dv = info.extra.get("linear_key_head_dim"), info.extra.get("linear_value_head_dim")
    if dk is None or "linear_attention" not in info.layer_kinds:
        return []
    if dk != DELTANET_KEY_HEAD_DIM or dv % 32 or dv > 256:
        return [f"the DeltaNet decode kernel needs key heads of {DELTANET_KEY_HEAD_DIM} and value heads of a "
                f"multiple of 32 up to 256 (this model: {dk} / {dv})"]
    return []


def _query_gate_rows(h: int, d: int) -> list[tuple[int, int]]:
    """Row ranges of q_proj's per-head [q_h | gate_h] output regrouped as [q_0..q_H | gate_0..gate_H]."""
    return [(2 * d * i, 2 * d * i + d) for i in range(h)] + [(2 * d * i + d, 2 * d * (i + 1)) for i in range(h)]


class _Attention:
    def __init__(self, layer, cfg) -> None:
        a = layer.mixer
        if a.q.bias is not None:
            raise NotImplementedError("attention_bias")
        self.mod = a
        rows = _query_gate_rows(a.h, a.d)
        qg = select_rows(a.q.weight, rows)
        if qg is None:  # FP8 128-row scale blocks would split: regroup the dequantised rows
            qg = select_rows(dense_weight(a.q.weight, torch.bfloat16), rows)
        self.proj = FusedProjection([Linear(qg), a.k, a.v], name="qkv")
        self.o = bind_linear(a.o.weight, name="o_proj")
        self.reason = self.proj.reason

    @property
    def nbytes(self) -> int:
        return self.proj.nbytes + self.o.nbytes


class _DeltaNet:
    def __init__(self, layer, cfg) -> None:
        g = layer.mixer
        self.mod = g
        self.proj = FusedProjection([g.in_qkv, g.in_z, g.in_b, g.in_a], name="in_proj")
        self.out = bind_linear(g.out.weight, name="out_proj")
        self.conv_w = g.conv_weight.to(torch.bfloat16).contiguous()
        self.a_log = torch.log(-g.neg_a.float()).contiguous()  # the kernel takes A_log; exp(log(x)) = x to 1 ulp
        self.dt_bias = g.dt_bias.float().contiguous()
        self.norm_w = g.norm_weight.to(torch.bfloat16).contiguous()
        self.sizes = [cfg.conv_dim, g.value_dim, cfg.linear_num_value_heads, cfg.linear_num_value_heads]
        self.reason = self.proj.reason

    @property
    def nbytes(self) -> int:
        return self.proj.nbytes + self.out.nbytes


class _Moe:
    def __init__(self, mlp, cfg) -> None:
        self.mod = mlp
        self.router = dense_weight(mlp.router.weight, torch.bfloat16).contiguous()
        shared = mlp.shared
        self.experts = bind_experts(mlp.experts.gate_up, mlp.experts.down, act=cfg.hidden_act, top_k=mlp.top_k,
                                    shared=(fuse_rows([shared.gate.weight, shared.up.weight]), shared.down.weight))
        release_packed_stacks(mlp.experts, self.experts)
        fused = self.experts.shared_fused
        gate = mlp.shared_gate.weight
        # fused shared expert: the router launch also computes the gate logit, from a dense bf16 row
        self.shared_gate_w = dense_weight(gate, torch.bfloat16).contiguous().view(1, -1) if fused else None
        self.shared_gate = None if fused else bind_linear(gate, name="shared_expert_gate")
        self.shared = None if fused else FastGatedMLP(shared.gate, shared.up, shared.down, cfg.hidden_act)
        self.reason = self.experts.reason + ("" if self.shared is None else f"; shared expert: {self.shared.gate_up.reason}")

    @property
    def nbytes(self) -> int:
        gate = self.shared_gate_w.numel() * 2 if self.shared is None else self.shared_gate.nbytes
        return (self.router.numel() * 2 + gate + self.experts.nbytes_per_token
                + (self.shared.nbytes if self.shared is not None else 0))


class Qwen36Fast(FastModel):
    def __init__(self, model: Qwen36Model) -> None:
        self.model = model
        cfg = self.cfg = model.cfg
        self.layers = []
        choices = []
        for layer in model.layers:
            mixer = _Attention(layer, cfg) if layer.full else _DeltaNet(layer, cfg)
            mlp = _Moe(layer.mlp, cfg) if cfg.moe else FastGatedMLP(layer.mlp.gate, layer.mlp.up, layer.mlp.down,
                                                                    cfg.hidden_act)
            self.layers.append((layer, mixer, mlp))
            choices.append(("attention qkv" if layer.full else "deltanet in_proj", mixer.reason))
            choices.append(("attention o_proj" if layer.full else "deltanet out_proj",
                            (mixer.o if layer.full else mixer.out).reason))
            choices.append(("moe" if cfg.moe else "mlp", mlp.reason if cfg.moe else mlp.gate_up.reason))
        self.lm_head = bind_linear(model.lm_head.weight, name="lm_head")
        choices.append(("lm_head", self.lm_head.reason))
        self.plan = group_choices(choices)
        self.inv_freq = model.rotary.inv_freq.float().contiguous()
        self.embed = model.embed.weight
        self.vocab = int(model.lm_head.weight.shape[0])

    def weight_bytes_per_token(self) -> int:
        return sum(m.nbytes + f.nbytes for _, m, f in self.layers) + self.lm_head.nbytes + self.cfg.hidden_size * 2

    def decoder(self, cache) -> Decoder:
        return Qwen36Decoder(self, cache)


class Qwen36Decoder(Decoder):
    def __init__(self, fast: Qwen36Fast, cache) -> None:
        cfg = fast.cfg
        dev = fast.model.device
        bf = self.setup(fast, cache, cfg.hidden_size, fast.vocab)
        hid = cfg.hidden_size
        h, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.attn_proj = torch.empty(1, (2 * h + 2 * hkv) * d, **bf)
        self.attn = torch.empty(1, h, d, **bf)
        self.gdn_proj = torch.empty(1, cfg.conv_dim + cfg.linear_value_dim + 2 * cfg.linear_num_value_heads, **bf)
        self.gdn_out = torch.empty(1, cfg.linear_value_dim, **bf)
        self.gdn_ws = {id(mixer): ops.gdn_workspace(1, cfg.linear_num_key_heads, dev)
                       for layer, mixer, _ in fast.layers if not layer.full}
        if cfg.moe:
            self.router_ws = ops.router_workspace(cfg.num_experts, dev)
            k = cfg.num_experts_per_tok
            self.ids = torch.zeros(1, k, dtype=torch.int32, device=dev)
            self.w_bf16 = torch.zeros(1, k, **bf)
            self.w_f32 = torch.zeros(1, k, dtype=torch.float32, device=dev)
            self.shared_logit = torch.empty(1, 1, **bf)
            self.shared_logit_f32 = torch.empty(1, 1, dtype=torch.float32, device=dev)
            self.routed = torch.empty(1, hid, **bf)
            self.shared_out = torch.empty(1, hid, **bf)
        first_mlp = fast.layers[0][2]
        shared = first_mlp.shared if cfg.moe else first_mlp
        self.mlp_buf = shared.buffers(1, dev) if shared is not None else None

    def _attention(self, i: int, mixer: _Attention, c, pos) -> None:
        a, cfg = mixer.mod, self.f.cfg
        mixer.proj(self.normed, self.attn_proj)
        nq = a.h * a.d
        nkv = a.hkv * a.d
        q = self.attn_proj[:, :nq].view(1, a.h, a.d)
        gate = self.attn_proj[:, nq:2 * nq]
        k = self.attn_proj[:, 2 * nq:2 * nq + nkv].view(1, a.hkv, a.d)
        v = self.attn_proj[:, 2 * nq + nkv:].view(1, a.hkv, a.d)
        ops.rope_into_cache(q, k, v, pos, c, inv_freq=self.f.inv_freq, q_norm=a.q_norm.weight,
                            k_norm=a.k_norm.weight, norm_mode="fp32", norm_offset=1.0, eps=cfg.rms_norm_eps)
        ops.decode_attention(self.backends[i], q, c, pos, self.attn, scale=a.scale, window=None,
                             plans=self.plans, gate=gate)
        mixer.o(self.attn.view(1, nq), self.resid, residual=self.resid)

    def _deltanet(self, mixer: _DeltaNet, state) -> None:
        cfg = self.f.cfg
        mixer.proj(self.normed, self.gdn_proj)
        mixed, z, b, a = torch.split(self.gdn_proj, mixer.sizes, dim=-1)
        ops.gdn_step(mixed, state, mixer.conv_w, a, b, mixer.a_log, mixer.dt_bias, z, mixer.norm_w, self.gdn_out,
                     eps=cfg.rms_norm_eps, n_k_heads=cfg.linear_num_key_heads, workspace=self.gdn_ws[id(mixer)])
        mixer.out(self.gdn_out, self.resid, residual=self.resid)

    def _moe(self, moe: _Moe) -> None:
        k = self.f.cfg.num_experts_per_tok
        if moe.shared is None:  # shared expert fused into the MoE launches
            # one launch: ids, the weights rounded to bf16 (the reference combines with bf16 routing
            # weights) stored fp32 for the experts, and the shared-expert gate logit
            ops.route(self.normed, moe.router, self.ids, self.w_f32, top_k=k, workspace=self.router_ws,
                      extra_weight=moe.shared_gate_w, extra_out=self.shared_logit_f32, round_weights_bf16=True)
            if self.forced_routes is not None:  # check mode: the reference's routing, rounded the same way
                self.follow_routing(self.ids, self.w_bf16)
                self.w_f32.copy_(self.w_bf16)
            moe.experts(self.normed, self.ids, self.w_f32, self.resid, residual=self.resid,
                        shared_gate_logit=self.shared_logit_f32)
            return
        ops.route(self.normed, moe.router, self.ids, self.w_bf16, top_k=k, workspace=self.router_ws)
        self.follow_routing(self.ids, self.w_bf16)
        self.w_f32.copy_(self.w_bf16)  # the reference combines with bf16 routing weights
        moe.shared_gate(self.normed, self.shared_logit)
        moe.experts(self.normed, self.ids, self.w_f32, self.routed)
        moe.shared(self.normed, self.mlp_buf, self.shared_out)
        shared = torch.sigmoid(self.shared_logit) * self.shared_out
        self.resid.add_(self.routed + shared)

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        f, cfg = self.f, self.f.cfg
        eps = cfg.rms_norm_eps
        torch.index_select(f.embed, 0, token.view(1), out=self.resid)
        for i, ((layer, mixer, mlp), c) in enumerate(zip(f.layers, self.cache.layers)):
            ops.norm(self.resid, layer.input_norm.weight, self.normed, eps=eps, **ZERO_CENTRED)
            if layer.full:
                self._attention(i, mixer, c, pos)
            else:
                self._deltanet(mixer, c)
            ops.norm(self.resid, layer.post_norm.weight, self.normed, eps=eps, **ZERO_CENTRED)
            if cfg.moe:
                self._moe(mlp)
            else:
                mlp(self.normed, self.mlp_buf, self.resid, residual=self.resid)
            if self.trace is not None:
                self.trace.append(self.resid.clone())
        ops.norm(self.resid, f.model.norm.weight, self.normed, eps=eps, **ZERO_CENTRED)
        return f.lm_head(self.normed, self.logits)
