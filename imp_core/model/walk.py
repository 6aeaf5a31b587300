"""Find a built model's layer objects of given types, whatever structure the family chose.

Families hold their layers in plain attributes, lists and dicts; phases that act on every weight
of a kind (Phase 3b's prefill forms, the prefill plan) walk that object graph instead of asking
each family for a registry. Tensors, modules of the standard library and already-seen objects are
not entered.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def iter_instances(root: Any, types: tuple[type, ...]) -> Iterator[Any]:
    """Every object reachable from ``root`` that is an instance of ``types``, each once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        if isinstance(obj, types):
            yield obj
        if isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(obj)))
        elif (hasattr(obj, "__dict__") and not isinstance(obj, type)
              and type(obj).__module__.split(".")[0] not in _FOREIGN):
            stack.extend(reversed(list(vars(obj).values())))


# libraries whose objects hold no layers of ours (and some of which are large or cyclic)
_FOREIGN = {"builtins", "torch", "numpy", "numba", "pydantic", "pydantic_core", "safetensors", "gguf",
            "loguru", "tokenizers", "transformers", "imp_kernels"}
