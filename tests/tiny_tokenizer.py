"""Re-export: the tiny tokenizers live in imp_core.testing so the demo can use them too."""

from imp_core.testing.tiny_tokenizer import *  # noqa: F401,F403
from imp_core.testing.tiny_tokenizer import TINY_STYLES, build_tiny_backend, write_tiny_tokenizer  # noqa: F401
