"""Shared checks of the Qwen3.6 / Gemma-4 format tests: imp vs transformers on the dequantised twin,
and the quantisation error against the BF16 original (tests/format_factory_moe.py fixtures)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from imp_core.plugin.manager import load_plugins
from imp_core.run.session import load_session
from imp_core.settings.resolve import load_settings
from tests.format_factory_moe import cached_fixture, load_hf

PROMPT, DECODE, VOCAB = 24, 16, 512
# docs/formats.md ("Expected quantization error") bands of the relative weight error ||W_q - W|| / ||W|| (measured on these fixtures:
# NVFP4 ~9-10 %, FP8 e4m3 per channel ~2.5 %, Q8_0 ~0.4 %, the Q4_K_M-like mix ~3-5 % because the
# tiny rows fall back to Q5_0 / Q8_0 where they are not a multiple of 256)
WEIGHT_ERROR = {"ct-nvfp4": (0.07, 0.12), "ct-nvfp4-3d": (0.07, 0.12), "modelopt-nvfp4": (0.07, 0.12),
                "modelopt-mixed": (0.04, 0.12), "ct-fp8": (0.01, 0.04), "gguf-q8_0": (0.002, 0.01),
                "gguf-q4_k_m": (0.02, 0.12), "gguf-nvfp4": (0.07, 0.12)}
# loose ceilings on the relative logit error vs the BF16 original. The tiny random models amplify any
# weight error 10-30 fold: Gaussian noise of 0.5 % (5 %) of each weight's std moves the logits by 13 %
# (54 %) on the Qwen MoE, 5 % (47 %) on the dense Qwen and 9 % (30 %) on Gemma, the same as the formats
# with that much weight error (Q8_0: 15 % / 6 %; Q4_K_M-like: 58 % / 27 %). These only catch a format
# that is grossly off.
LOGIT_ERROR = {"gguf-q8_0": 0.3, "ct-fp8": 0.4}


@dataclass
class Parity:
    diff: float  # max |imp - transformers(dequantised)| over prefill + decode logits
    scale: float  # max |logit| of the reference
    qerr: float  # max |imp - transformers(BF16 original)|
    rel: float  # ||imp - original|| / ||original||
    top1: float  # fraction of positions whose argmax agrees with the original's
    werr: float  # relative Frobenius error of the quantized weights


def session(path, **flags):
    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32", **flags},
                             env={}, user_config=path.parent / "no-user-config.toml")
    return load_session(path, resolved, load_plugins(env={}), progress=False)


def prompt_and_steps(seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, PROMPT), generator=gen), torch.randint(3, VOCAB, (DECODE,), generator=gen)


def run_imp(model, ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Prefill then teacher-forced cached decode: logits [1, PROMPT + DECODE, V]."""
    cache = model.new_cache(1, 64)
    out = [model.forward(ids, torch.arange(ids.shape[1]), cache)]
    for i, tok in enumerate(steps):
        out.append(model.forward(tok.view(1, 1), torch.tensor([ids.shape[1] + i]), cache))
    return torch.cat(out, dim=1)


def run_hf(hf, ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ref = hf(input_ids=ids, use_cache=True)
        out, cache = [ref.logits], ref.cache
        for tok in steps:
            ref = hf(input_ids=tok.view(1, 1), cache=cache, use_cache=True)
            out.append(ref.logits)
            cache = ref.cache
    return torch.cat(out, dim=1)


def weight_error(fx) -> float:
    """Relative Frobenius error of the quantized weights (dequantised twin vs the BF16 original)."""
    orig = load_file(str(fx.original / "model.safetensors"))
    dense = load_file(str(fx.dense / "model.safetensors"))
    num = den = 0.0
    for name, d in dense.items():
        o = orig[name].float()
        if d.dim() < 2 or torch.equal(d, o):
            continue  # norms, scales, 1-D tensors: stored in float (or shifted by 1 and back)
        num += (d - o).pow(2).sum().item()
        den += o.pow(2).sum().item()
    return (num / den) ** 0.5


def parity(family: str, fmt: str) -> Parity:
    fx = cached_fixture(family, fmt)
    ids, steps = prompt_and_steps()
    ours = run_imp(session(fx.path).model, ids, steps)
    ref = run_hf(load_hf(family, fx.dense), ids, steps)
    orig = run_hf(load_hf(family, fx.original), ids, steps)
    return Parity(diff=(ours - ref).abs().max().item(), scale=ref.abs().max().item(),
                  qerr=(ours - orig).abs().max().item(), rel=((ours - orig).norm() / orig.norm()).item(),
                  top1=(ours.argmax(-1) == orig.argmax(-1)).float().mean().item(), werr=weight_error(fx))


def check_parity(family: str, fmt: str, tol: float) -> Parity:
    """Assert the parity and the loose quantisation-error bands; print the numbers (pytest -s)."""
    p = parity(family, fmt)
    print(f"\n{family} {fmt}: max|imp - transformers(dequantised)| = {p.diff:.2e} (logits up to {p.scale:.1f}); "
          f"vs BF16 original: logits max|diff| {p.qerr:.3f}, rel {p.rel:.2%}, top-1 agreement {p.top1:.0%}; "
          f"weights rel {p.werr:.2%}")
    assert p.diff < tol, (family, fmt, p.diff)
    low, high = WEIGHT_ERROR[fmt]
    assert low < p.werr < high, (family, fmt, p.werr)
    assert 0 < p.rel < LOGIT_ERROR.get(fmt, 0.8), (family, fmt, p.rel)
    return p


def info_section(text: str, title: str) -> dict[str, str]:
    """{first word: line} of one section of `imp info` output (the indented lines after ``title``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    rows = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        rows[line.split()[0]] = line
    return rows
