"""The exit-code contract, and the exceptions the command line turns into one-line messages.

    0  success
    1  a gate failed (eval --min-accuracy / --max-drop)
    2  bad input or usage: a malformed file, key, tensor, option or value
    3  an environment problem: a missing file or package, disk full, permissions, a broken llama.cpp build
    4  an internal error: a bug in sealgguf (the one-line message says so; --debug shows the traceback)
  130  interrupted

Nothing else reaches the user as a traceback unless `--debug` is given.
"""

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_ENV, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class SealError(Exception):
    """A problem with the user's input: printed as `sealgguf: error: <message>`, exit status 2."""

    exit_code = EXIT_INPUT


class EnvironmentProblem(SealError):
    """Something the machine lacks (a package, a file, space, permission): exit status 3."""

    exit_code = EXIT_ENV


class GateFailed(SealError):
    """A CI gate did not pass: exit status 1. The message lists one failing cell per line."""

    exit_code = EXIT_GATE
