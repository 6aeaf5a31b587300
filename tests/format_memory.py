"""Memory while loading a quantized checkpoint: peak vs final, against one layer's dense weights.

``python -m tests.format_memory --out DIR [--hidden 1024 --layers 8 ...]`` writes a mid-size
random Mistral as a ModelOpt-layout NVFP4 checkpoint (imp_core.quant.quantize_nvfp4: the
ModelOpt formula, bit-identical to the producer on CPU) and as a GGUF Q8_0, then loads each in
a fresh process under ``quant.dequant`` = load and on_the_fly, sampling /proc/self/status
(RssAnon + RssFile) every millisecond. Prints one JSON line per run:
``final`` = RSS growth after loading, ``peak`` = the highest growth seen, ``layer`` = one
decoder layer's weights in the compute dtype.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

FP32 = 4


def _rss() -> int:
    total = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            total += int(line.split()[1]) * 1024
    return total


def measure(path: str, dequant: str) -> dict:
    """Load ``path`` in this process; return RSS growth figures (bytes)."""
    from imp_core.plugin.manager import load_plugins
    from imp_core.run.session import load_session
    from imp_core.settings.resolve import load_settings

    resolved = load_settings(cli_flags={"runtime.device": "cpu", "runtime.dtype": "float32",
                                        "quant.dequant": dequant}, env={}, user_config=Path("/nonexistent.toml"))
    plugins = load_plugins(env={})
    # a first load imports every module the run needs; only the second one is measured
    warm = load_session(Path(path), resolved, plugins, progress=False)
    del warm
    import gc

    from imp_core.model.phases import release_host_memory

    gc.collect()
    release_host_memory()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    session = load_session(Path(path), resolved, plugins, progress=False)
    final = _rss()
    done.set()
    t.join()
    cfg = session.inspection.config
    h, d, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    layer = (h * d * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) + 3 * h * inter) * FP32
    return {"path": path, "dequant": dequant, "final": final - base, "peak": max(peak[0], final) - base,
            "layer": layer, "report": dict(session.inspection.load_report)}


def write_fixtures(out: Path, *, hidden: int, inter: int, layers: int, vocab: int, heads: int, kv: int) -> list[Path]:
    import transformers as tf
    from safetensors.torch import save_file

    from imp_core.quant import quantize_nvfp4
    from tests.format_factory import write_gguf
    from tests.tiny_tokenizer import write_tiny_tokenizer

    cfg = tf.MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
                           max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           tie_word_embeddings=False)
    torch.manual_seed(0)
    model = tf.MistralForCausalLM(cfg).to(torch.bfloat16)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    nv = out / "nvfp4"
    nv.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, w in sd.items():
        if "layers." in name and name.endswith("proj.weight"):
            codes, block, g = quantize_nvfp4(w.float(), convention="modelopt")
            m = name.removesuffix(".weight")
            tensors.update({name: codes, m + ".weight_scale": block, m + ".weight_scale_2": g})
        else:
            tensors[name] = w
    save_file(tensors, str(nv / "model.safetensors"))
    cfg_dict = cfg.to_dict()
    cfg_dict["architectures"] = ["MistralForCausalLM"]
    cfg_dict["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4", "ignore": ["lm_head"]}
    (nv / "config.json").write_text(json.dumps(cfg_dict))
    write_tiny_tokenizer(nv, style="mistral")
    tok_dir = nv
    gg, _ = write_gguf(out / "q8_0.gguf", sd, cfg_dict, "llama",
                       lambda g, n: "F32" if g.endswith("_norm.weight") else "Q8_0", tok_dir)
    return [nv, gg]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv", type=int, default=4)
    ap.add_argument("--measure", nargs=2, metavar=("PATH", "DEQUANT"))
    a = ap.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(*a.measure)))
        return
    paths = write_fixtures(a.out, hidden=a.hidden, inter=a.inter, layers=a.layers, vocab=a.vocab,
                           heads=a.heads, kv=a.kv)
    for path in paths:
        for dequant in ("load", "on_the_fly"):
            proc = subprocess.run([sys.executable, "-m", "tests.format_memory", "--out", str(a.out),
                                   "--measure", str(path), dequant], capture_output=True, text=True, check=True)
            print(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
