"""MoE decode kernels with device-side routing for bf16 / fp8 / GGUF experts, under the CUDA simulator.

Each kernel runs on tiny shapes with fresh random inputs; ``out`` and ``h`` are poisoned with NaN
first, and the result is compared with the module's torch reference (``*_ref``: dequantise, fp32
math). Tolerances: fp32 out 1e-5 relative (both sides accumulate fp32, in different orders; the
kernels round nothing else), bf16 out 4e-3 (one bf16 rounding of the output, 2^-9 at most per
element); h (fp32) 1e-5. Shapes are kept tiny because the simulator runs every thread in Python.
"""

from kernels_sim import SIM_OK, rel_err, sim_skip  # noqa: I001,F401  (must precede imp_kernels)

import pytest
import torch

from imp_kernels.errors import KernelError
from imp_kernels.gguf_common import gguf_device_buffer
from imp_kernels.moe_bf16 import GELU_TANH, SILU, moe_bf16, moe_bf16_ref, moe_bf16_scratch_shape
from imp_kernels.moe_fp8 import fp8_experts_tile, moe_fp8, moe_fp8_ref
from imp_kernels.moe_gguf import moe_gguf, moe_gguf_ref
from imp_kernels.repack import GGUF_BLOCKS

pytestmark = sim_skip

TOL = {torch.float32: 1e-5, torch.bfloat16: 4e-3}


def _inputs(gen, m, hdim, e, topk, ids_dtype, with_shared, logit, residual):
    x = torch.randn(m, hdim, generator=gen).bfloat16()
    ids = torch.stack([torch.randperm(e, generator=gen)[:topk] for _ in range(m)]).to(ids_dtype)
    wts = torch.rand(m, topk, generator=gen) + 0.1
    lg = torch.randn(m, generator=gen) if (with_shared and logit) else None
    res = torch.randn(m, hdim, generator=gen).bfloat16() if residual else None
    return x, ids, wts, lg, res


def _run_and_compare(fn, ref, args, m, hdim, scratch, out_dtype, kw):
    out = torch.full((m, hdim), float("nan"), dtype=out_dtype)
    h = torch.full(scratch, float("nan"))
    fn(*args[:3], *args[3:], out, h, **kw)
    out_r = torch.full_like(out, float("nan"))
    h_r = torch.full_like(h, float("nan"))
    ref(*args[:3], *args[3:], out_r, h_r, **kw)
    assert torch.isfinite(out).all()
    assert rel_err(out, out_r) < TOL[out_dtype], rel_err(out, out_r)
    # h past a slot's own intermediate size (a smaller shared I_s) is never written by the kernel
    assert rel_err(torch.nan_to_num(h, nan=0.0), h_r) < 1e-5


# --------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("m,activation,ids_dtype,out_dtype,shared_inter,logit,residual", [
    (2, GELU_TANH, torch.int64, torch.bfloat16, 8, True, True),    # shared with its own I_s
    (1, SILU, torch.int32, torch.float32, 16, False, False),       # shared weighted 1
    (2, SILU, torch.int32, torch.float32, None, False, True),
])
def test_moe_bf16(m, activation, ids_dtype, out_dtype, shared_inter, logit, residual):
    e, inter, hdim, topk = 4, 16, 32, 2
    gen = torch.Generator().manual_seed(11 + m + (shared_inter or 0))
    gu = (torch.randn(e, 2 * inter, hdim, generator=gen) * 0.2).bfloat16()
    dn = (torch.randn(e, hdim, inter, generator=gen) * 0.2).bfloat16()
    shared = None
    if shared_inter:
        shared = ((torch.randn(1, 2 * shared_inter, hdim, generator=gen) * 0.2).bfloat16(),
                  (torch.randn(1, hdim, shared_inter, generator=gen) * 0.2).bfloat16())
    x, ids, wts, lg, res = _inputs(gen, m, hdim, e, topk, ids_dtype, shared is not None, logit, residual)
    kw = dict(activation=activation, shared=shared, shared_gate_logit=lg, residual=res)
    _run_and_compare(moe_bf16, moe_bf16_ref, (x, ids, wts, gu, dn), m, hdim,
                     moe_bf16_scratch_shape(m, topk, inter, shared_inter), out_dtype, kw)


# ---------------------------------------------------------------------------------------- fp8
def _fp8(gen, e, n, k):
    return fp8_experts_tile((torch.randn(e, n, k, generator=gen) * 0.7).to(torch.float8_e4m3fn))


def _fp8_scale(gen, gran, e, n, k, inter=None):
    r = lambda *s: torch.rand(*s, generator=gen) + 0.5  # noqa: E731
    if gran == "tensor":
        return r(e, 2) if inter else r(e)
    if gran == "channel":
        return r(e, n)
    if gran == "split-block":  # gate and up blocked separately (checkpoint gate_proj / up_proj scales)
        return r(e, 2 * (-(-inter // 128)), -(-k // 128))
    return r(e, -(-n // 128), -(-k // 128))


@pytest.mark.parametrize("m,gran,sh_gran,hdim,inter,shared_inter,activation,ids_dtype,out_dtype", [
    (2, "tensor", "channel", 64, 32, 16, GELU_TANH, torch.int32, torch.bfloat16),
    (1, "block", "split-block", 160, 144, 48, SILU, torch.int64, torch.float32),  # 2 column / row blocks
    (2, "channel", None, 64, 16, None, SILU, torch.int64, torch.float32),
])
def test_moe_fp8(m, gran, sh_gran, hdim, inter, shared_inter, activation, ids_dtype, out_dtype):
    e, topk = 4, 2
    gen = torch.Generator().manual_seed(23 + m + inter)
    gate_up = (_fp8(gen, e, 2 * inter, hdim), _fp8_scale(gen, gran, e, 2 * inter, hdim, inter))
    down = (_fp8(gen, e, hdim, inter), _fp8_scale(gen, "block" if gran == "split-block" else gran, e, hdim, inter))
    shared = None
    if shared_inter:
        dn_gran = "block" if sh_gran == "split-block" else sh_gran
        shared = (_fp8(gen, 1, 2 * shared_inter, hdim), _fp8_scale(gen, sh_gran, 1, 2 * shared_inter, hdim, shared_inter),
                  _fp8(gen, 1, hdim, shared_inter), _fp8_scale(gen, dn_gran, 1, hdim, shared_inter))
    x, ids, wts, lg, res = _inputs(gen, m, hdim, e, topk, ids_dtype, shared is not None, True, True)
    kw = dict(activation=activation, shared=shared, shared_gate_logit=lg, residual=res, warps_gu=1, warps_dn=2)
    _run_and_compare(moe_fp8, moe_fp8_ref, (x, ids, wts, gate_up, down), m, hdim,
                     moe_bf16_scratch_shape(m, topk, inter, shared_inter), out_dtype, kw)


# --------------------------------------------------------------------------------------- GGUF
def _gguf(gen, rows, cols, qt):
    """Random GGUF blocks (random codes and sub-scales, small positive f16 super-scales)."""
    elems, nb = GGUF_BLOCKS[qt]
    nblk = rows * (cols // elems)
    b = torch.randint(0, 256, (nblk, nb), generator=gen, dtype=torch.int32).to(torch.uint8)
    offs = {"Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}[qt]
    for off in offs:
        d = (torch.rand(nblk, generator=gen) * 0.01 + 0.001).half()
        b[:, off:off + 2] = d.view(torch.uint8).reshape(nblk, 2)
    return gguf_device_buffer(b.reshape(-1)), qt


@pytest.mark.parametrize("m,hdim,inter,qts,shared_inter,sh_qts,activation,ids_dtype,out_dtype", [
    # a shared expert and its logit (Q8_0 everywhere: H=32 keeps it cheap; M=2 is covered by the
    # tensor-core GGUF MoE tests, this native kernel is the fallback)
    (1, 32, 32, ("Q8_0", "Q8_0", "Q8_0"), 32, ("Q8_0", "Q8_0", "Q8_0"), GELU_TANH, torch.int64, torch.bfloat16),
    # K-quant gate / up of different types (H=256), Q8_0 down
    (1, 256, 32, ("Q4_K", "Q6_K", "Q8_0"), None, None, SILU, torch.int32, torch.float32),
    # K-quant down (I=256), one slot only (the GPU check covers Q6_K down and a shared I_s != I)
    (1, 32, 256, ("Q8_0", "Q8_0", "Q4_K"), None, None, SILU, torch.int32, torch.float32),
])
def test_moe_gguf(m, hdim, inter, qts, shared_inter, sh_qts, activation, ids_dtype, out_dtype):
    e, topk = 2, 2 if inter < 256 else 1
    gen = torch.Generator().manual_seed(37 + m + hdim + inter)
    gate, up, down = _gguf(gen, e * inter, hdim, qts[0]), _gguf(gen, e * inter, hdim, qts[1]), \
        _gguf(gen, e * hdim, inter, qts[2])
    shared = None
    if shared_inter:
        shared = (_gguf(gen, shared_inter, hdim, sh_qts[0]), _gguf(gen, shared_inter, hdim, sh_qts[1]),
                  _gguf(gen, hdim, shared_inter, sh_qts[2]))
    x, ids, wts, lg, res = _inputs(gen, m, hdim, e, topk, ids_dtype, shared is not None, True, True)
    kw = dict(activation=activation, shared=shared, shared_gate_logit=lg, residual=res, inter=inter,
              shared_inter=shared_inter)
    _run_and_compare(moe_gguf, moe_gguf_ref, (x, ids, wts, gate, up, down), m, hdim,
                     moe_bf16_scratch_shape(m, topk, inter, shared_inter), out_dtype, kw)


# ------------------------------------------------------------------------------ argument checks
def test_argument_errors():
    gen = torch.Generator().manual_seed(3)
    e, inter, hdim = 2, 16, 32
    gu = torch.randn(e, 2 * inter, hdim, generator=gen).bfloat16()
    dn = torch.randn(e, hdim, inter, generator=gen).bfloat16()
    x = torch.randn(1, hdim, generator=gen).bfloat16()
    ids = torch.zeros(1, 2, dtype=torch.int32)
    wts = torch.ones(1, 2)
    out = torch.empty(1, hdim)
    h = torch.empty(1, 2, inter)
    with pytest.raises(KernelError, match="h scratch"):
        moe_bf16(x, ids, wts, gu, dn, out, torch.empty(1, 3, inter))
    with pytest.raises(KernelError, match="topk_weights"):
        moe_bf16(x, ids, wts.double(), gu, dn, out, h)
    with pytest.raises(KernelError, match="down"):
        moe_bf16(x, ids, wts, gu, dn[:, :, :8].contiguous(), out, h)
    with pytest.raises(KernelError, match="scale shape"):
        moe_fp8(x, ids, wts, (fp8_experts_tile(gu.to(torch.float8_e4m3fn)), torch.ones(e, 3)),
                (fp8_experts_tile(dn.to(torch.float8_e4m3fn)), torch.ones(e)), out, h)
    raw = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(KernelError, match="GGUF type"):
        moe_gguf(x, ids, wts, (raw, "Q5_0"), (raw, "Q8_0"), (raw, "Q8_0"), out, h)
    with pytest.raises(KernelError, match="buffer holds"):
        moe_gguf(x, ids, wts, (raw, "Q8_0"), (raw, "Q8_0"), (raw, "Q8_0"), out, torch.empty(1, 2, 32), n_experts=e)
