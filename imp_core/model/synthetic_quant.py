"""Random packed weights (NVFP4, FP8 128-block, GGUF block types) made directly on the device.

Benchmarks and real-shape runs build the model from ``SyntheticWeights`` with a format mix
(tensor role -> qtype, the families' presets name the published mixes); every packed tensor
comes out as the ``QTensor`` the checkpoint loader would produce, so the phases, the fast-path
binding and the kernels see exactly what a user's checkpoint gives them. Values are random but
finite: codes are uniform bytes and every scale field holds a valid, small float, so weights
have magnitudes like a trained model's (|w| ~ 0.01-0.05).
"""

from __future__ import annotations

import torch

from imp_core.quant import QTensor
from imp_core.quant.gguf_blocks import GGUF_BLOCK

#: byte offsets of the fp16 scale fields in one block of each GGUF type (d, and dmin where present)
GGUF_SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q5_1": (0, 2),
                     "Q4_K": (0, 2), "Q5_K": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q6_K": (208,)}
#: the value written in those fields (a block's scale d; a quantized value is d times a small int)
GGUF_D = {"Q8_0": 2e-4, "Q4_0": 4e-3, "Q5_0": 2e-3, "Q4_1": 4e-3, "Q5_1": 2e-3, "Q4_K": 5e-5,
          "Q5_K": 3e-5, "Q2_K": 1e-4, "Q3_K": 1e-4, "Q6_K": 1e-5}


def fits(qtype: str, shape: tuple[int, ...]) -> bool:
    """Whether a [..., N, K] weight can be stored as ``qtype`` (its K fills whole blocks)."""
    if len(shape) < 2:
        return False
    k = shape[-1]
    if qtype == "nvfp4":
        return k % 16 == 0
    if qtype == "fp8":
        return True
    if qtype.startswith("gguf:"):
        return k % GGUF_BLOCK[qtype.split(":", 1)[1]][0] == 0
    raise ValueError(f"unknown synthetic qtype {qtype!r}")


def random_qtensor(qtype: str, shape: tuple[int, ...], *, device: torch.device, gen: torch.Generator,
                   name: str = "") -> QTensor:
    """A random ``qtype`` weight of logical ``shape`` ([N, K] or [E, N, K])."""
    *lead, n, k = shape
    lead = tuple(lead)
    meta = {"name": name}
    if qtype == "nvfp4":
        data = torch.randint(0, 256, (*lead, n, k // 2), dtype=torch.uint8, device=device, generator=gen)
        block = torch.empty(*lead, n, k // 16, device=device).uniform_(0.25, 1.0, generator=gen)
        glob = torch.full(lead, 0.02 / 3, dtype=torch.float32, device=device) if lead else \
            torch.tensor(0.02 / 3, dtype=torch.float32, device=device)
        return QTensor("nvfp4", data, shape, {"block": block.to(torch.float8_e4m3fn), "global": glob}, meta)
    if qtype == "fp8":
        data = torch.empty(*lead, n, k, device=device).normal_(0.0, 1.0, generator=gen).to(torch.float8_e4m3fn)
        scale = torch.full((*lead, -(-n // 128), -(-k // 128)), 0.02, dtype=torch.float32, device=device)
        return QTensor("fp8", data, shape, {"scale": scale}, {**meta, "granularity": "block",
                                                               "block_size": (128, 128)})
    if qtype.startswith("gguf:"):
        gtype = qtype.split(":", 1)[1]
        elems, nbytes = GGUF_BLOCK[gtype]
        blocks = torch.randint(0, 256, (*lead, n, k // elems, nbytes), dtype=torch.uint8, device=device,
                               generator=gen)
        d = torch.tensor([GGUF_D[gtype]], dtype=torch.float16).view(torch.uint8).to(device)
        for off in GGUF_SCALE_FIELDS[gtype]:
            blocks[..., off:off + 2] = d
        return QTensor(f"gguf:{gtype}", blocks.reshape(*lead, n, -1), shape, {}, meta)
    raise ValueError(f"unknown synthetic qtype {qtype!r}")


def mix_formats(mix: dict[str, str]):
    """``formats(name, shape)`` for ``SyntheticWeights`` from a format mix: keys are tensor roles
    (``"experts"``, see ``checkpoint.roles.ROLES``) or else tensor-name fragments (``"down_proj"``,
    checked first), values qtypes.
    A GGUF type whose blocks do not fit the row length falls back to Q8_0, as llama-quantize falls
    back for such rows; other formats that do not fit stay dense."""
    from imp_core.checkpoint.roles import ROLES, tensor_role

    roles = {k: v for k, v in mix.items() if k in ROLES}
    fragments = {k: v for k, v in mix.items() if k not in roles}

    def formats(name: str, shape: tuple[int, ...]) -> str | None:
        if len(shape) < 2 or "norm" in name or "conv1d" in name:
            return None
        qtype = next((v for k, v in fragments.items() if k in name), None) or roles.get(tensor_role(name))
        if qtype is None:
            return None
        if fits(qtype, shape):
            return qtype
        if qtype.startswith("gguf:") and fits("gguf:Q8_0", shape):
            return "gguf:Q8_0"
        return None

    return formats
