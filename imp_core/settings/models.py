"""The settings sections: one pydantic model per ``[section]`` of imp.toml.

Every field carries a description; ``imp config show`` prints it next to the value. Values are
validated strictly (no silent "20" -> 20 coercion from TOML files): the loaders in
``imp_core.settings.resolve`` turn env/--set strings into typed scalars before they get here.
Enumerated strings accept a few spellings (bf16, fp16, on-the-fly, warn, ...) and are stored in
their canonical form.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imp_core.units import parse_bytes

SECTION_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

_CUDA_DEVICE = re.compile(r"^cuda:\d+$")

_DTYPE_ALIASES = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def _choice(value: Any, allowed: tuple[str, ...], aliases: dict[str, str] | None = None) -> Any:
    """Lower-case and canonicalise a string, or raise naming the allowed spellings."""
    if not isinstance(value, str):
        return value  # strict str validation reports the wrong type
    text = value.strip().lower()
    text = (aliases or {}).get(text, text)
    if text not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}")
    return text


class RuntimeSettings(BaseModel):
    """Where and how the model runs."""

    model_config = SECTION_CONFIG

    device: str = Field("auto", description="device to run on: auto, cpu, cuda or cuda:N")
    dtype: str = Field(
        "auto",
        description="compute dtype: auto, bfloat16, float16 or float32 (or bf16, fp16, fp32, half)",
    )
    context: int = Field(
        0,
        ge=0,
        description="context length in tokens; 0 = min(model max_position_embeddings, 4096)",
    )
    max_tokens: int = Field(256, gt=0, description="maximum number of tokens to generate")
    chat: bool = Field(True, description="use the checkpoint's chat template when it has one")
    fast_path: str = Field(
        "auto", description="GPU decode fast path (Numba-CUDA kernels): auto, on or off"
    )
    cuda_graphs: bool = Field(True, description="capture the decode step in CUDA graphs")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default")
    memory_limit: int | None = Field(
        None, description="most GPU memory imp may use, e.g. 24GiB (the memory plan and phase 3b "
                          "size themselves to it); none = the whole device")

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _check_memory_limit(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "auto")):
            return None
        return parse_bytes(value)

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text in ("auto", "cpu", "cuda") or _CUDA_DEVICE.match(text):
            return text
        raise ValueError("expected auto, cpu, cuda or cuda:N")

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, value: Any) -> Any:
        return _choice(value, ("auto", "bfloat16", "float16", "float32"), _DTYPE_ALIASES)

    @field_validator("fast_path", mode="before")
    @classmethod
    def _check_fast_path(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `fast_path = true` in TOML reads naturally
            return "on" if value else "off"
        return _choice(value, ("auto", "on", "off"), {"true": "on", "false": "off"})


class SamplingSettings(BaseModel):
    """How the next token is picked."""

    model_config = SECTION_CONFIG

    temperature: float = Field(
        0.8, ge=0, allow_inf_nan=False, description="softmax temperature; 0 = greedy"
    )
    top_k: int = Field(40, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(
        0.95, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling mass, 0 < p <= 1"
    )
    min_p: float = Field(
        0.05,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="drop tokens below min_p x the top probability, 0 <= p < 1",
    )
    repeat_penalty: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="penalty on recently seen tokens; 1.0 = off"
    )
    repeat_last_n: int = Field(
        64, ge=0, description="how many recent tokens the repeat penalty looks at"
    )
    seed: int | None = Field(None, description="random seed; none = a fresh seed each run")


class AttentionSettings(BaseModel):
    """Attention backend choice."""

    model_config = SECTION_CONFIG

    backend: str = Field(
        "auto", description="attention backend for every layer; auto = per-layer chain"
    )


class MoeSettings(BaseModel):
    """Mixture-of-experts execution."""

    model_config = SECTION_CONFIG

    experts_impl: str = Field("auto", description="experts implementation; auto = engine's choice")


class KvCacheSettings(BaseModel):
    """The key/value cache."""

    model_config = SECTION_CONFIG

    dtype: str = Field("auto", description="KV cache storage dtype; auto = the compute dtype")


class QuantSettings(BaseModel):
    """Quantized weights."""

    model_config = SECTION_CONFIG

    dequant: str = Field(
        "auto",
        description="when quantized weights are dequantized: auto, load or on_the_fly",
    )

    @field_validator("dequant", mode="before")
    @classmethod
    def _check_dequant(cls, value: Any) -> Any:
        return _choice(value, ("auto", "load", "on_the_fly"), {"on-the-fly": "on_the_fly"})


class BenchSettings(BaseModel):
    """Benchmark options (none yet)."""

    model_config = SECTION_CONFIG


class LoggingSettings(BaseModel):
    """Log output."""

    model_config = SECTION_CONFIG

    level: str = Field("info", description="stderr log level: debug, info, warning or error")
    file: str | None = Field(None, description="also log everything (debug) to this file")

    @field_validator("level", mode="before")
    @classmethod
    def _check_level(cls, value: Any) -> Any:
        return _choice(value, ("debug", "info", "warning", "error"), {"warn": "warning"})


class Settings(BaseModel):
    """All of imp's settings; one attribute per section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    attention: AttentionSettings = Field(default_factory=AttentionSettings)
    moe: MoeSettings = Field(default_factory=MoeSettings)
    kv_cache: KvCacheSettings = Field(default_factory=KvCacheSettings)
    quant: QuantSettings = Field(default_factory=QuantSettings)
    bench: BenchSettings = Field(default_factory=BenchSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)


def section_models() -> dict[str, type[BaseModel]]:
    """Section name -> its model class, in declaration order."""
    fields = Settings.model_fields.items()
    return {name: field.annotation for name, field in fields}  # type: ignore[misc]
