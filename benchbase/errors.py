"""Errors that benchbase reports to users as one line, without a traceback."""


class BenchbaseError(Exception):
    """A problem with the user's input: the message names the problem and the fix, in one line.

    Raised before anything runs (a config, a path, a plugin's constructor checking its arguments),
    the command line prints ``error: <message>`` and exits with status 2 (``--debug`` shows the
    traceback). Raised while a suite runs (by a loss, or an evaluator on some row), it fails that
    row, or that task of the row, with the message as the reason shown in its status.
    """


class MethodFailed(Exception):
    """A method failed during a suite (raised, or produced a non-finite loss) at a given step."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class NotApplicable(BenchbaseError):
    """An evaluator cannot score this kind of model (e.g. fine-tuning the ``pixels`` floor, which has
    no network): the harness leaves that task's cells of the row empty instead of failing it."""
