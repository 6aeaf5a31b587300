"""The core's own hook implementations (registered as plugin ``imp-core``, answering last)."""

from __future__ import annotations

from imp_core.plugin.hookspecs import hookimpl


@hookimpl(trylast=True)
def imp_register_attention_backends(register):
    from imp_core.fast.ops import NUMBA_DECODE, numba_available
    from imp_core.layers.attention import EAGER, SDPA

    # last in the chain: a plugin's kernels registered ahead of these are tried first
    if numba_available():
        register(NUMBA_DECODE, first=False)
    register(SDPA, first=False)
    register(EAGER, first=False)


@hookimpl(trylast=True)
def imp_detect_quant(checkpoint, family):
    from imp_core.quant.detect.dispatch import detect_quant

    return detect_quant(checkpoint)


@hookimpl(trylast=True)
def imp_output_parser(family, prompt, tools):
    from imp_core.text.output_parser import PlainOutputParser

    return PlainOutputParser()
