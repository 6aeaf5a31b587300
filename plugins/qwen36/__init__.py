"""imp_qwen36: the Qwen3.5/3.6 family (Gated DeltaNet + gated attention, 256-expert MoE; and the
dense qwen3_5 sibling, which shares every block but the feed-forward).

Hook implementations only; the model is imported lazily through the registered builder. GGUF
files of llama.cpp's ``qwen35moe`` (and the dense ``qwen35``) architecture load through the
family's name table and converter transforms (names.py, gguf.py).
"""

from imp_core.plugin.hookspecs import hookimpl


@hookimpl
def imp_register_architectures(register):
    register(
        family="qwen36",
        builder="imp_qwen36.family:Qwen36Family",
        hf_architectures=["Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM",
                          "Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM"],
        model_types=["qwen3_5_moe", "qwen3_5_moe_text", "qwen3_5", "qwen3_5_text"],
        gguf_architectures=["qwen35moe", "qwen35"],
    )


@hookimpl
def imp_decode_fast_path(model):
    if model.family != "qwen36":
        return None
    from imp_qwen36.decode import fast_path_reasons

    return fast_path_reasons(model)


@hookimpl
def imp_output_parser(family, prompt, tools):
    if family != "qwen36":
        return None
    from imp_qwen36.output import output_parser

    return output_parser(prompt, tools)
