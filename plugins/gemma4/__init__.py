"""imp_gemma4: the Gemma-4 family (gemma-4-26B-A4B: sliding + global attention, dense MLP beside MoE).

Hook implementations only; the model is imported lazily through the registered builder, and
the policy answers are pure functions in ``imp_gemma4.policy``. GGUF files of llama.cpp's
``gemma4`` architecture load through the family's name table and metadata reader (names.py, gguf.py).
"""

from imp_core.plugin.hookspecs import hookimpl


@hookimpl
def imp_register_architectures(register):
    register(
        family="gemma4",
        builder="imp_gemma4.family:Gemma4Family",
        hf_architectures=["Gemma4ForConditionalGeneration", "Gemma4ForCausalLM"],
        model_types=["gemma4", "gemma4_text"],
        gguf_architectures=["gemma4"],
    )


@hookimpl
def imp_attention_backend(layer, candidates, registry, settings):
    from imp_gemma4.policy import attention_backend

    forced = settings.attention.backend
    return attention_backend(layer, candidates, registry, forced=None if forced == "auto" else forced)


@hookimpl
def imp_phase_policy(phase, model, default, settings):
    from imp_gemma4.policy import phase_decision

    return phase_decision(phase, model, default)


@hookimpl
def imp_output_parser(family, prompt, tools):
    if family != "gemma4":
        return None
    from imp_gemma4.output import output_parser

    return output_parser(prompt)
