"""The command of ``reports``: ``adprune report``, for the front door."""

from adprune_core.cli import Command
from reports import report_cli

COMMANDS: dict[str, Command] = dict(report_cli.COMMANDS)
