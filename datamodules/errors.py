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
    """The short form of an underlying error, to quote inside a one-line message: its type and
    its first sentence (torch, for one, goes on to suggest weights_only=False, which would run
    whatever code a file holds), at most `limit` characters."""
    reason = getattr(exc, "reason", None)  # URLError keeps the interesting part here
    text = " ".join(str(reason if reason is not None else exc).split()).split(". ")[0]
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
