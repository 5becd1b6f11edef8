"""The one exception type the command line turns into a one-line message."""


class SealError(Exception):
    """A problem with the user's input: printed as `sealgguf: error: <message>`, exit status 2."""
