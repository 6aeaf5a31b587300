"""Launching numba kernels on torch tensors: zero-copy views, torch's stream, compile-ahead.

* ``as_device_array(t)``: a view of a torch tensor that a numba kernel accepts, without copying.
  bf16 -> its raw bits as uint16, float8 -> uint8 bits; everything else keeps its dtype.
  CUDA tensors go through ``__cuda_array_interface__`` (numba ``as_cuda_array``); under the
  simulator a CPU tensor becomes a simulator device array over ``t.numpy()`` (same memory, so
  kernel writes land in the tensor and aliased arguments, e.g. residual = out, stay aliased).
* ``current_stream()``: a numba stream wrapping ``torch.cuda.current_stream()`` (cached per raw
  handle), so a launch joins torch's ordering and is captured by ``torch.cuda.graph``. Under the
  simulator it is 0.
* ``launch(kernel, grid, block, *args, shared_bytes=0)``: converts tensor args with
  ``as_device_array`` and launches on ``current_stream()``. It never allocates device memory and
  never synchronizes, so it is safe inside CUDA-graph capture once the kernel is compiled.
* ``warmup(*calls)``: run ``(fn, args, kwargs)`` triples once and synchronize, so every numba
  specialisation they reach is compiled and loaded before a graph capture or a timing loop.
  Kernel modules also offer ``warmup(device)`` that builds tiny inputs of the real dtypes/layouts
  (numba specialises on dtype, ndim and contiguity, not on sizes) and calls this.

``jit`` is ``cuda.jit`` with ``cache=True`` on the GPU: numba then writes the compiled code of
each (kernel, argument types, compute capability) to ``__pycache__`` (or ``NUMBA_CACHE_DIR``) and
later processes skip NVVM for it. It does not cache: kernels made inside factories or closures
(numba refuses those), the per-process CUDA module load (milliseconds per kernel), or anything
after the source file's timestamp changes. Under the simulator ``cache`` is ignored.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import torch

from imp_kernels.compat import SIMULATOR, cuda
from imp_kernels.errors import KernelError

__all__ = ["as_device_array", "current_stream", "launch", "warmup", "jit", "device_jit", "require_aligned",
           "block_warps", "compiled_regs", "RegisterBuilds"]

_BITS_VIEW = {
    torch.bfloat16: torch.uint16,
    torch.float8_e4m3fn: torch.uint8,
    torch.float8_e5m2: torch.uint8,
}


def jit(fn: Callable | None = None, **kw: Any):
    """``cuda.jit`` for kernels, with ``cache=True`` on the GPU (see module doc)."""
    if not SIMULATOR:
        kw.setdefault("cache", True)
    else:
        kw.pop("max_registers", None)  # the simulator's jit has no such option
    if fn is None:
        return functools.partial(jit, **kw)
    return cuda.jit(**kw)(fn)


def device_jit(fn: Callable | None = None, **kw: Any):
    """``cuda.jit(device=True)``; under the simulator a plain call of the Python function."""
    if fn is None:
        return functools.partial(device_jit, **kw)
    return cuda.jit(device=True, **kw)(fn)


def as_device_array(t: Any) -> Any:
    """Zero-copy view of ``t`` for a kernel argument; non-tensors are returned unchanged."""
    if not isinstance(t, torch.Tensor):
        return t
    bits = _BITS_VIEW.get(t.dtype)
    if bits is not None:
        t = t.view(bits)
    if SIMULATOR:
        if t.is_cuda:
            raise ValueError("the CUDA simulator needs CPU tensors, got a CUDA tensor")
        # Wrap the tensor's own memory: the simulator then neither copies it in nor writes a copy
        # back, so kernel writes land in the tensor and aliased arguments stay aliased.
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(t.detach().numpy())
    if not t.is_cuda:
        raise ValueError(f"kernel argument must be a CUDA tensor, got one on {t.device}")
    return cuda.as_cuda_array(t.detach(), sync=False)


_streams: dict[int, Any] = {}


def current_stream() -> Any:
    """numba stream for torch's current CUDA stream (0 under the simulator)."""
    if SIMULATOR:
        return 0
    handle = torch.cuda.current_stream().cuda_stream
    s = _streams.get(handle)
    if s is None:
        s = cuda.external_stream(handle)
        _streams[handle] = s
    return s


def require_aligned(what: str, *tensors: Any, align: int = 16) -> None:
    """Raise ``KernelError`` unless every tensor's data starts on an ``align``-byte boundary
    (the kernels issue 16-byte vector loads; a sliced view can start anywhere)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() % align:
            raise KernelError(f"{what}: tensor {list(t.shape)} {t.dtype} does not start on a {align}-byte "
                             "boundary; pass a contiguous copy")


def launch(kernel: Any, grid: Any, block: Any, *args: Any, shared_bytes: int = 0) -> None:
    """Launch ``kernel[grid, block]`` on torch's current stream with tensor args viewed."""
    conv = [as_device_array(a) for a in args]
    kernel[grid, block, current_stream(), shared_bytes](*conv)


def warmup(*calls: Iterable) -> None:
    """Run each ``(fn, args)`` or ``(fn, args, kwargs)`` once, then synchronize the device."""
    for call in calls:
        fn, args, *rest = call
        kwargs = rest[0] if rest else {}
        fn(*args, **kwargs)
    if not SIMULATOR and torch.cuda.is_available():
        torch.cuda.synchronize()


SMS = 132  # streaming multiprocessors of an H100/H200 SXM, what the launch shapes are tuned for
TARGET_WARPS_PER_SM = 24


def _warps_per_sm(regs: int) -> int:
    """Warps an SM holds at ``regs`` registers a thread (64K registers, allocated 256 a warp)."""
    return min(64, 65536 // (-(-regs * 32 // 256) * 256))


_REGS: dict[int, int] = {}


def compiled_regs(kernel: Any) -> int | None:
    """Registers a thread of ``kernel`` takes (the most over its compiled specialisations), from
    the loaded code; None before its first compilation and under the simulator. Cached."""
    if SIMULATOR:
        return None
    regs = _REGS.get(id(kernel))
    if regs is None:
        try:
            regs = max((int(k.regs_per_thread) for k in kernel.overloads.values()), default=0) or None
        except Exception:  # an attribute numba renamed must not break a launch: fall back to the plain rule
            regs = None
        if regs is not None:
            _REGS[id(kernel)] = regs
    return regs


def block_warps(blocks: int, work: int, cap: int, regs: int | None = None) -> int:
    """Warps per block for a grid of ``blocks`` blocks whose warps share ``work`` items (K chunks):
    the power of two (at most ``cap`` and ``work``) that gives ~24 warps per SM; then, when the
    kernel's register count is known, halved (not below 4) while that fits the grid in fewer waves
    of resident blocks. Measured on an H200 (bench/results, the GEMV variants of 2026-12-04): a
    grid of 192-386 blocks of 16 warps at ~90 registers holds one block per SM and runs in two or
    three waves; 8 or 4 warps put all blocks on the SMs at once (NVFP4 GEMV 6144x5120 14.4 -> 12.2
    us, 8192x2048 10.2 -> 7.4 us; Qwen3.6's MoE gate/up 21.8 -> 16.8 us with the down launch)."""
    want = max(1, -(-SMS * TARGET_WARPS_PER_SM // max(1, blocks)))
    w = 1
    while w < want and w < cap:
        w *= 2
    w = max(1, min(w, work, cap))
    if regs:
        per_sm = _warps_per_sm(regs)

        def waves(v: int) -> int:
            return -(-blocks // (SMS * max(1, per_sm // v)))

        while w >= 8 and waves(w // 2) < waves(w):
            w //= 2
    return w


class RegisterBuilds:
    """A kernel's default build and, for the benchmark, builds of the same body at other register
    caps: ``get("default")`` or ``get("r<N>")`` (compiled on first use, not cached on disk)."""

    def __init__(self, what: str, default: Any, body: Callable) -> None:
        self.what, self.default, self.body = what, default, body
        self.compiled: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name == "default":
            return self.default
        kern = self.compiled.get(name)
        if kern is None:
            if not (name.startswith("r") and name[1:].isdigit()):
                raise KernelError(f"{self.what}: unknown variant {name!r} (default or r<max registers>)")
            kern = self.compiled[name] = jit(cache=False, max_registers=int(name[1:]))(self.body)
        return kern
