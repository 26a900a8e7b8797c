"""Bad input and damaged files, as a user meets them: each is one line naming the value, the rule and the fix,
exit code 2, no traceback, and nothing already recorded is changed. docs/errors.md lists every case with the
test here that covers it.

Real files in real formats: zips with a bad CRC or a corrupt deflate stream, a dangling symbolic link,
animated GIFs, a config file in Latin-1, SQLite stores with overwritten pages or cut short, a summary.json cut
short, folders that are read-only to the process (tests/helpers.py ``as_ordinary_user``), the Makefile run by
``make``. The stores are copies of the shared tiny study of the pick tests (tests/pick_study.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from adprune.cli import main
from study.tracking import StudyTracker
from tests.helpers import ROOT, as_ordinary_user, folder_files, tracking_uri, write_files
from tests.pick_study import NAME, build

ADPRUNE = [sys.executable, "-m", "adprune"]
# MLflow 3's experiment type tag and its value for model training (the UI's ExperimentKind in mlflow/server/js)
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# a trainer run small enough to finish in seconds (synthetic data, a narrow network, on the CPU)
NET = ["--set", "model.width_mult=0.125", "--set", "train.progress=false", "--set", "train.device=cpu"]
SMALL = ["--set", "data.train_size=128", "--set", "data.val_size=64", *NET]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory)


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``adprune ARGV`` in this process: (exit code, stderr)."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """``adprune ARGV`` as a subprocess in the repository."""
    kwargs.setdefault("timeout", 300)
    return subprocess.run([*ADPRUNE, *argv], capture_output=True, text=True, cwd=ROOT, **kwargs)


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit code 2 and one line on stderr, ``adprune: error: ...``, holding every needle."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("adprune: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


# --- numbers: NaN, infinities and out-of-range values, wherever a number is read ------------------------

@pytest.mark.parametrize(("setting", "needle"), [
    ("train.lr=nan", "train.lr: nan is not a finite number"),
    ("train.lr=inf", "train.lr: inf is not a finite number"),
    ("train.lr=1e309", "train.lr: inf is not a finite number"),
    ("train.lr=-.inf", "train.lr: -inf is not a finite number"),
    ("train.momentum=nan", "train.momentum: nan"),
    ("prune.density_tol=nan", "prune.density_tol: nan"),
    ("train.label_smoothing=nan", "train.label_smoothing: nan"),
    ("prune.width_scale=nan", "prune.width_scale: nan"),
    ("prune.width_scale=inf", "prune.width_scale: inf"),
    ("model.width_mult=nan", "model.width_mult: nan"),
    ("train.lr_milestones=[0.5,.nan]", "train.lr_milestones[1]: nan"),
    ("train.seed=99999999999999", "train.seed: 99999999999999 is above the maximum 4294967295"),
    ("data.seed=99999999999999", "data.seed: 99999999999999 is above the maximum 4294967295"),
    ("model.widths=[100000000]", "model.widths: 100000000 is above the maximum 8192"),
    ("data.crop_padding=100000000", "data.crop_padding: 100000000 is above the maximum 64"),
    ("data.num_classes=100000000", "data.num_classes: 100000000 is above the maximum 1000"),
], ids=lambda v: v if "=" in v else "")
def test_non_finite_and_huge_config_values_are_refused(capsys, setting, needle):
    assert_one_line(*cli(capsys, "config", "--set", setting), needle)


def test_widths_times_width_mult_are_bounded_together(capsys):
    widths = "model.widths=[8192,64,128,128,256,256,256,256]"
    assert_one_line(*cli(capsys, "config", "--set", "model.name=vgg11", "--set", widths, "--set", "model.width_mult=2"),
                    "the widest layer would have 16384 channels, above the maximum 8192")


def test_nan_in_a_config_file_is_refused_before_training(tmp_path, capsys):
    config = tmp_path / "nan.yaml"
    config.write_text("train:\n  epochs: 2\n  lr: .nan\n")
    out = tmp_path / "out"
    assert_one_line(*cli(capsys, "train", "--config", str(config), *SMALL, "--out", str(out)),
                    "train.lr: nan is not a finite number")
    assert not out.exists()


def study_file(tmp_path: Path, change) -> Path:
    """The shipped synthetic preset (its base inline) with ``change(raw)`` applied, written to ``tmp_path``."""
    raw = yaml.safe_load((ROOT / "configs/study/synthetic-vgg11.yaml").read_text())
    change(raw)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False).replace("'.nan'", ".nan").replace("'.inf'", ".inf"))
    return path


def _set(section: str, key: str, value):
    def change(raw):
        target = raw
        for part in section.split("/"):
            target = target[part]
        target[key] = value
    return change


@pytest.mark.parametrize(("change", "flags", "needle"), [
    (_set("space/prune.width_scale", "low", ".nan"), [], "space: prune.width_scale: low: nan is not a finite number"),
    (_set("space/prune.width_scale", "high", ".inf"), [], "space: prune.width_scale: high: inf is not a finite number"),
    (_set("space/prune.width_scale", "step", ".nan"), [], "space: prune.width_scale: step: nan"),
    (_set("stopper", "margin", ".nan"), [], "stopper.margin: nan is not a finite number"),
    (_set("stopper", "check_at", [".nan"]), [], "stopper.check_at: nan is not a finite number"),
    (_set("constraints", "max_accuracy_drop", ".nan"), [], "constraints.max_accuracy_drop: nan"),
    (_set("sampler", "seed", 99999999999999), [], "sampler.seed: 99999999999999 is above the maximum 4294967295"),
    (lambda raw: None, ["--seed", "99999999999999"], "sampler.seed: 99999999999999 is above the maximum"),
    (lambda raw: None, ["--set", "stopper.margin=.inf"], "stopper.margin: inf is not a finite number"),
    (lambda raw: None, ["--set", "train.lr=1e309"], "train.lr: inf is not a finite number"),
], ids=["low-nan", "high-inf", "step-nan", "stopper-margin", "stopper-check_at", "constraint", "sampler-seed",
        "SEED", "set-stopper", "set-lr"])
def test_non_finite_and_huge_study_values_are_refused_before_any_write(tmp_path, capsys, change, flags, needle):
    runs = tmp_path / "runs"
    code, err = cli(capsys, "study", "--config", str(study_file(tmp_path, change)), "--runs-dir", str(runs),
                    "--trials", "1", "--epochs", "3", "--no-progress", *flags)
    assert_one_line(code, err, needle)
    assert not runs.exists()  # no store, no empty study


@pytest.mark.parametrize(("change", "flags", "value"), [
    (_set("sampler", "population_size", 1), [], "1"),
    (_set("sampler", "name", "nsga2"), ["--set", "sampler.population_size=0"], "0"),
], ids=["population-file", "population-set"])
def test_a_population_size_below_2_is_refused_before_any_write(tmp_path, capsys, change, flags, value):
    runs = tmp_path / "runs"
    code, err = cli(capsys, "study", "--config", str(study_file(tmp_path, change)), "--runs-dir", str(runs),
                    "--trials", "1", "--epochs", "3", "--no-progress", *flags)
    # the value, the rule (>= 2) and the fix, with the reason
    assert_one_line(code, err, f"sampler.population_size: {value} is below the minimum 2; use 2 or more "
                               "(NSGA-II breeds pairs of parents)")
    assert not runs.exists()


# --- settings that cannot act under the chosen schedule ---------------------------------------------

def test_schedule_none_on_a_preset_with_prune_epochs_runs(tmp_path, capsys):
    # configs/smoke.yaml prunes after epochs [2, 4, 6]: with schedule none they cannot act and must not block
    out = tmp_path / "dense"
    code = main(["train", "--config", str(ROOT / "configs/smoke.yaml"), "--set", "prune.schedule=none",
                 "--set", "train.epochs=2", *SMALL, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["status"] == "completed" and summary["prune_events"] == []
    assert len(summary["epochs"]) == 2
    # under the fixed schedule the same epochs are still checked against train.epochs
    assert_one_line(*cli(capsys, "config", "--config", str(ROOT / "configs/smoke.yaml"), "--set", "train.epochs=2"),
                    "prune.epochs: epoch 2 is outside 1..1")


# --- data: damaged archives, links and images -------------------------------------------------------

def _zip(path: Path, files: dict[str, bytes], method: int) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return path


def _damage_member(path: Path, name: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of member ``name``'s stored data, ``offset`` bytes in (the zip's index stays intact)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # after the local header
    raw = bytearray(path.read_bytes())
    raw[start + offset:start + offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _animated_gif(seed: int) -> bytes:
    frames = [Image.fromarray(np.full((32, 32, 3), (seed * 40 + i * 80) % 255, dtype=np.uint8)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


MEMBER = "train/cat/0001.png"


def _bad_crc(tmp_path: Path) -> tuple[Path, list[str]]:
    path = _zip(tmp_path / "bad-crc.zip", folder_files(side=32), zipfile.ZIP_STORED)
    _damage_member(path, MEMBER, 60, b"\xff\x00\xff")  # stored bytes changed: the CRC-32 no longer matches
    return path, [f"cannot read '{MEMBER}' from the zip '{path}' (BadZipFile: Bad CRC-32", "the zip is damaged"]


def _bad_deflate(tmp_path: Path) -> tuple[Path, list[str]]:
    path = _zip(tmp_path / "bad-deflate.zip", folder_files(side=32), zipfile.ZIP_DEFLATED)
    _damage_member(path, MEMBER, 0, b"\xff" * 6)  # block type 3 does not exist in deflate
    return path, [f"cannot read '{MEMBER}' from the zip '{path}' (zlib.error: ", "the zip is damaged"]


def _dangling_link(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "images"
    write_files(root, folder_files(side=32))
    (root / "train/cat/0009.png").symlink_to(tmp_path / "gone.png")
    return root, [f"'{root / 'train/cat/0009.png'}' is a symbolic link to '{tmp_path / 'gone.png'}', which does "
                  "not exist; fix the link or delete it"]


def _animated_gifs(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "gifs"
    write_files(root, {f"{split}/{cls}/{i}.gif": _animated_gif(i) for split in ("train", "val") for cls in ("a", "b")
                       for i in range(2)})
    return root, [f"'train/a/0.gif' in '{root}' is an animation of 3 frames, not a still image"]


@pytest.mark.parametrize("make", [_bad_crc, _bad_deflate, _dangling_link, _animated_gifs],
                         ids=["zip-bad-crc", "zip-bad-deflate", "dangling-symlink", "animated-gifs"])
def test_damaged_image_data_is_one_line(tmp_path, capsys, make):
    root, needles = make(tmp_path)
    assert_one_line(*cli(capsys, "train", "--set", "data.name=imagefolder", "--set", f"data.root={root}",
                         "--set", f"data.cache_dir={tmp_path / 'cache'}", *NET, "--out", str(tmp_path / "o")),
                    *needles)


def test_a_sound_zip_of_the_same_images_loads(tmp_path, capsys):
    # the same builder without the damage trains: the errors above are about the damage, not the layout
    path = _zip(tmp_path / "good.zip", folder_files(side=32), zipfile.ZIP_DEFLATED)
    code = main(["train", "--set", "data.name=imagefolder", "--set", f"data.root={path}", "--set", "train.epochs=1",
                 "--set", "prune.schedule=none", "--set", f"data.cache_dir={tmp_path / 'cache'}", *NET,
                 "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err


# --- config files ----------------------------------------------------------------------------------

def test_config_file_that_is_not_utf8(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("# réglages\ntrain:\n  epochs: 2\n".encode("latin-1"))
    assert_one_line(*cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "o")),
                    f"config file '{config}' is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8")


def test_config_file_that_cannot_be_read(tmp_path):
    config = tmp_path / "secret.yaml"
    config.write_text("train:\n  epochs: 2\n")
    config.chmod(0)
    proc = run("train", "--config", str(config), "--out", str(tmp_path / "o"), preexec_fn=as_ordinary_user())
    assert_one_line(proc.returncode, proc.stderr, f"config file '{config}' cannot be read (Permission denied)",
                    "chmod u+r")


# --- output folders that are files ---------------------------------------------------------------------

def test_out_and_runs_dir_naming_an_existing_file(tmp_path, capsys, tiny):
    file = tmp_path / "a-file"
    file.write_text("keep me")
    cases = [
        (["train", *SMALL, "--out", str(file)], "--out (OUT=)"),
        (["study", "--runs-dir", str(file), "--trials", "1", "--epochs", "3"], "--runs-dir (RUNS_DIR=)"),
        (["worker", "--runs-dir", str(file), "--study", NAME], "--runs-dir (RUNS_DIR=)"),
        (["mlflow-server", "--runs-dir", str(file)], "--runs-dir (RUNS_DIR=)"),
        (["report", "--runs-dir", str(tiny.runs), "--no-log", "--out", str(file)], "--out"),
        (["pick", "--runs-dir", str(tiny.runs), "--trial", str(tiny.pruned), "--out", str(file)], "--out (OUT=)"),
    ]
    for argv, flag in cases:
        assert_one_line(*cli(capsys, *argv), f"{flag}: '{file}' is a file, not a folder")
    assert file.read_text() == "keep me"
    below = tmp_path / "a-file" / "sub"
    assert_one_line(*cli(capsys, "train", *SMALL, "--out", str(below)), f"cannot be created: '{file}' is a file")


# --- ports -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "port", "flag"), [("ui", "99999", "--port (PORT=)"),
                                                       ("mlflow-server", "0", "--port (MLFLOW_PORT=)")])
def test_a_port_outside_1_to_65535_is_refused_at_once(tmp_path, tiny, command, port, flag):
    # a subprocess with a timeout: the old code printed a traceback, then hung
    proc = run(command, "--runs-dir", str(tiny.runs), "--port", port, timeout=120)
    assert_one_line(proc.returncode, proc.stderr, f"{flag}: {port} is not a TCP port; use a number from 1 to 65535")


# --- damaged stores and records ------------------------------------------------------------------------

def copy_runs(tiny, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(tiny.runs, runs)
    return runs


def tiny_config(tiny) -> Path:
    return tiny.runs.parent / "tiny.yaml"  # the study file the shared study was made from


def test_page_level_corruption_of_optuna_db(tmp_path, capsys, tiny):
    runs = copy_runs(tiny, tmp_path)
    db = runs / "optuna.db"
    with open(db, "r+b") as f:  # overwrite one whole page inside the file (pages are 4096 bytes)
        f.seek(4096 * 3)
        f.write(bytes(range(256)) * 16)
    before = digest(db, runs / "mlflow.db")
    for argv in (["report", "--runs-dir", str(runs), "--no-log", "--out", str(tmp_path / "r")],
                 ["study", "--config", str(tiny_config(tiny)), "--name", NAME, "--runs-dir", str(runs),
                  "--trials", "9", "--no-progress"],
                 ["worker", "--study", NAME, "--runs-dir", str(runs)],
                 ["pick", "--runs-dir", str(runs), "--trial", str(tiny.pruned)]):
        assert_one_line(*cli(capsys, *argv), f"the Optuna storage {db} is damaged (SQLite: ",
                        "restore it from a backup")
    assert digest(db, runs / "mlflow.db") == before
    assert not (tmp_path / "r").exists()


def test_truncated_mlflow_db(tmp_path, capsys, tiny):
    runs = copy_runs(tiny, tmp_path)
    db = runs / "mlflow.db"
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    before = digest(runs / "optuna.db", db)
    for argv in (["report", "--runs-dir", str(runs), "--out", str(tmp_path / "r")],
                 ["study", "--config", str(tiny_config(tiny)), "--name", NAME, "--runs-dir", str(runs),
                  "--trials", "9", "--no-progress"],
                 ["pick", "--runs-dir", str(runs), "--trial", str(tiny.pruned)],
                 ["ui", "--runs-dir", str(runs), "--port", "5999"]):
        assert_one_line(*cli(capsys, *argv), f"the MLflow store {db} is damaged (SQLite: ")
    assert digest(runs / "optuna.db", db) == before  # the study was not touched: no target, no baseline
    assert not (tmp_path / "r").exists()


def _cut_short(whole: bytes) -> bytes:
    return whole[:len(whole) // 3]


def _other_version(whole: bytes) -> bytes:
    return json.dumps({**json.loads(whole), "schema_version": 99}).encode()


def _no_epochs(whole: bytes) -> bytes:
    return json.dumps({k: v for k, v in json.loads(whole).items() if k != "epochs"}).encode()


@pytest.mark.parametrize("damage, needles", [
    (_cut_short, (": not a JSON run summary (JSONDecodeError: ",)),
    (_other_version, (" has schema_version 99, this version reads 1",)),
    (_no_epochs, (" lacks the field 'epochs'",))])
def test_damaged_summary_json_under_report(tmp_path, capsys, tiny, damage, needles):
    """A trial's summary.json cut short, of another schema version or lacking a field: exit 2, one line naming
    the trial, the file and the fix; the report writes nothing."""
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{tiny.runs / 'optuna.db'}")
    summary = Path(study.trials[tiny.pruned].user_attrs["out_dir"]) / "summary.json"
    whole = summary.read_bytes()
    try:
        summary.write_bytes(damage(whole))
        assert_one_line(*cli(capsys, "report", "--runs-dir", str(tiny.runs), "--no-log", "--out", str(tmp_path / "r")),
                        *(f"trial {tiny.pruned}: {summary}{n}" for n in needles),
                        "restore the file from the run's MLflow artifact summary.json")
    finally:
        summary.write_bytes(whole)  # the shared study is left as it was
    assert not (tmp_path / "r").exists()


# --- a read-only runs folder ----------------------------------------------------------------------------

def _read_only(path: Path) -> None:
    for folder, _, files in os.walk(path):
        for name in files:
            p = Path(folder) / name
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    for folder, _, _ in sorted(os.walk(path), reverse=True):
        Path(folder).chmod(0o555)


def test_read_only_runs_folder_for_study_report_and_pick(tmp_path, tiny):
    runs = copy_runs(tiny, tmp_path)
    _read_only(runs)
    before = digest(runs / "optuna.db", runs / "mlflow.db")
    try:
        for argv in (["study", "--config", str(tiny_config(tiny)), "--name", NAME, "--trials", "9", "--no-progress"],
                     ["report"], ["pick", "--trial", str(tiny.pruned)]):
            proc = run(*argv, "--runs-dir", str(runs), preexec_fn=as_ordinary_user())
            assert_one_line(proc.returncode, proc.stderr, f"--runs-dir (RUNS_DIR=): cannot write in '{runs}'",
                            "read-only or permission denied")
        assert digest(runs / "optuna.db", runs / "mlflow.db") == before
        assert sorted(p.name for p in runs.iterdir()) == sorted(p.name for p in tiny.runs.iterdir())
    finally:
        for folder, _, _ in os.walk(runs):
            Path(folder).chmod(0o755)  # so that pytest can clean up


# --- the MLflow experiment opens as model training ---------------------------------------------------

def test_study_experiment_is_tagged_as_model_training(tiny):
    client = MlflowClient(tracking_uri=tracking_uri(tiny.runs))
    assert client.get_experiment_by_name(NAME).tags[KIND_TAG] == MODEL_TRAINING


def test_an_older_untagged_experiment_is_tagged_when_its_study_resumes(tmp_path):
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    exp_id = client.create_experiment("old", tags={"adprune.study": "old"})
    assert KIND_TAG not in client.get_experiment(exp_id).tags
    tracker = StudyTracker(tmp_path, "old", ("val_top1", "flops", "train_flops_cum"),
                           ("maximize", "minimize", "minimize"))
    assert tracker.experiment_id == exp_id
    assert client.get_experiment(exp_id).tags[KIND_TAG] == MODEL_TRAINING


# --- the Makefile: every variable reaches the shell as one word ---------------------------------------

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="no make on this machine")
HOSTILE = "x;touch pwned;` |&*'\"<>{}"  # every shell metacharacter but $, which make itself expands


def make(*args: str, dry: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """``make ARGS`` in the repository, with this test's virtualenv and without the install step."""
    venv = Path(sys.executable).parent.parent
    return subprocess.run([MAKE, "-C", str(ROOT), "--no-print-directory", "-o", "install", f"VENV={venv}",
                           *(["-n"] if dry else []), *args], capture_output=True, text=True, timeout=300, **kwargs)


def argv_of(dry_run: str) -> list[str]:
    """The words the shell would see in ``make -n``'s printed recipe (line continuations joined)."""
    return shlex.split(dry_run.replace("\\\n", " "))


@needs_make
@pytest.mark.parametrize(("target", "variables", "flags"), [
    ("study", ["STUDY", "DATASET", "MODEL", "TRIALS", "EPOCHS", "DATA", "SEED", "RUNS_DIR", "WORKERS", "GPUS",
               "WORKERS_PER_GPU"],
     ["--name", "--dataset", "--model", "--trials", "--epochs", "--data", "--seed", "--runs-dir", "--workers",
      "--gpus", "--workers-per-gpu"]),
    ("worker", ["STUDY", "TRIALS", "DATA", "RUNS_DIR"], ["--study", "--trials", "--data", "--runs-dir"]),
    ("train", ["CONFIG", "OUT"], ["--config", "--out"]),
    ("report", ["STUDY", "RUNS_DIR"], ["--study", "--runs-dir"]),
    ("pick", ["STUDY", "TRIAL", "OUT", "RUNS_DIR"], ["--study", "--trial", "--out", "--runs-dir"]),
    ("control", ["STUDY", "TRIAL", "RUNS_DIR"], ["--study", "--trial", "--runs-dir"]),
    ("ui", ["RUNS_DIR", "PORT"], ["--runs-dir", "--port"]),
    ("mlflow-server", ["RUNS_DIR", "HOST", "MLFLOW_PORT", "ARTIFACTS"], ["--runs-dir", "--host", "--port",
                                                                        "--artifacts"]),
])
def test_make_passes_every_variable_as_one_word(target, variables, flags):
    values = {v: f"{v.lower()} {HOSTILE}" for v in variables}
    proc = make(target, *(f"{k}={v}" for k, v in values.items()), "SET=train.lr=0.1 a.b='c d'", dry=True)
    assert proc.returncode == 0, proc.stderr
    words = argv_of(proc.stdout)
    for var, flag in zip(variables, flags, strict=True):
        assert words[words.index(flag) + 1] == values[var], (var, proc.stdout)
    if target in ("study", "worker", "train"):
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert sets == ["train.lr=0.1", "a.b='c", "d'"]  # SET splits at spaces only, each part one word


@needs_make
def test_make_study_with_a_shell_command_in_study_runs_nothing(tmp_path):
    # for real: the study command fails at once (a seed out of range) and the shell never runs `touch`
    pwned = tmp_path / "pwned"
    proc = make("study", f"STUDY=x;touch {pwned};", "SEED=99999999999999", f"RUNS_DIR={tmp_path / 'runs'}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("adprune: error: ")]
    assert errors == [errors[0]] and "sampler.seed: 99999999999999 is above the maximum" in errors[0], proc.stderr
    assert not pwned.exists() and not (tmp_path / "runs").exists()


@needs_make
def test_make_with_a_study_name_holding_a_space(tiny):
    # dry: `make study` hands the name over as one word
    words = argv_of(make("study", "STUDY=my study", dry=True).stdout)
    assert words[words.index("--name") + 1] == "my study"
    # for real: the report looks the name up as it is (the old Makefile split it: argparse's usage and exit 2)
    proc = make("report", "STUDY=my study", f"RUNS_DIR={tiny.runs}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("adprune")]
    assert proc.returncode == 2 and "usage:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert errors == [f"adprune: error: unknown study 'my study' in {tiny.runs / 'optuna.db'}; known: {NAME}"]
