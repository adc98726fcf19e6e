"""Error types shared by the library, the CLI and the runtime (numpy-only, no torch).

The CLI turns any `EdgeKDError` into a one-line message and exit code 2; everything else is a bug.
"""


class EdgeKDError(Exception):
    """Base class: a user-facing error whose message says what is wrong and how to fix it."""


class InputError(EdgeKDError, ValueError):
    """Input samples do not match the modality spec (dtype, rank, channels, rate, NaN/inf, size)."""


class DataError(EdgeKDError):
    """A dataset, manifest or data file is missing, corrupt or inconsistent."""


class ConfigError(EdgeKDError):
    """A configuration value, option combination or run folder is invalid."""


class BundleError(EdgeKDError):
    """A bundle is missing files, tampered with, or of an unknown schema."""


class BackendUnavailable(EdgeKDError):
    """An inference backend (or its hardware) is not installed / not present."""


class ExportError(EdgeKDError):
    """Export failed: lint violations, accuracy drop over the limit, unsupported target."""


class MissingExtra(EdgeKDError):
    """A command needs an optional part of edgekd that is not installed (names the pip line)."""
