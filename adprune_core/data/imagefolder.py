"""The ``imagefolder`` dataset: class folders ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``)
in a folder or a zip. Decoded images are cached (``cache.cached``) under the source's fingerprint.
"""

from __future__ import annotations

import torch

from adprune_core.data.cache import cached
from adprune_core.data.filetree import FileTree, decode_images, is_image
from adprune_core.data.images import ImageData, image_data
from adprune_core.data.messages import missing_root
from adprune_core.errors import DataError
from adprune_core.sections import DataConfig


def imagefolder(cfg: DataConfig) -> ImageData:
    """Class folders in a folder or zip: ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``).

    The splits may sit under one top-level folder (``cifar10-jpeg/train/...``). Classes are the sorted
    train subfolder names; val classes must be among them. All images must have one size.
    """
    root = cfg.resolved_root()
    if not root.exists():
        raise missing_root(root, "a folder or zip with train/<class>/ and val/<class>/ (or test/)")
    with FileTree(root) as tree:
        return cached(cfg, "imagefolder", tree.path, tree.fingerprint, lambda: _read_imagefolder(tree))


def _read_imagefolder(tree: FileTree) -> ImageData:
    where = f"imagefolder: '{tree.path}'"
    tops = sorted({n.split("/", 1)[0] for n in tree.names if "/" in n})
    if any(n.startswith("train/") for n in tree.names):
        base = ""
    elif len(tops) == 1 and any(n.startswith(f"{tops[0]}/train/") for n in tree.names):
        base = tops[0] + "/"
    else:
        raise DataError(f"{where} has no train/ folder (top-level folders: {', '.join(tops) or 'none'}); "
                        "expected train/<class>/<image> and val/<class>/<image> or test/..., "
                        "directly or under one top-level folder")

    def files(split: str) -> list[tuple[str, str]]:
        """(class, file name) of every image below ``split/<class>/``, in class order."""
        prefix = base + split + "/"
        return sorted((n[len(prefix):].split("/", 1)[0], n) for n in tree.names
                      if n.startswith(prefix) and n.count("/", len(prefix)) >= 1 and is_image(n))

    train = files("train")
    val_split, val = next(((s, v) for s in ("val", "test") if (v := files(s))), (None, []))
    if not train or val_split is None:
        raise DataError(f"{where}: found {len(train)} train images and no images in val/ or test/; "
                        "expected <class>/<image> folders (jpg, png, ...) under train/ and val/ (or test/)")
    classes = tuple(sorted({c for c, _ in train}))
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({c for c, _ in val} - set(classes))
    if extra:
        raise DataError(f"{where}: {val_split}/ class '{extra[0]}' has no train/ folder; every "
                        f"{val_split} class must also be a train class: add train/{extra[0]}/ or remove it")

    def decode(items: list[tuple[str, str]], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([index[c] for c, _ in items], dtype=torch.int64)
        return decode_images(tree, [n for _, n in items], f"imagefolder {split}"), labels

    return image_data("imagefolder", *decode(train, "train"), *decode(val, val_split), classes)
