"""The carried DeltaNet state and KV cache of the Qwen3.5/3.6 family across calls.

- a prompt that crosses several DeltaNet chunks matches transformers at every position;
- feeding tokens one at a time (the recurrent form) equals one prefill (the chunked form);
- a prompt fed in pieces (multi-token continuations from the cached state) equals one piece;
- two chat turns reusing the state equal one long prompt of the same tokens;
- reset forgets everything; decode steps write into the preallocated buffers only;
- a bf16 run matches transformers' bf16 run (recurrent state fp32 whatever the model dtype).
Tolerance: 1e-4 absolute on fp32 logits of magnitude ~4 (measured diffs are ~1e-6).
"""

from __future__ import annotations

import pytest
import torch

from imp_core.run.generator import Generator
from imp_core.run.sampling import Sampler, SamplingParams
from imp_qwen36.deltanet import DeltaNetState
from tests.qwen36_factory import CHUNK, VOCAB, load_hf, write_checkpoint
from tests.test_qwen36_parity import session

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("fused"), "fused", seed=11)


@pytest.fixture(scope="module")
def model(ckpt):
    return session(ckpt).model


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _greedy():
    return Sampler(SamplingParams(temperature=0.0), vocab_size=VOCAB, device=torch.device("cpu"))


def test_long_prompt_across_several_chunks_matches_transformers(ckpt, model):
    n = 3 * CHUNK + 13
    ids = _ids(n, 1)
    with torch.no_grad():
        ref = load_hf(ckpt, "fused")(input_ids=ids).logits
    ours = model.forward(ids, torch.arange(n), model.new_cache(1, n))
    diff = (ours - ref).abs().max().item()
    assert diff < TOL, diff
    print(f"\nqwen36 {n}-token prompt: max |logit diff| {diff:.2e}")


def test_token_by_token_recurrent_equals_chunked_prefill(model):
    n = CHUNK + 6
    ids = _ids(n, 2)
    whole = model.forward(ids, torch.arange(n), model.new_cache(1, n))
    cache = model.new_cache(1, n)
    steps = torch.cat([model.forward(ids[:, i:i + 1], torch.tensor([i]), cache) for i in range(n)], dim=1)
    assert (steps - whole).abs().max().item() < TOL


def test_prompt_in_pieces_equals_one_piece(model):
    ids = _ids(170, 3)[0].tolist()
    one, pieces = Generator(model, context=256), Generator(model, context=256, prefill_chunk=50)
    a, b = one.prefill(ids), pieces.prefill(ids)
    assert (a - b).abs().max().item() < TOL
    for g in (one, pieces):
        g.token_buf.fill_(7)
    for _ in range(4):
        assert (one.decode_step() - pieces.decode_step()).abs().max().item() < TOL


def test_two_chat_turns_reuse_the_state_like_one_long_prompt(model):
    turn1 = _ids(CHUNK + 9, 4)[0].tolist()
    turn2 = _ids(30, 5)[0].tolist()
    gen = Generator(model, context=512)
    reply, _ = gen.generate(turn1, _greedy(), max_tokens=6, eos_ids=())
    # the last sampled token is not in the cache yet: the next turn feeds it first
    second = gen.prefill([reply[-1], *turn2])
    full = turn1 + reply + turn2
    fresh = Generator(model, context=512)
    once = fresh.prefill(full)
    assert gen.length == fresh.length == len(full)
    diff = (second - once).abs().max().item()
    assert diff < TOL, diff
    gen.token_buf.fill_(9)
    fresh.token_buf.fill_(9)
    assert (gen.decode_step() - fresh.decode_step()).abs().max().item() < TOL


def test_reset_forgets_the_state_and_decode_writes_in_place(model):
    gen = Generator(model, context=128)
    ids = _ids(CHUNK + 3, 6)[0].tolist()
    first = gen.prefill(ids)
    states = [c for c in gen.cache.layers if isinstance(c, DeltaNetState)]
    assert states and all(s.recurrent.dtype == torch.float32 for s in states)
    assert all(s.conv.shape[-1] == model.cfg.linear_conv_kernel_dim - 1 for s in states)
    ptrs = [t.data_ptr() for s in states for t in (s.conv, s.recurrent)]
    ptrs += [c.k.data_ptr() for c in gen.cache.layers if not isinstance(c, DeltaNetState)]
    gen.token_buf.fill_(5)
    for _ in range(3):
        gen.decode_step()
    after = [t.data_ptr() for s in states for t in (s.conv, s.recurrent)]
    after += [c.k.data_ptr() for c in gen.cache.layers if not isinstance(c, DeltaNetState)]
    assert after == ptrs
    gen.reset()
    assert all(not s.recurrent.any() and not s.conv.any() for s in states)
    assert torch.equal(gen.prefill(ids), first)


def test_bf16_run_matches_transformers_bf16(ckpt):
    """bf16 through the whole path (conv in bf16, DeltaNet in fp32, fp32 state) like transformers."""
    import transformers as tf

    hf = tf.Qwen3_5MoeForConditionalGeneration.from_pretrained(
        ckpt, attn_implementation="eager", dtype=torch.bfloat16).eval()  # default (grouped_mm) experts
    s16 = session(ckpt, **{"runtime.dtype": "bfloat16", "attention.backend": "eager"})
    ids = _ids(CHUNK + 8, 7)
    cache16 = s16.model.new_cache(1, 128)
    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=True)
    ours = s16.model.forward(ids, torch.arange(ids.shape[1]), cache16)
    rows = [(ours, ref.logits.float())]
    past, token = ref.cache, ref.logits[:, -1].argmax(-1, keepdim=True)
    for step in range(4):
        with torch.no_grad():
            ref = hf(input_ids=token, cache=past, use_cache=True)
        past = ref.cache
        rows.append((s16.model.forward(token, torch.tensor([ids.shape[1] + step]), cache16), ref.logits.float()))
        token = ref.logits[:, -1].argmax(-1, keepdim=True)
    rel = max(((a - b).norm() / b.norm()).item() for a, b in rows)
    assert rel < 1e-2, rel
    print(f"\nqwen36 bf16 vs transformers bf16: max relative diff {rel:.2e}")
    rec = [c.recurrent for c in cache16.layers if isinstance(c, DeltaNetState)]
    assert all(r.dtype == torch.float32 for r in rec)
    conv = [c.conv for c in cache16.layers if isinstance(c, DeltaNetState)]
    assert all(c.dtype == torch.bfloat16 for c in conv)
