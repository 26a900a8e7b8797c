"""``data.holdout``: a seeded, class-balanced validation split held out of the training images, the dataset's
evaluation split kept as the test split, and the decoded-data cache left as it was."""

from __future__ import annotations

import pytest
import torch

from adprune_core.config import DataConfig
from adprune_core.data import cache as data_cache
from adprune_core.data import load_dataset
from adprune_core.errors import DataError
from tests.helpers import write_cifar


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_cache, "_MEMORY", type(data_cache._MEMORY)())


def rows(images: torch.Tensor) -> list[bytes]:
    return [bytes(im.flatten().numpy()) for im in images]


def test_holdout_moves_a_balanced_seeded_share_of_the_training_images_to_val(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=40)  # 200 training images, 20 per class; 40 test images
    plain = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    held = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, holdout=0.1))
    assert not plain.held_out and plain.test_images is None
    assert held.held_out and len(held.val_labels) == 20 and len(held.train_labels) == 180
    assert held.val_labels.bincount().tolist() == [2] * 10  # class-balanced
    # the held-out and the remaining training images are exactly the training images, none shared
    assert sorted(rows(held.train_images) + rows(held.val_images)) == sorted(rows(plain.train_images))
    assert not set(rows(held.val_images)) & set(rows(held.train_images))
    # the dataset's evaluation split is untouched: it became the test split
    assert torch.equal(held.test_images, plain.val_images) and torch.equal(held.test_labels, plain.val_labels)
    assert not set(rows(held.val_images)) & set(rows(held.test_images))
    # the labels travel with their images
    label_of = dict(zip(rows(plain.train_images), plain.train_labels.tolist(), strict=True))
    assert [label_of[r] for r in rows(held.val_images)] == held.val_labels.tolist()
    assert (held.mean, held.std) == (plain.mean, plain.std)  # pixel statistics of the training split

    again = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, holdout=0.1))
    other = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, holdout=0.1, seed=1))
    assert torch.equal(again.val_images, held.val_images) and torch.equal(again.train_images, held.train_images)
    assert not torch.equal(other.val_images, held.val_images)


def test_holdout_comes_out_of_the_train_size_subset_and_val_size_trims_the_test_split(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=40)
    d = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, train_size=100, val_size=30,
                                holdout=0.2))
    assert (len(d.train_labels), len(d.val_labels), len(d.test_labels)) == (80, 20, 30)
    sub = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False, train_size=100, val_size=30))
    assert sorted(rows(d.train_images) + rows(d.val_images)) == sorted(rows(sub.train_images))
    assert torch.equal(d.test_images, sub.val_images)


def test_the_cache_holds_the_unsplit_data_and_is_never_modified(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=40)
    root = str(tmp_path)
    plain = load_dataset(DataConfig(name="cifar10", root=root, download=False))
    before = {f: getattr(plain, f).clone() for f in ("train_images", "train_labels", "val_images", "val_labels")}
    sizes = []
    for holdout in (0.1, 0.25, 0.0, 0.1):
        d = load_dataset(DataConfig(name="cifar10", root=root, download=False, holdout=holdout))
        sizes.append((len(d.train_labels), len(d.val_labels)))
    assert sizes == [(180, 20), (150, 50), (200, 40), (180, 20)]
    cached = load_dataset(DataConfig(name="cifar10", root=root, download=False))
    assert cached is plain  # one cache entry whatever the split: the split is applied after it
    assert all(torch.equal(getattr(cached, f), t) for f, t in before.items())


def test_a_holdout_that_empties_a_part_is_a_data_error():
    with pytest.raises(DataError, match=r"data.holdout: 0.01 of 20 training images .* holds out 0"):
        load_dataset(DataConfig(train_size=20, val_size=10, holdout=0.01))
