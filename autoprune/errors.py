"""The one exception type that means "the user asked for something we cannot do", and how errors are quoted."""

import traceback


class UserError(ValueError):
    """Bad input: the CLI prints ``autoprune: error: <message>`` and exits with code 2."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message`` in one line (a message of several lines, or notes, joined by spaces), cut at ``limit``
    characters of message where given: how an error is quoted in a one-line message or a table."""
    text = "".join(traceback.format_exception_only(exc))
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    head, sep, message = text.partition(": ")
    if limit is not None and sep and len(message) > limit:
        text = f"{head}: {message[: limit - 3].rstrip()}..."
    return text
