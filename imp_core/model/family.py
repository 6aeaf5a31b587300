"""What a family plugin's builder returns, and what the engine runs.

A ``Family`` turns checkpoint metadata into the family's own config (a pydantic model), a
family-neutral ``ModelInfo`` for the policy hooks, and a ``CausalLM`` built from a
``WeightStore``. The core never looks inside the family config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, TypeVar

import torch
from pydantic import BaseModel, ValidationError

from imp_core.checkpoint.base import Checkpoint
from imp_core.errors import CheckpointError
from imp_core.layers.attention import SDPA
from imp_core.model.config_checks import size_problem
from imp_core.plugin.attention_registry import AttentionBackend
from imp_core.plugin.plan_types import ModelInfo
from imp_core.model.weights import WeightStore

C = TypeVar("C", bound=BaseModel)


def parse_config(model: type[C], data: dict[str, Any], source: str) -> C:
    """Validate a family config; the error names the file and the first bad key."""
    problem = size_problem(data)
    if problem is not None:
        raise CheckpointError(f"{source}: config key '{problem[0]}' {problem[1]}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if not key:  # a check across keys (e.g. heads divisible by kv heads): the message names them
            raise CheckpointError(f"{source}: {msg}") from None
        raise CheckpointError(f"{source}: bad or missing config key '{key}': {msg}") from None


class CausalLM(ABC):
    """A decoder-only model on the reference path."""

    info: ModelInfo
    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def new_cache(self, batch: int, context: int) -> Any:
        """Allocate every cache buffer for ``batch`` sequences of up to ``context`` tokens."""

    @abstractmethod
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any, *,
                last_only: bool = False) -> torch.Tensor:
        """ids [B, T] at ``positions`` [T] (device tensor) -> logits [B, T or 1, V] in fp32."""

    #: when a list, forward appends the last token's hidden state after every layer (imp check)
    layer_trace: list | None = None

    #: the backend each attention layer runs, by layer index (set from the plan by the session)
    attention_backends: dict[int, AttentionBackend] = {}

    def set_attention_backends(self, backends: dict[int, AttentionBackend]) -> None:
        """Install the chosen backend object of every attention layer, keyed by layer index."""
        self.attention_backends = dict(backends)

    def attention_for(self, layer_index: int) -> AttentionBackend:
        """The backend layer ``layer_index`` runs (torch SDPA until a plan installs others)."""
        return self.attention_backends.get(layer_index, SDPA)

    def prefill_notes(self) -> list[str]:
        """The family's own prefill kernel choices for the plan line (e.g. a linear-attention rule)."""
        return []

    def reset_cache(self, cache: Any) -> None:
        """Forget every cached token (buffers stay allocated)."""
        cache.reset()


class Family(ABC):
    """A model family, as its plugin's builder returns it."""

    name: str = ""
    #: stored-name prefixes that are not part of the text model (e.g. "mtp.")
    skip_prefixes: tuple[str, ...] = ()

    @abstractmethod
    def parse_config(self, checkpoint: Checkpoint) -> BaseModel:
        """The family's config from config.json (or GGUF metadata)."""

    @abstractmethod
    def model_info(self, config: Any, checkpoint: Checkpoint) -> ModelInfo:
        """The family-neutral summary the policy hooks see."""

    @abstractmethod
    def build(self, config: Any, weights: WeightStore) -> CausalLM:
        """The model, its weights read from ``weights`` (every tensor must be used)."""

    #: whether ``fast_model`` is implemented (read by the fast-path eligibility rule)
    has_fast_decode: bool = False

    def fast_model(self, model: CausalLM) -> Any:
        """The family's decode step on kernels (an ``imp_core.fast.model.FastModel`` bound to
        ``model``'s weights); families with ``has_fast_decode`` implement it."""
        raise NotImplementedError(f"family '{self.name}' has no fast decode step")

    def rename(self, config: Any, checkpoint: Checkpoint) -> Callable[[str], str | None] | None:
        """An extra stored-name -> model-name map (GGUF names), or None."""
        return None

    # -- GGUF (see imp_core.checkpoint.gguf_names; all optional) ---------------------------
    def gguf_names(self) -> Any:
        """The family's ``GGUFNameTable`` (GGUF <-> HF tensor names), or None: no GGUF support."""
        return None

    def config_from_gguf(self, metadata: dict[str, Any], tensors: dict[str, Any], *, where: str) -> dict[str, Any]:
        """A config.json-like dict from GGUF metadata (``<arch>.*`` keys), parsed by parse_config."""
        raise CheckpointError(f"{where}: family '{self.name}' cannot read GGUF metadata")

    def gguf_transforms(self, config: Any, metadata: dict[str, Any]) -> dict[str, Callable[[Any], Any]]:
        """Converter transforms to undo, keyed by HF name or per-layer suffix (see gguf_names)."""
        return {}

    def max_context(self, config: Any) -> int:
        return int(getattr(config, "max_position_embeddings", 4096))

    def cache_bytes_per_token(self, config: Any, dtype: torch.dtype) -> int:
        """KV bytes one more token of context costs (for `imp info` and the memory plan)."""
        return 0

    def cache_bytes(self, config: Any, dtype: torch.dtype, context: int) -> int:
        """Every cache byte one sequence of ``context`` tokens allocates (KV plus any fixed
        per-sequence state such as sliding rings or recurrent states)."""
        return self.cache_bytes_per_token(config, dtype) * context

    def describe(self, config: Any) -> list[tuple[str, str]]:
        """Lines for `imp info`: (label, value)."""
        return []

    def synthetic_spec(self, config: Any) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every tensor the model reads, by normalised name: (shape, init) for random weights
        at the real shapes (benchmarks and full-size smoke runs; see imp_core.model.synthetic)."""
        raise NotImplementedError(f"family '{self.name}' has no synthetic weight spec")

    def presets(self) -> dict[str, dict[str, Any]]:
        """Named real-shape (and mini) configs for ``imp bench --preset`` (config.json-like dicts)."""
        return {}

    #: transformers' (text config class, causal-LM class) for this family's presets, for
    #: ``imp bench --peer transformers``; None: no transformers peer
    transformers_classes: tuple[str, str] | None = None

    def format_mixes(self) -> dict[str, dict[str, str]]:
        """How published checkpoints store this family's weights, by format name (``bf16``,
        ``nvfp4``, ``fp8``, ``gguf-q4_k_m``, ...): tensor role or name fragment -> qtype, for random
        real-shape models (see ``imp_core.model.synthetic_quant.mix_formats``)."""
        return {}

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        """The family config from a config.json-like dict (e.g. a real-shape preset)."""
        raise NotImplementedError(f"family '{self.name}' cannot parse a bare config dict")
