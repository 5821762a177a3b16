"""Exceptions raised by library code. Command-line entry points turn them into one-line messages."""


class HagviewError(Exception):
    """Base class: the message is one line a user can act on (it names the file, key or value)."""


class DataError(HagviewError):
    """A data set, video or annotation file is unusable."""


class ConfigError(HagviewError):
    """A configuration key is unknown, has the wrong type, or names a missing path."""


class BundleError(HagviewError):
    """A model bundle is missing a file, has an unknown schema, a hash mismatch or unsafe content."""


class BackendUnavailable(HagviewError):
    """An inference backend cannot run here; the message says why."""


class SourceError(HagviewError):
    """A video source cannot be opened or read."""
