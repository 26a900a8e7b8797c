"""The ``adprune`` command line: every package's commands in one parser (``python -m adprune``).

Each package lists its own commands (``COMMANDS``: name -> help, arguments, run) and knows nothing of
this module; the dependencies point one way, ``followup`` -> ``reports`` -> ``study`` -> ``adprune_core``,
and only the front door imports them all.
"""

from __future__ import annotations

import sys

from adprune_core import cli as core_cli

try:
    from followup import cli as followup_cli
    from reports import cli as reports_cli
    from study import cli as study_cli
except ModuleNotFoundError as exc:  # a trainer-only install (pip install adprune): train, config, options
    if exc.name not in ("optuna", "mlflow", "pandas", "plotly", "onnx", "matplotlib", "psycopg"):
        raise
    COMMANDS: dict[str, core_cli.Command] = dict(core_cli.COMMANDS)
else:
    COMMANDS = {**core_cli.COMMANDS, **study_cli.COMMANDS, **reports_cli.COMMANDS, **followup_cli.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """``adprune COMMAND ...``: the exit code (2 after a user error, printed in one line)."""
    return core_cli.main(argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
