"""Text for `imp info` and `imp plugins`."""

from __future__ import annotations

from pathlib import Path

from imp_core.plugin.manager import PluginSet
from imp_core.run.session import inspect_checkpoint
from imp_core.settings.resolve import ResolvedSettings
from imp_core.units import human_bytes




def _table(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k.ljust(width)}  {v}" for k, v in rows]


def role_table(ck, plan, skip_prefixes: tuple[str, ...]) -> tuple[dict[str, dict[str, list[int]]], int]:
    """({role: {qtype: [tensors, bytes incl. scales]}}, skipped bytes) of a checkpoint's text model."""
    from imp_core.checkpoint.names import normalize_name
    from imp_core.checkpoint.roles import tensor_role

    by_stored = {t.stored_name: t for t in plan.tensors.values()}
    roles: dict[str, dict[str, list[int]]] = {}
    skipped = 0
    for t in ck.tensors.values():
        if t.name in plan.sidecars:
            continue
        logical = plan.logical_name(t.name)
        if normalize_name(logical, skip_prefixes) is None:
            skipped += t.nbytes
            continue
        tq = by_stored.get(t.name)
        qtype = tq.format if tq else t.dtype
        nbytes = t.nbytes + (sum(ck.tensors[s].nbytes for s in tq.sidecars) if tq else 0)
        cell = roles.setdefault(tensor_role(logical), {}).setdefault(qtype, [0, 0])
        cell[0] += 1
        cell[1] += nbytes
    return roles, skipped


def describe_checkpoint(path: Path, resolved: ResolvedSettings, plugins: PluginSet) -> str:
    insp = inspect_checkpoint(path, resolved, plugins)
    ck = insp.checkpoint
    lines = [f"{ck.path}", ""]
    lines.append("model")
    lines += _table([("architecture", insp.info.architecture), ("family", insp.spec.family),
                     ("plugin", insp.spec.plugin), *insp.family.describe(insp.config)])
    lines += ["", "quantization"]
    plan = insp.quant_plan
    lines += _table([("producer", plan.producer), ("formats", plan.summary()),
                     *[("detail", d) for d in plan.details]])
    roles, skipped = role_table(ck, plan, insp.family.skip_prefixes)
    lines += ["", "tensor roles x qtype (text model)"]
    lines += _table([(role, "; ".join(f"{qt} {n} x {human_bytes(b)}" for qt, (n, b) in sorted(cells.items())))
                     for role, cells in sorted(roles.items())])
    if skipped:
        lines += _table([("skipped", f"{human_bytes(skipped)} of vision/audio/other weights not used for text")])
    per_tok = insp.family.cache_bytes_per_token(insp.config, insp.dtype)
    lines += ["", "cache"]
    lines += _table([("per token", human_bytes(per_tok)),
                     (f"at context {insp.context}",
                      human_bytes(insp.family.cache_bytes(insp.config, insp.dtype, insp.context)))])
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
