"""Sub-commands of the ``gcnn`` CLI, one module each (see :mod:`gcnn.cli`)."""
