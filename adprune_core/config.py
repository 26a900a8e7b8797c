"""The run configuration: typed, frozen dataclasses, validated once at load.

YAML files only store these. ``load_config`` reads a preset, applies dotted
``--set`` overrides (``prune.epochs=[3,6]``), checks every key, type and range,
and returns a frozen ``Config``. Any violation raises ``ConfigError`` with a
one-line message naming the key, the value, the rule and the fix.

Epochs are 1-based everywhere: ``prune.epochs=[3]`` prunes right after the
third epoch has finished (densities of epoch 3 decide the new widths).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adprune_core.errors import ConfigError

DATA_ROOT_ENV = "ADPRUNE_DATA"
CACHE_DIR_ENV = "ADPRUNE_CACHE"
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take 32-bit seeds; every seed here keeps to that range
MAX_CHANNELS = 8192  # the widest layer a config may ask for (512 base channels x the width_mult limit of 16)


def _opt(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
         hi: float | None = None) -> Any:
    """A dataclass field with its documentation and validation rules as metadata."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi}
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("synthetic", "dataset: cifar10, cifar100, tinyimagenet, imagefolder, synthetic")
    root: str = _opt("", f"where the data lives (folder or zip); empty = ${DATA_ROOT_ENV} or ./data")
    download: bool = _opt(True, "download cifar/tinyimagenet when missing and online")
    train_size: int = _opt(0, "images of the dataset's training split to use, the held-out ones included: 0 = all "
                              "(synthetic: 2000)", lo=0)
    val_size: int = _opt(0, "images of the dataset's own evaluation split (test/ or val/) to use: 0 = all "
                            "(synthetic: 500)", lo=0)
    holdout: float = _opt(0.0, "fraction of the training images held out (seeded by data.seed, class-balanced) as the "
                               "validation split val_top1 measures, the dataset's evaluation split then measuring "
                               "test_top1 only; 0 = none: val_top1 is the evaluation split (single runs; studies "
                               "default to 0.1)", lo=0.0, hi=0.5)
    num_classes: int = _opt(10, "synthetic only: number of classes", lo=2, hi=1000)
    image_size: int = _opt(32, "synthetic only: image side in pixels", lo=8, hi=256)
    augment: bool = _opt(True, "random crop with padding and horizontal flip on training batches")
    crop_padding: int = _opt(4, "zero padding (pixels) for the random crop; CIFAR convention is 4", lo=0, hi=64)
    cache_dir: str = _opt("", f"decoded-image cache; empty = ${CACHE_DIR_ENV} or ~/.cache/adprune")
    seed: int = _opt(0, "seed for subset selection and synthetic data", lo=0, hi=MAX_SEED)

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get(DATA_ROOT_ENV, "") or "data").expanduser()

    def resolved_cache_dir(self) -> Path:
        default = Path("~/.cache/adprune").expanduser()
        return Path(self.cache_dir or os.environ.get(CACHE_DIR_ENV, "") or default).expanduser()


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("vgg19", "vgg11, vgg13, vgg16, vgg19, resnet18, resnet34 or torchvision:<name>")
    width_mult: float = _opt(1.0, "multiplies every layer's base width", lo=0.01, hi=16.0)
    widths: tuple[int, ...] = _opt((), "base widths: vgg one per conv, resnet one per stage; () = paper's",
                                   lo=1, hi=MAX_CHANNELS)
    stem: str = _opt("auto", "resnet stem: auto (by input size), cifar, tiny, imagenet",
                     choices=("auto", "cifar", "tiny", "imagenet"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(30, "training epochs", lo=1)
    batch_size: int = _opt(128, "images per step", lo=1)
    lr: float = _opt(0.1, "peak learning rate (SGD)", lo=0.0)
    momentum: float = _opt(0.9, "SGD momentum", lo=0.0, hi=1.0)
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay", lo=0.0)
    lr_schedule: str = _opt("cosine", "cosine, step or constant, on the global epoch clock",
                            choices=("cosine", "step", "constant"))
    lr_milestones: tuple[float, ...] = _opt((0.5, 0.75), "step schedule: fractions of training")
    lr_gamma: float = _opt(0.1, "step schedule: factor at each milestone", lo=0.0, hi=1.0)
    warmup_epochs: int = _opt(0, "linear learning-rate warm-up epochs", lo=0)
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing", lo=0.0, hi=1.0)
    seed: int = _opt(0, "seed for weights, batch order, augmentation", lo=0, hi=MAX_SEED)
    device: str = _opt("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on capable GPUs), bf16, off",
                    choices=("auto", "bf16", "off"))
    channels_last: str = _opt("auto", "NHWC memory layout: auto (on for CUDA), on, off", choices=("auto", "on", "off"))
    compile: bool = _opt(False, "torch.compile the network (re-compiled after every prune)")
    cudnn_benchmark: bool = _opt(True, "let cuDNN autotune convolution algorithms (CUDA only)")
    progress: bool = _opt(True, "show a progress bar")


@dataclass(frozen=True)
class PruneConfig:
    schedule: str = _opt("saturation", "none (dense baseline), fixed, saturation, interval",
                         choices=("none", "fixed", "saturation", "interval"))
    epochs: tuple[int, ...] = _opt((), "fixed: prune after these (1-based) epochs")
    interval: int = _opt(5, "interval: prune every this many epochs after warmup", lo=1)
    warmup: int = _opt(5, "epochs before the first prune, and between prunes (saturation)", lo=0)
    density_tol: float = _opt(0.01, "saturation: max change of every layer's density", lo=0.0, hi=1.0)
    patience: int = _opt(2, "saturation: consecutive settled epochs required", lo=1)
    max_rounds: int = _opt(5, "at most this many prunes", lo=0)
    min_gain: float = _opt(0.01, "stop pruning once a round removes less than this fraction of params",
                           lo=0.0, hi=1.0)
    width_scale: float = _opt(1.0, "new width = ceil(width_scale * density * width)", lo=0.0)
    min_channels: int = _opt(1, "no layer is pruned below this width", lo=1)
    round_to: int = _opt(1, "new widths rounded up to a multiple of this", lo=1)
    select: str = _opt("density", "which channels stay: density, l1, random",
                       choices=("density", "l1", "random"))
    channel_density_min: float = _opt(0.0, "channels with density below this always go", lo=0.0, hi=1.0)
    transfer: str = _opt("inherit", "inherit (keep weights, BN stats, momentum) or reinit",
                         choices=("inherit", "reinit"))
    group_density: str = _opt("mean", "combine densities of a residual group: mean (pooled) or max",
                              choices=("mean", "max"))
    width_rule: str = _opt("ad", "how wide a group stays: ad (ceil(width_scale * density * width)) or threshold "
                                 "(its channels whose density >= prune.channel_threshold)",
                           choices=("ad", "threshold"))
    channel_threshold: float = _opt(0.1, "width_rule threshold: a channel counts if its density is at least this",
                                    lo=0.0, hi=1.0)
    bn_recalibrate: bool = _opt(True, "after each cut, re-estimate batch-norm statistics on prune.bn_images training "
                                      "images (train mode, no weight update; cost counted in train_flops_cum)")
    bn_images: int = _opt(512, "training images (seeded, unaugmented) for prune.bn_recalibrate", lo=1)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


# --- loading ---------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError; ints widen to floats, nothing else."""
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # a single number for a list field: prune.epochs=5
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}; "
                              f"write e.g. {key}=[1,2]")
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return finite(key, float(value))
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string; users write it anyway
            return finite(key, float(value))
        except ValueError:
            pass
    if tp is float and isinstance(value, float):
        return finite(key, value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__})")
    return value


def finite(key: str, value: float) -> float:
    """``value`` if it is a finite number (any int is); else a ``ConfigError``. Every float read from a
    config, a ``--set`` or a study file passes here: NaN fails every ``<``/``>`` range check, so it would
    slip through them, and ``1e309`` reads as infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number (NaN and infinities, 1e309 included, are "
                          "refused); give an ordinary number")
    return value


def _check_range(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if choices is not None and v not in choices:
            raise ConfigError(f"{key}: {v!r} is not allowed; choose one of {', '.join(choices)}")
        if lo is not None and v < lo:
            raise ConfigError(f"{key}: {v!r} is below the minimum {lo}; use a value >= {lo}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key}: {v!r} is above the maximum {hi}; use a value <= {hi}")


def _build_section(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {section}.{unknown[0]}; known keys in {section}: "
                          f"{', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        choices = fields[name].metadata.get("choices") or ()
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads on/off (yes/no, true/false) as booleans
        coerced = _coerce(key, value, hints[name])
        _check_range(key, coerced, fields[name].metadata)
        values[name] = coerced
    return cls(**values)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                             "prune": PruneConfig}


def config_from_dict(raw: Any) -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    cfg = Config(**{name: _build_section(cls, name, raw.get(name)) for name, cls in SECTIONS.items()})
    _check_cross_field(cfg)
    return cfg


def _check_cross_field(cfg: Config) -> None:
    p = cfg.prune
    # prune.epochs acts only under the fixed schedule: under another one (prune.schedule=none on a preset
    # with prune.epochs) it is left as given and not checked against train.epochs, so it blocks nothing.
    if p.schedule == "fixed":
        if not p.epochs:
            raise ConfigError("prune.epochs: the fixed schedule needs at least one epoch; "
                              "set e.g. prune.epochs=[10,20] or choose another prune.schedule")
        bad = [e for e in p.epochs if not 1 <= e < cfg.train.epochs]
        if bad:
            raise ConfigError(f"prune.epochs: epoch {bad[0]} is outside 1..{cfg.train.epochs - 1} (a prune "
                              f"needs at least one epoch after it, and train.epochs={cfg.train.epochs}); "
                              "use earlier epochs or more train.epochs")
        if sorted(set(p.epochs)) != list(p.epochs):
            raise ConfigError(f"prune.epochs: {list(p.epochs)} must be strictly increasing; "
                              "list each epoch once, in order")
    if any(not 0 < m < 1 for m in cfg.train.lr_milestones):
        raise ConfigError(f"train.lr_milestones: {list(cfg.train.lr_milestones)} must be fractions "
                          "of training strictly between 0 and 1, e.g. [0.5,0.75]")
    widest = max(cfg.model.widths, default=0) * cfg.model.width_mult
    if widest > MAX_CHANNELS:
        raise ConfigError(f"model.widths x model.width_mult: the widest layer would have {widest:.0f} channels, "
                          f"above the maximum {MAX_CHANNELS}; use smaller model.widths or model.width_mult")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"train.device: {dev!r} is not a device; use auto, cpu, cuda or cuda:N")
    # Names chosen through registries are checked here, at load, so a typo fails before any work.
    from adprune_core.data import DATASETS
    from adprune_core.models import check_model_name

    DATASETS.get(cfg.data.name)
    check_model_name(cfg.model.name)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=VALUE`` into its key path and a YAML-parsed value (``[3,6]`` is a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=10")
    key, _, raw_value = text.partition("=")
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text!r}: keys are section.name, e.g. prune.schedule; "
                          f"sections: {', '.join(SECTIONS)}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return path, value


def merge_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """Return a copy of nested ``raw`` with each ``section.key=value`` override applied."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        (section, name), value = parse_override(text)
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {target!r}")
        target[name] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file, "
                          "e.g. configs/smoke.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__}); "
                          "make it readable (chmod u+r) or pass another file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML preset (or the defaults), apply ``--set`` overrides, validate, freeze."""
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(merge_overrides(raw, overrides))


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The resolved config as nested plain data (lists for tuples), ready for JSON or YAML."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()}
            for name in SECTIONS}


def describe_options() -> str:
    """Every key with its default and meaning, for ``adprune train --help-config`` and the docs."""
    lines = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = list(default)
            lines.append(f"{section}.{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "PruneConfig", "load_config",
           "config_from_dict", "config_to_dict", "merge_overrides", "parse_override",
           "describe_options", "finite", "MAX_SEED"]
