"""The one exception users see: a one-line message naming the key or file and what was expected."""


class MldiffError(Exception):
    """Bad input or a detected numerical fault; the CLI prints it on one line and exits 2."""
