"""The commands of ``pgblobs``, one module per command group.

Each module has a ``configure_parser(commands)`` that adds its parser(s) to
the subcommands of ``pgblobs`` and sets ``run`` to the handler written
beside it; ``pgblobs.cli`` assembles them in the order ``--help`` lists them.
What several commands share (the database options, the argument types, how a
failure is told) is in ``common.py``.
"""
