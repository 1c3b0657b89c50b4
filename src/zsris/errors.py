"""Typed errors: every failure a user can cause has its own class and a one-line message.

The CLI prints ``str(error)`` and exits non-zero; library users catch :class:`ZsrisError`.
"""


class ZsrisError(Exception):
    """Base class of every error zsris raises on purpose."""


class ImageError(ZsrisError):
    """The image is missing, unreadable, truncated, or of an unusable size."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the limit allows; found from its header, before decoding."""


class ExpressionError(ZsrisError):
    """The referring expression is empty or not text."""


class WeightsError(ZsrisError):
    """Model weights are missing or cannot be loaded."""


class ProposalError(ZsrisError):
    """Mask proposals are missing, empty, or malformed."""


class NoProposalsError(ProposalError):
    """The proposal generator found no mask in the image, so there is nothing to choose from."""


class DatasetError(ZsrisError):
    """A dataset file is missing or malformed."""


def failure_reason(error: BaseException) -> str:
    """The one line that records why one image or pair failed: zsris's own message, else the
    exception's type and text (an unexpected failure of one item must not stop a run)."""
    return str(error) if isinstance(error, ZsrisError) else f"{type(error).__name__}: {error}"


class ZsrisWarning(UserWarning):
    """Something the user should know that does not stop the work (an expression truncated ...).

    The command line shows every one of them, once, whatever code raised it."""


class MethodError(ZsrisError):
    """A method that is not there: not registered, or not loaded by the server asked."""


class SettingError(ZsrisError):
    """A request's setting out of its range (a server's page or API: a no-target threshold above 1 ...)."""
