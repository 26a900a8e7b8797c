"""Small builders shared by the tests."""

import io
import pickle
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from PIL import Image
from torch import nn

from adprune_core.callbacks import Callback
from adprune_core.config import ModelConfig, load_config
from adprune_core.graph import prepare_model
from adprune_core.models import build_model
from study.stores import Stores, sqlite_path
from study.trials import HEARTBEAT_ENV, was_run

ROOT = Path(__file__).resolve().parents[1]  # the repository (the working folder of the processes tests start)

# A tiny trainer run (synthetic data, a narrow model, on the CPU); tests add train.epochs, prune.*, ...
TRAIN_TINY = ["data.train_size=256", "data.val_size=128", "model.width_mult=0.125", "train.batch_size=64",
              "train.progress=false", "train.device=cpu"]


def tiny_config(*overrides: str):
    """The trainer's config for ``TRAIN_TINY`` plus ``overrides`` (``KEY=VALUE``)."""
    return load_config(None, [*TRAIN_TINY, *overrides])


def optuna_uri(runs) -> str:
    """The embedded Optuna storage URL of runtime folder ``runs``."""
    return Stores.resolve(runs, env={}).optuna_url


def tracking_uri(runs) -> str:
    """The embedded MLflow tracking URI of runtime folder ``runs``."""
    return Stores.resolve(runs, env={}).tracking_uri


def small_model(name: str, width_mult: float = 0.125, num_classes: int = 10, side: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return prepare_model(build_model(ModelConfig(name=name, width_mult=width_mult), num_classes, (3, side, side)))


def kill_channels(bn: nn.BatchNorm2d, channels) -> None:
    """Make BN output -10 on ``channels`` for any input, so the ReLU after it outputs exactly 0."""
    with torch.no_grad():
        for c in channels:
            bn.weight[c] = 0.0
            bn.bias[c] = -10.0


# A tiny study (synthetic data, a narrow VGG-11, 3 epochs): real trials in seconds.
EPOCHS = 3
TINY = {
    "base": {"data": {"name": "synthetic", "train_size": 256, "val_size": 128},
             "model": {"name": "vgg11", "width_mult": 0.125},
             "train": {"batch_size": 64, "lr": 0.05, "progress": False, "device": "cpu"},
             "prune": {"schedule": "saturation"}},
    "fixed": {"train.epochs": EPOCHS},
    "space": {"prune.schedule": {"type": "categorical", "choices": ["fixed", "interval"]},
              "prune.first_frac": {"type": "float", "low": 0.2, "high": 0.5},
              "prune.rounds": {"type": "int", "low": 1, "high": 2},
              "prune.width_scale": {"type": "float", "low": 0.8, "high": 1.2},
              "prune.select": {"type": "categorical", "choices": ["density", "l1", "random"]}},
    "objectives": [{"name": "val_top1", "direction": "maximize"}, {"name": "flops", "direction": "minimize"},
                   {"name": "train_flops_cum", "direction": "minimize"}],
    "sampler": {"name": "tpe", "seed": 7},
    "constraints": {"max_accuracy_drop": 1.0},
}



def trials_or_none(stores_or_url, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``name`` in an Optuna storage (``Stores`` or URL) that another process is still
    creating; [] until the study exists. Polls only read: on SQLite, Optuna is not asked to open the file
    before a read-only look finds the study in it, because opening a storage creates its file, tables and
    version rows, and doing so here would race the process that is creating them."""
    url = stores_or_url if isinstance(stores_or_url, str) else stores_or_url.optuna_url
    path = sqlite_path(url)
    if path is not None and not _sqlite_has_study(path, name):
        return []
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials()
    except Exception:  # the study process is still creating it
        return []


def _sqlite_has_study(path: Path, name: str) -> bool:
    if not path.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:  # no studies table yet, or locked: not yet
        return False


def wait_until(proc, log: Path, condition, timeout: float = 300.0, interval: float = 0.1, what: str = "the condition"):
    """Poll ``condition()`` every ``interval`` s until it returns something true, and return that. Fails,
    showing ``log`` (the output of ``proc``), when ``proc`` ends first or after ``timeout`` s (then kills it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"waiting for {what}, the process ended:\n{log.read_text()}"
        if time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError(f"waiting for {what}, gave up after {timeout} s:\n{log.read_text()}")
        time.sleep(interval)


def trial_path(runs: Path, number: int, name: str = "tiny") -> Path | None:
    """The output folder of trial ``number`` of study ``name`` under runtime folder ``runs``
    (``<runs>/studies/<name>/<key>/trial-NNNN``, the key unique per study instance); None until it exists."""
    found = sorted(Path(runs).glob(f"studies/{name}/*/trial-{number:04d}"))
    return found[-1] if found else None


def wait_healthy(proc, log: Path, url: str, timeout: float = 240.0) -> None:
    """Wait until the MLflow server ``proc`` (its output in ``log``) answers ``<url>/health``."""
    import requests

    def healthy():
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(proc, log, healthy, timeout=timeout, interval=0.5, what="the MLflow server to start")


def as_ordinary_user():
    """A ``preexec_fn`` that makes a subprocess meet file permissions as an ordinary user does, so that a
    read-only folder is read-only to it: run as root (as in a container), it drops the two capabilities that
    override permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set before ``exec``, as
    ``setpriv --bounding-set -dac_override,-dac_read_search`` would; otherwise it changes nothing."""
    import ctypes
    import os

    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


# --- builders the test files share (data files, study files and runs, interrupting runs) -----------

def encode(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    """(H, W, 3) or (H, W) uint8 -> image file bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def solid(color: tuple[int, int, int], side: int) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (side, side, 3)).copy()


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def write_cifar(root: Path, name: str, per_file: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the official python-pickle layout (bytes keys, (N, 3072) uint8 rows) with random content."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, train, test, meta = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], \
            {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per_file}
        labels_key, k = b"labels", 10
    else:
        folder, train, test, meta = "cifar-100-python", ["train"], ["test"], \
            {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
             b"coarse_label_names": [f"g{i}".encode() for i in range(20)]}
        labels_key, k = b"fine_labels", 100
    (root / folder).mkdir(parents=True)
    written = {"train_x": [], "train_y": [], "val_x": [], "val_y": []}
    for split, files in (("train", train), ("val", test)):
        for file in files:
            x = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            y = (np.arange(per_file) % k).tolist()
            entry = {b"data": x, labels_key: y, b"batch_label": file.encode(),
                     b"filenames": [f"{i}.png".encode() for i in range(per_file)]}
            (root / folder / file).write_bytes(pickle.dumps(entry, protocol=2))
            written[f"{split}_x"].append(x)
            written[f"{split}_y"] += y
    (root / folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return {key: np.concatenate(v) if key.endswith("x") else np.array(v) for key, v in written.items()}


FOLDER_COLORS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "ant": (30, 30, 200)}


def folder_files(val: str = "val", fmt: str = "PNG", side: int = 16) -> dict[str, bytes]:
    ext = "png" if fmt == "PNG" else "jpg"
    files = {}
    for cls, color in FOLDER_COLORS.items():
        for i in range(3):
            pixels = solid(color, side)
            pixels[0, 0] = i  # tell the images of a class apart
            files[f"train/{cls}/{i:04d}.{ext}"] = encode(pixels, fmt)
    for cls in ("dog", "cat"):  # val may have fewer classes than train
        files[f"{val}/{cls}/0000.{ext}"] = encode(solid(FOLDER_COLORS[cls], side), fmt)
    files["train/README.txt"] = b"not an image"
    return files


def write_study(tmp_path: Path, name="tiny.yaml", **changes) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


def study_cli(config: Path, runs: Path, trials: int, name="tiny", *extra: str) -> int:
    from adprune.cli import main

    return main(["study", "--config", str(config), "--runs-dir", str(runs), "--trials", str(trials),
                 "--name", name, "--no-progress", *extra])


def load(runs: Path, name="tiny", storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials of study ``name`` in ``storage`` (a URL; default: the embedded storage of ``runs``)."""
    return optuna.load_study(study_name=name, storage=storage or optuna_uri(runs)).get_trials()


def ran(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran: without the rare one two racing processes started when the study already held its
    target (it ends FAIL, ``fail_reason`` TARGET_HELD_REASON, with no MLflow run and no epoch trained)."""
    return [t for t in trials if was_run(t)]


def split_runs(found):
    """A study's MLflow runs as (parents, children): the study's own run(s), and its trials' runs by trial number."""
    parents = [r for r in found if r.data.tags.get("adprune.role") == "study"]
    children = sorted((r for r in found if "mlflow.parentRunId" in r.data.tags),
                      key=lambda r: int(r.data.tags["optuna.trial_number"]))
    return parents, children


def mlflow_runs(runs: Path, name="tiny"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(runs))
    exp = client.get_experiment_by_name(name)
    return client, *split_runs(client.search_runs([exp.experiment_id], max_results=100))


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


class Interrupt(Exception):
    pass


class Watcher(Callback):
    """Sees the epochs; raises at the end of epoch ``stop_at`` (after that epoch's checkpoint is written)."""

    def __init__(self, stop_at=None):
        self.stop_at, self.epochs, self.resumed = stop_at, [], None

    def on_resume(self, summary):
        self.resumed = [e.epoch for e in summary.epochs]

    def on_epoch_end(self, record):
        self.epochs.append(record.epoch)
        if record.epoch == self.stop_at:
            raise Interrupt


HEARTBEAT = {HEARTBEAT_ENV[0]: "1", HEARTBEAT_ENV[1]: "2"}
