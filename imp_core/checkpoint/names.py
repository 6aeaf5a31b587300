"""Tensor-name normalisation shared by every family.

Multimodal wrappers store the text decoder under a prefix (``model.language_model.`` in the
transformers-5 layout, ``language_model.model.`` / ``language_model.lm_head.`` in the legacy
LLaVA-style layout). Names are normalised to the plain causal-LM layout (``model.layers...``,
``lm_head.weight``), which is what family plugins read. Vision/audio towers and projectors are
not part of a text run and are skipped.
"""

from __future__ import annotations

TEXT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("language_model.", ""),
)

NON_TEXT_PREFIXES: tuple[str, ...] = (
    "model.visual.", "visual.",
    "model.vision_tower.", "vision_tower.",
    "model.multi_modal_projector.", "multi_modal_projector.",
    "model.embed_vision.", "embed_vision.",
    "model.audio_tower.", "audio_tower.", "model.embed_audio.", "embed_audio.",
)


def normalize_name(name: str, extra_skip: tuple[str, ...] = ()) -> str | None:
    """The plain causal-LM name of a stored tensor, or None if it is not part of the text model."""
    if name.startswith(NON_TEXT_PREFIXES) or (extra_skip and name.startswith(extra_skip)):
        return None
    for old, new in TEXT_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name
