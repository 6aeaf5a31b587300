"""``imp bench --peer transformers``: the same preset shapes through Hugging Face transformers, in
the same process and on the same device, after imp's own measurements.

The model is transformers' causal-LM class of the family (``Family.transformers_classes``) built
from the preset's config with transformers' own random initialisation, in bf16 on CUDA (fp32 on a
CPU) whatever ``--format`` imp used: transformers runs packed formats by dequantising anyway.
Prefill: one forward of N tokens (logits of the last token only), best of ``repeat`` after a
warm-up. Decode: ``generate`` with a static cache (on CUDA transformers compiles that path with
torch.compile and replays it as CUDA graphs; on a CPU it runs eager), a 16-token prompt then
``decode`` greedy tokens, two warm-up generations first; the rate includes the short prompt's
prefill, as transformers' own benchmarks report it.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from imp_core.bench.roofline import sync
from imp_core.errors import ConfigError

PROMPT = 16
NOT_CONFIG = ("architecture",)


def _classes(family: Any):
    try:
        import transformers
    except ImportError:
        raise ConfigError("--peer transformers: transformers is not installed (pip install transformers)") from None
    names = getattr(family, "transformers_classes", None)
    if not names:
        raise ConfigError(f"--peer transformers: family '{family.name}' names no transformers classes")
    missing = [n for n in names if not hasattr(transformers, n)]
    if missing:
        raise ConfigError(f"--peer transformers: transformers {transformers.__version__} has no "
                          f"{', '.join(missing)} (family '{family.name}' needs a newer transformers)")
    return transformers, getattr(transformers, names[0]), getattr(transformers, names[1])


def build(preset: Any, device: torch.device) -> tuple[Any, dict[str, Any]]:
    tf, config_cls, model_cls = _classes(preset.family)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = config_cls(**{k: v for k, v in preset.config.items() if k not in NOT_CONFIG})
    t0 = time.perf_counter()
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    model.eval()
    sync(device)
    return model, {"transformers": tf.__version__, "class": model_cls.__name__, "dtype": str(dtype),
                   "build_s": time.perf_counter() - t0}


def _ids(n: int, vocab: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randint(3, vocab, (1, n), generator=g).to(device)


@torch.inference_mode()
def measure(preset: Any, device: torch.device, *, prefill: list[int], decode: int, repeat: int) -> dict[str, Any]:
    model, info = build(preset, device)
    vocab = int(model.config.vocab_size)
    out: dict[str, Any] = {**info, "prefill": [], "decode": None}
    try:
        for n in prefill:
            ids = _ids(n, vocab, device)
            model(ids, logits_to_keep=1)  # warm-up
            times = []
            for _ in range(repeat):
                sync(device)
                t0 = time.perf_counter()
                model(ids, logits_to_keep=1)
                sync(device)
                times.append(time.perf_counter() - t0)
            out["prefill"].append({"tokens": n, "tok_s": n / min(times)})
        ids = _ids(PROMPT, vocab, device)
        kw = dict(max_new_tokens=decode, min_new_tokens=decode, do_sample=False, cache_implementation="static",
                  disable_compile=device.type != "cuda", pad_token_id=0)
        t0 = time.perf_counter()
        for _ in range(2):
            model.generate(ids, **kw)
        sync(device)
        warm = time.perf_counter() - t0
        rates = []
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            model.generate(ids, **kw)
            sync(device)
            rates.append(decode / (time.perf_counter() - t0))
        rates.sort()
        out["decode"] = {"prompt": PROMPT, "tokens": decode, "tok_s_median": rates[len(rates) // 2],
                         "compiled": device.type == "cuda", "warmup_s": warm}
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out
