"""One prompt in, streamed text out: what `imp run` does after settings are resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TextIO

import torch
from loguru import logger

from imp_core.run.generator import GenerationStats, Generator
from imp_core.errors import PromptTooLongError
from imp_core.logging import log_plan
from imp_core.plugin.manager import PluginSet
from imp_core.run import preflight
from imp_core.run.memory_errors import device_memory_errors
from imp_core.run.session import (Session, context_setting, demo_notice, inspect_checkpoint, load_session,
                                  load_tokenizer, sampler_for)
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.settings.resolve import ResolvedSettings
from imp_core.text.stop import StopMatcher


def sampling_params(resolved: ResolvedSettings) -> SamplingParams:
    s = resolved.settings.sampling
    return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                          repeat_penalty=s.repeat_penalty, repeat_last_n=s.repeat_last_n, seed=s.seed)


def prompt_ids(tok: Any, text: str, use_chat: bool, system: str | None = None) -> tuple[list[int], str]:
    """Token ids for ``text`` and a word on how they were made (chat template or raw).

    Without a chat template a system text is put before the prompt, separated by a blank line.
    """
    if use_chat and tok.has_chat_template:
        messages = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return (tok.encode_chat(messages, add_generation_prompt=True),
                "chat template" + (" with a system message" if system is not None else ""))
    how = "raw (--raw)" if not use_chat else "raw (the checkpoint has no chat template)"
    if system is not None:
        text, how = f"{system}\n\n{text}", how + ", --system text before the prompt"
    return tok.encode(text, add_special_tokens=True), how


def stream(session: Session, ids: list[int], resolved: ResolvedSettings, *, stop: Sequence[str],
           out: TextIO, generator: Generator | None = None, sampler: Sampler | None = None
           ) -> GenerationStats:
    """Generate from ``ids`` and write the text to ``out`` as it is produced."""
    tok = session.tokenizer
    gen = generator or session.generator()
    if sampler is None:
        sampler = session.sampler(sampling_params(resolved))
    decoder = tok.stream_decoder()
    matcher = StopMatcher(list(stop))

    def on_token(token_id: int) -> bool:
        text, stopped = matcher.feed(decoder.push(token_id))
        if text:
            out.write(text)
            out.flush()
        return stopped

    _, stats = gen.generate(ids, sampler, max_tokens=resolved.settings.runtime.max_tokens,
                            eos_ids=tok.eos_token_ids, on_token=on_token)
    if stats.finish_reason != "stop string":
        tail, _ = matcher.feed(decoder.flush())
        out.write(tail + matcher.flush())
    out.write("\n")
    out.flush()
    return stats


def run_prompt(model_path: Path, text: str, resolved: ResolvedSettings, plugins: PluginSet, *,
               stop: Sequence[str] = (), out: TextIO, system: str | None = None) -> GenerationStats:
    insp = inspect_checkpoint(model_path, resolved, plugins)
    notice = demo_notice(insp.checkpoint)
    if notice:
        logger.warning(notice)
    resolved = insp.settings
    tokenizer = load_tokenizer(insp)
    ids, how = prompt_ids(tokenizer, text, resolved.settings.runtime.chat, system)
    if len(ids) > insp.context:  # refused before any weight is read
        raise PromptTooLongError(f"prompt is {len(ids)} tokens but the context holds {insp.context} "
                                 f"(runtime.context); shorten the prompt or raise --context")
    insp.plan.append(("prompt", f"{len(ids)} tokens, {how}"))
    graphs = resolved.settings.runtime.cuda_graphs
    insp.plan.append(("cuda graphs", ("on - the decode step is captured once and replayed" if graphs else
                                      "off - runtime.cuda_graphs is false") if insp.device.type == "cuda"
                      else f"off - device is {insp.device.type}"))
    memory = preflight.plan_memory(insp, preflight.model_tensors(insp), prompt_tokens=len(ids))
    insp.plan = [(k, memory.describe() if k == "memory" else v) for k, v in insp.plan]
    preflight.check_memory(memory, context_setting(insp))
    if insp.settings.settings.runtime.threads:
        torch.set_num_threads(insp.settings.settings.runtime.threads)
    params = sampling_params(resolved)
    sampler, sampler_how = sampler_for(insp, params)
    insp.plan.append(("sampler", sampler_how))
    insp.plan.append(("sampling", _describe_sampling(params, sampler.seed)))
    log_plan("resolved plan", insp.plan)  # before the weights load: it needs no tensor bytes
    with device_memory_errors(memory, context_setting(insp)):
        session = load_session(model_path, resolved, plugins, inspection=insp, tokenizer=tokenizer)
        return stream(session, ids, resolved, stop=stop, out=out, sampler=sampler)


def _describe_sampling(p: SamplingParams, seed: int) -> str:
    if p.temperature == 0:
        core = "greedy"
    else:
        core = f"temperature {p.temperature}, top_k {p.top_k}, top_p {p.top_p}, min_p {p.min_p}"
    if p.repeat_penalty != 1.0:
        core += f", repeat_penalty {p.repeat_penalty} over {p.repeat_last_n}"
    return f"{core}, seed {seed}"
