"""The training loop with activation-density pruning in training.

Each epoch (1-based):
1. train on every batch (SGD; learning rate per step on the global epoch clock), while the
   ``DensityMeter`` counts non-zero activations of the same forward passes;
2. evaluate top-1 on the validation split (``val_top1``: the images held out of training with
   ``data.holdout``, else the dataset's evaluation split);
3. record the epoch: losses, accuracies, layer densities, widths, params, FLOPs, compute, time;
4. ask the policy whether to prune; if so, plan new widths and kept channels from this epoch's
   densities, detach the meter, cut a copy of the network (so the copy carries no density hooks), and
   keep the cut only if it removes at least ``prune.min_gain`` of the parameters (else pruning ends for
   the run and the meter goes back on the uncut network);
5. after a cut: rebuild the optimizer (carrying momentum for kept channels under ``inherit``, or
   re-initialising the network under ``reinit``), re-estimate the batch-norm statistics
   (``prune.bn_recalibrate``, ``adprune_core.recalibrate``; its forward passes are counted in
   ``train_flops_cum``), measure ``val_top1_after_cut`` (and, with recalibration, the same before it:
   ``bn_recalibration.val_top1_before``), attach a new meter, re-measure costs.

After the last epoch, ``test_top1`` is measured once on the dataset's evaluation split when the
validation split was held out of training (else it equals the last ``val_top1``: the same images).
Nothing in the loop, and no callback, sees it before the run ends.

Callbacks (``Callback``) see every epoch record and prune event; ``on_epoch_end`` may return a
reason string to stop the run early (status ``stopped``). A loss that is not finite ends the run
with status ``diverged``. ``summary.json`` is rewritten atomically after every epoch, so a crash
loses nothing already recorded; until the run ends its ``final.status`` is ``running`` (what a killed
run's summary keeps), and a run that Ctrl-C or an error ended says ``interrupted`` or ``failed``.

Checkpoints (``checkpoint_dir``): after every epoch, once the epoch is recorded and any prune is done
and *before* the callbacks run, the trainer writes ``adprune_core.checkpoint``'s one-file checkpoint
(network, momentum, RNG states, summary so far, pruning counters), atomically. ``resume=True``
continues from it: the finished epochs' records are taken from the checkpoint, not recomputed, the
callbacks' ``on_resume`` sees them once, and ``on_epoch_end`` sees only the new epochs. On the CPU
the resumed run ends bitwise identical to an uninterrupted one (the data order is seeded per epoch,
and the global RNG state is restored). The checkpoint is deleted when the run ends (completed,
stopped or diverged) and stays when it is interrupted or killed.

Shared prefixes (``sharing``, ``adprune_core.snapshots``): while the run has not cut, it writes a
snapshot at the epochs ``sharing.save_at`` lists, after the epoch is recorded and *before* its prune
decision; ``sharing.fork_at`` starts the run from such a snapshot: epochs 1..e are not trained, the
run makes epoch e's prune decision from the snapshot's counts and goes on (``summary["forked_from"]``).
The callbacks' ``on_fork`` sees the summary with epochs 1..e-1 once; ``on_epoch_end`` sees epoch e
onwards. A checkpoint to resume from comes first: a resumed run does not fork again.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from adprune_core import checkpoint, costs, interrupts, policy, recalibrate, snapshots
from adprune_core.config import Config, TrainConfig, config_to_dict
from adprune_core.data import DeviceLoader, ImageData, load_dataset
from adprune_core.density import ChannelCounts, DensityMeter
from adprune_core.errors import ConfigError
from adprune_core.export import save_model
from adprune_core.files import atomic_write
from adprune_core.graph import ModelGraph, analyse, prepare_model
from adprune_core.models import build_model
from adprune_core.surgery import (
    filter_l1_norms,
    prune_groups,
    reinitialize,
    restore_momentum,
    shrink_to_widths,
    stash_momentum,
)

SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
EVAL_BATCH = 512
BN_SEED_STRIDE = 1_000_003  # the BN-recalibration images of epoch e: generator seed train.seed * stride + e


class Callback(Protocol):
    """Hooks the study (or anyone) can pass to ``train``; every method is optional.

    ``on_resume(summary)`` is called once, before training continues from a checkpoint, with the
    summary so far (``epochs`` and ``prune_events`` of the finished epochs; read it, do not modify it).
    ``on_fork(summary)`` likewise, once, before a run forked from a snapshot continues: ``epochs`` holds
    epochs 1..e-1 (trained by the run that wrote the snapshot), ``forked_from`` says which; epoch e
    itself comes through ``on_epoch_end``."""

    def on_epoch_end(self, record: dict[str, Any]) -> str | None: ...

    def on_prune(self, event: dict[str, Any]) -> None: ...

    def on_resume(self, summary: dict[str, Any]) -> None: ...

    def on_fork(self, summary: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    summary: dict[str, Any]
    model: nn.Module
    out_dir: Path | None = None


@dataclass
class _State:
    """What the loop carries from epoch to epoch."""

    model: nn.Module
    forward: nn.Module  # ``model``, or its torch.compile'd wrapper (same parameters)
    graph: ModelGraph
    optimizer: torch.optim.Optimizer
    meter: DensityMeter
    params: int
    flops: int
    train_flops_per_image: int
    train_flops_cum: int = 0
    rounds: int = 0
    last_prune_epoch: int = 0
    pruning_over: bool = False
    density_history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available here; "
                          "use train.device=cpu or auto")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 under ``amp=auto`` on GPUs that support it, under ``amp=bf16`` anywhere; else None."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def uses_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """NHWC layout: ``on``, or ``auto`` on CUDA (tensor cores prefer it; CPUs gain little)."""
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def learning_rate(cfg: TrainConfig, t: float) -> float:
    """Learning rate at global training time ``t`` in epochs (0 <= t < cfg.epochs)."""
    if cfg.warmup_epochs and t < cfg.warmup_epochs:
        return cfg.lr * (t + 1e-3) / cfg.warmup_epochs
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "step":
        passed = sum(1 for m in cfg.lr_milestones if t >= m * cfg.epochs)
        return cfg.lr * cfg.lr_gamma ** passed
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (t - cfg.warmup_epochs) / span))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


def train(cfg: Config, out_dir: str | Path | None = None, callbacks: Sequence[Any] = (),
          data: ImageData | None = None, init_widths: Mapping[str, int] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          width_plan: Mapping[int, Mapping[str, int]] | None = None,
          sharing: snapshots.Sharing | None = None) -> TrainResult:
    """Train ``cfg``'s network with density pruning; write ``summary.json`` and the network to
    ``out_dir`` when given. ``data`` may be passed to reuse an already loaded dataset.

    ``init_widths`` (group -> channels, as in a saved network's ``model.json``) starts training from
    that smaller architecture, freshly initialised: the "scratch" control of a pruned network.
    ``params_dense``/``flops_dense`` still describe the dense network of ``cfg.model``.

    ``width_plan`` (epoch -> group -> channels) replays another run's widths: at each of its epochs the
    groups are cut to exactly those widths, whichever rule ``prune.width_rule`` names, while
    ``prune.select`` still chooses *which* channels stay (the "same widths, random channels" control).
    It needs ``prune.schedule=fixed`` with ``prune.epochs`` = the plan's epochs (a ``ConfigError`` otherwise).

    ``checkpoint_dir``: write a checkpoint there after every epoch (see the module docstring).
    ``resume``: continue from the checkpoint there if there is one (the summary then says
    ``resumed_from_epoch``); a checkpoint of another config is a ``ConfigError``. Without ``resume``
    an old checkpoint in ``checkpoint_dir`` is deleted first.

    ``sharing``: write and fork from epoch snapshots (see the module docstring and ``snapshots.Sharing``);
    a fork that is not possible (no snapshot, another prefix) trains from scratch and says why in
    ``summary["fork_skipped"]``."""
    device = resolve_device(cfg.train.device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    saved = checkpoint.load_checkpoint(ckpt_dir) if ckpt_dir is not None and resume else None
    if saved is not None and ckpt_dir is not None:
        mismatch = checkpoint.config_mismatch(saved.state["summary"]["config"], config_to_dict(cfg))
        if mismatch:
            raise ConfigError(f"checkpoint {checkpoint.checkpoint_path(ckpt_dir)} was written for another config "
                              f"({'; '.join(mismatch[:5])}); resume with the same config, or train without resume")
    elif ckpt_dir is not None:
        checkpoint.remove_checkpoint(ckpt_dir)  # a fresh run never leaves an older run's checkpoint to resume
    plan = _check_width_plan(cfg, width_plan)
    data = data or load_dataset(cfg.data)
    if sharing is not None and init_widths:
        raise ValueError("a run that starts from init_widths shares no prefix with anyone: pass no sharing")
    fork, fork_skipped = None, None
    if sharing is not None and sharing.fork_at is not None and saved is None:
        fork, fork_skipped = snapshots.open_fork(sharing.store, cfg, data, sharing.fork_at)
    torch.manual_seed(cfg.train.seed)
    amp_dtype = autocast_dtype(cfg.train, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark

    model = prepare_model(build_model(cfg.model, data.num_classes, data.image_shape)).to(device)
    example = torch.zeros(1, *data.image_shape, device=device)
    dense = {"params": costs.count_params(model), "flops": costs.inference_flops(model, data.image_shape)}
    start = saved or (fork.saved if fork is not None else None)
    if start is not None:  # the checkpointed (or snapshot's) network: build -> cut to its widths -> its weights
        shrink_to_widths(model, start.group_widths, example)
        model.load_state_dict(start.model_state, strict=True)
    elif init_widths:
        shrink_to_widths(model, init_widths, example)
        reinitialize(model)
    state = _new_state(model, cfg, data, example, optimizer=None)
    layout = torch.channels_last if uses_channels_last(cfg.train, device) else torch.contiguous_format
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=cfg.train.batch_size,
                          device=device, mean=data.mean, std=data.std, train=True,
                          augment=cfg.data.augment, crop_padding=cfg.data.crop_padding,
                          seed=cfg.train.seed, memory_format=layout)
    val_loader = DeviceLoader(data.val_images, data.val_labels, batch_size=EVAL_BATCH, device=device,
                              mean=data.mean, std=data.std, train=False, memory_format=layout)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} exceeds the {loader.num_samples} "
                          "training images; use a smaller batch")

    summary: dict[str, Any] = {"config": config_to_dict(cfg), "dataset": _describe(data),
                               "device": str(device), "init_widths": dict(init_widths or {}),
                               "epochs": [], "prune_events": [], "final": {}}
    if fork_skipped:
        summary["fork_skipped"] = fork_skipped
    if plan:
        summary["width_plan"] = {str(e): dict(w) for e, w in plan.items()}
    with interrupts.deferred():  # Ctrl-C stops after a step, never inside a checkpoint or a callback
        status, stop_reason = "completed", None
        if saved is not None:
            status = _resume(state, saved, summary, loader)
            for cb in callbacks:
                if hasattr(cb, "on_resume"):
                    cb.on_resume(summary)
        elif fork is not None:
            _fork(state, fork, summary, loader)
            for cb in callbacks:
                if hasattr(cb, "on_fork"):
                    cb.on_fork(summary)
        first = len(summary["epochs"]) + 1
        bar = tqdm(total=cfg.train.epochs * len(loader), initial=(first - 1) * len(loader), unit="step",
                   dynamic_ncols=True, disable=not cfg.train.progress, desc=f"{cfg.model.name} on {data.name}")
        try:
            for epoch in range(first, cfg.train.epochs + 1):
                if status != "completed":
                    break
                started = time.perf_counter()
                if fork is not None and epoch == fork.epoch:  # trained by the snapshot's run; the decision is ours
                    record, counts = fork.record, fork.counts
                    started -= record["seconds"]
                else:
                    record, counts = _epoch(state, loader, val_loader, cfg.train, epoch, amp_dtype, bar, started)
                    if sharing is not None:  # before the prune decision, so that a fork makes its own
                        _snapshot(sharing, cfg, data, state, summary, record, counts)
                train_loss, val_top1, densities = record["train_loss"], record["val_top1"], record["densities"]
                if not math.isfinite(train_loss):
                    status = "diverged"
                elif _prune_decision_due(cfg, state, epoch):
                    state, event = _prune(state, cfg, data, counts, densities, epoch, example,
                                          _Cut(val_loader, amp_dtype, plan.get(epoch)))
                    if event is not None:
                        summary["prune_events"].append(event)
                        for cb in callbacks:
                            if hasattr(cb, "on_prune"):
                                cb.on_prune(event)
                record["seconds"] = time.perf_counter() - started
                summary["epochs"].append(record)
                if ckpt_dir is not None:  # before the callbacks: a callback that raises finds this epoch saved
                    summary["final"] = _final(status, record, state, dense, None)
                    _save_checkpoint(ckpt_dir, state, summary, status)
                bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_top1:.3f}",
                                params=f"{state.params / 1e6:.2f}M", refresh=False)
                _log(bar, cfg, record, summary["prune_events"])
                for cb in callbacks:
                    reason = cb.on_epoch_end(record) if hasattr(cb, "on_epoch_end") else None
                    if reason and status == "completed":
                        status, stop_reason = "stopped", str(reason)
                summary["final"] = _final(status, record, state, dense, stop_reason)
                if out is not None:  # "running" until the network is saved and the run's status written
                    write_json(out / SUMMARY_FILE, _with_status(summary, "running"))
        except BaseException as exc:  # Ctrl-C or an error: the summary must not say the run is still going
            if out is not None and summary["epochs"]:
                write_json(out / SUMMARY_FILE,
                           _with_status(summary, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"))
            raise
        finally:
            bar.close()
            state.meter.remove()

        if summary["final"].get("status") in ("completed", "stopped"):
            summary["final"]["test_top1"] = _test_top1(state, data, summary["final"], amp_dtype, layout)
        if out is not None:
            save_model(out / MODEL_DIR, state.model, model_cfg=cfg.model, num_classes=data.num_classes,
                       image_shape=data.image_shape, group_widths=state.graph.group_widths(),
                       history=[{"epoch": e["epoch"], "kept_idxs": e["kept_idxs"]} for e in summary["prune_events"]],
                       metadata={"final": summary["final"]})
            write_json(out / SUMMARY_FILE, summary)
        if ckpt_dir is not None:
            checkpoint.remove_checkpoint(ckpt_dir)  # the run is over: model/ and summary.json hold what is left
    return TrainResult(summary, state.model, out)


def _epoch(state: _State, loader: DeviceLoader, val_loader: DeviceLoader, cfg: TrainConfig, epoch: int,
           amp_dtype: torch.dtype | None, bar: tqdm, started: float) -> tuple[dict[str, Any], dict[str, ChannelCounts]]:
    """Train and evaluate epoch ``epoch``; (its record, its per-channel counts). Updates ``state``'s
    density history and compute."""
    train_loss, train_top1 = _train_epoch(state, loader, cfg, epoch, amp_dtype, bar)
    val_top1 = evaluate(state.forward, val_loader, amp_dtype)
    counts = state.meter.read()
    densities = _layer_densities(state.graph, counts)
    state.density_history.append(densities)
    state.train_flops_cum += state.train_flops_per_image * loader.num_samples
    record = {"epoch": epoch, "lr": learning_rate(cfg, epoch - 1),
              "train_loss": train_loss, "train_top1": train_top1, "val_top1": val_top1,
              "densities": densities, "widths": state.graph.widths(), "params": state.params,
              "flops": state.flops, "train_flops_cum": state.train_flops_cum,
              "seconds": time.perf_counter() - started}
    return record, counts


def _snapshot(sharing: snapshots.Sharing, cfg: Config, data: ImageData, state: _State, summary: dict[str, Any],
              record: dict[str, Any], counts: dict[str, ChannelCounts]) -> None:
    """Write this epoch's snapshot when ``sharing`` asks for it and the run has not cut (nor diverged)."""
    if record["epoch"] not in sharing.save_at or summary["prune_events"] or not math.isfinite(record["train_loss"]):
        return
    written, skipped = snapshots.save_snapshot(
        sharing, cfg, data, model=state.model, optimizer=state.optimizer, group_widths=state.graph.group_widths(),
        epochs=summary["epochs"], record=record, counts=counts, density_history=state.density_history,
        train_flops_cum=state.train_flops_cum)
    if written:
        summary.setdefault("snapshots_written", []).append(record["epoch"])
    if skipped:
        summary["snapshot_skipped"] = skipped


def _fork(state: _State, fork: snapshots.Fork, summary: dict[str, Any], loader: DeviceLoader) -> None:
    """Carry the snapshot's momentum, records, density history, compute and RNG states into this run (in
    place); the loop then takes epoch e's record and counts from it."""
    state.train_flops_cum, state.density_history = fork.train_flops_cum, fork.density_history
    summary["epochs"], summary["forked_from"] = fork.epochs, fork.provenance()
    loader.set_epoch(fork.epoch)  # epoch e + 1 (1-based) draws the loader's 0-based epoch e
    fork.restore(state.model, state.optimizer)


def _save_checkpoint(directory: Path, state: _State, summary: dict[str, Any], status: str) -> None:
    checkpoint.save_checkpoint(
        directory, model=state.model, optimizer=state.optimizer, epoch=summary["epochs"][-1]["epoch"],
        group_widths=state.graph.group_widths(),
        state={"status": status, "summary": summary, "train_flops_cum": state.train_flops_cum,
               "rounds": state.rounds, "last_prune_epoch": state.last_prune_epoch,
               "pruning_over": state.pruning_over, "density_history": state.density_history})


def _resume(state: _State, saved: checkpoint.Checkpoint, summary: dict[str, Any], loader: DeviceLoader) -> str:
    """Carry the checkpoint's momentum, counters, records and RNG states into this run (in place);
    returns the status the run had at the checkpoint (``completed`` when it should go on)."""
    checkpoint.restore_momentum_buffers(state.model, state.optimizer, saved.momentum)
    s = saved.state
    state.train_flops_cum, state.rounds = int(s["train_flops_cum"]), int(s["rounds"])
    state.last_prune_epoch, state.pruning_over = int(s["last_prune_epoch"]), bool(s["pruning_over"])
    state.density_history = list(s["density_history"])
    for key in ("epochs", "prune_events", "final", "forked_from"):
        if key in s["summary"]:
            summary[key] = s["summary"][key]
    summary["resumed_from_epoch"] = saved.epoch
    loader.set_epoch(saved.epoch)  # epoch e (1-based) draws the loader's 0-based epoch e - 1
    checkpoint.restore_rng_states(saved.rng)
    return str(s["status"])


def _new_state(model: nn.Module, cfg: Config, data: ImageData, example: torch.Tensor,
               optimizer: torch.optim.Optimizer | None, base: _State | None = None) -> _State:
    """Analyse the (possibly just cut) network and measure its costs; reuse ``base``'s counters."""
    graph = analyse(model, example)
    if uses_channels_last(cfg.train, example.device):
        model.to(memory_format=torch.channels_last)  # in place: the optimizer's parameters stay the same objects
    forward = model
    if cfg.train.compile:
        torch._dynamo.reset()  # drop the previous architecture's compiled graphs and their memory
        forward = cast(nn.Module, torch.compile(model))  # compiling a module gives a module (OptimizedModule)
    state = _State(model=model, forward=forward, graph=graph,
                   optimizer=optimizer or build_optimizer(model, cfg.train),
                   meter=DensityMeter(model, graph.activations), params=costs.count_params(model),
                   flops=costs.inference_flops(model, data.image_shape),
                   train_flops_per_image=costs.training_flops(model, data.image_shape))
    if base is not None:
        state.train_flops_cum, state.rounds = base.train_flops_cum, base.rounds
        state.last_prune_epoch, state.density_history = base.last_prune_epoch, base.density_history
    return state


def _train_epoch(state: _State, loader: DeviceLoader, cfg: TrainConfig, epoch: int,
                 amp_dtype: torch.dtype | None, bar: tqdm) -> tuple[float, float]:
    """One pass over the training set; returns (mean loss, top-1). One host sync, at the end."""
    model, forward, optimizer = state.model, state.forward, state.optimizer
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    steps = len(loader)
    model.train()
    state.meter.reset()
    state.meter.active = True
    try:
        for step, (x, y) in enumerate(loader):
            lr = learning_rate(cfg, epoch - 1 + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = forward(x)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            bar.update(1)
            interrupts.check()
    finally:
        state.meter.active = False
    n = loader.num_samples if not getattr(loader, "drop_last", False) else steps * cfg.batch_size
    return float(loss_sum) / n, int(correct) / n


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (a fraction) of ``model`` in eval mode over ``loader``, whose batches are fed as they
    come: an NHWC network wants a loader with ``memory_format=torch.channels_last``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            correct += (model(x).argmax(1) == y).sum()
    model.train(was_training)
    return int(correct) / max(loader.num_samples, 1)


def _layer_densities(graph: ModelGraph, counts: dict[str, ChannelCounts]) -> dict[str, float]:
    """Prunable layer -> density of the activation its output reaches."""
    return {layer: counts[graph.layer_activation[layer]].layer_density
            for g in graph.groups for layer in g.layers if graph.layer_activation.get(layer) in counts}


def _prune_decision_due(cfg: Config, state: _State, epoch: int) -> bool:
    return not state.pruning_over and policy.should_prune(
        cfg.prune, epoch, cfg.train.epochs, state.density_history, state.last_prune_epoch, state.rounds)


def plan_cut(state: _State, cfg: Config, counts: dict[str, ChannelCounts], epoch: int,
             widths: Mapping[str, int] | None = None) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """(group -> kept channel indices, group -> what decided its width), from this epoch's counts
    (policy decisions only). ``widths`` (group -> channels) overrides the width rule for those groups.

    The decision record per group: ``density`` (the group density, ``prune.group_density``),
    ``width_before``, and under ``width_rule=threshold`` ``at_threshold`` (its channels whose density is
    at least ``prune.channel_threshold``), from which ``policy.new_width`` / ``policy.threshold_width``
    recompute the width (``prune.channel_density_min`` may then cut below it)."""
    p = cfg.prune
    plan, decisions = {}, {}
    for i, g in enumerate(state.graph.groups):
        group_counts = [counts[a] for a in g.activations if a in counts]
        if not group_counts:
            continue
        density, per_channel = policy.combine_counts(group_counts, p.group_density)
        decision: dict[str, Any] = {"density": density, "width_before": g.width}
        if widths is not None and g.name in widths:
            keep = min(g.width, widths[g.name])
            decision["planned_width"] = widths[g.name]
        elif p.width_rule == "threshold":
            keep = policy.threshold_width(per_channel, p.channel_threshold, min_channels=p.min_channels,
                                          round_to=p.round_to)
            decision["at_threshold"] = policy.channels_at_threshold(per_channel, p.channel_threshold)
        else:
            keep = policy.new_width(density, g.width, width_scale=p.width_scale,
                                    min_channels=p.min_channels, round_to=p.round_to)
        l1 = filter_l1_norms(state.model, g.name) if p.select == "l1" else []
        scores = policy.channel_scores(p.select, per_channel, l1, seed=cfg.train.seed * 100_003 + epoch * 1_009 + i)
        plan[g.name] = policy.select_channels(scores, keep, channel_densities=per_channel,
                                              density_min=p.channel_density_min,
                                              min_channels=p.min_channels, round_to=p.round_to)
        decisions[g.name] = decision
    return plan, decisions


@dataclass(frozen=True)
class _Cut:
    """What a cut needs besides the state: the validation loader (``val_top1_after_cut``), the autocast
    dtype, and the widths to replay at this epoch (``train(width_plan=...)``), if any."""

    val_loader: DeviceLoader
    amp_dtype: torch.dtype | None
    widths: Mapping[str, int] | None = None


def _prune(state: _State, cfg: Config, data: ImageData, counts: dict[str, ChannelCounts],
           densities: dict[str, float], epoch: int, example: torch.Tensor,
           cut: _Cut) -> tuple[_State, dict[str, Any] | None]:
    """Cut the network per the plan if it pays: (the new state, the prune event). When it does not pay,
    (``state`` marked ``pruning_over``, None)."""
    plan, decisions = plan_cut(state, cfg, counts, epoch, cut.widths)
    state.meter.remove()  # before the copy: a deep copy would carry the meter's hooks along
    candidate = copy.deepcopy(state.model)
    if cfg.prune.transfer == "inherit":
        stash_momentum(state.model, state.optimizer, candidate)
    prune_groups(candidate, plan, example)
    params_after = costs.count_params(candidate)
    if not policy.worth_pruning(state.params, params_after, cfg.prune.min_gain):
        state.meter = DensityMeter(state.model, state.graph.activations)  # the uncut network keeps measuring
        state.pruning_over = True
        return state, None
    optimizer = build_optimizer(candidate, cfg.train)
    if cfg.prune.transfer == "inherit":
        restore_momentum(candidate, optimizer)
    else:
        for p in candidate.parameters():
            p.grad = None
        reinitialize(candidate)
    widths_before = state.graph.widths()
    params_before, flops_before = state.params, state.flops
    new = _new_state(candidate, cfg, data, example, optimizer, base=state)
    new.rounds += 1
    new.last_prune_epoch = epoch
    bn: dict[str, Any] = {"images": 0, "flops": 0}
    if cfg.prune.bn_recalibrate:
        bn["val_top1_before"] = evaluate(new.forward, cut.val_loader, cut.amp_dtype)  # the inherited statistics
        bn.update(_recalibrate(new, cfg, data, epoch, cut))
    new.train_flops_cum += bn["flops"]
    return new, {"epoch": epoch, "densities": densities, "widths_before": widths_before,
                 "widths_after": new.graph.widths(), "params_before": params_before,
                 "params_after": new.params, "flops_before": flops_before, "flops_after": new.flops,
                 "kept_idxs": plan, "groups": decisions, "bn_recalibration": bn,
                 "val_top1_after_cut": evaluate(new.forward, cut.val_loader, cut.amp_dtype)}


def _recalibrate(state: _State, cfg: Config, data: ImageData, epoch: int, cut: _Cut) -> dict[str, int]:
    """Re-estimate the cut network's batch-norm statistics on ``prune.bn_images`` training images, unaugmented,
    chosen by a generator of their own (seed ``train.seed * BN_SEED_STRIDE + epoch``: the global RNG, and so
    every later epoch, is untouched). Returns the images used and their forward FLOPs (inference FLOPs per
    image of the cut network x images), which the caller adds to ``train_flops_cum``."""
    n = len(data.train_labels)
    gen = torch.Generator().manual_seed(cfg.train.seed * BN_SEED_STRIDE + epoch)
    idx = torch.randperm(n, generator=gen)[:min(cfg.prune.bn_images, n)].sort().values
    loader = DeviceLoader(data.train_images[idx], data.train_labels[idx], batch_size=cfg.train.batch_size,
                          device=cut.val_loader.device, mean=data.mean, std=data.std, train=False,
                          memory_format=cut.val_loader.memory_format)
    images = recalibrate.recalibrate_batchnorm(state.model, loader, cut.amp_dtype)
    return {"images": images, "flops": images * state.flops}


def _test_top1(state: _State, data: ImageData, final: Mapping[str, Any], amp_dtype: torch.dtype | None,
               layout: torch.memory_format) -> float:
    """Top-1 of the final network on the dataset's evaluation split: measured here when the validation split
    was held out of training, else the last ``val_top1`` (the same images, the same network)."""
    if not data.held_out or data.test_images is None or data.test_labels is None:
        return float(final["val_top1"])
    device = next(state.model.parameters()).device
    loader = DeviceLoader(data.test_images, data.test_labels, batch_size=EVAL_BATCH, device=device,
                          mean=data.mean, std=data.std, train=False, memory_format=layout)
    return evaluate(state.forward, loader, amp_dtype)


def _check_width_plan(cfg: Config, plan: Mapping[int, Mapping[str, int]] | None) -> dict[int, Mapping[str, int]]:
    """``plan`` with int epochs, or {} without one; ConfigError unless the fixed schedule prunes exactly then."""
    if not plan:
        return {}
    epochs = sorted(int(e) for e in plan)
    if cfg.prune.schedule != "fixed" or list(cfg.prune.epochs) != epochs:
        raise ConfigError(f"width_plan: replaying widths at epochs {epochs} needs prune.schedule=fixed and "
                          f"prune.epochs={epochs} (got {cfg.prune.schedule}, {list(cfg.prune.epochs)}); set them so")
    return {int(e): w for e, w in plan.items()}


def _final(status: str, record: dict[str, Any], state: _State, dense: dict[str, int],
           stop_reason: str | None) -> dict[str, Any]:
    final = {"status": status, "epochs_run": record["epoch"], "val_top1": record["val_top1"],
             "params": state.params, "flops": state.flops, "train_flops_cum": state.train_flops_cum,
             "params_dense": dense["params"], "flops_dense": dense["flops"],
             "compression_params": dense["params"] / max(state.params, 1),
             "compression_flops": dense["flops"] / max(state.flops, 1), "prune_rounds": state.rounds}
    if stop_reason:
        final["stop_reason"] = stop_reason
    return final


def _with_status(summary: dict[str, Any], status: str) -> dict[str, Any]:
    """``summary`` with ``final.status`` = ``status`` (a shallow copy; ``summary`` is not modified)."""
    return {**summary, "final": {**summary["final"], "status": status}}


def _describe(data: ImageData) -> dict[str, Any]:
    desc = {"name": data.name, "num_classes": data.num_classes, "image_shape": list(data.image_shape),
            "train_size": int(data.train_labels.shape[0]), "val_size": int(data.val_labels.shape[0]),
            "val_split": "held out of the training images" if data.held_out else "the dataset's evaluation split"}
    if data.test_labels is not None:
        desc["test_size"] = int(data.test_labels.shape[0])
    return desc


def _log(bar: tqdm, cfg: Config, record: dict[str, Any], events: list[dict[str, Any]]) -> None:
    if not cfg.train.progress:
        return
    pruned = ""
    if events and events[-1]["epoch"] == record["epoch"]:
        e = events[-1]
        pruned = (f"  pruned: params {e['params_before'] / 1e6:.2f}M -> {e['params_after'] / 1e6:.2f}M, "
                  f"val right after the cut {e['val_top1_after_cut']:.3f}")
    bar.write(f"epoch {record['epoch']:>3}/{cfg.train.epochs}  loss {record['train_loss']:.4f}  "
              f"train {record['train_top1']:.3f}  val {record['val_top1']:.3f}  "
              f"params {record['params'] / 1e6:.2f}M  flops {record['flops'] / 1e9:.3f}G  "
              f"{record['seconds']:.1f}s{pruned}")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename): readers never see a half-written file."""
    text = json.dumps(payload, indent=2, default=float)
    atomic_write(path, lambda tmp: tmp.write_text(text))
