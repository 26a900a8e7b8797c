"""TinyImageNet-200 in its official layout, from its folder or straight from its zip (downloaded if missing).

Decoded images are cached (``cache.cached``) under the zip's or folder's fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adprune_core.data.cache import cached
from adprune_core.data.download import download, download_or_explain
from adprune_core.data.filetree import FileTree, decode_images, is_image
from adprune_core.data.images import ImageData, image_data
from adprune_core.data.messages import missing_root
from adprune_core.errors import DataError
from adprune_core.sections import DATA_ROOT_ENV, DataConfig

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def tinyimagenet(cfg: DataConfig) -> ImageData:
    """TinyImageNet-200 in its official layout, read from the folder or straight from the zip.

    ``data.root`` may be the ``tiny-imagenet-200/`` folder, a folder containing it, a folder containing
    ``tiny-imagenet-200*.zip``, or the zip itself. Class order is that of ``wnids.txt``, class names come
    from ``words.txt`` (first synonym) when present; val labels come from ``val/val_annotations.txt``.
    """
    root = cfg.resolved_root()
    source = _find_tinyimagenet(root, cfg.download)
    if source is None:
        where = (f"tinyimagenet: no TinyImageNet in '{root.absolute()}' (looked for tiny-imagenet-200/"
                 f"wnids.txt and tiny-imagenet-200*.zip)")
        fix = (f"download {TINY_IMAGENET_URL} into that folder (no need to unzip it), or set data.root "
               f"(or ${DATA_ROOT_ENV}) to the folder or zip")
        source = download_or_explain(cfg, lambda: download(TINY_IMAGENET_URL, root / "tiny-imagenet-200.zip"),
                                     where, fix)
    with FileTree(source) as tree:
        return cached(cfg, "tinyimagenet", tree.path, tree.fingerprint, lambda: _read_tinyimagenet(tree))


def _find_tinyimagenet(root: Path, may_download: bool) -> Path | None:
    if root.is_file():
        return root
    if not root.exists():
        if may_download:
            return None
        raise missing_root(root, "the TinyImageNet folder or zip")
    for folder in (root, root / "tiny-imagenet-200"):
        if (folder / "wnids.txt").is_file():
            return folder
    zips = sorted(root.glob("tiny-imagenet-200*.zip"), key=lambda p: (p.name != "tiny-imagenet-200.zip", p.name))
    return zips[0] if zips else None


def _read_tinyimagenet(tree: FileTree) -> ImageData:
    where = f"tinyimagenet: '{tree.path}'"
    wnid_files = sorted((n for n in tree.names if n.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
    if not wnid_files:
        raise DataError(f"{where} has no wnids.txt; expected the official layout tiny-imagenet-200/"
                        "{wnids.txt,train/,val/}: use the official zip or its extracted folder")
    base = wnid_files[0][: -len("wnids.txt")]
    wnids = tree.read_text(wnid_files[0]).split()
    index = {w: i for i, w in enumerate(wnids)}
    names: dict[str, str] = {}
    if base + "words.txt" in tree.name_set:
        names = dict(_wnid_and_name(line) for line in tree.read_text(base + "words.txt").splitlines() if "\t" in line)
    classes = tuple(names.get(w, w) for w in wnids)

    train = []  # (label, file name), sorted below into class order
    for name in tree.names:
        parts = name[len(base):].split("/")
        if name.startswith(base + "train/") and len(parts) == 4 and parts[2] == "images" and is_image(name):
            if parts[1] not in index:
                raise DataError(f"{where}: train folder '{parts[1]}' is not listed in wnids.txt; add it "
                                "there or remove the folder")
            train.append((index[parts[1]], name))

    annotations = base + "val/val_annotations.txt"
    if annotations not in tree.name_set:
        raise DataError(f"{where} has no {annotations}; expected the official val/ folder with its annotations")
    val_files, val_labels = [], []
    for line in tree.read_text(annotations).splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index or base + "val/images/" + fields[0] not in tree.name_set:
            raise DataError(f"{where}: {annotations} line {line!r} does not name an existing val/images/ file "
                            "and a wnid from wnids.txt; fix the line or use the official files")
        val_files.append(base + "val/images/" + fields[0])
        val_labels.append(index[fields[1]])
    train_labels, train_files = zip(*sorted(train), strict=True) if train else ((), ())
    if not train_files or not val_files:
        raise DataError(f"{where} has {len(train_files)} train and {len(val_files)} val images; both must "
                        "be non-empty (train/<wnid>/images/*.JPEG, val/images/*.JPEG)")
    return image_data("tinyimagenet", decode_images(tree, list(train_files), "tinyimagenet train"),
                      torch.tensor(train_labels), decode_images(tree, val_files, "tinyimagenet val"),
                      torch.tensor(val_labels), classes)


def _wnid_and_name(line: str) -> tuple[str, str]:
    """``n01443537\\tgoldfish, Carassius auratus`` -> (``n01443537``, ``goldfish``)."""
    wnid, words = line.split("\t", 1)
    return wnid.strip(), words.split(",")[0].strip()
