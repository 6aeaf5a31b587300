"""Token sampling on the device, reproducing the engine's torch ``Sampler`` token for token.

``sample(logits, row_keys, step, tokens, plan=sample_plan(params, vocab, batch, device))``:
logits [B, V'] fp32 or bf16 (V' >= vocab; padding columns ignored), ``row_keys`` [B, 1] int64
from ``imp_kernels.rng.seed_row_keys(seed, B)``, ``step`` the 0-d (or [1]) int64 step counter,
advanced by one per call as ``Sampler.sample`` does, ``tokens`` [B] int64. ``params`` is any
object with the attributes of ``SampleSettings`` (temperature, top_k, top_p, min_p,
repeat_penalty, repeat_last_n; the engine's ``SamplingParams`` has them). Supported settings
(``supported``): greedy; top-k in 1..64 with any temperature / top-p / min-p; no filter at all
(pure temperature over the whole vocabulary). Not supported (use ``Sampler``): the repetition
penalty, and top-p or min-p without top-k (they need a sort of the full vocabulary).

Semantics are Sampler's: top-k on the fp32 logits, then ``/ temperature`` (as torch computes
it on the logits' device: a multiply by the fp32 reciprocal on CUDA, a division on CPU), top-p
over the softmax of the k survivors (sorted, mass strictly before a token < p, the first always
kept, ties with the last kept kept), min-p as ``exp(v - max) >= min_p``, then the exponential
race ``argmax(v - log(-log(u)))`` with ``u = uniform_noise(row key, step, token id)``
(``imp_kernels.rng``) computed bit for bit (the 32-bit hash in int64 arithmetic). Exact ties at
the k-th logit are broken toward the lower token id (torch.topk leaves that order unspecified),
and NaN logits are not given torch's meaning; otherwise the token equals Sampler's unless fp32
rounding of a libm function flips a near-tie.

Kernel 1 (grid ceil(V/4096) x B, 256 threads): each block takes 4096 logits; top-k mode: exact
block top-k by radix select in shared memory (``topk_select``), written to the workspace;
greedy / pure temperature: the block's best (score, id). Kernel 2 (one block, 512 threads,
loops over rows): merges the <= 4096 candidates of a row with the same radix select, sorts the
k survivors by rank counting, applies temperature, top-p, min-p and the noise, picks the token,
and advances ``step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from imp_kernels import ptx
from imp_kernels.compat import SIMULATOR, cuda
from imp_kernels.launch import device_jit, jit, launch
from imp_kernels.ops_common import NEG_INF, check, ld_bf16, u32, want
from imp_kernels.rng import HASH_MUL1, HASH_MUL2, MASK32, NOISE_ADD, uniform_noise
from imp_kernels.topk_select import f32_key, key_f32, radix_select, selected

__all__ = ["sample", "sample_ref", "sample_plan", "SamplePlan", "SampleSettings", "supported", "KMAX", "CHUNK"]

KMAX = 64
CHUNK = 4096
MAX_CAND = 4096
# threads per block; the simulator runs the same (stride-generic) code with fewer Python threads
A_THREADS = 64 if SIMULATOR else 256
B_THREADS = 64 if SIMULATOR else 512
GREEDY, ALL, TOPK = 0, 1, 2


@device_jit(inline="always")
def _hash32(x):
    """imp_kernels.rng.hash32 on the device."""
    x = x ^ (x >> 16)
    x = (x * HASH_MUL1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_MUL2) & MASK32
    return x ^ (x >> 15)


@device_jit(inline="always")
def _gumbel(row_key, step, eid):
    """-log(-log(u)) for imp_kernels.rng.uniform_noise's u of (row key, step, token id)."""
    h = _hash32((int(row_key) ^ (int(step) & MASK32)) & MASK32)
    h = _hash32(h ^ int(eid))
    h = _hash32((h + NOISE_ADD) & MASK32)
    u = (np.float32(h >> 8) + np.float32(0.5)) * np.float32(1.0 / (1 << 24))
    return -np.float32(math.log(-np.float32(math.log(u))))


@device_jit(inline="always")
def _logit(lf32, lbf, is_bf16, i):
    return ld_bf16(lbf, i) if is_bf16 else lf32[i]


@device_jit(inline="always")
def _temper(v, temp, inv_temp, temp_mul):
    return v * inv_temp if temp_mul else v / temp


@device_jit(inline="always")
def _better(v, i, bv, bi):
    return v > bv or (v == bv and i < bi)


@device_jit(inline="always")
def _argmax_step(v, fi, m):
    ov = ptx.shfl_xor_f32(v, m)
    oi = ptx.shfl_xor_f32(fi, m)
    if _better(ov, oi, v, fi):
        return ov, oi
    return v, fi


@device_jit(inline="always")
def _block_argmax(v, i, red_v, red_i):
    """(max value, lowest id among the maxima) over the block; ids < 2**24 travel as float32."""
    v, fi = _argmax_step(v, np.float32(i), 16)
    v, fi = _argmax_step(v, fi, 8)
    v, fi = _argmax_step(v, fi, 4)
    v, fi = _argmax_step(v, fi, 2)
    v, fi = _argmax_step(v, fi, 1)
    tid = cuda.threadIdx.x
    if (tid & 31) == 0:
        red_v[tid >> 5] = v
        red_i[tid >> 5] = fi
    cuda.syncthreads()
    bv = red_v[0]
    bi = red_i[0]
    for w in range(1, cuda.blockDim.x >> 5):
        if _better(red_v[w], red_i[w], bv, bi):
            bv = red_v[w]
            bi = red_i[w]
    cuda.syncthreads()
    return bv, int(bi)


@jit
def _sample_chunk_kernel(lf32, lbf, is_bf16, stride, vocab, mode, k, temp, inv_temp, temp_mul, row_keys, step,
                         cand_key, cand_id, nb):
    keys = cuda.shared.array(CHUNK, np.uint32)
    hist = cuda.shared.array(256, np.int32)
    st = cuda.shared.array(8, np.uint32)
    cnt = cuda.shared.array(1, np.int32)
    red_v = cuda.shared.array(32, np.float32)
    red_i = cuda.shared.array(32, np.float32)
    blk = cuda.blockIdx.x
    row = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c0 = blk * CHUNK
    n = min(CHUNK, vocab - c0)
    base = row * stride + c0
    ob = (row * nb + blk) * KMAX
    if mode == TOPK:
        i = tid
        while i < n:
            keys[i] = f32_key(_logit(lf32, lbf, is_bf16, base + i))
            i += nt
        cuda.syncthreads()
        radix_select(keys, cand_id, c0, n, k, hist, st)
        if tid == 0:
            cnt[0] = 0
        cuda.syncthreads()
        i = tid
        while i < n:
            key = keys[i]
            if selected(key, c0 + i, st):
                s = cuda.atomic.add(cnt, 0, 1)
                cand_key[ob + s] = key
                cand_id[ob + s] = c0 + i
            i += nt
        return
    bv = NEG_INF
    bi = 1 << 30
    sk = step[0]
    rk = row_keys[row]
    i = tid
    while i < n:
        v = _logit(lf32, lbf, is_bf16, base + i)
        if mode == ALL:
            v = _temper(v, temp, inv_temp, temp_mul)
            if v != NEG_INF:
                v = v + _gumbel(rk, sk, c0 + i)
        if _better(v, c0 + i, bv, bi):
            bv = v
            bi = c0 + i
        i += nt
    bv, bi = _block_argmax(bv, bi, red_v, red_i)
    if tid == 0:
        cand_key[ob] = f32_key(bv)
        cand_id[ob] = bi


@jit
def _sample_final_kernel(cand_key, cand_id, nb, vocab, mode, k, temp, inv_temp, temp_mul, top_p, use_top_p,
                         min_p, use_min_p, row_keys, step, tokens, n_rows):
    keys = cuda.shared.array(MAX_CAND, np.uint32)
    ids = cuda.shared.array(MAX_CAND, np.int32)
    hist = cuda.shared.array(256, np.int32)
    st = cuda.shared.array(8, np.uint32)
    cnt = cuda.shared.array(1, np.int32)
    sk_ = cuda.shared.array(KMAX, np.uint32)
    si_ = cuda.shared.array(KMAX, np.int32)
    sv = cuda.shared.array(KMAX, np.float32)
    sid = cuda.shared.array(KMAX, np.int32)
    red_v = cuda.shared.array(32, np.float32)
    red_i = cuda.shared.array(32, np.float32)
    cut = cuda.shared.array(1, np.float32)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    sk = step[0]
    for row in range(n_rows):
        if mode != TOPK:
            bv = NEG_INF
            bi = 1 << 30
            j = tid
            while j < nb:
                v = key_f32(cand_key[(row * nb + j) * KMAX])
                e = cand_id[(row * nb + j) * KMAX]
                if _better(v, e, bv, bi):
                    bv = v
                    bi = e
                j += nt
            bv, bi = _block_argmax(bv, bi, red_v, red_i)
            if tid == 0:
                tokens[row] = bi
            continue
        last = min(vocab - (nb - 1) * CHUNK, k)
        total = (nb - 1) * k + last
        i = tid
        while i < total:
            b = i // k
            src = (row * nb + b) * KMAX + (i - b * k)
            keys[i] = cand_key[src]
            ids[i] = cand_id[src]
            i += nt
        cuda.syncthreads()
        radix_select(keys, ids, -1, total, k, hist, st)
        if tid == 0:
            cnt[0] = 0
        cuda.syncthreads()
        i = tid
        while i < total:
            key = keys[i]
            if selected(key, int(ids[i]), st):
                s = cuda.atomic.add(cnt, 0, 1)
                sk_[s] = key
                si_[s] = ids[i]
            i += nt
        cuda.syncthreads()
        kk = min(k, total)
        if tid < kk:  # rank among the survivors: value descending, id ascending
            mk = sk_[tid]
            mi = si_[tid]
            r = 0
            for j in range(kk):
                if sk_[j] > mk or (sk_[j] == mk and si_[j] < mi):
                    r += 1
            sv[r] = _temper(key_f32(mk), temp, inv_temp, temp_mul)
            sid[r] = mi
        cuda.syncthreads()
        top = sv[0]
        if tid == 0:  # top-p cut-off: sequential softmax mass over the sorted survivors
            c = NEG_INF
            if use_top_p:
                tot = np.float32(0.0)
                for r in range(kk):
                    tot += np.float32(math.exp(sv[r] - top))
                run = np.float32(0.0)
                for r in range(kk):
                    p = np.float32(math.exp(sv[r] - top)) / tot
                    run += p
                    if r == 0 or run - p < top_p:
                        c = sv[r]
            cut[0] = c
        cuda.syncthreads()
        score = NEG_INF
        if tid < kk:
            v = sv[tid]
            keep = v != NEG_INF and v >= cut[0]
            if use_min_p:
                keep = keep and np.float32(math.exp(v - top)) >= min_p
            if keep:
                score = v + _gumbel(row_keys[row], sk, sid[tid])
        bv, br = _block_argmax(score, tid if tid < kk else 1 << 20, red_v, red_i)
        if tid == 0:
            tokens[row] = sid[br]
        cuda.syncthreads()
    if tid == 0:
        step[0] = sk + 1


@dataclass(frozen=True)
class SampleSettings:
    """The sampling settings the kernel reads (names and meaning as the engine's SamplingParams:
    ``temperature == 0`` is greedy, ``top_k == 0`` / ``top_p == 1`` / ``min_p == 0`` switch that
    filter off, ``repeat_penalty == 1`` or ``repeat_last_n == 0`` switch the penalty off)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    @classmethod
    def of(cls, params) -> "SampleSettings":
        """The settings of any object with these six attributes (e.g. the engine's SamplingParams)."""
        if isinstance(params, cls):
            return params
        return cls(float(params.temperature), int(params.top_k), float(params.top_p), float(params.min_p),
                   float(params.repeat_penalty), int(params.repeat_last_n))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return self.repeat_penalty != 1.0 and self.repeat_last_n > 0


def supported(params, vocab_size: int) -> str | None:
    """None if ``sample`` can run these settings (see ``SampleSettings``), else the reason (one line)."""
    params = SampleSettings.of(params)
    if params.penalised:
        return "the repetition penalty is not in the sampling kernel"
    if params.greedy:
        return None
    topk = 0 < params.top_k < vocab_size
    if topk:
        nb = -(-vocab_size // CHUNK)
        kmax = min(KMAX, MAX_CAND // nb)
        return None if params.top_k <= kmax else f"top_k={params.top_k} above the kernel's limit {kmax}"
    if params.top_p < 1.0 or params.min_p > 0.0:
        return "top-p / min-p without top-k needs a full-vocabulary sort (not in the kernel)"
    return None


@dataclass
class SamplePlan:
    """Settings and workspace for one (params, vocab, batch, device); reuse every step."""

    params: SampleSettings
    vocab_size: int
    batch: int
    mode: int
    blocks: int
    cand_key: torch.Tensor  # uint32 bits in an int32 tensor [B, blocks, KMAX]
    cand_id: torch.Tensor  # int32 [B, blocks, KMAX]


def sample_plan(params, vocab_size: int, batch: int, device) -> SamplePlan:
    """Check the settings (``KernelError`` if unsupported) and allocate the workspace; ``params``
    as in ``SampleSettings.of``."""
    params = SampleSettings.of(params)
    why = supported(params, vocab_size)
    check(why is None, f"sample: {why}")
    mode = GREEDY if params.greedy else TOPK if 0 < params.top_k < vocab_size else ALL
    nb = -(-vocab_size // CHUNK)
    z = lambda dt: torch.zeros(batch, nb, KMAX, dtype=dt, device=device)  # noqa: E731
    return SamplePlan(params, vocab_size, batch, mode, nb, z(torch.int32), z(torch.int32))


def _check(logits, row_keys, step, tokens, plan):
    kn = "sample"
    b, v = plan.batch, plan.vocab_size
    check(logits.dim() == 2 and logits.shape[0] == b and logits.shape[1] >= v and logits.is_contiguous()
          and logits.dtype in (torch.float32, torch.bfloat16),
          f"{kn}: logits must be contiguous fp32/bf16 [{b}, >={v}], got {logits.dtype} {list(logits.shape)}")
    want(row_keys, "row_keys", kn, torch.int64, (b, 1))
    check(step.dtype == torch.int64 and step.numel() == 1, f"{kn}: step must be one int64, got {step.dtype}")
    want(tokens, "tokens", kn, torch.int64, (b,))


def sample(logits: torch.Tensor, row_keys: torch.Tensor, step: torch.Tensor, tokens: torch.Tensor, *,
           plan: SamplePlan) -> None:
    """One token per row into ``tokens``; advances ``step`` (see module doc). Two launches, no
    allocation, no host sync."""
    _check(logits, row_keys, step, tokens, plan)
    p = plan.params
    b, v = plan.batch, plan.vocab_size
    bf = logits.dtype == torch.bfloat16
    lf32 = logits.reshape(-1) if not bf else plan.cand_key.view(torch.float32).reshape(-1)
    lbf = logits.view(torch.uint16).reshape(-1) if bf else plan.cand_key.view(torch.uint16).reshape(-1)
    t32 = np.float32(p.temperature if p.temperature > 0 else 1.0)
    inv_t = np.float32(1.0) / t32
    temp_mul = int(logits.is_cuda)
    keys = u32(plan.cand_key)
    ids = plan.cand_id.reshape(-1)
    rk = row_keys.reshape(-1)
    stp = step.reshape(1)
    k = p.top_k
    launch(_sample_chunk_kernel, (plan.blocks, b), A_THREADS, lf32, lbf, int(bf), logits.shape[1], v, plan.mode,
           k, t32, inv_t, temp_mul, rk, stp, keys, ids, plan.blocks)
    launch(_sample_final_kernel, 1, B_THREADS, keys, ids, plan.blocks, v, plan.mode, k, t32, inv_t, temp_mul,
           np.float32(p.top_p), int(p.top_p < 1.0), np.float32(p.min_p), int(p.min_p > 0.0), rk, stp, tokens, b)


def sample_ref(logits, row_keys, step, tokens, *, plan) -> None:
    """Torch reference of ``sample`` (same arguments), written after ``Sampler.sample``."""
    _check(logits, row_keys, step, tokens, plan)
    p = plan.params
    x = logits[:, : plan.vocab_size].float()
    s = step.reshape(())
    if p.greedy:
        tokens.copy_(x.argmax(dim=-1))
    else:
        if plan.mode == TOPK:
            vals, ids = torch.topk(x, p.top_k, dim=-1)
        else:
            vals, ids = x, torch.arange(plan.vocab_size, device=x.device).expand_as(x)
        vals = vals / p.temperature
        keep = vals > -math.inf
        if p.top_p < 1.0:
            probs = torch.softmax(vals, dim=-1)
            kept = (torch.cumsum(probs, dim=-1) - probs) < p.top_p
            kept[..., 0] = True
            cutoff = vals.masked_fill(~kept, math.inf).min(dim=-1, keepdim=True).values
            keep = keep & (vals >= cutoff)
        if p.min_p > 0.0:
            keep = keep & (torch.exp(vals - vals.max(dim=-1, keepdim=True).values) >= p.min_p)
        u = uniform_noise(row_keys, s, ids)
        scores = vals.masked_fill(~keep, -math.inf) - torch.log(-torch.log(u))
        tokens.copy_(ids.gather(-1, scores.argmax(dim=-1, keepdim=True)).squeeze(-1))
    step.add_(1)


def kernel_sigs(T) -> dict:
    """Argument types of the kernels as the wrapper launches them (for imp_kernels.bench.ptx_report)."""
    chunk = (T.F32A, T.U16, T.I, T.I, T.I, T.I, T.I, T.F, T.F, T.I, T.I64, T.I64, T.U32, T.I32, T.I)
    final = (T.U32, T.I32, T.I, T.I, T.I, T.I, T.F, T.F, T.I, T.F, T.I, T.F, T.I, T.I64, T.I64, T.I64, T.I)
    return {"sample_chunk": (_sample_chunk_kernel, chunk), "sample_final": (_sample_final_kernel, final)}
