"""Errors that the CLI turns into exit codes.

``UserError`` is bad input or usage (exit code 2): the message is one line that says what is wrong
and what was expected. Anything else that escapes is an internal error (exit code 1).
"""


class QonnxError(Exception):
    """Base class of qonnx's own errors."""


class UserError(QonnxError):
    """Bad input or usage: a wrong path, a model or data that does not fit, an unknown option."""
