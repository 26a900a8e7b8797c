"""Epoch snapshots, addressed by content: runs that share a prefix never train it twice.

Every trial of a study starts from the same seed and trains the same network until its first cut. A
*snapshot of epoch e* is taken after epoch e's training and evaluation and *before* its prune decision;
it holds all a run needs to make that decision itself and go on: the network and its momentum, the
random-number generators, the records of epochs 1..e-1, epoch e's record, its per-channel density
counts (the channel choice of a cut at e reads them), the density history and the training compute so
far. A run that forks from it (``train(..., sharing=Sharing(fork_at=e))``) skips epochs 1..e, decides
its own prune at e and continues; on the CPU it ends bitwise identical to the same run from scratch.

The key. A snapshot is stored under ``sha256`` of its *key payload* (``key_payload``), which names
everything that determines the computation of epochs 1..e:

- the resolved trainer config, except keys that cannot have acted before the first cut: every
  ``prune.*`` key (before a cut the policy only decides "not yet", which changes nothing; a run whose
  own schedule would have pruned before e refuses the fork, ``open_fork``), ``train.progress``,
  ``data.root``, ``data.cache_dir``, ``data.download``; ``train.device``, ``train.amp`` and
  ``train.channels_last`` are replaced by what they resolve to (below);
- the data's identity: a content hash of every tensor and field of the loaded ``ImageData``
  (``data_fingerprint``, computed once per loaded dataset), so a path, a subset or a changed file
  cannot pass for another;
- the prune events so far (epochs and kept channels, and ``prune.transfer`` once there is one);
- the arithmetic: device type (and GPU name, CUDA and cuDNN versions), CPU instruction set and thread
  count (CPU results depend on both), autocast dtype, memory layout, the torch and Torch-Pruning
  versions, and a hash of this package's source (a change to the trainer invalidates every snapshot);
- the epoch.

Two runs with the same key at epoch e trained the same thing. The trainer writes snapshots only while
it has not cut (a prefix that two trials with searched, continuous cut settings share almost never
goes past the first cut).

The store: ``<root>/<key>/checkpoint.safetensors``, the checkpoint format of ``checkpoint.py`` (one
pickle-free file, written under a temporary name and renamed: a reader never sees half a snapshot; two
processes writing the same key write the same bytes, the last rename wins). Nothing here deletes a
snapshot except ``SnapshotStore.remove_all`` (``adprune snapshots --remove``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adprune_core import checkpoint, policy
from adprune_core.config import Config, config_to_dict
from adprune_core.data import ImageData
from adprune_core.density import ChannelCounts
from adprune_core.records import EpochRecord, PruneEvent, RunSummary
from adprune_core.runtime import autocast_dtype, resolve_device, uses_channels_last

KEY_FORMAT = "adprune-snapshot-key/1"
# Keys that cannot have acted on epochs 1..e of a run that has not cut (device, amp and layout are
# replaced by what they resolve to); the whole prune section is left out too (see the module docstring).
IGNORED_KEYS = frozenset({"train.progress", "train.device", "train.amp", "train.channels_last", "data.root",
                          "data.cache_dir", "data.download"})
IGNORED_SECTIONS = ("prune",)
_PACKAGE = Path(__file__).resolve().parent


# --- the key ---------------------------------------------------------------------------------------

_DATA_FINGERPRINTS: weakref.WeakKeyDictionary[ImageData, str] = weakref.WeakKeyDictionary()


def data_fingerprint(data: ImageData) -> str:
    """sha256 of every field of ``data`` (tensors by dtype, shape and bytes; the rest by value); computed
    once per ``ImageData`` object (the tensors are read-only, see ``ImageData``)."""
    known = _DATA_FINGERPRINTS.get(data)
    if known is not None:
        return known
    h = hashlib.sha256()
    for f in dataclasses.fields(data):
        value = getattr(data, f.name)
        h.update(f.name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(value).encode())
    _DATA_FINGERPRINTS[data] = fingerprint = h.hexdigest()
    return fingerprint


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of this package's Python source (file names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def arithmetic(cfg: Config) -> dict[str, Any]:
    """What, besides the config and the data, decides the bits a run computes here."""
    device = resolve_device(cfg.train.device)
    amp = autocast_dtype(cfg.train, device)
    out: dict[str, Any] = {"device": device.type, "autocast": str(amp).replace("torch.", "") if amp else None,
                           "channels_last": uses_channels_last(cfg.train, device), "torch": torch.__version__,
                           "torch_pruning": _version("torch-pruning"), "code": code_fingerprint()}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:  # oneDNN's kernels differ by instruction set, and reductions by the number of threads
        out.update(cpu=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
    return out


def key_payload(cfg: Config, data: ImageData, epoch: int,
                prune_events: Sequence[PruneEvent] = ()) -> dict[str, Any]:
    """What determines a run's epochs 1..``epoch`` (module docstring), as plain JSON-able data."""
    flat = {f"{section}.{k}": v for section, values in config_to_dict(cfg).items() if section not in IGNORED_SECTIONS
            for k, v in values.items() if f"{section}.{k}" not in IGNORED_KEYS}
    events = [{"epoch": int(e.epoch), "kept_idxs": {g: list(map(int, idx)) for g, idx in e.kept_idxs.items()}}
              for e in prune_events]
    return {"format": KEY_FORMAT, "epoch": int(epoch), "config": flat, "data": data_fingerprint(data),
            "prune_events": events, "transfer": cfg.prune.transfer if events else None,
            "arithmetic": arithmetic(cfg)}


def key_of(payload: Mapping[str, Any]) -> str:
    """The store key of a payload: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def prefix_key(cfg: Config, data: ImageData, epoch: int) -> str:
    """The key of the snapshot of epoch ``epoch`` of a run of ``cfg`` on ``data`` that has not cut yet."""
    return key_of(key_payload(cfg, data, epoch))


# --- the store -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotInfo:
    key: str
    epoch: int
    bytes: int
    written_by: str
    written_at: float  # seconds since the epoch


class SnapshotStore:
    """A folder of snapshots, one sub-folder per key (module docstring). Safe to share between processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def directory(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return checkpoint.checkpoint_path(self.directory(key)).is_file()

    def read_state(self, key: str) -> dict[str, Any] | None:
        """The JSON part of snapshot ``key`` (its header only), or None when absent or unreadable."""
        try:
            return checkpoint.read_state(self.directory(key))
        except Exception:  # removed meanwhile, or not a snapshot: as good as absent
            return None

    def load(self, key: str) -> checkpoint.Checkpoint | None:
        return checkpoint.load_checkpoint(self.directory(key))

    def entries(self) -> list[SnapshotInfo]:
        """Every readable snapshot, oldest first."""
        out = []
        for path in self.root.glob(f"*/{checkpoint.CHECKPOINT_FILE}") if self.root.is_dir() else []:
            state = self.read_state(path.parent.name)
            if state is None or "snapshot" not in state:
                continue
            meta = state["snapshot"]
            out.append(SnapshotInfo(path.parent.name, int(state["epoch"]), _size(path), str(meta.get("written_by", "")),
                                    float(meta.get("written_at", 0.0))))
        return sorted(out, key=lambda s: (s.written_at, s.key))

    def size_bytes(self) -> int:
        """Bytes of every file under the store (temporary files of writes in progress included)."""
        return sum(_size(p) for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def remove_all(self) -> tuple[int, int]:
        """Delete every snapshot (the folder stays); returns (snapshots removed, bytes freed)."""
        entries, freed = 0, self.size_bytes()
        for child in self.root.iterdir() if self.root.is_dir() else []:
            if child.is_dir():
                entries += checkpoint.checkpoint_path(child).is_file()
                shutil.rmtree(child, ignore_errors=True)
        return entries, freed - self.size_bytes()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile
        return 0


@functools.cache
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --- what the trainer does with a store ---------------------------------------------------------------

@dataclass(frozen=True)
class Sharing:
    """How a run uses a snapshot store: ``train(..., sharing=)``.

    ``save_at``: epochs at which to write a snapshot, while the run has not cut and the store lacks it;
    ``fork_at``: start from the snapshot of that epoch when the store has one and this run may use it
    (``open_fork``), else train from scratch and say why (``summary.fork_skipped``);
    ``max_bytes``: a snapshot that would take the store past this size is not written
    (``summary.snapshot_skipped`` says so); None = no limit;
    ``written_by``: provenance recorded in the snapshots this run writes (e.g. "study 'x' trial 0")."""

    store: SnapshotStore
    save_at: frozenset[int] = frozenset()
    fork_at: int | None = None
    max_bytes: int | None = None
    written_by: str = ""


@dataclass
class Fork:
    """A snapshot a run starts from (``open_fork``)."""

    key: str
    saved: checkpoint.Checkpoint

    @property
    def epoch(self) -> int:
        return self.saved.epoch

    @property
    def epochs(self) -> tuple[EpochRecord, ...]:
        """The records of epochs 1..e-1."""
        return tuple(EpochRecord.from_dict(r) for r in self.saved.state["epochs"])

    @property
    def record(self) -> EpochRecord:
        """Epoch e's record, as measured before its prune decision (``seconds``: its training and evaluation)."""
        return EpochRecord.from_dict(self.saved.state["record"])

    @property
    def counts(self) -> dict[str, ChannelCounts]:
        return {name: ChannelCounts(tuple(c["nonzero"]), int(c["per_channel_total"]))
                for name, c in self.saved.state["counts"].items()}

    @property
    def density_history(self) -> list[dict[str, float]]:
        return [dict(d) for d in self.saved.state["density_history"]]

    @property
    def train_flops_cum(self) -> int:
        return int(self.saved.state["train_flops_cum"])

    def provenance(self) -> dict[str, Any]:
        """``summary.forked_from``: which snapshot, who wrote it, and what it saved this run (the
        training compute and wall time of epochs 1..e, as measured by the run that trained them)."""
        return {"epoch": self.epoch, "key": self.key, "written_by": self.saved.state["snapshot"].get("written_by", ""),
                "train_flops_cum": self.train_flops_cum,
                "seconds": sum(float(r["seconds"]) for r in [*self.saved.state["epochs"], self.saved.state["record"]])}

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Momentum into ``optimizer`` (the network's weights are loaded when it is built) and, last, the
        random-number generators, so that nothing the caller does afterwards draws from them twice."""
        checkpoint.restore_momentum_buffers(model, optimizer, self.saved.momentum)
        checkpoint.restore_rng_states(self.saved.rng)


def open_fork(store: SnapshotStore, cfg: Config, data: ImageData, epoch: int) -> tuple[Fork | None, str | None]:
    """The snapshot a run of ``cfg`` on ``data`` may start from at ``epoch``, or (None, why not).

    Refused: no snapshot under the run's own key (never written here, removed, or on another machine),
    one that cannot be read, one whose stored payload is not the run's (a corrupted store), and one the run
    could not have reached without pruning (its own schedule, replayed over the snapshot's density history,
    prunes before ``epoch``)."""
    payload = key_payload(cfg, data, epoch)
    key = key_of(payload)
    where = f"snapshot {key[:12]} (epoch {epoch}) in {store.root}"
    try:
        saved = store.load(key)
    except Exception as exc:  # half a file cannot be (atomic writes), but a disk can fail
        return None, f"{where} could not be read ({type(exc).__name__}: {exc}); trained from scratch"
    if saved is None:
        return None, (f"no {where} (removed, or written on another machine); trained from scratch")
    stored = saved.state.get("snapshot", {}).get("payload")
    if stored != json.loads(json.dumps(payload)):
        diff = checkpoint.config_mismatch(stored or {}, payload, ignored=frozenset())
        return None, f"{where} was written for another prefix ({'; '.join(diff[:3])}); trained from scratch"
    first = policy.first_prune_epoch(cfg.prune, cfg.train.epochs, saved.state["density_history"])
    if first is not None and first < epoch:
        return None, (f"this run's schedule prunes after epoch {first}, before the snapshot's epoch {epoch}; "
                      "trained from scratch")
    return Fork(key, saved), None


def save_snapshot(sharing: Sharing, cfg: Config, data: ImageData, *, model: nn.Module,
                  optimizer: torch.optim.Optimizer, group_widths: Mapping[str, int],
                  epochs: Sequence[EpochRecord], record: EpochRecord, counts: Mapping[str, ChannelCounts],
                  density_history: Sequence[Mapping[str, float]], train_flops_cum: int,
                  prune_events: Sequence[PruneEvent] = ()) -> tuple[bool, str | None]:
    """Write the snapshot of ``record.epoch`` (taken before its prune decision) unless the store has it;
    returns (written, why not written when the size limit stopped it). ``epochs``: records 1..e-1.
    Nothing passed is modified; the global RNG is only read."""
    epoch = record.epoch
    payload = key_payload(cfg, data, epoch, prune_events)
    key = key_of(payload)
    if sharing.store.has(key):
        return False, None
    if sharing.max_bytes is not None:
        need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        need += sum(p.numel() * p.element_size() for p in model.parameters())  # momentum, at most
        have = sharing.store.size_bytes()
        if have + need > sharing.max_bytes:
            return False, (f"snapshot of epoch {epoch} not written: the store {sharing.store.root} holds "
                           f"{have / 1e9:.3g} GB and the limit is {sharing.max_bytes / 1e9:.3g} GB (share.snapshot_gb, "
                           "--snapshot-gb); later trials train these epochs themselves. Raise the limit, or free "
                           "space with make snapshots-clean (adprune snapshots --remove)")
    state = {"snapshot": {"payload": payload, "written_by": sharing.written_by, "written_at": time.time()},
             "epochs": [r.to_dict() for r in epochs], "record": record.to_dict(),
             "counts": {n: {"nonzero": list(c.nonzero), "per_channel_total": c.per_channel_total}
                        for n, c in counts.items()},
             "density_history": list(density_history), "train_flops_cum": int(train_flops_cum)}
    checkpoint.save_checkpoint(sharing.store.directory(key), model=model, optimizer=optimizer, epoch=epoch,
                               group_widths=group_widths, state=state)
    return True, None


def snapshot_epoch(sharing: Sharing, cfg: Config, data: ImageData, summary: RunSummary, record: EpochRecord,
                   counts: Mapping[str, ChannelCounts], model: nn.Module, optimizer: torch.optim.Optimizer,
                   group_widths: Mapping[str, int], density_history: Sequence[Mapping[str, float]],
                   train_flops_cum: int) -> RunSummary:
    """The trainer's step: write epoch ``record.epoch``'s snapshot when ``sharing`` asks for it and the run
    has not cut (nor diverged); returns ``summary`` with what happened (``snapshots_written``,
    ``snapshot_skipped``). ``summary.epochs`` holds epochs 1..e-1."""
    if record.epoch not in sharing.save_at or summary.prune_events or not math.isfinite(record.train_loss):
        return summary
    written, skipped = save_snapshot(sharing, cfg, data, model=model, optimizer=optimizer, group_widths=group_widths,
                                     epochs=summary.epochs, record=record, counts=counts,
                                     density_history=density_history, train_flops_cum=train_flops_cum)
    if written:
        summary = dataclasses.replace(summary, snapshots_written=(*summary.snapshots_written, record.epoch))
    return dataclasses.replace(summary, snapshot_skipped=skipped) if skipped else summary
