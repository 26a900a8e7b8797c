"""study/space.py: loading and validating study files, and the params -> trainer config map."""

from pathlib import Path

import optuna
import pytest

from adprune_core.config import Config, config_from_dict
from adprune_core.errors import ConfigError
from study.space import (
    SCHEDULE_KEYS,
    baseline_config,
    find_study_file,
    load_study_config,
    study_config_from_dict,
    suggest,
    trial_config,
)

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "study").glob("*.yaml"))
OBJECTIVES = [{"name": "val_top1", "direction": "maximize"}, {"name": "flops", "direction": "minimize"},
              {"name": "train_flops_cum", "direction": "minimize"}]


def base(train_epochs=10, **prune):
    return config_from_dict({"train": {"epochs": train_epochs}, "prune": {"schedule": "saturation", **prune}})


def study_dict(**changes):
    raw = {"base": {"data": {"name": "synthetic"}, "model": {"name": "vgg11"}, "prune": {"schedule": "saturation"}},
           "fixed": {"train.epochs": 10},
           "space": {"prune.schedule": {"type": "categorical", "choices": ["fixed", "saturation", "interval"]},
                     "prune.first_frac": {"type": "float", "low": 0.1, "high": 0.5},
                     "prune.rounds": {"type": "int", "low": 1, "high": 3}},
           "objectives": OBJECTIVES, "sampler": {"name": "tpe", "seed": 0}}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_covers_the_required_space(path):
    cfg = load_study_config(path)
    assert cfg.objective_names[0] == "val_top1" and len(cfg.objectives) == 3
    required = {"prune.schedule", *SCHEDULE_KEYS, "prune.density_tol", "prune.patience", "prune.channel_density_min",
                "prune.width_scale", "prune.select", "prune.transfer"}
    if path.stem == "synthetic-vgg11":  # the demo keeps the weights at a cut; reinit is for the real-data presets
        required.remove("prune.transfer")
        assert cfg.trainer.prune.transfer == "inherit"
    if "prune.width_rule" in cfg.searched:  # the real-data presets search a per-channel density threshold instead
        required.remove("prune.channel_density_min")
    assert required <= set(cfg.searched)
    schedule = next(d for d in cfg.space if d.key == "prune.schedule")
    assert set(schedule.choices) == {"fixed", "saturation", "interval"}
    assert baseline_config(cfg.trainer).prune.schedule == "none"


def test_presets_exist_for_every_dataset_and_model():
    names = {p.stem for p in PRESETS}
    expected = {"synthetic-vgg11", "imagefolder-vgg19"} | {
        f"{d}-{m}" for d in ("cifar10", "cifar100", "tinyimagenet") for m in ("vgg19", "resnet18")}
    assert expected <= names
    assert find_study_file("synthetic").name == "synthetic-vgg11.yaml"
    assert find_study_file("cifar10").name == "cifar10-vgg19.yaml"
    with pytest.raises(ConfigError, match="no study preset for dataset 'mnist'"):
        find_study_file("mnist")


def test_fixed_schedule_epochs_from_fractions():
    # E=10: first = round(0.3 * 10) = 3, interval = round(0.2 * 10) = 2, rounds 3 -> epochs 3, 5, 7
    cfg = trial_config({"prune.schedule": "fixed", "prune.first_frac": 0.3, "prune.interval_frac": 0.2,
                        "prune.rounds": 3}, base(10))
    assert cfg.prune.schedule == "fixed" and cfg.prune.epochs == (3, 5, 7) and cfg.prune.max_rounds == 3


def test_fixed_schedule_drops_epochs_past_the_end_and_rounds_half_up():
    # E=6: first = round(0.25 * 6 = 1.5) = 2 (half up), interval = round(0.5 * 6) = 3 -> 2, 5, (8 dropped)
    cfg = trial_config({"prune.schedule": "fixed", "prune.first_frac": 0.25, "prune.interval_frac": 0.5,
                        "prune.rounds": 3}, base(6))
    assert cfg.prune.epochs == (2, 5)


def test_first_prune_is_clamped_to_leave_an_epoch_after_it():
    cfg = trial_config({"prune.schedule": "fixed", "prune.first_frac": 0.9, "prune.rounds": 1}, base(2))
    assert cfg.prune.epochs == (1,)
    cfg = trial_config({"prune.schedule": "interval", "prune.first_frac": 0.01}, base(30))
    assert cfg.prune.warmup == 1


def test_interval_and_saturation_map_to_warmup_interval_and_rounds():
    cfg = trial_config({"prune.schedule": "interval", "prune.first_frac": 0.2, "prune.interval_frac": 0.1,
                        "prune.rounds": 4}, base(30, epochs=[3]))
    assert (cfg.prune.warmup, cfg.prune.interval, cfg.prune.max_rounds, cfg.prune.epochs) == (6, 3, 4, ())
    cfg = trial_config({"prune.schedule": "saturation", "prune.first_frac": 0.5, "prune.interval_frac": 0.1,
                        "prune.rounds": 2, "prune.density_tol": 0.02, "prune.patience": 3}, base(30, interval=7))
    assert (cfg.prune.warmup, cfg.prune.max_rounds, cfg.prune.density_tol, cfg.prune.patience) == (15, 2, 0.02, 3)
    assert cfg.prune.interval == 7  # interval_frac does not apply to saturation


def test_plain_trainer_keys_pass_through_and_base_is_untouched():
    b = base(10)
    cfg = trial_config({"prune.select": "l1", "prune.transfer": "reinit", "prune.width_scale": 1.2,
                        "prune.channel_density_min": 0.05, "model.width_mult": 0.5}, b)
    assert isinstance(cfg, Config)
    assert (cfg.prune.select, cfg.prune.transfer, cfg.prune.width_scale, cfg.prune.channel_density_min,
            cfg.model.width_mult) == ("l1", "reinit", 1.2, 0.05, 0.5)
    assert b.prune.select == "density" and b.model.width_mult == 1.0


def test_baseline_never_prunes_and_keeps_the_training_setup():
    b = config_from_dict({"train": {"epochs": 8, "lr": 0.02}, "prune": {"schedule": "fixed", "epochs": [2, 4]}})
    cfg = baseline_config(b)
    assert cfg.prune.schedule == "none" and cfg.prune.epochs == () and cfg.train == b.train


@pytest.mark.parametrize(("params", "needle"), [
    ({"prune.schedule": "fixed", "prune.first_frac": 1.5}, "prune.first_frac: 1.5"),
    ({"prune.schedule": "interval", "prune.interval_frac": 0.0}, "prune.interval_frac: 0.0"),
    ({"prune.schedule": "saturation", "prune.rounds": 0}, "prune.rounds: 0"),
    ({"prune.select": "biggest"}, "prune.select: 'biggest' is not allowed"),
])
def test_bad_params_raise_config_errors(params, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        trial_config(params, base(10))


def test_suggest_respects_when_conditions():
    cfg = study_config_from_dict(study_dict(space={
        "prune.schedule": {"type": "categorical", "choices": ["fixed", "saturation"]},
        "prune.first_frac": {"type": "float", "low": 0.1, "high": 0.5},
        "prune.patience": {"type": "int", "low": 1, "high": 3, "when": {"prune.schedule": "saturation"}},
        "prune.width_scale": {"type": "float", "low": 0.5, "high": 1.5}}))
    fixed = suggest(optuna.trial.FixedTrial({"prune.schedule": "fixed", "prune.first_frac": 0.2,
                                             "prune.width_scale": 1.0}), cfg.space)
    assert fixed == {"prune.schedule": "fixed", "prune.first_frac": 0.2, "prune.width_scale": 1.0}
    sat = suggest(optuna.trial.FixedTrial({"prune.schedule": "saturation", "prune.first_frac": 0.2,
                                           "prune.patience": 2, "prune.width_scale": 1.0}), cfg.space)
    assert sat["prune.patience"] == 2


@pytest.mark.parametrize(("changes", "needle"), [
    ({"bogus": 1}, "unknown key 'bogus' in study file"),
    ({"space": {"prune.nonsense": {"type": "float", "low": 0, "high": 1}}}, "prune.nonsense is not a trainer key"),
    ({"space": {"data.train_size": {"type": "int", "low": 1, "high": 9}}}, "data.train_size cannot be searched"),
    ({"space": {"prune.select": {"type": "categorical", "choices": ["density", "best"]}}},
     "prune.select='best' gives no valid trainer config"),
    ({"space": {"prune.patience": {"type": "float", "low": 1, "high": 3}}}, "prune.patience: expected int"),
    ({"space": {"prune.patience": {"type": "int", "low": 3, "high": 1}}}, "low 3 is above high 1"),
    ({"space": {"prune.patience": {"type": "gaussian"}}}, "type 'gaussian' is not allowed"),
    ({"space": {"prune.patience": {"type": "int", "low": 1, "high": 3, "when": {"prune.schedule": "fixed"}}}},
     "when names 'prune.schedule'"),
    ({"space": {"prune.rounds": {"type": "int", "low": 1, "high": 3},
                "prune.max_rounds": {"type": "int", "low": 1, "high": 3}}}, "search only one of them"),
    ({"sampler": {"name": "cmaes"}}, "sampler.name: unknown sampler 'cmaes'; known: nsga2, random, tpe"),
    ({"sampler": {"name": "tpe", "seed": "x"}}, "sampler.seed: expected int"),
    ({"sampler": {"name": "tpe", "seed": 2**32}}, "sampler.seed: 4294967296 is above the maximum 4294967295 "
     "(samplers take 32-bit seeds); use a seed from 0 to 4294967295"),
    ({"sampler": {"name": "nsga2", "population_size": 1}}, "sampler.population_size: 1 is below the minimum 2; "
     "use 2 or more (NSGA-II breeds pairs of parents)"),
    ({"sampler": {"name": "tpe", "startup_trials": -1}}, "sampler.startup_trials: -1 is below the minimum 0; "
     "use 0 or more"),
    ({"objectives": OBJECTIVES[:2]}, "exactly three"),
    ({"objectives": [OBJECTIVES[0], OBJECTIVES[0], OBJECTIVES[1]]}, "names one metric twice"),
    ({"objectives": [{"name": "accuracy", "direction": "maximize"}, *OBJECTIVES[1:]]}, "'accuracy' is not allowed"),
    ({"stopper": {"check_at": [2]}}, "stopper.check_at"),
    ({"constraints": {"max_accuracy_drop": 5}}, "max_accuracy_drop: 5 must be a fraction"),
    ({"fixed": {"train.epochz": 3}}, "unknown config key train.epochz"),
])
def test_bad_study_files_name_the_key(changes, needle):
    with pytest.raises(ConfigError) as info:
        study_config_from_dict(study_dict(**changes))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_overrides_route_to_fixed_and_study_sections(tmp_path):
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump(study_dict()))
    cfg = load_study_config(path, ["train.epochs=4", "sampler.name=nsga2", "stopper.margin=0.1"],
                            {"data.root": "/some/where", "sampler.seed": 5})
    assert cfg.trainer.train.epochs == 4 and cfg.trainer.data.root == "/some/where"
    assert (cfg.sampler.name, cfg.sampler.seed) == ("nsga2", 5) and cfg.stopper.margin == 0.1
    with pytest.raises(ConfigError, match=f"{path}: "):
        load_study_config(path, ["sampler.name=nope"])


def test_base_path_is_relative_to_the_study_file(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.yaml").write_text("train:\n  epochs: 7\nprune:\n  schedule: saturation\n")
    (tmp_path / "study").mkdir()
    import yaml

    (tmp_path / "study" / "s.yaml").write_text(yaml.safe_dump(study_dict(base="../presets/p.yaml", fixed={})))
    assert load_study_config(tmp_path / "study" / "s.yaml").trainer.train.epochs == 7
    (tmp_path / "study" / "t.yaml").write_text(yaml.safe_dump(study_dict(base="missing.yaml")))
    with pytest.raises(ConfigError, match="missing.yaml' does not exist"):
        load_study_config(tmp_path / "study" / "t.yaml")
