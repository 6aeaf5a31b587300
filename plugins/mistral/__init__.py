"""imp_mistral: the Mistral family (Mistral-Small-3.x and Llama-style dense decoders).

Hook implementations only; the model is imported lazily through the registered builder.
"""

from imp_core.plugin.hookspecs import hookimpl


@hookimpl
def imp_register_architectures(register):
    register(
        family="mistral",
        builder="imp_mistral.family:MistralFamily",
        hf_architectures=["MistralForCausalLM", "Mistral3ForConditionalGeneration"],
        model_types=["mistral", "mistral3"],
        gguf_architectures=["llama", "mistral3"],
    )


@hookimpl
def imp_output_parser(family, prompt, tools):
    if family != "mistral":
        return None
    from imp_mistral.output import output_parser

    return output_parser(prompt)
