"""Checkpoint layouts -> the layouts the GEMV kernels read (and back, for references and tests).

Tensor-core GEMV (``mma.sync m16n8k16``, fp32 accumulate) wants each lane's A fragment in one
16-byte load, so NVFP4 and FP8 weights are re-tiled once at load time. Nothing is dequantised:
the tiled tensors hold exactly the checkpoint's bits, only reordered.

Lanes are ``lane = 4*g + t`` (g = 0..7, t = 0..3); a 16-row tile holds rows ``g`` and ``g+8``
per lane. Inside a tile the K axis is split into chunks; lane ``t`` owns a contiguous run of K
inside each chunk, which the kernel relabels onto the mma's k slots (the same relabelling is
applied to the activations, so the dot product is unchanged).

NVFP4 (``nvfp4_tile``), chunk = 64 columns, lane t owns columns ``16t .. 16t+15`` = one scale
block, 4 mma steps of 4 columns:
  codes  int32 [NT, KC, 32, 4]: word s of a lane = the 8 codes of rows (g, g+8) x columns
         ``64kc + 16t + 4s + (0..3)``, bit-arranged so that f16x2 fragment v (v = 0..3; element
         pairs (g, c0..1), (g+8, c0..1), (g, c2..3), (g+8, c2..3)) is
         ``((w << (9-3v)) & 0x0E000E00) | ((w << v) & 0x80008000)``: the E2M1 magnitude bits land
         on f16 bits 9..11 and the sign on bit 15, which is the f16 value E2M1 * 2^-14 exactly.
  scales int16 [NT, KC, 32]: low byte = e4m3 scale of row g, high byte = row g+8, block 4kc+t.
  NT is padded to an even count (the kernel does two tiles per block), K to a multiple of 64;
  padding holds zero codes and zero scales.
FP8 (``fp8_tile``), chunk = 32 columns, lane t owns columns ``8t .. 8t+7``:
  codes  int32 [NT, KC, 32, 4]: words (row g, cols 8t..8t+3), (row g+8, 8t..8t+3),
         (row g, 8t+4..8t+7), (row g+8, 8t+4..8t+7), bytes in column order.
GGUF stays in its native blocks: ``gguf_rows`` only views the raw bytes as [rows, bytes/row].
"""

from __future__ import annotations

import torch

from imp_kernels.errors import KernelError

__all__ = ["nvfp4_tile", "nvfp4_untile", "nvfp4_experts_tile", "fp8_tile", "fp8_untile",
           "gguf_rows", "GGUF_BLOCKS"]

_VIEWS = ((0, 0), (1, 0), (0, 2), (1, 2))  # (row half h, first column j) of f16x2 fragment v


def _as_u8(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype in (torch.float8_e4m3fn,):
        return t.view(torch.uint8)
    if t.dtype != torch.uint8:
        raise KernelError(f"{what}: expected uint8 or float8_e4m3fn bits, got {t.dtype}")
    return t


def _to_i32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 values -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pad2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if t.shape[-2] == rows and t.shape[-1] == cols:
        return t
    out = torch.zeros(*t.shape[:-2], rows, cols, dtype=t.dtype, device=t.device)
    out[..., : t.shape[-2], : t.shape[-1]] = t
    return out


def _nvfp4_dims(n: int, k: int) -> tuple[int, int]:
    nt = -(-n // 32) * 2
    kc = -(-k // 64)
    return nt, kc


SLAB_ROWS = 4096  # rows re-tiled at a time: int64 temporaries of a 248k-row lm_head would take ~4 GB


def _slabs(tile, n: int, *tensors: torch.Tensor):
    """``tile`` applied to row slabs of ``tensors`` (whole 32-row tile pairs), results joined."""
    if n <= SLAB_ROWS:
        return tile(*tensors)
    parts = [tile(*(t[r:r + SLAB_ROWS] for t in tensors)) for r in range(0, n, SLAB_ROWS)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p).contiguous() for p in zip(*parts))
    return torch.cat(parts).contiguous()


def nvfp4_tile(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF NVFP4 ``codes`` uint8 [N, K/2] (even column in the low nibble) and block ``scales``
    (e4m3 bits) [N, K/16] -> (codes int32 [NT, KC, 32, 4], scales int16 [NT, KC, 32])."""
    codes = _as_u8(codes, "NVFP4 codes")
    scales = _as_u8(scales, "NVFP4 block scales")
    if codes.dim() != 2:
        raise KernelError(f"NVFP4 codes must be 2-D [N, K/2], got shape {list(codes.shape)}")
    n, k = codes.shape[0], codes.shape[1] * 2
    if k % 16 or tuple(scales.shape) != (n, k // 16):
        raise KernelError(f"NVFP4 block scales have shape {list(scales.shape)}, expected [{n}, {k // 16}] "
                         f"(K={k} must be a multiple of 16)")
    return _slabs(_nvfp4_tile, n, codes, scales)


def _nvfp4_tile(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = codes.shape[0], codes.shape[1] * 2
    nt, kc = _nvfp4_dims(n, k)
    q = torch.stack([codes & 15, codes >> 4], dim=-1).reshape(n, k)  # element 2j low nibble
    q = _pad2(q, nt * 16, kc * 64).to(torch.int64)
    # rows: nt*16 + h*8 + g ; cols: kc*64 + t*16 + s*4 + j
    q = q.view(nt, 2, 8, kc, 4, 4, 4).permute(0, 3, 2, 4, 5, 1, 6)  # nt kc g t s h j
    mag, sign = q & 7, q >> 3
    word = torch.zeros(q.shape[:-2], dtype=torch.int64, device=q.device)
    for v, (h, j) in enumerate(_VIEWS):
        word |= mag[..., h, j] << (3 * v)
        word |= mag[..., h, j + 1] << (16 + 3 * v)
        word |= sign[..., h, j] << (15 - v)
        word |= sign[..., h, j + 1] << (31 - v)
    codes_t = _to_i32(word.reshape(nt, kc, 32, 4)).contiguous()
    sc = _pad2(scales, nt * 16, kc * 4).to(torch.int64)
    sc = sc.view(nt, 2, 8, kc, 4).permute(0, 3, 2, 4, 1)  # nt kc g t h
    half = sc[..., 0] | (sc[..., 1] << 8)
    half = torch.where(half >= 2**15, half - 2**16, half).to(torch.int16)
    return codes_t, half.reshape(nt, kc, 32).contiguous()


def nvfp4_untile(codes_t: torch.Tensor, scales_t: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``nvfp4_tile``: (codes uint8 [n, k/2], scales uint8 [n, k/16])."""
    nt, kc = codes_t.shape[0], codes_t.shape[1]
    w = codes_t.to(torch.int64) & 0xFFFFFFFF
    q = torch.zeros(nt, kc, 32, 4, 2, 4, dtype=torch.int64, device=w.device)
    for v, (h, j) in enumerate(_VIEWS):
        q[..., h, j] = ((w >> (3 * v)) & 7) | (((w >> (15 - v)) & 1) << 3)
        q[..., h, j + 1] = ((w >> (16 + 3 * v)) & 7) | (((w >> (31 - v)) & 1) << 3)
    q = q.view(nt, kc, 8, 4, 4, 2, 4).permute(0, 5, 2, 1, 3, 4, 6).reshape(nt * 16, kc * 64)
    q = q[:n, :k].to(torch.uint8)
    codes = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
    s = scales_t.to(torch.int64) & 0xFFFF
    s = torch.stack([s & 0xFF, s >> 8], dim=-1)  # nt kc 32 h
    s = s.view(nt, kc, 8, 4, 2).permute(0, 4, 2, 1, 3).reshape(nt * 16, kc * 4)
    return codes, s[:n, : k // 16].to(torch.uint8).contiguous()


def nvfp4_experts_tile(codes: torch.Tensor | list, scales: torch.Tensor | list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-expert NVFP4 tensors ([E, N, K/2] or a list of [N, K/2]) into
    (codes int32 [E, NT, KC, 32, 4], scales int16 [E, NT, KC, 32]) contiguous buffers."""
    cs = list(codes.unbind(0)) if isinstance(codes, torch.Tensor) else list(codes)
    ss = list(scales.unbind(0)) if isinstance(scales, torch.Tensor) else list(scales)
    if len(cs) != len(ss) or not cs:
        raise KernelError(f"NVFP4 experts: {len(cs)} code tensors but {len(ss)} scale tensors")
    shape = tuple(cs[0].shape)
    tiled = []
    for e, (c, s) in enumerate(zip(cs, ss)):
        if tuple(c.shape) != shape:
            raise KernelError(f"NVFP4 expert {e} codes have shape {list(c.shape)}, expected {list(shape)}")
        tiled.append(nvfp4_tile(c, s))
    return (torch.stack([t[0] for t in tiled]).contiguous(), torch.stack([t[1] for t in tiled]).contiguous())


def fp8_tile(weight: torch.Tensor) -> torch.Tensor:
    """e4m3 weight bits [N, K] -> int32 [NT, KC, 32, 4] (NT even, K padded to 32, zeros)."""
    w = _as_u8(weight, "FP8 weight")
    if w.dim() != 2:
        raise KernelError(f"FP8 weight must be 2-D [N, K], got shape {list(w.shape)}")
    return _slabs(_fp8_tile, w.shape[0], w)


def _fp8_tile(w: torch.Tensor) -> torch.Tensor:
    n, k = w.shape
    nt, kc = -(-n // 32) * 2, -(-k // 32)
    q = _pad2(w, nt * 16, kc * 32).to(torch.int64)
    # rows nt*16 + h*8 + g ; cols kc*32 + t*8 + half*4 + b
    q = q.view(nt, 2, 8, kc, 4, 2, 4).permute(0, 3, 2, 4, 5, 1, 6)  # nt kc g t half h b
    word = q[..., 0] | (q[..., 1] << 8) | (q[..., 2] << 16) | (q[..., 3] << 24)  # nt kc g t half h
    return _to_i32(word.reshape(nt, kc, 32, 4)).contiguous()


def fp8_untile(codes_t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``fp8_tile``: uint8 [n, k]."""
    nt, kc = codes_t.shape[:2]
    w = codes_t.to(torch.int64) & 0xFFFFFFFF
    b = torch.stack([(w >> (8 * i)) & 0xFF for i in range(4)], dim=-1)  # nt kc 32 4 4
    b = b.view(nt, kc, 8, 4, 2, 2, 4).permute(0, 5, 2, 1, 3, 4, 6).reshape(nt * 16, kc * 32)
    return b[:n, :k].to(torch.uint8).contiguous()


# GGUF: type name -> (elements per block, bytes per block), the sizes of ggml's block structs
GGUF_BLOCKS = {"Q8_0": (32, 34), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}


def gguf_rows(raw: torch.Tensor, qtype: str, rows: int, cols: int) -> torch.Tensor:
    """Raw GGUF tensor bytes (any shape, uint8) -> a [rows, bytes_per_row] uint8 view, no copy."""
    if qtype not in GGUF_BLOCKS:
        raise KernelError(f"GGUF type {qtype!r} has no GEMV kernel; supported: {sorted(GGUF_BLOCKS)}")
    elems, nbytes = GGUF_BLOCKS[qtype]
    if cols % elems:
        raise KernelError(f"GGUF {qtype} tensor has {cols} columns, not a multiple of its block of {elems}")
    bpr = cols // elems * nbytes
    if raw.dtype != torch.uint8 or raw.numel() != rows * bpr:
        raise KernelError(f"GGUF {qtype} [{rows}, {cols}] needs {rows * bpr} uint8 bytes, got "
                         f"{raw.numel()} of {raw.dtype}")
    return raw.reshape(rows, bpr)
