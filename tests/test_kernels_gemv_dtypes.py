"""Number-format device functions of imp_kernels.dtypes under the CUDA simulator."""

from kernels_sim import sim_skip  # noqa: I001  (must precede imp_kernels)

import numpy as np
import torch

from imp_kernels.compat import cuda
from imp_kernels import dtypes
from imp_kernels.launch import jit, launch

pytestmark = sim_skip


@jit
def _decode_all(b16, f8, f4, h16, out, outb):
    i = cuda.threadIdx.x
    out[0, i] = dtypes.bf16_bits_to_f32(b16[i])
    out[1, i] = dtypes.e4m3_to_f32(f8[i])
    out[2, i] = dtypes.e2m1_to_f32(f4[i])
    out[3, i] = dtypes.f16_bits_to_f32(h16[i])
    outb[i] = dtypes.f32_to_bf16_bits(out[3, i] * np.float32(1.001))


def test_dtype_decoders_match_torch():
    g = torch.Generator().manual_seed(1)
    n = 256
    b16 = (torch.randn(n, generator=g) * 100).bfloat16()
    f8 = torch.randperm(256, generator=g).to(torch.uint8)
    f4 = torch.randint(0, 16, (n,), generator=g, dtype=torch.uint8)
    h16 = (torch.randn(n, generator=g) * 10).half()
    out = torch.full((4, n), float("nan"))
    outb = torch.full((n,), float("nan"), dtype=torch.bfloat16)
    launch(_decode_all, 1, n, b16, f8, f4, h16.view(torch.uint16), out, outb)

    assert torch.equal(out[0], b16.float())
    ref8 = f8.view(torch.float8_e4m3fn).float()
    assert torch.equal(out[1].isnan(), ref8.isnan())
    fin = ~ref8.isnan()
    assert torch.equal(out[1][fin], ref8[fin])
    e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
    assert torch.equal(out[2], e2m1[f4.long()])
    assert torch.equal(out[3], h16.float())
    # round-to-nearest-even agrees with torch's float32 -> bf16 cast
    assert torch.equal(outb, (h16.float() * np.float32(1.001)).bfloat16())
