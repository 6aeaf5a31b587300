"""Fuzz the GGUF reader: one file's bytes, opened, every tensor read, the tokenizer built from the
metadata, and the metadata turned into the family config (config_from_gguf + parse_config) when a
built-in family claims the arch."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["imp_core.checkpoint", "imp_core.text", "imp_mistral", "imp_qwen36",
                                         "imp_gemma4"]):
    from imp_core.checkpoint.gguf_names import config_for_gguf
    from imp_core.checkpoint.gguf_reader import open_gguf
    from imp_core.text.gguf_tokenizer import tokenizer_from_gguf
    from imp_gemma4.family import Gemma4Family
    from imp_mistral.family import MistralFamily
    from imp_qwen36.family import Qwen36Family
from imp_core.errors import ImpError
from tests.fuzz.harness import main, replace_file, scratch_dir

DIR = scratch_dir()
FAMILIES = {"llama": MistralFamily(), "mistral3": MistralFamily(), "qwen35": Qwen36Family(),
            "qwen35moe": Qwen36Family(), "gemma4": Gemma4Family()}


def seeds() -> dict[str, bytes]:
    from tests.fuzz.gguf_seeds import ARCHS, tiny_gguf

    return {arch: tiny_gguf(arch) for arch in ARCHS}


def target(data: bytes) -> None:
    path = DIR / "model.gguf"
    replace_file(path, data)
    try:
        ck = open_gguf(path)
        for name in ck.tensors:
            ck.read(name)
        if "tokenizer.ggml.tokens" in ck.metadata:
            tokenizer_from_gguf(ck.metadata, source=str(path))
        family = FAMILIES.get(ck.gguf_architecture or "")
        if family is not None:
            ck.config = config_for_gguf(family, ck)
            family.parse_config(ck)
    except ImpError:
        pass


if __name__ == "__main__":
    main(target, seeds)
