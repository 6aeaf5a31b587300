"""Write the producer-made fixtures of every family x format at shapes the decode kernels take
(head dims 64/128, DeltaNet key heads of 128), for ``tests/gpu/check_fast.py`` on the GPU machine.

Runs on the development machine (compressed-tensors, nvidia-modelopt and gguf are not on the GPU
image); the fixtures and a manifest.json go to DEST, which the GPU call carries:

    python tests/gpu/make_fast_fixtures.py .gpufix-fast
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import format_factory, format_factory_moe  # noqa: E402

# the kernels' constraints: attention head_dim a multiple of 64; DeltaNet dk = 128, dv % 32 == 0
format_factory_moe.QWEN_TEXT = dict(
    hidden_size=256, head_dim=64, linear_key_head_dim=128, linear_value_head_dim=64, num_experts=6,
    moe_intermediate_size=32, shared_expert_intermediate_size=64,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [4, 2, 2], "mrope_interleaved": True})
format_factory_moe.GEMMA_TEXT = dict(hidden_size=256, head_dim=64, global_head_dim=128, num_experts=6,
                                     moe_intermediate_size=64)


def main() -> int:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpufix-fast").resolve()
    manifest: dict[str, str] = {}
    for fmt in format_factory.FORMATS:
        fx = format_factory.make_fixture(fmt, dest / "mistral" / fmt)
        manifest[f"mistral/{fmt}"] = str(fx.path.relative_to(dest))
        manifest.setdefault("mistral/bf16", str(fx.original.relative_to(dest)))
        print("wrote", fmt, flush=True)
    for family in ("qwen36", "gemma4"):
        for fmt in format_factory_moe.FORMATS[family]:
            fx = format_factory_moe.make_fixture(family, fmt, dest / family / fmt)
            manifest[f"{family}/{fmt}"] = str(fx.path.relative_to(dest))
            manifest.setdefault(f"{family}/bf16", str(fx.original.relative_to(dest)))
            print("wrote", family, fmt, flush=True)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
