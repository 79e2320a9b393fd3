"""The one exception type the CLI turns into a one-line message instead of a stack trace."""


class ClipFitError(Exception):
    """A user-facing error: bad input, a missing file, an unreachable download."""


class DataError(ClipFitError):
    """A dataset, split file, class list or image is missing or malformed."""


class BackboneError(ClipFitError):
    """A model name, pretrained tag or checkpoint file cannot be loaded."""
