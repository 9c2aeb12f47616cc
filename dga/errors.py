"""Errors a user can cause. Each carries one sentence naming what is wrong and what to do.

The command-line apps print ``error: <message>`` and exit with ``EXIT_USER_ERROR`` for any of
them; anything else is a bug: one line asking for a report, exit 1, and the traceback only with
``DGA_DEBUG=1`` in the environment.
"""

EXIT_USER_ERROR = 2


class DgaError(Exception):
    """Base class: a problem with the user's input, not with the code."""


class DataError(DgaError):
    """A dataset, split file or description file is missing, malformed or inconsistent."""


class BackboneError(DgaError):
    """The open_clip backbone is unknown or its weights cannot be loaded."""


class BundleError(DgaError):
    """A model bundle is missing, truncated, tampered with or of another version."""


class ConfigError(DgaError):
    """A method option or hyper-parameter is out of range or inconsistent."""


class EngineError(DgaError):
    """A TensorRT engine cannot be built or used here (no TensorRT, no GPU, stale or foreign plan)."""


class PackageError(DgaError):
    """A deployment package is missing, incomplete or does not match its deploy.json."""


class InputError(DgaError):
    """An inference input path (an image or a folder of images) is missing or cannot be listed."""
