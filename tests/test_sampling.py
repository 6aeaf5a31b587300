"""Tests for imp_core.run.sampling: masks and penalty against numpy references, the sampler's
determinism, its distribution (chi-square), the fast path against the pure masks, and the
absence of host synchronisation in sample()/observe()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from imp_core.errors import ConfigError
from imp_core.run.sampling import (
    Sampler,
    SamplingParams,
    apply_repeat_penalty,
    min_p_mask,
    top_k_mask,
    seed_row_keys,
    top_p_mask,
    uniform_noise,
)

# Upper 0.1% points of the chi-square distribution (tables): df -> critical value. With the
# seeds fixed each test is deterministic; a correct sampler passes a given seed with
# probability 0.999, a biased one fails.
CHI2_999 = {2: 13.816, 3: 16.266, 15: 37.697}
# Tokens whose decision lies this close to a threshold may flip between fp32 (torch) and fp64
# (numpy reference) arithmetic; everywhere else the masks must agree exactly.
BOUNDARY_TOL = 1e-5

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(b: int, v: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(b, v, generator=gen(seed)) * scale


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    assert expected.min() >= 5, "bins too small for the chi-square approximation"
    return float(((counts - expected) ** 2 / expected).sum())


# ----------------------------------------------------------------------------- references


def ref_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    out = logits.copy()
    if k <= 0 or k >= logits.shape[-1]:
        return out
    for row in out:
        kth = np.sort(row)[::-1][k - 1]
        row[row < kth] = -np.inf
    return out


def ref_top_p(logits: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns (masked logits, per-token |mass before - p|, inf for tokens far from the cut)."""
    out = logits.astype(np.float64).copy()
    dist = np.full(out.shape, np.inf)
    if p >= 1.0:
        return out, dist
    for r, row in enumerate(out):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-row, kind="stable")
        mass, cutoff = 0.0, row[order[0]]
        for i, tok in enumerate(order):
            dist[r, tok] = abs(mass - p)
            if i > 0 and mass >= p:
                break
            cutoff = row[tok]
            mass += probs[tok]
        row[row < cutoff] = -np.inf
    return out, dist


def ref_min_p(logits: np.ndarray, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    out = logits.astype(np.float64).copy()
    if min_p <= 0:
        return out, np.full(out.shape, np.inf)
    probs = np.exp(out - out.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ratio = probs / probs.max(-1, keepdims=True)
    out[ratio < min_p] = -np.inf
    return out, np.abs(ratio - min_p)


def ref_repeat_penalty(logits: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    out = logits.copy()
    for r in range(out.shape[0]):
        for tok in set(int(t) for t in history[r]):
            if tok < 0:
                continue
            out[r, tok] = out[r, tok] / penalty if out[r, tok] > 0 else out[r, tok] * penalty
    return out


def assert_same_support(got: torch.Tensor, want: np.ndarray, dist: np.ndarray) -> None:
    got_kept = torch.isfinite(got).numpy()
    want_kept = np.isfinite(want)
    differ = got_kept != want_kept
    assert (dist[differ] < BOUNDARY_TOL).all(), f"{differ.sum()} tokens disagree away from the threshold"
    assert differ.sum() <= 1
    kept = got_kept & want_kept
    np.testing.assert_allclose(got.numpy()[kept], want[kept], rtol=1e-6)


# ----------------------------------------------------------------------------- pure masks


@pytest.mark.parametrize("k", [1, 2, 5, 31, 64, 0, 100])
def test_top_k_matches_reference(k):
    logits = random_logits(3, 64, seed=10 + k)
    got = top_k_mask(logits, k)
    want = ref_top_k(logits.numpy(), k)
    assert np.array_equal(got.numpy(), want)
    if 0 < k < 64:
        assert (torch.isfinite(got).sum(-1) == k).all()


def test_top_k_keeps_ties():
    logits = torch.randint(-3, 4, (4, 50), generator=gen(1)).float()  # many exact ties
    for k in (1, 3, 10):
        got = top_k_mask(logits, k)
        assert np.array_equal(got.numpy(), ref_top_k(logits.numpy(), k))
        assert (torch.isfinite(got).sum(-1) >= k).all()


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_top_p_matches_reference(p):
    logits = random_logits(4, 200, seed=int(p * 1000) + 7)
    want, dist = ref_top_p(logits.numpy(), p)
    assert_same_support(top_p_mask(logits, p), want, dist)


def test_top_p_keeps_top_token_and_ties():
    logits = random_logits(2, 30, seed=3, scale=0.1)  # flat: top token alone holds < p
    got = top_p_mask(logits, 1e-9)
    assert torch.equal(torch.isfinite(got).nonzero()[:, 1], logits.argmax(-1))
    tied = torch.randint(0, 3, (3, 40), generator=gen(2)).float()
    for p in (0.05, 0.3, 0.7):
        want, dist = ref_top_p(tied.numpy(), p)
        got = top_p_mask(tied, p)
        assert np.array_equal(torch.isfinite(got).numpy(), np.isfinite(want))


def test_top_p_one_is_identity():
    logits = random_logits(2, 100, seed=5)
    assert torch.equal(top_p_mask(logits, 1.0), logits)


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.05, 0.2, 0.9, 1.0])
def test_min_p_matches_reference(min_p):
    logits = random_logits(4, 200, seed=int(min_p * 100) + 11)
    want, dist = ref_min_p(logits.numpy(), min_p)
    assert_same_support(min_p_mask(logits, min_p), want, dist)


def test_repeat_penalty_matches_reference():
    logits = random_logits(3, 40, seed=20)
    history = torch.randint(-1, 40, (3, 25), generator=gen(21))  # repeats and -1 slots
    history[0, :5] = 7  # one id many times
    history[1] = -1  # an empty row
    for penalty in (1.3, 0.7):
        got = apply_repeat_penalty(logits, history, penalty)
        want = ref_repeat_penalty(logits.numpy(), history.numpy(), penalty)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert torch.equal(apply_repeat_penalty(logits, history, 1.3)[1], logits[1])
    assert not torch.equal(apply_repeat_penalty(logits, history, 1.3)[0], logits[0])


# ----------------------------------------------------------------------------- sampler


def test_params_validation():
    assert SamplingParams(temperature=0.0).greedy and not SamplingParams().greedy
    bad = [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=1.5), dict(min_p=-0.1),
           dict(repeat_penalty=0.0), dict(repeat_last_n=-1), dict(seed=-5), dict(seed=1 << 64),
           dict(temperature=float("nan")), dict(top_k=2.5)]
    for kwargs in bad:
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            SamplingParams(**kwargs)
    with pytest.raises(ConfigError):
        Sampler(SamplingParams(), 0, "cpu")


def test_greedy_is_argmax_of_penalised_logits():
    params = SamplingParams(temperature=0.0, repeat_penalty=1.5, repeat_last_n=8, seed=1)
    sampler = Sampler(params, 50, "cpu", batch=2)
    seen = torch.randint(0, 50, (2, 12), generator=gen(30))
    sampler.observe(seen)
    for step in range(20):
        logits = random_logits(2, 50, seed=100 + step)
        tok = sampler.sample(logits)
        assert torch.equal(tok, apply_repeat_penalty(logits, seen[:, -8:], 1.5).argmax(-1))
        sampler.observe(tok)
        seen = torch.cat([seen, tok[:, None]], 1)
    plain = Sampler(SamplingParams(temperature=0.0, seed=1), 50, "cpu", batch=2)
    logits = random_logits(2, 50, seed=5)
    assert torch.equal(plain.sample(logits), logits.argmax(-1))


def test_low_temperature_approaches_argmax():
    """At temperature T a runner-up trailing by gap g wins with probability < V * exp(-g / T);
    rows with g > 40 T must give the argmax (failure odds < 1e-14 per row)."""
    temperature = 1e-3
    sampler = Sampler(SamplingParams(temperature=temperature, **OFF, seed=4), 300, "cpu", batch=4)
    checked = 0
    for step in range(50):
        logits = random_logits(4, 300, seed=200 + step)
        tok = sampler.sample(logits)
        top2 = torch.topk(logits, 2).values
        clear = (top2[:, 0] - top2[:, 1]) > 40 * temperature
        assert torch.equal(tok[clear], logits.argmax(-1)[clear])
        checked += int(clear.sum())
    assert checked > 150


def run_sequence(sampler: Sampler, steps: int, vocab: int) -> list[int]:
    out = []
    for step in range(steps):
        tok = sampler.sample(random_logits(1, vocab, seed=300 + step, scale=0.5))
        sampler.observe(tok)
        out.append(int(tok))
    return out


def test_same_seed_same_tokens_and_reset():
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, min_p=0.02, repeat_penalty=1.1, seed=1234)
    first = run_sequence(Sampler(params, 128, "cpu"), 50, 128)
    second_sampler = Sampler(params, 128, "cpu")
    assert run_sequence(second_sampler, 50, 128) == first
    second_sampler.reset()
    assert run_sequence(second_sampler, 50, 128) == first
    assert len(set(first)) > 10  # it really samples
    other = run_sequence(Sampler(SamplingParams(**{**params.__dict__, "seed": 1235}), 128, "cpu"), 50, 128)
    assert sum(a != b for a, b in zip(first, other)) > 25


def test_random_seed_is_exposed():
    a, b = Sampler(SamplingParams(), 10, "cpu"), Sampler(SamplingParams(), 10, "cpu")
    assert isinstance(a.seed, int) and 0 <= a.seed < 1 << 64 and a.seed != b.seed
    assert Sampler(SamplingParams(seed=99), 10, "cpu").seed == 99


def test_distribution_matches_softmax():
    """20k draws of one stream at temperature 1, filters off: chi-square over 16 tokens (df 15)
    must stay below the 0.1% critical value 37.70."""
    vocab = 16
    logits = random_logits(1, vocab, seed=40, scale=0.8)
    sampler = Sampler(SamplingParams(temperature=1.0, **OFF, seed=7), vocab, "cpu")
    draws = np.array([int(sampler.sample(logits)) for _ in range(20000)])
    probs = torch.softmax(logits[0].double(), -1).numpy()
    assert chi_square(np.bincount(draws, minlength=vocab), probs) < CHI2_999[15]


def test_top_k_three_distribution_and_support():
    """20k draws (500 rows x 40 steps) with top-k 3: never outside the top 3, and the counts
    match the renormalised top-3 softmax (chi-square df 2 < 13.82)."""
    vocab, rows = 64, 500
    logits = random_logits(1, vocab, seed=41, scale=0.7).expand(rows, vocab)
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=8), vocab, "cpu", rows)
    draws = torch.cat([sampler.sample(logits) for _ in range(40)]).numpy()
    top3 = torch.topk(logits[0], 3).indices.numpy()
    assert np.isin(draws, top3).all()
    probs = torch.softmax(logits[0, top3].double(), -1).numpy()
    counts = np.array([(draws == t).sum() for t in top3])
    assert chi_square(counts, probs) < CHI2_999[2]


def test_consecutive_steps_and_rows_are_independent():
    """Uniform over 4 tokens: pairs (step t, step t+1) within a row, and (row 0, row 1) at one
    step, must each be uniform over the 16 cells (chi-square df 15 < 37.70)."""
    rows, steps = 100, 200
    sampler = Sampler(SamplingParams(temperature=1.0, **OFF, seed=9), 4, "cpu", rows)
    logits = torch.zeros(rows, 4)
    draws = torch.stack([sampler.sample(logits) for _ in range(steps)], 1).numpy()  # [rows, steps]
    serial = (draws[:, 0::2] * 4 + draws[:, 1::2]).ravel()
    across = (draws[0::2] * 4 + draws[1::2]).ravel()
    for pairs in (serial, across):
        assert chi_square(np.bincount(pairs, minlength=16), np.full(16, 1 / 16)) < CHI2_999[15]


def test_uniform_noise_is_exact_and_uniform():
    ids = torch.arange(100000, dtype=torch.int64).view(1, -1)
    keys = seed_row_keys(12345, 1)
    u = uniform_noise(keys, torch.tensor(3), ids)
    assert u.dtype == torch.float32 and (u > 0).all() and (u < 1).all()
    counts = np.bincount((u.numpy() * 16).astype(int).ravel(), minlength=16)
    assert chi_square(counts, np.full(16, 1 / 16)) < CHI2_999[15]
    assert torch.equal(u, uniform_noise(seed_row_keys(12345, 1), torch.tensor(3), ids))
    assert not torch.equal(u, uniform_noise(keys, torch.tensor(4), ids))
    assert not torch.equal(u, uniform_noise(seed_row_keys(12346, 1), torch.tensor(3), ids))
    assert not torch.equal(u, uniform_noise(seed_row_keys(12345 + (1 << 40), 1), torch.tensor(3), ids))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, seed=1),
        SamplingParams(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0, seed=1),
        SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.1, seed=1),
        SamplingParams(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=1),
        SamplingParams(temperature=2.0, **OFF, seed=1),
        SamplingParams(temperature=0.9, top_k=30, top_p=0.95, min_p=0.05, repeat_penalty=1.3, seed=1),
    ],
)
@pytest.mark.parametrize("vocab", [500, 40000])
def test_fast_path_matches_composed_masks(params, vocab):
    rows = 3
    sampler = Sampler(params, vocab, "cpu", rows)
    history = torch.randint(0, vocab, (rows, 10), generator=gen(50))
    sampler.observe(history)
    logits = random_logits(rows, vocab, seed=51)
    ids, vals, keep = sampler._candidates(logits)
    x = apply_repeat_penalty(logits, history, params.repeat_penalty) if params.penalised else logits
    want = min_p_mask(top_p_mask(top_k_mask(x, params.top_k) / params.temperature, params.top_p), params.min_p)
    for r in range(rows):
        got_ids = set(ids[r][keep[r]].tolist())
        assert got_ids == set(torch.isfinite(want[r]).nonzero().flatten().tolist())
        torch.testing.assert_close(vals[r][keep[r]], want[r][ids[r][keep[r]]])
    tokens = sampler.sample(logits)
    assert all(torch.isfinite(want[r, tokens[r]]) for r in range(rows))


def test_history_ring():
    sampler = Sampler(SamplingParams(repeat_penalty=1.2, repeat_last_n=5, seed=0), 100, "cpu", batch=2)
    assert (sampler.history == -1).all()
    stream = torch.randint(0, 100, (2, 13), generator=gen(60))
    expected: list[list[int]] = [[], []]
    for chunk in (stream[:, :3], stream[:, 3], stream[:, 4:11], stream[:, 11:]):
        sampler.observe(chunk)
        for r in range(2):
            expected[r] += chunk[r].reshape(-1).tolist()
        for r in range(2):
            assert sorted(sampler.history[r][sampler.history[r] >= 0].tolist()) == sorted(expected[r][-5:])
    sampler.reset()
    assert (sampler.history == -1).all() and int(sampler.step) == 0


def test_padding_columns_and_low_precision_logits():
    sampler = Sampler(SamplingParams(temperature=1.0, **OFF, seed=3), 32, "cpu")
    logits = torch.cat([random_logits(1, 32, seed=70), torch.full((1, 8), 1e4)], 1).bfloat16()
    assert all(int(sampler.sample(logits)) < 32 for _ in range(200))
    with pytest.raises(ValueError):
        sampler.sample(torch.zeros(1, 31))


# ----------------------------------------------------------------------------- no host sync

FORBIDDEN_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item", "is_nonzero", "_assert_async")
FORBIDDEN_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class RecordCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def host_syncs(fn) -> list[str]:
    ops, calls = RecordOps(), RecordCalls()
    with calls, ops:
        fn()
    return [o for o in ops.ops if o in FORBIDDEN_OPS] + [c for c in calls.calls if c in FORBIDDEN_METHODS]


def test_recorder_catches_a_planted_sync():
    x = torch.ones(3)
    assert host_syncs(lambda: x.sum().item())
    assert host_syncs(lambda: x.tolist())
    assert host_syncs(lambda: bool(x.sum() > 0))


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=5),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.05, seed=5),
    SamplingParams(temperature=0.0, repeat_penalty=1.1, seed=5),
])
def test_sample_and_observe_do_not_sync(params):
    sampler = Sampler(params, 300, "cpu", batch=2)
    logits = random_logits(2, 300, seed=80)

    def step():
        sampler.observe(torch.randint(0, 300, (2, 7), generator=gen(81)))
        sampler.observe(sampler.sample(logits))
        sampler.reset()

    assert host_syncs(step) == []
    # Meta tensors have no data: any value-dependent host read would raise here.
    meta = Sampler(params, 300, "meta", batch=2)
    meta.observe(meta.sample(torch.empty(2, 300, device="meta")))


# ----------------------------------------------------------------------------- CUDA graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_cpu():
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=77)
    vocab, steps = 262144, 30
    all_logits = [random_logits(1, vocab, seed=900 + s) for s in range(steps)]
    cpu = Sampler(params, vocab, "cpu")
    cpu_tokens = []
    for logits in all_logits:
        tok = cpu.sample(logits)
        cpu.observe(tok)
        cpu_tokens.append(int(tok))

    gpu = Sampler(params, vocab, "cuda")
    static_logits = torch.empty(1, vocab, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocator, kernels) before capture
        static_logits.copy_(all_logits[0])
        gpu.observe(gpu.sample(static_logits))
    torch.cuda.current_stream().wait_stream(side)
    gpu.reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_tok = gpu.sample(static_logits)
        gpu.observe(static_tok)
    gpu.reset()  # capture does not run the ops; reset anyway so the replay starts at step 0
    gpu_tokens = []
    for logits in all_logits:
        static_logits.copy_(logits)
        graph.replay()
        gpu_tokens.append(int(static_tok))
    assert gpu_tokens == cpu_tokens
    assert int(gpu.step) == steps
