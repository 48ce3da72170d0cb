"""The one exception type for data problems a user can fix."""

from __future__ import annotations


class DataError(Exception):
    """A data problem the user can fix: missing files, no network, empty folders, bad sizes.

    The message is one line that says what to do and which flag to use, because the CLI
    prints it as it is and exits with status 2 -- it is the whole of what the user sees.
    """

    def __init__(self, message: str) -> None:
        # Newlines would break the "one line" promise the CLI relies on; fold them here so
        # that no caller has to remember to.
        super().__init__(" ".join(str(message).split()))


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A short single-line description of an underlying error, to quote inside a DataError."""
    reason = getattr(exc, "reason", None)  # URLError keeps the interesting part here
    text = str(reason if reason is not None else exc) or type(exc).__name__
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"
