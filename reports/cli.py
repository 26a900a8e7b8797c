"""The commands of ``reports``: ``adprune report``, ``adprune pick`` and ``adprune control``, for the front door."""

from adprune_core.cli import Command
from reports import pick_cli, report_cli

COMMANDS: dict[str, Command] = {**report_cli.COMMANDS, **pick_cli.COMMANDS}
