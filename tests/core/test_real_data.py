"""Pruning in training on the real data beside the project (../shared/data); skipped without it."""

from adprune_core.config import load_config
from adprune_core.trainer import train


def _run(overrides):
    return train(load_config(None, [*overrides, "train.progress=false", "train.device=cpu"])).summary


def test_cifar10_jpeg_vgg_prunes_and_learns(shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADPRUNE_CACHE", str(tmp_path))
    summary = _run(["data.name=imagefolder", f"data.root={shared_data_dir / 'cifar10-jpeg.zip'}",
                    "data.train_size=5000", "data.val_size=2000", "model.name=vgg11", "model.width_mult=0.25",
                    "train.epochs=3", "train.batch_size=64", "train.lr=0.05", "prune.schedule=fixed",
                    "prune.epochs=[1]"])
    final = summary.final
    densities = summary.prune_events[0].densities
    assert all(0.05 < d < 0.95 for d in densities.values())  # real activations are neither dead nor dense
    assert final.compression_params > 1.5 and final.val_top1 > 0.2  # chance is 0.1


def test_tinyimagenet_resnet_path_end_to_end(shared_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ADPRUNE_CACHE", str(tmp_path))
    summary = _run(["data.name=tinyimagenet", f"data.root={shared_data_dir / 'tiny-imagenet-200-mini.zip'}",
                    "model.name=resnet18", "model.width_mult=0.125", "train.epochs=2", "train.batch_size=64",
                    "prune.schedule=fixed", "prune.epochs=[1]"])
    assert summary.dataset["image_shape"] == [3, 64, 64] and summary.dataset["num_classes"] == 200
    assert summary.final.status == "completed" and summary.final.compression_params > 1.0
