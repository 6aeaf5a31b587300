"""A toy imp plugin: claims the architecture ``ToyForCausalLM`` (model_type ``toy``)."""

from imp_core.plugin.hookspecs import hookimpl


@hookimpl
def imp_register_architectures(register):
    register(family="toy", builder="imp_toy.family:ToyFamily",
             hf_architectures=["ToyForCausalLM"], model_types=["toy"])
