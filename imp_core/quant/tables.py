"""Decode tables for the small float formats used by quantized checkpoints.

All tables are float32 lookup tables indexed by the stored code, built from the bit formulas in
docs/formats.md, "Element formats" (not from torch's float8 dtypes, so they also work where a device lacks them).
Tables are cached per device.
"""

from __future__ import annotations

import torch

# E2M1: code = sign<<3 | magnitude index (docs/formats.md, "Element formats").
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_MIN_SUBNORMAL = 2.0**-9

_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def cached_table(name: str, device: torch.device | str | None, build) -> torch.Tensor:
    """The table ``build()`` makes, on ``device``, built once per (name, device)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (name, str(dev))
    table = _CACHE.get(key)
    if table is None:
        table = build().to(dev)
        _CACHE[key] = table
    return table


def _build_e2m1() -> torch.Tensor:
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32)
    return torch.cat([mags, -mags])


def _e4m3_magnitude(exp: int, man: int) -> float:
    if exp == 0:
        return man * 2.0**-9
    return (1.0 + man / 8.0) * 2.0 ** (exp - 7)


def _build_e4m3() -> torch.Tensor:
    values = []
    for code in range(256):
        if code & 0x7F == 0x7F:
            values.append(float("nan"))
            continue
        mag = _e4m3_magnitude((code >> 3) & 0xF, code & 7)
        values.append(-mag if code & 0x80 else mag)
    return torch.tensor(values, dtype=torch.float32)


def _build_ue4m3_ggml() -> torch.Tensor:
    # ggml_ue4m3_to_fp32 without its trailing 0.5: 0x00 and 0x7F are zero, bit 7 is not masked
    # off separately (exp = (x >> 3) & 0xF), so 0x80..0xFE decode like their low 7 bits and 0xFF
    # decodes as exp 15 / man 7 (480) exactly as ggml and gguf-py do.
    values = []
    for code in range(256):
        if code in (0x00, 0x7F):
            values.append(0.0)
            continue
        values.append(_e4m3_magnitude((code >> 3) & 0xF, code & 7))
    return torch.tensor(values, dtype=torch.float32)


def _build_e8m0() -> torch.Tensor:
    # 2^(e-127) for every byte; e=255 (NaN in OCP MX) overflows to inf in float32.
    exps = torch.arange(256, dtype=torch.float64) - 127.0
    return torch.pow(2.0, exps).to(torch.float32)


def e2m1_table(device=None) -> torch.Tensor:
    """float32 [16]: value of each E2M1 code (0..7 positive, 8..15 negative)."""
    return cached_table("e2m1", device, _build_e2m1)


def e4m3_table(device=None) -> torch.Tensor:
    """float32 [256]: value of each float8_e4m3fn byte (0x7F/0xFF are NaN, no infinities)."""
    return cached_table("e4m3", device, _build_e4m3)


def ue4m3_ggml_table(device=None) -> torch.Tensor:
    """float32 [256]: ggml's UE4M3 block-scale decode (unsigned E4M3; 0x00 and 0x7F give 0)."""
    return cached_table("ue4m3_ggml", device, _build_ue4m3_ggml)


def e8m0_table(device=None) -> torch.Tensor:
    """float32 [256]: E8M0 (MX block exponent) decode, 2^(code-127)."""
    return cached_table("e8m0", device, _build_e8m0)


def decode_e4m3_bytes(codes: torch.Tensor) -> torch.Tensor:
    """Decode raw E4M3 bytes (uint8) to float32 through the table."""
    return e4m3_table(codes.device)[codes.long()]


def e4m3_to_float(scale: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn tensor -> float32 exactly, via its bytes (no reliance on float8 kernels)."""
    return decode_e4m3_bytes(scale.contiguous().view(torch.uint8))
