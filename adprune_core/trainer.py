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

Records are typed (``adprune_core.records``); callbacks (``adprune_core.callbacks.Callback``, whose
docstring lists the hooks) see every epoch record and prune event, and ``on_epoch_end`` may stop the run
early (status ``stopped``). A loss that is not finite ends the run ``diverged``. ``summary.json`` is
rewritten atomically after every epoch (``SummaryWriter``): ``final.status`` ``running`` until the run
ends (what a killed run's file keeps), ``interrupted``/``failed`` when Ctrl-C or an error ended it.

Checkpoints (``checkpoint_dir``): after every epoch, once the epoch is recorded and any prune is done
and *before* the callbacks run, the built-in ``CheckpointWriter`` writes ``adprune_core.checkpoint``'s
one-file checkpoint (network, momentum, RNG states, summary so far, pruning counters), atomically. ``resume=True``
continues from it: the finished epochs' records are taken from the checkpoint, not recomputed, the
callbacks' ``on_resume`` sees them once, and ``on_epoch_end`` sees only the new epochs. On the CPU
the resumed run ends bitwise identical to an uninterrupted one (the data order is seeded per epoch,
and the global RNG state is restored). The checkpoint is deleted when the run ends (completed,
stopped or diverged) and stays when it is interrupted or killed.

Shared prefixes (``sharing``, ``adprune_core.snapshots``): while the run has not cut, it writes a
snapshot at the epochs ``sharing.save_at`` lists, after the epoch is recorded and *before* its prune
decision; ``sharing.fork_at`` starts the run from such a snapshot: epochs 1..e are not trained, the
run makes epoch e's prune decision from the snapshot's counts and goes on (``summary.forked_from``).
The callbacks' ``on_fork`` sees the summary with epochs 1..e-1 once; ``on_epoch_end`` sees epoch e
onwards. A checkpoint to resume from comes first: a resumed run does not fork again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import torch
from torch import nn
from tqdm.auto import tqdm

from adprune_core import checkpoint, costs, interrupts, policy, recalibrate, snapshots
from adprune_core.callbacks import Callback, CheckpointWriter, RunState, SummaryWriter
from adprune_core.config import Config, TrainConfig, config_to_dict
from adprune_core.data import DeviceLoader, ImageData, load_dataset
from adprune_core.density import ChannelCounts, DensityMeter
from adprune_core.errors import ConfigError
from adprune_core.export import save_model
from adprune_core.graph import ModelGraph, analyse, prepare_model
from adprune_core.models import build_model
from adprune_core.records import BnRecalibration, EpochRecord, FinalMetrics, PruneEvent, RunSummary
from adprune_core.runtime import (
    EVAL_BATCH,
    autocast_dtype,
    build_optimizer,
    describe_data,
    epoch_line,
    evaluate,
    learning_rate,
    resolve_device,
    test_top1,
    uses_channels_last,
)
from adprune_core.surgery import (
    filter_l1_norms,
    prune_groups,
    reinitialize,
    restore_momentum,
    shrink_to_widths,
    stash_momentum,
)

MODEL_DIR = "model"


@dataclass
class TrainResult:
    summary: RunSummary
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

    def run_state(self, status: str) -> RunState:
        return RunState(self.model, self.optimizer, self.graph.group_widths(), status, self.train_flops_cum,
                        self.rounds, self.last_prune_epoch, self.pruning_over, self.density_history)


def train(cfg: Config, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
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
    ``summary.fork_skipped``."""
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
    plan = policy.check_width_plan(cfg, width_plan)
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

    summary = RunSummary(config=config_to_dict(cfg), dataset=describe_data(data), device=str(device),
                         init_widths=dict(init_widths or {}), fork_skipped=fork_skipped,
                         width_plan={str(e): dict(w) for e, w in plan.items()} if plan else None)
    writers = ([CheckpointWriter(ckpt_dir)] if ckpt_dir is not None else []) + ([SummaryWriter(out)] if out else [])
    hooks: list[Callback] = [*writers, *callbacks]  # the writers first: a callback that raises finds the epoch saved
    with interrupts.deferred():  # Ctrl-C stops after a step, never inside a checkpoint or a callback
        status, stop_reason = "completed", None
        if saved is not None:
            status, summary = _resume(state, saved, summary, loader)
            for cb in hooks:
                cb.on_resume(summary)
        elif fork is not None:
            summary = _fork(state, fork, summary, loader)
            for cb in hooks:
                cb.on_fork(summary)
        first = len(summary.epochs) + 1
        bar = tqdm(total=cfg.train.epochs * len(loader), initial=(first - 1) * len(loader), unit="step",
                   dynamic_ncols=True, disable=not cfg.train.progress, desc=f"{cfg.model.name} on {data.name}")
        try:
            for epoch in range(first, cfg.train.epochs + 1):
                if status != "completed":
                    break
                started = time.perf_counter()
                if fork is not None and epoch == fork.epoch:  # trained by the snapshot's run; the decision is ours
                    record, counts = fork.record, fork.counts
                    started -= record.seconds
                else:
                    record, counts = _epoch(state, loader, val_loader, cfg.train, epoch, amp_dtype, bar, started)
                    if sharing is not None:  # before the prune decision, so that a fork makes its own
                        summary = snapshots.snapshot_epoch(sharing, cfg, data, summary, record, counts, state.model,
                                                           state.optimizer, state.graph.group_widths(),
                                                           state.density_history, state.train_flops_cum)
                if not math.isfinite(record.train_loss):
                    status = "diverged"
                elif not state.pruning_over and policy.should_prune(
                    cfg.prune, epoch, cfg.train.epochs, state.density_history, state.last_prune_epoch, state.rounds):
                    state, event = _prune(state, cfg, data, counts, dict(record.densities), epoch, example,
                                          _Cut(val_loader, amp_dtype, plan.get(epoch)))
                    if event is not None:
                        summary = replace(summary, prune_events=(*summary.prune_events, event))
                        for cb in hooks:
                            cb.on_prune(event)
                record = replace(record, seconds=time.perf_counter() - started)
                summary = replace(summary, epochs=(*summary.epochs, record),
                                  final=_final(status, record, state, dense, None))
                for cb in hooks:
                    cb.on_epoch_state(summary, state.run_state(status))
                bar.set_postfix(loss=f"{record.train_loss:.3f}", val=f"{record.val_top1:.3f}",
                                params=f"{state.params / 1e6:.2f}M", refresh=False)
                if cfg.train.progress:
                    bar.write(epoch_line(cfg.train.epochs, record, summary.prune_events))
                for cb in hooks:
                    reason = cb.on_epoch_end(record)
                    if reason and status == "completed":
                        status, stop_reason = "stopped", str(reason)
                summary = replace(summary, final=_final(status, record, state, dense, stop_reason))
                for cb in hooks:  # "running" until the network is saved and the run's status written
                    cb.on_summary(summary.with_status("running"))
        except BaseException as exc:  # Ctrl-C or an error: the summary must not say the run is still going
            if summary.epochs:
                for cb in hooks:
                    cb.on_summary(summary.with_status("interrupted" if isinstance(exc, KeyboardInterrupt)
                                                      else "failed"))
            raise
        finally:
            bar.close()
            state.meter.remove()

        final = summary.final
        if final is not None and final.status in ("completed", "stopped"):
            summary = replace(summary, final=replace(final, test_top1=test_top1(state.forward, data, final.val_top1,
                                                                                amp_dtype, layout)))
        if out is not None:
            save_model(out / MODEL_DIR, state.model, model_cfg=cfg.model, num_classes=data.num_classes,
                       image_shape=data.image_shape, group_widths=state.graph.group_widths(),
                       history=[{"epoch": e.epoch, "kept_idxs": dict(e.kept_idxs)} for e in summary.prune_events],
                       metadata={"final": summary.final.to_dict() if summary.final else {}})
        for cb in hooks:
            cb.on_summary(summary)
        for cb in hooks:  # the run is over: model/ and summary.json hold what is left
            cb.on_run_end(summary)
    return TrainResult(summary, state.model, out)


def _epoch(state: _State, loader: DeviceLoader, val_loader: DeviceLoader, cfg: TrainConfig, epoch: int,
           amp_dtype: torch.dtype | None, bar: tqdm, started: float) -> tuple[EpochRecord, dict[str, ChannelCounts]]:
    """Train and evaluate epoch ``epoch``; (its record, its per-channel counts). Updates ``state``'s
    density history and compute."""
    train_loss, train_top1 = _train_epoch(state, loader, cfg, epoch, amp_dtype, bar)
    val_top1 = evaluate(state.forward, val_loader, amp_dtype)
    counts = state.meter.read()
    densities = _layer_densities(state.graph, counts)
    state.density_history.append(densities)
    state.train_flops_cum += state.train_flops_per_image * loader.num_samples
    record = EpochRecord(epoch=epoch, lr=learning_rate(cfg, epoch - 1), train_loss=train_loss, train_top1=train_top1,
                         val_top1=val_top1, densities=densities, widths=state.graph.widths(), params=state.params,
                         flops=state.flops, train_flops_cum=state.train_flops_cum,
                         seconds=time.perf_counter() - started)
    return record, counts


def _fork(state: _State, fork: snapshots.Fork, summary: RunSummary, loader: DeviceLoader) -> RunSummary:
    """Carry the snapshot's momentum, records, density history, compute and RNG states into this run (in
    place); the loop then takes epoch e's record and counts from it."""
    state.train_flops_cum, state.density_history = fork.train_flops_cum, fork.density_history
    summary = replace(summary, epochs=fork.epochs, forked_from=fork.provenance())
    loader.set_epoch(fork.epoch)  # epoch e + 1 (1-based) draws the loader's 0-based epoch e
    fork.restore(state.model, state.optimizer)
    return summary


def _resume(state: _State, saved: checkpoint.Checkpoint, summary: RunSummary,
            loader: DeviceLoader) -> tuple[str, RunSummary]:
    """Carry the checkpoint's momentum, counters, records and RNG states into this run (in place); returns
    the status the run had at the checkpoint (``completed`` when it should go on) and the summary so far."""
    checkpoint.restore_momentum_buffers(state.model, state.optimizer, saved.momentum)
    s = saved.state
    state.train_flops_cum, state.rounds = int(s["train_flops_cum"]), int(s["rounds"])
    state.last_prune_epoch, state.pruning_over = int(s["last_prune_epoch"]), bool(s["pruning_over"])
    state.density_history = list(s["density_history"])
    old = RunSummary.from_dict(s["summary"], f"checkpoint {checkpoint.checkpoint_path('.')}")
    summary = replace(summary, epochs=old.epochs, prune_events=old.prune_events, final=old.final,
                      forked_from=old.forked_from, resumed_from_epoch=saved.epoch)
    loader.set_epoch(saved.epoch)  # epoch e (1-based) draws the loader's 0-based epoch e - 1
    checkpoint.restore_rng_states(saved.rng)
    return str(s["status"]), summary


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


def _layer_densities(graph: ModelGraph, counts: dict[str, ChannelCounts]) -> dict[str, float]:
    """Prunable layer -> density of the activation its output reaches."""
    return {layer: counts[graph.layer_activation[layer]].layer_density
            for g in graph.groups for layer in g.layers if graph.layer_activation.get(layer) in counts}


def _group_measures(state: _State, cfg: Config, counts: Mapping[str, ChannelCounts]) -> list[policy.GroupMeasure]:
    """Every group of the network, in order, with its measured counts (and L1 norms under ``select=l1``)."""
    out = []
    for g in state.graph.groups:
        measured = tuple(counts[a] for a in g.activations if a in counts)
        l1 = filter_l1_norms(state.model, g.name) if measured and cfg.prune.select == "l1" else []
        out.append(policy.GroupMeasure(g.name, g.width, measured, tuple(l1)))
    return out


@dataclass(frozen=True)
class _Cut:
    """What a cut needs besides the state: the validation loader (``val_top1_after_cut``), the autocast
    dtype, and the widths to replay at this epoch (``train(width_plan=...)``), if any."""

    val_loader: DeviceLoader
    amp_dtype: torch.dtype | None
    widths: Mapping[str, int] | None = None


def _prune(state: _State, cfg: Config, data: ImageData, counts: dict[str, ChannelCounts],
           densities: dict[str, float], epoch: int, example: torch.Tensor,
           cut: _Cut) -> tuple[_State, PruneEvent | None]:
    """Cut the network per the plan if it pays: (the new state, the prune event). When it does not pay,
    (``state`` marked ``pruning_over``, None)."""
    plan = policy.plan_cut(cfg.prune, _group_measures(state, cfg, counts), seed=cfg.train.seed, epoch=epoch,
                           widths=cut.widths)
    state.meter.remove()  # before the copy: a deep copy would carry the meter's hooks along
    candidate = copy.deepcopy(state.model)
    if cfg.prune.transfer == "inherit":
        stash_momentum(state.model, state.optimizer, candidate)
    prune_groups(candidate, dict(plan.kept), example)
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
    bn = BnRecalibration()
    if cfg.prune.bn_recalibrate:
        before = evaluate(new.forward, cut.val_loader, cut.amp_dtype)  # the inherited statistics
        images = recalibrate.recalibrate_after_cut(new.model, cfg, data, epoch, cut.val_loader, cut.amp_dtype)
        bn = BnRecalibration(images, images * new.flops, before)
    new.train_flops_cum += bn.flops
    return new, PruneEvent(epoch=epoch, densities=densities, widths_before=widths_before,
                           widths_after=new.graph.widths(), params_before=params_before, params_after=new.params,
                           flops_before=flops_before, flops_after=new.flops, kept_idxs=plan.kept,
                           groups=plan.decisions, bn_recalibration=bn,
                           val_top1_after_cut=evaluate(new.forward, cut.val_loader, cut.amp_dtype))


def _final(status: str, record: EpochRecord, state: _State, dense: dict[str, int],
           stop_reason: str | None) -> FinalMetrics:
    return FinalMetrics(status=status, epochs_run=record.epoch, val_top1=record.val_top1, params=state.params,
                        flops=state.flops, train_flops_cum=state.train_flops_cum, params_dense=dense["params"],
                        flops_dense=dense["flops"], prune_rounds=state.rounds, stop_reason=stop_reason or None)
