"""Token sampler: greedy, temperature, top-k, top-p, min-p, repetition penalty and a seed.

Order of operations for one step (per row of ``logits``)::

    logits (any float dtype) -> fp32
    -> repetition penalty over the last ``repeat_last_n`` observed tokens
    -> temperature == 0: argmax, done
    -> top-k -> divide by temperature -> top-p -> min-p -> sample

This is the order of Hugging Face's warpers (temperature before top-p and min-p, so both see the
tempered distribution). llama.cpp's default chain differs in one respect: it applies
temperature *after* top-p and min-p. Top-k is unaffected by where temperature goes.

Everything in :meth:`Sampler.sample` and :meth:`Sampler.observe` is a plain torch op on tensors
of static shape, with no host synchronisation (no ``.item()``, ``.tolist()``, no Python branch
on a tensor value, no data-dependent shapes), so both can be captured in a CUDA graph. All
state (the step counter, the penalty history ring and its write index) lives in device tensors
that are updated in place; :meth:`Sampler.reset` zeroes them in place, so a captured graph
stays valid across requests.

Randomness is counter-based, not a global generator: the uniform number for (seed, row, step,
token id) is a 32-bit integer hash computed with int64 torch ops whose every intermediate stays
below 2**63, so it is exact and identical on CPU and CUDA (the step wraps at 2**32). A token is
drawn by the exponential race: ``argmax(log p_i - log E_i)`` with ``E_i = -log U_i ~ Exp(1)``
over the surviving tokens, which picks token i with probability ``p_i / sum(p)`` and needs no
host-side multinomial. Because the noise is keyed by token id (not by position among the
survivors), the same seed and the same logits give the same tokens; CPU and CUDA agree except
where fp32 rounding of the logits (or of ``log``) flips a near-tie.

The standalone mask functions below define the semantics and are what the tests compare
against. The fast path in :class:`Sampler` computes the same sets: when ``top_k > 0`` only the
k survivors of ``torch.topk`` are sorted and filtered by top-p/min-p, so a 262144-token
vocabulary costs one top-k (it keeps exactly k tokens, where :func:`top_k_mask` also keeps
tokens tied with the k-th); with ``top_k == 0`` and top-p or min-p active, the full vocabulary
is sorted.

Cost on one H200 at V = 262144, batch 1, inside a replayed CUDA graph (sample + observe): about
140 us a step with the defaults (170 with the penalty on), 260 with top_k = 0, 90 with every
filter off, 10 us greedy. It is bounded by the number of small kernels (~80), not by
bandwidth; a fused kernel that reproduces :func:`uniform_noise` bit for bit would give the
same tokens.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from imp_core.errors import ConfigError
# The counter-based hash lives in imp_kernels.rng, shared with the device sampling kernel;
# seed_row_keys and uniform_noise are re-exported from here.
from imp_kernels.rng import seed_row_keys, uniform_noise

__all__ = [
    "SamplingParams",
    "Sampler",
    "apply_repeat_penalty",
    "top_k_mask",
    "top_p_mask",
    "min_p_mask",
    "seed_row_keys",
    "uniform_noise",
]

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; defaults follow llama.cpp. ``temperature == 0`` means greedy.

    ``top_k == 0``, ``top_p == 1`` and ``min_p == 0`` each switch that filter off;
    ``repeat_penalty == 1`` or ``repeat_last_n == 0`` switch the penalty off. ``seed`` None
    means a random seed is drawn once when the :class:`Sampler` is built (see ``Sampler.seed``).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, 0.0, math.inf)
        _check_int("top_k", self.top_k, 0, None)
        _check_number("top_p", self.top_p, 0.0, 1.0)
        _check_number("min_p", self.min_p, 0.0, 1.0)
        _check_number("repeat_penalty", self.repeat_penalty, 0.0, math.inf, low_open=True)
        _check_int("repeat_last_n", self.repeat_last_n, 0, None)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, _MASK64)

    @property
    def greedy(self) -> bool:
        """True when the step is a plain argmax (temperature 0)."""
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        """True when the repetition penalty changes anything."""
        return self.repeat_penalty != 1.0 and self.repeat_last_n > 0


def _check_number(key: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = "inf)" if math.isinf(high) else f"{high:g}]"
        raise ConfigError(f"sampling.{key}: expected a number in {lo}{low:g}, {hi}, got {value!r}")


def _check_int(key: str, value: object, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"sampling.{key}: expected an integer {span}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Pure filters (the reference semantics; each works on [..., V] logits, returns a new tensor)
# ---------------------------------------------------------------------------------------------


def apply_repeat_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise every token id present in ``history`` once (llama.cpp / HF semantics).

    logits: [B, V] float; history: [B, N] long token ids, ``-1`` marks an empty slot.
    A penalised logit > 0 is divided by ``penalty``, one <= 0 is multiplied by it; an id that
    occurs several times in the history is penalised once.
    """
    vocab = logits.shape[-1]
    # Empty slots scatter into an extra column that is dropped, so every write is a True and
    # duplicate indices cannot race.
    index = torch.where(history < 0, torch.full_like(history, vocab), history)
    seen = torch.zeros(logits.shape[:-1] + (vocab + 1,), dtype=torch.bool, device=logits.device)
    seen.scatter_(-1, index, True)
    seen = seen[..., :vocab]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (all tokens tied with the k-th are kept too).

    Others become -inf. ``k <= 0`` or ``k >= V`` returns the logits unchanged.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits.clone()
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest top prefix whose probability mass reaches ``p``.

    Tokens are sorted by logit, descending; token i is kept when the mass strictly before it is
    < p, and the top token is always kept. Tokens tied with the last kept one are kept too, so
    the result does not depend on how the sort orders ties. ``p >= 1`` returns the logits
    unchanged. Others become -inf.
    """
    if p >= 1.0:
        return logits.clone()
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values
    keep = _top_p_keep_sorted(sorted_logits, p)
    cutoff = _smallest_kept(sorted_logits, keep)
    return logits.masked_fill(logits < cutoff, -math.inf)


def min_p_mask(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is >= ``min_p`` times the top token's probability.

    Computed as ``exp(logit - max_logit) >= min_p`` (the ratio of probabilities, without
    normalising). ``min_p <= 0`` returns the logits unchanged. Others become -inf.
    """
    if min_p <= 0.0:
        return logits.clone()
    top = logits.max(dim=-1, keepdim=True).values
    return logits.masked_fill(torch.exp(logits - top) < min_p, -math.inf)


def _top_p_keep_sorted(sorted_logits: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean keep-mask for descending-sorted logits (may contain -inf) under top-p."""
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = mass_before < p
    keep[..., 0] = True
    return keep


def _smallest_kept(sorted_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The smallest kept logit per row, shape [..., 1] (keep is a prefix of a sorted row)."""
    return sorted_logits.masked_fill(~keep, math.inf).min(dim=-1, keepdim=True).values


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------


class Sampler:
    """Samples one token per row from [B, V] logits; graph-capturable, seeded, batched.

    Usage: ``observe(prompt_ids)`` once, then per step ``tok = sample(logits)`` followed by
    ``observe(tok)``. ``sample`` does not record its own output in the penalty history.
    """

    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device | str, batch: int = 1):
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"sampler vocab_size: expected a positive integer, got {vocab_size!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"sampler batch: expected a positive integer, got {batch!r}")
        self.params = params
        self.vocab_size = vocab_size
        self.batch = batch
        self.device = torch.device(device)
        self.seed: int = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self._row_keys = seed_row_keys(self.seed, batch, self.device)
        self._step = torch.zeros((), dtype=torch.int64, device=self.device)
        n = params.repeat_last_n if params.penalised else 0
        self._history = torch.full((batch, n), -1, dtype=torch.int64, device=self.device)
        self._write = torch.zeros((), dtype=torch.int64, device=self.device)
        self._all_ids = torch.arange(vocab_size, dtype=torch.int64, device=self.device).expand(batch, vocab_size)

    @property
    def history(self) -> torch.Tensor:
        """The penalty history ring, [B, repeat_last_n] long, -1 = empty (a view, do not edit)."""
        return self._history

    @property
    def step(self) -> torch.Tensor:
        """The device step counter (0-d int64): number of ``sample`` calls since ``reset``."""
        return self._step

    def reset(self) -> None:
        """Step counter to 0 and penalty history cleared, in place (captured graphs stay valid)."""
        self._step.zero_()
        self._history.fill_(-1)
        self._write.zero_()

    def observe(self, token_ids: torch.Tensor) -> None:
        """Append tokens ([B] or [B, T] long, on the device) to the penalty history ring."""
        n = self._history.shape[1]
        if n == 0:
            return
        ids = token_ids.reshape(self.batch, -1) if token_ids.dim() == 1 else token_ids
        if ids.dim() != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"observe: expected token ids of shape [{self.batch}] or [{self.batch}, T], got {list(token_ids.shape)}")
        count = ids.shape[1]
        if count == 0:
            return
        kept = min(count, n)  # only the last n tokens can stay in the ring
        offsets = torch.arange(count - kept, count, dtype=torch.int64, device=self.device)
        slots = (self._write + offsets) % n
        self._history.scatter_(1, slots.expand(self.batch, kept), ids[:, count - kept :].to(torch.int64))
        self._write.copy_((self._write + count) % n)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row: logits [B, V'] (V' >= vocab_size; padding columns are ignored).

        Returns [B] int64 on the logits' device and advances the device step counter.
        """
        ids, vals, keep = self._candidates(logits)
        if ids is None:  # greedy
            token = vals.argmax(dim=-1)
        else:
            u = uniform_noise(self._row_keys, self._step, ids)
            scores = vals.masked_fill(~keep, -math.inf) - torch.log(-torch.log(u))
            token = ids.gather(-1, scores.argmax(dim=-1, keepdim=True)).squeeze(-1)
        self._step.add_(1)
        return token

    def _candidates(self, logits: torch.Tensor):
        """Filtered candidates: (ids [B, C], tempered logits [B, C], keep [B, C] bool).

        For greedy, returns (None, penalised logits [B, V], None). C is top_k when top-k is on,
        else V. Exposed for tests, which compare it with the pure mask functions.
        """
        p = self.params
        if logits.dim() != 2 or logits.shape[0] != self.batch or logits.shape[1] < self.vocab_size:
            raise ValueError(f"sample: expected logits of shape [{self.batch}, >={self.vocab_size}], got {list(logits.shape)}")
        x = logits[:, : self.vocab_size].float()
        if p.penalised:
            x = apply_repeat_penalty(x, self._history, p.repeat_penalty)
        if p.greedy:
            return None, x, None
        if 0 < p.top_k < self.vocab_size:
            vals, ids = torch.topk(x, p.top_k, dim=-1)
        elif p.top_p < 1.0 or p.min_p > 0.0:
            vals, ids = torch.sort(x, dim=-1, descending=True)
        else:
            vals, ids = x, self._all_ids
        vals = vals / p.temperature
        keep = vals > -math.inf
        if p.top_p < 1.0:
            top_p_keep = _top_p_keep_sorted(vals, p.top_p)
            keep = keep & (vals >= _smallest_kept(vals, top_p_keep))
        if p.min_p > 0.0:
            keep = keep & (torch.exp(vals - vals.max(dim=-1, keepdim=True).values) >= p.min_p)
        return ids, vals, keep
