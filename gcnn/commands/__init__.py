"""The ``gcnn`` sub-commands, one module each, and the error type they share."""


class UsageError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2.

    Defined here, not in :mod:`gcnn.cli`, so that ``python -m gcnn.cli`` (which runs the CLI
    module as ``__main__``) catches the same class the sub-commands raise.
    """
