"""imp_qwen36: the Qwen3.5/3.6 family (Gated DeltaNet + gated attention, 256-expert MoE; and the
dense qwen3_5 sibling, which shares every block but the feed-forward).

Hook implementations only; the model is imported lazily through the registered builder. The
GGUF architecture ``qwen35moe`` is claimed by the GGUF formats work, not here.
"""

from imp_core.hookspecs import hookimpl


@hookimpl
def imp_register_architectures(register):
    register(
        family="qwen36",
        builder="imp_qwen36.family:Qwen36Family",
        hf_architectures=["Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM",
                          "Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM"],
        model_types=["qwen3_5_moe", "qwen3_5_moe_text", "qwen3_5", "qwen3_5_text"],
    )
