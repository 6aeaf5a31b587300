"""The decode fast path: Numba-CUDA kernels bound once per run, one captured graph per step.

The reference forward of each family stays the oracle. When the single eligibility predicate
(``imp_core.plugin.policy.fast_path_reasons``: the core's reasons plus every plugin's
``imp_decode_fast_path``) has no objection, ``bind.bind_fast_path`` asks the family for its fast
model (``Family.fast_model``, written in ``plugins/<family>/decode.py`` with the ops here), which
binds each weight to a kernel chosen by (device, qtype, shape) (``linear``, ``experts``) and
logs every choice with its reason. A ``Decoder`` per sequence owns the static workspace beside
the caches and computes embedding -> logits for one token without allocation or host sync, so
the generator captures it (with the sampler) in one CUDA graph.

Modules: ``eligibility`` (the core's reasons), ``linear`` / ``experts`` (weights -> kernels),
``ops`` (thin adapters from imp's caches and norms to imp_kernels, and the decode attention
backend), ``sampling`` (the device sampler), ``model`` (the FastModel / Decoder contract and the
binding entry point), ``oracle`` (layer-by-layer comparison with the reference path).
"""
