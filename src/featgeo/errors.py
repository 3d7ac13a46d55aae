"""Errors that mean "the user gave bad input".

Library code raises plain ``ValueError`` / ``TypeError`` / ``FileNotFoundError`` with a message
that names the parameter, the value received and the fix (scikit-learn style). The CLI turns
those into one line on stderr and exit code 2. ``InputError`` is the ``ValueError`` we raise for
problems that are not about a single value (a corpus with no text, an unreachable hub).
"""


class InputError(ValueError):
    """Bad input that the user can fix; the message says how."""


class HubUnreachableError(InputError):
    """A hub id was given but no model hub can be reached from this machine."""


class ExecutionError(RuntimeError):
    """A job's units could not finish, through no fault of the input (a Ray worker or node kept
    dying); the message says what happened and that the same command resumes. The CLI prints it
    as one line with exit code 1."""


USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)
