"""The house: the trainer library runs without the study stack, and the front door gathers the commands."""

import subprocess
import sys

from adprune.cli import COMMANDS
from adprune_core import cli as core_cli
from followup import cli as followup_cli
from reports import cli as reports_cli
from study import cli as study_cli


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_trainer_library_loads_no_study_or_report_stack():
    proc = run_python("import sys, adprune_core.cli, adprune_core.trainer, adprune_core.data, adprune_core.bench\n"
                      "stacks = ('optuna', 'mlflow', 'pandas', 'plotly', 'study', 'reports', 'followup', 'adprune')\n"
                      "print(sorted(m for m in stacks if m in sys.modules))")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_the_front_door_has_every_packages_commands_and_no_package_registers_itself():
    assert list(COMMANDS) == [*core_cli.COMMANDS, *study_cli.COMMANDS, *reports_cli.COMMANDS, *followup_cli.COMMANDS]
    assert set(core_cli.COMMANDS) == {"train", "config", "options"}  # the core's own table never grows
    assert {"study", "worker", "ui", "report", "pick", "control"} <= set(COMMANDS)
    assert set(reports_cli.COMMANDS) == {"report"}  # reports only reads: what writes lives in followup


def test_a_trainer_only_install_still_trains():
    # as if optuna were not installed (pip install adprune, without [study,reports])
    proc = run_python("import sys; sys.modules['optuna'] = None\n"
                      "from adprune.cli import COMMANDS, main; print(sorted(COMMANDS)); sys.exit(main(['options']))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "['config', 'options', 'train']" and "train.epochs" in proc.stdout
