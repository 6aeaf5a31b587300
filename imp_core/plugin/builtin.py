"""The core's own hook implementations (registered as plugin ``imp-core``, answering last)."""

from __future__ import annotations

from imp_core.plugin.hookspecs import hookimpl


@hookimpl(trylast=True)
def imp_detect_quant(checkpoint, family):
    from imp_core.quant.detect.dispatch import detect_quant

    return detect_quant(checkpoint)


@hookimpl(trylast=True)
def imp_decode_fast_path(model, settings):
    from imp_core.plugin.policy import core_fast_path_reasons

    return core_fast_path_reasons(model, settings)


@hookimpl(trylast=True)
def imp_output_parser(family, prompt, tools):
    from imp_core.text.output_parser import PlainOutputParser

    return PlainOutputParser()
