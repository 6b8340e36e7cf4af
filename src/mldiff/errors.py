"""The one exception users see: a one-line message naming the key or file and what was expected."""


class MldiffError(Exception):
    """Bad input or a detected numerical fault; the CLI prints it on one line and exits 2."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (an exception's message, say) with its whitespace and newlines folded to single
    spaces, cut at ``limit`` characters: what the CLI prints after ``mldiff: error:``."""
    folded = " ".join(str(text).split()) or type(text).__name__
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."
