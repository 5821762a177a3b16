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


def describe_error(exc: BaseException) -> str:
    """An exception as the one line a user sees: a HagviewError's own message, an OS error's file
    and reason, anything else with its type (it is a bug, and the type says where to look)."""
    if isinstance(exc, HagviewError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
