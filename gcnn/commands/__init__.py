"""The ``gcnn`` sub-commands, one module each, and the error type they share.

:class:`UsageError` lives in :mod:`gcnn.errors` (with every other error the CLI prints as one
line); it is re-exported here for the sub-commands that import it from this package.
"""

from gcnn.errors import UsageError

__all__ = ["UsageError"]
