"""`imp check` on every producer-made fixture (family x format) and `imp run` on CUDA with the fast
path, on the GPU machine. Fixtures come from tests/gpu/make_fast_fixtures.py, carried:

    python3 tests/gpu/check_fast.py --fixtures .gpufix-fast --out $OUT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    manifest = json.loads((args.fixtures / "manifest.json").read_text())
    results, ok = {}, True
    for name, rel in manifest.items():
        path = args.fixtures / rel
        proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "check", "--model", str(path), "--device",
                               "cuda", "--steps", str(args.steps)], capture_output=True, text=True, timeout=600)
        results[name] = {"returncode": proc.returncode, "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-2000:]}
        ok &= proc.returncode == 0
        worst = max((ln for ln in proc.stdout.splitlines() if ln.startswith(("layer", "logits"))),
                    key=lambda ln: float(ln.split()[-3]) / float(ln.split()[-2]), default="")
        routing = next((ln for ln in proc.stdout.splitlines() if ln.startswith("routing")), "")
        print(f"{name:28s} rc={proc.returncode} worst: {worst.strip()} {routing[:80]}", flush=True)
        if proc.returncode not in (0, 1):
            print(proc.stderr[-1500:], flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check_fast.json").write_text(json.dumps(results, indent=2))
    for name in ("mistral/modelopt-nvfp4", "qwen36/modelopt-mixed", "gemma4/gguf-q4_k_m"):
        if name not in manifest:
            continue
        proc = subprocess.run([sys.executable, "-m", "imp_core.cli", "run", "--model", str(args.fixtures / manifest[name]),
                               "--device", "cuda", "--dtype", "bfloat16", "--prompt", "Tell me about the sea.", "-n",
                               "12", "--seed", "1", "--verbose"], capture_output=True, text=True, timeout=600)
        fast_line = next((ln for ln in proc.stderr.splitlines() if "decode fast path:" in ln), "")
        results[f"imp run {name}"] = {"returncode": proc.returncode, "fast_path_line": fast_line,
                                      "stderr_tail": proc.stderr[-1500:], "stdout": proc.stdout[-500:]}
        ok &= proc.returncode == 0 and fast_line.split("decode fast path:")[-1].strip().startswith("on")
        print(f"imp run --device cuda {name}: rc={proc.returncode} | {fast_line.strip()} | "
              f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check_fast.json").write_text(json.dumps(results, indent=2))
    print("CHECK FAST", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
