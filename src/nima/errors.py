"""The toolkit's exception hierarchy.

Every error a user can cause (bad config, bad label file, missing images, no network for
ImageNet weights) is a `NimaError` subclass whose message is one sentence saying what is wrong
and, where possible, what to do. The CLI prints that sentence instead of a stack trace.
"""


# Exit codes of every command (nima, ./train-local, ./predict, ./train-remote). 3: some images
# could not be scored; 141 = 128 + SIGPIPE, a reader such as `head` went away.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = (
    0, 1, 2, 3, 130, 141)


class NimaError(Exception):
    """Base class for errors the CLI reports as one line."""


class ConfigError(NimaError):
    """A config file is missing, malformed, or has an unknown / wrongly typed / impossible key."""


class LabelError(NimaError):
    """A label (samples) file is missing, malformed, or contains an invalid row."""


class ImageError(NimaError):
    """An image cannot be read, is not an image, or is too large to decode safely."""


class DataError(NimaError):
    """The dataset as a whole is unusable (e.g. too many images missing)."""


class ModelError(NimaError):
    """A model cannot be built or loaded (unknown base, missing weights, no network)."""
