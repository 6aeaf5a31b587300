"""imp_kernels is a leaf library: it depends on torch, numba, numba-cuda and numpy only, never on
the engine (imp_core) or a family plugin. Checked statically (every import statement under
kernels/, function-local ones included) and at run time (importing every module of the package
in a fresh process loads no engine module)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
FORBIDDEN = ("imp_core", "imp_mistral", "imp_qwen36", "imp_gemma4")


def _kernel_files() -> list[Path]:
    return sorted(p for p in KERNELS.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(KERNELS).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["imp_kernels", *parts])


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``line: module`` for every import of a forbidden package in ``source`` (any nesting)."""
    bad = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        bad += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return bad


def test_detector_sees_every_kind_of_import():
    src = ("import os\nimport imp_core.errors\nfrom imp_qwen36 import x\n"
           "def f():\n    from imp_core.layers import norms\n    import imp_gemma4 as g\n"
           "class C:\n    def m(self):\n        import importlib\n        importlib.import_module('imp_mistral.x')\n"
           "from imp_kernels import ptx\nfrom . import rng\n")
    assert forbidden_imports(src) == ["2: imp_core.errors", "3: imp_qwen36", "5: imp_core.layers", "6: imp_gemma4",
                                      "10: imp_mistral.x"]


def test_kernels_source_imports_no_engine_or_plugin():
    files = _kernel_files()
    assert len(files) > 20 and (KERNELS / "bench" / "ops.py") in files
    bad = {str(p.relative_to(ROOT)): hits for p in files
           if (hits := forbidden_imports(p.read_text(), str(p)))}
    assert not bad, f"imp_kernels must not import the engine or a plugin: {bad}"


def test_importing_every_kernel_module_loads_no_engine_module():
    modules = [_module_name(p) for p in _kernel_files()]
    code = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, f'imported: {bad}'\n"
        "print(len(mods), 'modules')\n"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(modules)} modules" in r.stdout
