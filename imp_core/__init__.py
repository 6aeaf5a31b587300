"""imp: a plugin-based LLM inference engine.

The core knows no model family by name; families are pluggy plugins loaded from the
``imp.plugins`` entry-point group (see ``imp_core.plugin.hookspecs`` for the contract).
"""

__version__ = "0.1.0"
