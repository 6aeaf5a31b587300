"""Text for `imp info` and `imp plugins`."""

from __future__ import annotations

from pathlib import Path

from imp_core.plugins import PluginSet
from imp_core.runtime import inspect_checkpoint
from imp_core.settings import ResolvedSettings


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k.ljust(width)}  {v}" for k, v in rows]


def describe_checkpoint(path: Path, resolved: ResolvedSettings, plugins: PluginSet) -> str:
    insp = inspect_checkpoint(path, resolved, plugins)
    ck = insp.checkpoint
    lines = [f"{ck.path}", ""]
    lines.append("model")
    lines += _table([("architecture", insp.info.architecture), ("family", insp.spec.family),
                     ("plugin", insp.spec.plugin), *insp.family.describe(insp.config)])
    by_dtype: dict[str, list[int]] = {}
    skipped = 0
    from imp_core.checkpoint.names import normalize_name

    for t in ck.tensors.values():
        if normalize_name(t.name, insp.family.skip_prefixes) is None:
            skipped += t.nbytes
            continue
        entry = by_dtype.setdefault(t.dtype, [0, 0])
        entry[0] += 1
        entry[1] += t.nbytes
    lines += ["", "tensors (text model)"]
    lines += _table([(dt, f"{n} tensors, {_human(b)}") for dt, (n, b) in sorted(by_dtype.items())])
    if skipped:
        lines += _table([("skipped", f"{_human(skipped)} of vision/audio/other weights not used for text")])
    per_tok = insp.family.cache_bytes_per_token(insp.config, insp.dtype)
    lines += ["", "cache"]
    lines += _table([("per token", _human(per_tok)),
                     (f"at context {insp.context}", _human(per_tok * insp.context))])
    lines += ["", "what a run would do"]
    lines += _table(insp.plan)
    return "\n".join(lines)


def describe_plugins(plugins: PluginSet) -> str:
    lines = []
    for rec in plugins.records:
        state = "loaded" if rec.loaded else ("FAILED: " + rec.error if rec.error else "not loaded (IMP_PLUGINS)")
        lines.append(f"{rec.name}  ({rec.module}, from {rec.source})  {state}")
        for spec in plugins.architectures:
            if spec.plugin == rec.name:
                claims = [*spec.hf_architectures, *(f"model_type {m}" for m in spec.model_types),
                          *(f"gguf {g}" for g in spec.gguf_architectures)]
                lines.append(f"  family {spec.family}: {', '.join(claims)}")
    return "\n".join(lines)
