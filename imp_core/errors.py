"""User-facing errors.

Every error a user can cause (bad path, corrupt file, unknown architecture, bad config key,
prompt too long, ...) is an ``ImpError`` whose message is one line naming the file or key and
what was expected. The CLI prints it as ``error: <message>`` and exits non-zero, without a
traceback. Anything else escaping is a bug in imp.
"""


class ImpError(Exception):
    """An error caused by the user's input; ``str(err)`` is the one-line message."""

    exit_code = 2


class ConfigError(ImpError):
    """A bad settings file, section, key, or value."""


class CheckpointError(ImpError):
    """A checkpoint that is missing, truncated, corrupt, or inconsistent."""


class ArchitectureError(ImpError):
    """No plugin claims the checkpoint's architecture, or the claiming plugin is broken."""


class PluginError(ImpError):
    """A plugin that cannot be loaded or that broke the hook contract."""


class QuantError(ImpError):
    """An unsupported, incomplete or contradictory quantization layout."""


class PromptTooLongError(ImpError):
    """The prompt does not fit in the configured context."""


class DeviceError(ImpError):
    """The requested device is not available."""


class OutOfMemoryError(ImpError):
    """The planned weights, cache and workspace do not fit in the target device's free memory."""
