"""Config: typed, frozen, validated once at load with one-line errors."""

import dataclasses

import pytest

from adprune_core.config import Config, config_to_dict, load_config
from adprune_core.errors import ConfigError


def test_defaults_and_overrides_with_types():
    cfg = load_config(None, ["train.epochs=12", "prune.epochs=[3,6]", "train.lr=1", "prune.schedule=fixed",
                             "model.name=resnet18", "data.root=/x"])
    assert cfg.train.epochs == 12 and cfg.prune.epochs == (3, 6) and cfg.train.lr == 1.0
    assert isinstance(cfg.train.lr, float) and cfg.model.name == "resnet18" and cfg.data.root == "/x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_yaml_preset_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\nprune:\n  schedule: fixed\n  epochs: [2]\n")
    cfg = load_config(path, ["prune.epochs=3"])
    assert cfg.prune.epochs == (3,)
    from adprune_core.config import config_from_dict

    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "unknown config key train.epoch"),
        (["trian.epochs=3"], "unknown config section 'trian'; known: data, model, train, prune"),
        (["train.epochs=three"], "train.epochs: expected int, got 'three'"),
        (["train.epochs=0"], "train.epochs: 0 is below the minimum 1"),
        (["train.lr=true"], "train.lr: expected float"),
        (["prune.schedule=sometimes"], "prune.schedule: 'sometimes' is not allowed; choose one of none, fixed"),
        (["prune.schedule=fixed"], "fixed schedule needs at least one epoch"),
        (["prune.epochs=[5,3]", "prune.schedule=fixed"], "strictly increasing"),
        (["train.epochs=4", "prune.epochs=[4]", "prune.schedule=fixed"], "outside 1..3"),
        (["model.name=vgg91"], "unknown model 'vgg91'; known: resnet18, resnet34, vgg11"),
        (["model.name=torchvision:nope"], "torchvision has no classification model 'nope'"),
        (["data.name=mnist"], "unknown dataset 'mnist'; known: cifar10, cifar100, imagefolder"),
        (["train.device=gpu"], "train.device: 'gpu' is not a device"),
        (["epochs=3"], "keys are section.name"),
        (["prune.width_scale=-1"], "below the minimum 0.0"),
    ],
)
def test_bad_input_names_value_and_rule(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_preset_loads():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[2].glob("configs/*.yaml"))
    assert len(presets) >= 7
    for path in presets:
        assert isinstance(load_config(path), Config)


def test_exponent_floats_without_a_dot():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
    path_cfg = load_config(None, ["train.weight_decay=5e-4"])
    assert path_cfg.train.weight_decay == 5e-4


def test_yaml_on_off_read_as_booleans_map_back_to_the_choice_they_name():
    """YAML 1.1 reads on/off as true/false: a choice field takes them back whenever it has that choice,
    also when it has only one of the two (train.amp has off but not on)."""
    cfg = load_config(None, ["train.amp=off", "train.channels_last=on", "train.compile=off"])
    assert (cfg.train.amp, cfg.train.channels_last) == ("off", "on")
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=on"])  # not one of amp's choices, as a string or as YAML's True
