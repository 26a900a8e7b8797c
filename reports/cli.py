"""Registers ``adprune report``, ``adprune pick`` and ``adprune control`` into ``adprune_core.cli``.

Each command lives in its own module and adds itself to ``adprune_core.cli.SUBCOMMANDS`` on import.
"""

from reports import pick_cli, report_cli  # noqa: F401  (imported for their registrations)
