"""Image files read from a folder or a zip: ``FileTree`` lists and reads them, ``decode_images`` decodes them.

``FileTree`` is the one place where archive and file-system errors become user errors: a file that
cannot be read is a one-line ``DataError`` naming it. ``decode_images`` turns a list of its files into
one (N, 3, H, W) uint8 tensor (RGB) and refuses, with a DataError naming the file, an undecodable
image, an animation, or a size that differs from the first image's.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from adprune_core.data.messages import one_line
from adprune_core.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_image(name: str) -> bool:
    """Whether ``name`` is an image file by its suffix, outside hidden folders and macOS zip metadata."""
    parts = name.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and name.lower().endswith(IMAGE_SUFFIXES)


class FileTree:
    """A folder or a zip, read-only: sorted '/'-separated file names relative to it, and their bytes.

    ``fingerprint`` changes when the content may have: a zip's size and mtime, a folder's file count,
    total size and newest mtime. Every file that cannot be read (a zip member with a bad CRC or a
    corrupt deflate stream, a dangling symbolic link, a file without read permission) is a one-line
    ``DataError`` naming it: the one place where archive and file-system errors become user errors.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self._zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"data.root: '{self.path}' is not a readable zip file ({one_line(exc)}); "
                                "point data.root at a folder or a valid .zip") from None
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
            stat = path.stat()
            self.fingerprint = f"zip:{stat.st_size}:{stat.st_mtime_ns}"
        else:
            names, total, newest = [], 0, 0
            for folder, _, filenames in os.walk(path):
                for filename in filenames:
                    full = os.path.join(folder, filename)
                    try:
                        stat = os.stat(full)
                    except OSError as exc:
                        raise self._unreadable(os.path.relpath(full, path), exc) from None
                    names.append(os.path.relpath(full, path).replace(os.sep, "/"))
                    total, newest = total + stat.st_size, max(newest, stat.st_mtime_ns)
            self.names = sorted(names)
            self.fingerprint = f"dir:{len(names)}:{total}:{newest}"
        self.name_set = set(self.names)

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            # BadZipFile: a bad CRC-32; zlib.error: a corrupt deflate stream; EOFError: a cut-off member;
            # NotImplementedError: an unsupported compression; RuntimeError: an encrypted member
            raise self._unreadable(name, exc) from None

    def _unreadable(self, name: str, exc: BaseException) -> DataError:
        if self._zip is not None:
            return DataError(f"data.root: cannot read '{name}' from the zip '{self.path}' ({one_line(exc)}); the zip "
                             "is damaged: download or build it again, or point data.root at a sound copy")
        full = self.path / name
        if full.is_symlink() and not full.exists():
            return DataError(f"data.root: '{full}' is a symbolic link to '{os.readlink(full)}', which does not "
                             "exist; fix the link or delete it")
        return DataError(f"data.root: cannot read '{full}' ({one_line(exc)}); make it readable or delete it")

    def read_text(self, name: str) -> str:
        return self.read(name).decode("utf-8", errors="replace")

    def __enter__(self) -> FileTree:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip is not None:
            self._zip.close()


def decode_images(tree: FileTree, names: list[str], what: str) -> torch.Tensor:
    """Decode ``names`` from ``tree`` as RGB into one (N, 3, H, W) uint8 tensor; all must share one size."""
    from torchvision.io import ImageReadMode, decode_image

    out: torch.Tensor | None = None
    # Serial on purpose: decoding a small JPEG takes ~20 us, and threads only add GIL contention.
    with warnings.catch_warnings(), tqdm(total=len(names), desc=f"decoding {what}", unit="img",
                                         disable=None, leave=False) as bar:
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # torchvision 0.29+
        for i, name in enumerate(names):
            try:
                raw = torch.frombuffer(bytearray(tree.read(name)), dtype=torch.uint8)
                image = decode_image(raw, mode=ImageReadMode.RGB)
            except (RuntimeError, ValueError) as exc:
                raise DataError(f"{what}: cannot decode '{name}' in '{tree.path}' ({one_line(exc)}); "
                                "replace or delete that file") from None
            if image.dim() != 3:  # (frames, C, H, W): an animated GIF or WebP
                raise DataError(f"{what}: '{name}' in '{tree.path}' is an animation of {image.shape[0]} frames, "
                                "not a still image; save its first frame as PNG or JPEG, or delete it")
            if out is None:
                out = torch.empty((len(names), *image.shape), dtype=torch.uint8)
            elif image.shape != out.shape[1:]:
                raise DataError(f"{what}: '{name}' in '{tree.path}' is {image.shape[2]}x{image.shape[1]} "
                                f"pixels but the first image is {out.shape[3]}x{out.shape[2]}; all images "
                                "must have one size: resize them first")
            out[i] = image
            if i % 512 == 511:
                bar.update(512)
        bar.update(len(names) - bar.n)
    assert out is not None, "callers pass at least one file"
    return out
