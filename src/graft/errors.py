"""The one exception type users see.

Every mistake a user can make (a wrong name, a missing file, a bad recipe) is raised as `GraftError` with a
message that fits on one line and says what to do. The CLI turns it into that line and exit code 2; anything
else escaping is a bug in graft and keeps its traceback.
"""


class GraftError(Exception):
    """A user-facing error: one clear line, no traceback."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), short enough for a one-line error.

    A longer line is cut at a word boundary and ends with "…", so a message never stops mid-word.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:(") + "…"


class Interrupted(GraftError):
    """Work stopped by Ctrl-C or SIGTERM after saving what lets it continue (e.g. a training checkpoint)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum
