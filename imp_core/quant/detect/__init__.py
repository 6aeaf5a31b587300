"""Quant detection: one module per producer, their shared helpers in ``common``, the chain in
``dispatch``."""
