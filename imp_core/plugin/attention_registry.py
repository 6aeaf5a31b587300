"""The attention backends the core can dispatch to, each saying what it can serve.

Order matters: for ``attention.backend = "auto"`` the core tries them best first, and a
backend that cannot serve a layer declines with a reason (which is logged). A chain that ends
with nobody accepting is a loud error, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

from imp_core.plugin.plan_types import AttentionLayerSpec


@dataclass(frozen=True)
class BackendSpec:
    name: str
    devices: frozenset[str]  # torch device types it runs on
    max_head_dim: int | None = None  # None: any
    sliding_window: bool = True
    output_gate: bool = True  # the gate is applied by the family around the backend
    description: str = ""

    def declines(self, layer: AttentionLayerSpec, device_type: str) -> str | None:
        """None if this backend can serve ``layer`` on ``device_type``, else the reason it can't."""
        if device_type not in self.devices:
            return f"{self.name} does not run on {device_type}"
        if self.max_head_dim is not None and max(layer.head_dim, layer.v_head_dim or 0) > self.max_head_dim:
            return f"{self.name} supports head_dim <= {self.max_head_dim}, layer has {layer.head_dim}"
        if layer.sliding_window and not self.sliding_window:
            return f"{self.name} has no sliding-window support"
        return None


# Best first. The fast-path kernels register ahead of these when they are wired in.
BACKENDS: dict[str, BackendSpec] = {
    "sdpa": BackendSpec("sdpa", frozenset({"cpu", "cuda"}),
                        description="torch scaled_dot_product_attention with a position mask"),
    "eager": BackendSpec("eager", frozenset({"cpu", "cuda"}),
                         description="explicit matmul/softmax, step-for-step like transformers' eager"),
}


def register_backend(spec: BackendSpec, *, first: bool = True) -> None:
    """Add a backend (kernels call this when they are importable on this machine)."""
    global BACKENDS
    items = [(k, v) for k, v in BACKENDS.items() if k != spec.name]
    BACKENDS = dict([(spec.name, spec), *items] if first else [*items, (spec.name, spec)])
