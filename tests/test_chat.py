"""`imp chat`: later turns reuse the cache (for Qwen3.6 the DeltaNet state too) and give the
same answer as the whole conversation prefilled from scratch; the terminal program through a
pseudo-terminal."""

from __future__ import annotations

import os
import re
import sys

import pytest

from imp_core.plugin.manager import load_plugins
from imp_core.run.chat import ChatSession
from imp_core.run.generator import Generator
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.text.tokenizer import Tokenizer
from tests import gemma4_factory, mistral_factory, qwen36_factory
from tests.cli_util import REPO
from tests.test_mistral_parity import _session

FACTORIES = {"qwen36": lambda d: qwen36_factory.write_checkpoint(d, "fused", seed=0),
             "gemma4": lambda d: gemma4_factory.write_checkpoint(d, seed=0),
             "mistral": lambda d: mistral_factory.write_checkpoint(d, "mistral3", seed=0)}


@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory):
    return FACTORIES["qwen36"](tmp_path_factory.mktemp("q36"))


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_cached_turns_answer_like_the_whole_conversation_from_scratch(family, tmp_path, qwen_ckpt):
    path = qwen_ckpt if family == "qwen36" else FACTORIES[family](tmp_path / family)
    session = _session(path)
    chat = ChatSession(session, SamplingParams(temperature=0.0), max_tokens=10, hook=load_plugins(env={}).hook)
    first = chat.answer("Tell me about the sea.")
    for question in ("And the weather in the morning?", "Thank you, that was helpful."):
        earlier = len(chat.transcript)
        turn = chat.answer(question)
        # every earlier token but the last sampled one (never in the cache) is reused
        assert turn.cached_tokens in (earlier, earlier - 1) and turn.cached_tokens > 0
        whole = chat.transcript[:turn.cached_tokens + turn.stats.prompt_tokens]
        fresh = Generator(session.model, session.inspection.context)
        out, _ = fresh.generate(whole, Sampler(SamplingParams(temperature=0.0), session.inspection.info.vocab_size,
                                               session.model.device),
                                max_tokens=10, eos_ids=session.tokenizer.eos_token_ids)
        assert out == turn.ids, question
    chat.reset()
    assert chat.answer("Tell me about the sea.").ids == first.ids


STATS = re.compile(r"prompt (\d+) tok, generated (\d+) tok.*\((eos|max tokens|context full|stop string)\)"
                   r".*, (\d+) tok reused from the cache( \[stopped\])?")


def test_chat_in_a_terminal_prefills_only_the_new_turn(qwen_ckpt):
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMP_")}
    env.update(IMP_USER_CONFIG=str(REPO / "tests" / "no-such-user-config.toml"), PYTHONPATH=str(REPO))
    child = pexpect.spawn(sys.executable, ["-m", "imp_core.cli", "chat", "--model", str(qwen_ckpt), "-q",
                                           "--temperature", "0", "-n", "200"], env=env, encoding="utf-8",
                          timeout=60, cwd=str(REPO))
    try:
        child.expect_exact("> ")
        child.sendline("Tell me about the sea.")
        child.expect(STATS)
        first_prompt, first_generated, first_reason, cached = child.match.groups()[:4]
        assert cached == "0"
        child.expect_exact("> ")
        child.sendline("And the weather?")
        child.expect(STATS)
        second_prompt, _, _, second_cached = child.match.groups()[:4]
        # the template's text after the first answer, as the chatml template writes it; the last
        # sampled token goes first unless it was the end-of-turn token that text starts with
        tail = "<|im_end|>\n<|im_start|>user\nAnd the weather?<|im_end|>\n<|im_start|>assistant\n"
        expected = len(Tokenizer.from_dir(qwen_ckpt).encode(tail, add_special_tokens=False))
        expected += first_reason != "eos"
        assert int(second_prompt) == expected
        assert int(second_cached) == int(first_prompt) + int(first_generated) - (first_reason != "eos")

        child.expect_exact("> ")
        child.sendline("Write a short poem about the sea.")
        child.expect_exact("the sea.\r\n")  # the terminal's echo of the line
        child.expect(r"\S")  # the answer is streaming: Ctrl-C stops it, not the program
        child.sendintr()
        child.expect(STATS)
        assert child.match.group(5) == " [stopped]" and int(child.match.group(2)) < 200

        child.expect_exact("> ")
        child.sendline("/reset")
        child.expect_exact("(conversation reset)")
        child.sendline("Tell me about the sea.")
        child.expect(STATS)
        assert child.match.group(1) == first_prompt and child.match.group(4) == "0"
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
