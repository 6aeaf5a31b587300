"""The out-of-tree toy plugin (tests/plugins/toy): install it and write a toy checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.tiny_tokenizer import write_tiny_tokenizer

TOY_DIR = Path(__file__).resolve().parent / "plugins" / "toy"


def ensure_toy_installed() -> None:
    """pip-install the toy plugin into this environment unless it already is (as CI does)."""
    try:
        metadata.distribution("imp-toy-plugin")
        return
    except metadata.PackageNotFoundError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(TOY_DIR)], check=True)


def write_toy_checkpoint(dest: Path, *, vocab: int = 512, hidden: int = 32, inter: int = 64) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps({
        "architectures": ["ToyForCausalLM"], "model_type": "toy", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "torch_dtype": "float32"}))
    g = torch.Generator().manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g),
         "model.norm1.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
         "model.norm2.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
         "model.mlp.gate_proj.weight": 0.1 * torch.randn(inter, hidden, generator=g),
         "model.mlp.up_proj.weight": 0.1 * torch.randn(inter, hidden, generator=g),
         "model.mlp.down_proj.weight": 0.1 * torch.randn(hidden, inter, generator=g)}
    save_file(t, str(dest / "model.safetensors"))
    write_tiny_tokenizer(dest, style="mistral")
    return dest
