"""The Makefile as a newcomer meets it: ``make help`` lists every target and variable, each command is
echoed as one line (no empty continuation lines), and ``TORCH=cpu`` installs the CPU build of torch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on this machine")
MAKEFILE = (ROOT / "Makefile").read_text()
INTERNAL = {"PY", "STAMP", "ADPRUNE", "ALL_KINDS", "TORCH_CPU_INDEX", "VENV", "PYTHON", "WORKERS_PER_GPU",
            "AUTH_DB", "STORAGE", "TRACKING"}  # plumbing, or named in help beside their companion


def make(*args: str) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parent.parent
    return subprocess.run([MAKE, "-C", str(ROOT), "--no-print-directory", "-o", "install", f"VENV={venv}", *args],
                          capture_output=True, text=True, timeout=120)


def phony_targets() -> list[str]:
    block = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", MAKEFILE, re.S | re.M).group(1)
    return block.replace("\\\n", " ").split()


def test_make_help_lists_every_target_and_variable():
    proc = make("help")
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^  ([a-z][a-z-]*) {2,}\S", proc.stdout, re.M)
    assert listed and set(listed) == set(phony_targets()), proc.stdout
    variables = set(re.findall(r"^([A-Z_]+) +\?=", MAKEFILE, re.M)) - INTERNAL
    shown = set(re.findall(r"^  ([A-Z_]+)=", proc.stdout.split("variables:")[1], re.M))
    assert variables <= shown, sorted(variables - shown)
    assert "make study [PRESET=" in proc.stdout  # each target's usage line follows its description


def test_make_is_help_by_default_and_needs_no_install():
    proc = subprocess.run([MAKE, "-C", str(ROOT), "--no-print-directory", "-n"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "pip install" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("target", ["train", "study", "worker", "mlflow-server", "ui", "report", "pick", "control",
                                    "controls", "snapshots"])
@pytest.mark.parametrize("given", [(), ("STUDY=s", "TRIALS=3", "SHARE=0", "KNEE=1", "SEEDS=2", "AUTH=1")])
def test_each_command_is_echoed_as_one_line(target, given):
    proc = make("-n", target, *given)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "\\" not in lines[0] and lines[0].startswith("'"), proc.stdout


def test_torch_cpu_installs_the_cpu_build_first(tmp_path):
    venv = tmp_path / "venv"
    base = [MAKE, "-C", str(ROOT), "--no-print-directory", "-n", "install", f"VENV={venv}"]
    plain = subprocess.run(base, capture_output=True, text=True, timeout=60).stdout
    cpu = subprocess.run([*base, "TORCH=cpu"], capture_output=True, text=True, timeout=60).stdout
    assert "download.pytorch.org/whl/cpu" not in plain
    lines = cpu.splitlines()
    index = "--index-url 'https://download.pytorch.org/whl/cpu' torch torchvision"
    first = next(i for i, line in enumerate(lines) if index in line)
    assert first < next(i for i, line in enumerate(lines) if "-e '.[all,test]'" in line)  # torch is then already met
