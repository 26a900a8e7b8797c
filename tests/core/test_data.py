"""Datasets are built in their real on-disk formats in tmp_path and read back through load_dataset."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from adprune_core.config import DataConfig
from adprune_core.data import DATASETS, DeviceLoader, ImageData, cache, imagefolder, load_dataset
from adprune_core.errors import DataError
from tests.helpers import FOLDER_COLORS, encode, folder_files, solid, write_cifar, write_files

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own disk cache (never ~/.cache) and an empty in-process cache."""
    monkeypatch.setenv("ADPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_MEMORY", type(cache._MEMORY)())


def cfg(**kwargs) -> DataConfig:
    kwargs.setdefault("download", False)
    return DataConfig(**kwargs)


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return path


def test_registry_names():
    assert DATASETS.names() == ["cifar10", "cifar100", "imagefolder", "synthetic", "tinyimagenet"]


# --- CIFAR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pixels_labels_and_classes(tmp_path, name):
    written = write_cifar(tmp_path, name)
    d = load_dataset(cfg(name=name, root=str(tmp_path)))
    n_train = 100 if name == "cifar10" else 20
    assert d.train_images.shape == (n_train, 3, 32, 32) and d.val_images.shape == (20, 3, 32, 32)
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert d.train_images.is_contiguous()
    assert torch.equal(d.train_images, torch.from_numpy(written["train_x"]).view(-1, 3, 32, 32))
    assert torch.equal(d.val_images, torch.from_numpy(written["val_x"]).view(-1, 3, 32, 32))
    assert d.train_labels.tolist() == written["train_y"].tolist()
    assert d.classes[:2] == (("c0", "c1") if name == "cifar10" else ("f0", "f1"))
    assert d.num_classes == (10 if name == "cifar10" else 100) and d.image_shape == (3, 32, 32)
    expected_mean = written["train_x"].reshape(-1, 3, 1024).mean((0, 2)) / 255
    assert np.allclose(d.mean, expected_mean, atol=1e-4)


def test_cifar_rows_are_red_then_green_then_blue_planes(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    entry = pickle.loads(path.read_bytes())
    row = np.zeros(3072, dtype=np.uint8)
    row[0] = 11                      # red, pixel (0, 0)
    row[1024 + 32 * 1 + 2] = 22      # green, pixel (1, 2)
    row[2048 + 32 * 31 + 31] = 33    # blue, pixel (31, 31)
    entry[b"data"] = row[None]
    path.write_bytes(pickle.dumps(entry, protocol=2))
    image = load_dataset(cfg(name="cifar10", root=str(tmp_path))).train_images[0]
    assert (image[0, 0, 0], image[1, 1, 2], image[2, 31, 31]) == (11, 22, 33)
    assert int(image.count_nonzero()) == 3


def test_cifar_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py") as err:
        load_dataset(cfg(name="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist") as err:
        load_dataset(cfg(name="cifar100", root=str(tmp_path / "nowhere")))
    assert str(tmp_path / "nowhere") in str(err.value)


def test_cifar_corrupt_pickle_is_a_data_error(tmp_path):
    write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(cfg(name="cifar10", root=str(tmp_path)))


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path, "cifar10")
    payload = _Payload()
    payload.target = str(tmp_path / "pwned")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": payload}))
    with pytest.raises(DataError, match="test_batch"):
        load_dataset(cfg(name="cifar10", root=str(tmp_path)))
    assert not (tmp_path / "pwned").exists()


# --- TinyImageNet ----------------------------------------------------------------------------------

TINY_WNIDS = ["n03", "n01", "n02"]  # deliberately not sorted: class order must follow wnids.txt
TINY_COLORS = {"n03": (250, 10, 10), "n01": (10, 250, 10), "n02": (10, 10, 250)}
TINY_VAL = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01"), ("val_3.JPEG", "n02")]


def tiny_files() -> dict[str, bytes]:
    """A 3-class TinyImageNet in the official layout; each class's images are one solid colour, and
    n01's second training image is grayscale."""
    base = "tiny-imagenet-200/"
    files = {base + "wnids.txt": "\n".join(TINY_WNIDS).encode() + b"\n",
             base + "words.txt": b"n01\tgoldfish, Carassius auratus\nn03\tbullfrog\nn99\tunused\n"}
    for wnid in TINY_WNIDS:
        files[f"{base}train/{wnid}/{wnid}_boxes.txt"] = b""
        for i in range(2):
            pixels = solid(TINY_COLORS[wnid], 64)
            if wnid == "n01" and i == 1:
                pixels = np.full((64, 64), 128, dtype=np.uint8)
            files[f"{base}train/{wnid}/images/{wnid}_{i}.JPEG"] = encode(pixels)
    lines = []
    for fname, wnid in TINY_VAL:
        files[f"{base}val/images/{fname}"] = encode(solid(TINY_COLORS[wnid], 64))
        lines.append(f"{fname}\t{wnid}\t0\t0\t63\t63")
    files[base + "val/val_annotations.txt"] = "\n".join(lines).encode() + b"\n"
    return files


@pytest.mark.parametrize("form", ["parent", "folder", "zip-in-folder", "mini-zip-in-folder", "zip-path"])
def test_tinyimagenet_layouts(tmp_path, form):
    files = tiny_files()
    if form in ("parent", "folder"):
        write_files(tmp_path, files)
        root = tmp_path / "tiny-imagenet-200" if form == "folder" else tmp_path
    else:
        name = "tiny-imagenet-200-mini.zip" if form == "mini-zip-in-folder" else "tiny-imagenet-200.zip"
        root = write_zip(tmp_path / name, files)
        root = root if form == "zip-path" else tmp_path
    d = load_dataset(cfg(name="tinyimagenet", root=str(root)))
    assert d.classes == ("bullfrog", "goldfish", "n02")  # words.txt first synonym, else the wnid
    assert d.train_images.shape == (6, 3, 64, 64) and d.val_images.shape == (4, 3, 64, 64)
    assert d.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.val_labels.tolist() == [TINY_WNIDS.index(w) for _, w in TINY_VAL]
    for images, labels in ((d.train_images, d.train_labels), (d.val_images, d.val_labels)):
        for image, label in zip(images, labels, strict=True):
            color = torch.tensor(TINY_COLORS[TINY_WNIDS[label]]).view(3, 1, 1)
            gray = bool((image[0] == image[1]).all() and (image[1] == image[2]).all())
            assert gray or (image.int() - color).abs().max() <= 3
    grays = [bool((im[0] == im[2]).all()) for im in d.train_images]
    assert grays == [False, False, False, True, False, False]  # n01_1, converted to three equal channels


def test_tinyimagenet_missing_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="tiny-imagenet-200") as err:
        load_dataset(cfg(name="tinyimagenet", root=str(tmp_path)))
    assert str(tmp_path) in str(err.value) and "cs231n.stanford.edu" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(cfg(name="tinyimagenet", root=str(tmp_path / "nowhere")))


def test_tinyimagenet_annotation_for_a_missing_image(tmp_path):
    files = tiny_files()
    del files["tiny-imagenet-200/val/images/val_2.JPEG"]
    write_files(tmp_path, files)
    with pytest.raises(DataError, match="val_2.JPEG"):
        load_dataset(cfg(name="tinyimagenet", root=str(tmp_path)))


# --- image folders ---------------------------------------------------------------------------------


def test_imagefolder_zip_with_top_level_folder(tmp_path):
    files = {f"cifar-ish/{name}": content for name, content in folder_files("val", "JPEG").items()}
    root = write_zip(tmp_path / "images.zip", files)
    d = load_dataset(cfg(name="imagefolder", root=str(root)))
    assert d.classes == ("ant", "cat", "dog")
    assert d.train_images.shape == (9, 3, 16, 16) and d.val_images.shape == (2, 3, 16, 16)
    assert d.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(d.val_labels.tolist()) == [1, 2]
    for image, label in zip(d.val_images, d.val_labels, strict=True):
        color = torch.tensor(FOLDER_COLORS[d.classes[label]]).view(3, 1, 1)
        assert (image.int() - color).abs().max() <= 3


def test_imagefolder_folder_with_test_split_keeps_exact_pixels(tmp_path):
    write_files(tmp_path, folder_files("test", "PNG"))
    d = load_dataset(cfg(name="imagefolder", root=str(tmp_path)))
    assert d.classes == ("ant", "cat", "dog") and len(d.val_labels) == 2
    for image, label in zip(d.train_images, d.train_labels, strict=True):
        expected = torch.from_numpy(solid(FOLDER_COLORS[d.classes[label]], 16)).permute(2, 0, 1)
        assert torch.equal(image[:, 1:, 1:], expected[:, 1:, 1:])
    assert d.train_images[:3, 0, 0, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"val/bee/0000.png": encode(solid((1, 2, 3), 16), "PNG")}, "bee"),
        ({"train/dog/0009.png": encode(solid((1, 2, 3), 20), "PNG")}, r"train/dog/0009.png.*20x20.*16x16"),
        ({"train/cat/0001.png": b"\x89PNG\r\n\x1a\n broken"}, "train/cat/0001.png"),
        ({"train/cat/0005.jpg": encode(solid((1, 2, 3), 16))[:40]}, "train/cat/0005.jpg"),
    ],
    ids=["val-class-not-in-train", "mixed-sizes", "corrupt-png", "truncated-jpeg"],
)
def test_imagefolder_bad_content(tmp_path, change, match):
    write_files(tmp_path, {**folder_files("val", "PNG"), **change})
    with pytest.raises(DataError, match=match) as err:
        load_dataset(cfg(name="imagefolder", root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_imagefolder_bad_layout(tmp_path):
    write_files(tmp_path, {"a/train/cat/0.png": encode(solid((1, 2, 3), 8), "PNG"), "b/x.txt": b""})
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(cfg(name="imagefolder", root=str(tmp_path)))
    with pytest.raises(DataError, match="does not exist") as err:
        load_dataset(cfg(name="imagefolder", root=str(tmp_path / "nowhere")))
    assert str(tmp_path / "nowhere") in str(err.value)


# --- caching ---------------------------------------------------------------------------------------

def test_decoded_images_are_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    write_files(tmp_path / "imgs", folder_files())
    config = cfg(name="imagefolder", root=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"))
    first = load_dataset(config)
    assert load_dataset(config) is first  # in-process hit
    entries = list((tmp_path / "c").iterdir())
    assert len(entries) == 1 and {p.suffix for p in entries[0].iterdir()} == {".npy", ".json"}

    cache._MEMORY.clear()
    with monkeypatch.context() as m:
        m.setattr(imagefolder, "decode_images", lambda *a: pytest.fail("decoded despite the disk cache"))
        second = load_dataset(config)
    for field in ("train_images", "train_labels", "val_images", "val_labels"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    assert (second.classes, second.mean, second.std) == (first.classes, first.mean, first.std)

    write_files(tmp_path / "imgs", {"train/ant/0099.png": encode(solid((5, 5, 5), 16), "PNG")})
    assert len(load_dataset(config).train_labels) == 10  # a changed folder is decoded again


def test_unwritable_cache_dir_is_skipped(tmp_path):
    write_files(tmp_path / "imgs", folder_files())
    (tmp_path / "not-a-dir").write_text("")
    d = load_dataset(cfg(name="imagefolder", root=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "not-a-dir")))
    assert len(d.train_labels) == 9


# --- synthetic and subsets -------------------------------------------------------------------------

def test_synthetic_is_deterministic_balanced_and_shaped():
    a, b = load_dataset(cfg(seed=3)), load_dataset(cfg(seed=3))
    other = load_dataset(cfg(seed=4))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    assert not torch.equal(a.train_images, other.train_images)
    assert a.train_images.shape == (2000, 3, 32, 32) and a.val_images.shape == (500, 3, 32, 32)
    assert a.train_labels.bincount().tolist() == [200] * 10 and a.val_labels.bincount().tolist() == [50] * 10
    small = load_dataset(cfg(num_classes=3, image_size=8, train_size=10, val_size=4))
    assert small.train_images.shape == (10, 3, 8, 8) and small.classes == ("class0", "class1", "class2")
    assert sorted(small.train_labels.bincount().tolist()) == [3, 3, 4]
    assert 0 < min(a.mean) and max(a.mean) < 1 and min(a.std) > 0.05


def test_synthetic_is_learnable_but_not_trivial():
    d = load_dataset(cfg())
    x, y = d.train_images.flatten(1).float(), d.train_labels
    centroids = torch.stack([x[y == k].mean(0) for k in range(d.num_classes)])
    nearest = torch.cdist(d.val_images.flatten(1).float(), centroids).argmin(1)
    accuracy = (nearest == d.val_labels).float().mean().item()
    assert 0.3 < accuracy < 0.9  # above chance (0.1), yet a linear template does not solve it


def test_subsets_are_seeded_balanced_and_taken_from_the_data(tmp_path):
    write_cifar(tmp_path, "cifar10")
    full = load_dataset(cfg(name="cifar10", root=str(tmp_path)))
    a = load_dataset(cfg(name="cifar10", root=str(tmp_path), train_size=30, val_size=7))
    b = load_dataset(cfg(name="cifar10", root=str(tmp_path), train_size=30, val_size=7))
    c = load_dataset(cfg(name="cifar10", root=str(tmp_path), train_size=30, val_size=7, seed=1))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_labels.bincount().tolist() == [3] * 10
    assert len(a.val_labels) == 7 and a.val_labels.unique().numel() == 7
    assert (a.mean, a.std) == (full.mean, full.std)
    rows = {bytes(im.flatten().numpy()): int(lab) for im, lab in zip(full.train_images, full.train_labels,
                                                                     strict=True)}
    assert all(rows[bytes(im.flatten().numpy())] == lab for im, lab in zip(a.train_images, a.train_labels,
                                                                           strict=True))
    with pytest.raises(DataError, match="data.train_size: 101"):
        load_dataset(cfg(name="cifar10", root=str(tmp_path), train_size=101))


# --- DeviceLoader ----------------------------------------------------------------------------------

def indexed_images(n: int, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is their index (n <= 256), labels = index."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, side, side).contiguous()
    return images, torch.arange(n)


def loader(images, labels, **kwargs) -> DeviceLoader:
    kwargs = {"batch_size": 4, "device": "cpu", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
              "train": True, **kwargs}
    return DeviceLoader(images, labels, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_loader_batches_cover_each_sample_once(device):
    images, labels = indexed_images(10)
    dl = loader(images, labels, device=device)
    assert len(dl) == 3 and dl.num_samples == 10
    batches = list(dl)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == device and y.device.type == device
    seen = torch.cat([y for _, y in batches]).cpu()
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    dropped = loader(images, labels, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


def test_loader_order_is_seeded_and_changes_each_epoch():
    images, labels = indexed_images(64)

    def epoch_orders(dl, epochs=2):
        return [torch.cat([y for _, y in dl]).tolist() for _ in range(epochs)]

    a, b = epoch_orders(loader(images, labels, seed=7)), epoch_orders(loader(images, labels, seed=7))
    assert a == b and a[0] != a[1]
    assert epoch_orders(loader(images, labels, seed=8))[0] != a[0]
    replay = loader(images, labels, seed=7)
    replay.set_epoch(1)
    assert epoch_orders(replay, 1)[0] == a[1]
    augmented = [x for x, _ in loader(images, labels, seed=7)]
    assert all(torch.equal(p, q) for p, q in zip(augmented, [x for x, _ in loader(images, labels, seed=7)],
                                                 strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_loader_eval_is_ordered_unaugmented_and_normalised(device):
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dl = loader(images, torch.arange(10), train=False, device=device, mean=mean, std=std)
    for _ in range(2):
        x = torch.cat([x for x, _ in dl]).cpu()
        y = torch.cat([y for _, y in dl]).cpu()
        expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
        assert y.tolist() == list(range(10))


def test_loader_without_augment_only_shuffles():
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    dl = loader(images, torch.arange(12), augment=False, mean=(0, 0, 0), std=(1, 1, 1))
    for x, y in dl:
        torch.testing.assert_close(x, images[y].float() / 255)


def test_random_crop_moves_content_by_at_most_the_padding():
    n, side, p = 256, 32, 4
    images = torch.zeros(n, 3, side, side, dtype=torch.uint8)
    images[:, :, 16, 10] = 255  # one bright pixel, far enough from the border to stay inside
    dl = loader(images, torch.arange(n), batch_size=64, crop_padding=p, mean=(0, 0, 0), std=(1, 1, 1))
    shifts, flipped = set(), 0
    for x, _ in dl:
        assert torch.equal((x > 0).sum((1, 2, 3)), torch.full((len(x),), 3))  # the pixel, in all channels
        for image in x:
            r, c = divmod(int(image[0].argmax()), side)
            if abs(c - 10) > p:  # must then be the mirror image of a shift
                c, flipped = side - 1 - c, flipped + 1
            assert abs(r - 16) <= p and abs(c - 10) <= p
            shifts.add((r - 16, c - 10))
    assert len(shifts) > 40 and 80 < flipped < 176  # offsets vary over the whole range, flips are ~p=0.5


def test_flip_mirrors_whole_images():
    images = torch.randint(0, 256, (64, 3, 5, 7), dtype=torch.uint8)
    dl = loader(images, torch.arange(64), batch_size=64, crop_padding=0, mean=(0, 0, 0), std=(1, 1, 1))
    x, y = next(iter(dl))
    original = images[y].float() / 255
    same = (x == original).flatten(1).all(1)
    mirrored = (x == original.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 16 < int(mirrored.sum()) < 48


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_gives_the_same_batches_on_cpu_and_cuda():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    cpu = [x for x, _ in loader(images, torch.arange(50), seed=3)]
    cuda = [x.cpu() for x, _ in loader(images, torch.arange(50), seed=3, device="cuda")]
    assert all(torch.allclose(a, b) for a, b in zip(cpu, cuda, strict=True))


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        loader(torch.zeros(4, 3, 8, 8), torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        loader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(5))


# --- the real data, when it is there ---------------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_real_tinyimagenet_mini(shared_data_dir, tmp_path):
    if not (shared_data_dir / "tiny-imagenet-200-mini.zip").is_file():
        pytest.skip("tiny-imagenet-200-mini.zip is not in the shared data")
    d = load_dataset(cfg(name="tinyimagenet", root=str(shared_data_dir), cache_dir=str(tmp_path)))
    assert isinstance(d, ImageData) and d.image_shape == (3, 64, 64) and d.num_classes == 200
    assert d.train_images.shape[0] == 5000 and d.val_images.shape[0] == 2000
    assert d.train_labels.bincount().tolist() == [25] * 200 and d.val_labels.bincount().tolist() == [10] * 200
    assert d.classes[0] == "Egyptian cat"  # wnids.txt starts with n02124075
    assert all(0.3 < m < 0.55 for m in d.mean) and all(0.2 < s < 0.35 for s in d.std)


def test_real_cifar10_jpeg_zip(shared_data_dir, tmp_path):
    if not (shared_data_dir / "cifar10-jpeg.zip").is_file():
        pytest.skip("cifar10-jpeg.zip is not in the shared data")
    d = load_dataset(cfg(name="imagefolder", root=str(shared_data_dir / "cifar10-jpeg.zip"), cache_dir=str(tmp_path)))
    assert d.classes == CIFAR10_CLASSES and d.image_shape == (3, 32, 32)
    assert d.train_labels.bincount().tolist() == [2500] * 10 and d.val_labels.bincount().tolist() == [1000] * 10
    # the published CIFAR-10 statistics; JPEG re-encoding moves them only slightly
    assert np.allclose(d.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    assert np.allclose(d.std, (0.2470, 0.2435, 0.2616), atol=0.01)

