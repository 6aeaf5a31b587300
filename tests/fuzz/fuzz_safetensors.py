"""Fuzz the safetensors reader: one shard's bytes, opened as a checkpoint and every tensor read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["imp_core.checkpoint"]):
    from imp_core.checkpoint.safetensors_reader import open_safetensors_dir
from imp_core.errors import ImpError
from tests.fuzz.harness import main, replace_file, scratch_dir

DIR = scratch_dir()
(DIR / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))


def seeds() -> dict[str, bytes]:
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(0)
    return {
        "mixed": save({"a": torch.randn(3, 4, generator=g), "b": torch.zeros(5, dtype=torch.bfloat16),
                       "c": torch.arange(6, dtype=torch.int64).reshape(2, 3)}, metadata={"format": "pt"}),
        "empty-and-scalar": save({"e": torch.zeros(0, 4), "s": torch.tensor(1.5)}),
        "fp8": save({"q": torch.zeros(4, 8).to(torch.float8_e4m3fn), "scale": torch.ones(1)}),
    }


def target(data: bytes) -> None:
    replace_file(DIR / "model.safetensors", data)
    try:
        ck = open_safetensors_dir(DIR)
        for name in ck.tensors:
            ck.read(name)
    except ImpError:
        pass


if __name__ == "__main__":
    main(target, seeds)
