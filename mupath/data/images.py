"""Decode PIL images (from files or from a Hugging Face dataset) into one uint8 array per split.

All splits are decoded together so they get the same channel count: greyscale ("L") only when every
image of the task is greyscale, otherwise RGB. Sizes must match exactly: resizing silently would
change what the user's data means, so we ask them to do it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import numpy as np
from PIL import Image

from mupath.data.validate import data_error

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
GREYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

Item = TypeVar("Item")
ImageOpener = Callable[[Item], AbstractContextManager[Image.Image]]


def decode_split_images(task: str, items_by_split: Mapping[str, Sequence[Item]],
                        open_image: ImageOpener, describe: Callable[[Item], str]
                        ) -> dict[str, np.ndarray]:
    """Decode every split's items into uint8 (N, H, W, C) arrays sharing one mode and size.

    `open_image(item)` yields a PIL image (opening a file lazily, so headers can be read without
    decoding); `describe(item)` names an item in error messages. Every split must be non-empty.
    """
    everything = [item for items in items_by_split.values() for item in items]
    modes, size = _scan(task, everything, open_image, describe)
    mode = "L" if modes <= GREYSCALE_MODES else "RGB"
    decoded = _decode(task, everything, open_image, describe, mode, size)
    bounds = np.cumsum([0, *(len(items) for items in items_by_split.values())])
    return {split: decoded[start:stop]
            for split, start, stop in zip(items_by_split, bounds[:-1], bounds[1:])}


def _scan(task: str, items: Sequence[Item], open_image: ImageOpener,
          describe: Callable[[Item], str]) -> tuple[set[str], tuple[int, int]]:
    """Read every image's mode and size (headers only) and insist on a single size."""
    modes: set[str] = set()
    first: tuple[str, tuple[int, int]] | None = None
    for item in items:
        with _reading(task, item, describe), open_image(item) as image:
            modes.add(image.mode)
            if first is None:
                first = (describe(item), image.size)
            elif image.size != first[1]:
                raise data_error(task, f"images must share one size but {first[0]} is "
                                 f"{_wxh(first[1])} and {describe(item)} is {_wxh(image.size)}",
                                 "resize them all to one size first (e.g. with PIL Image.resize)")
    if first is None:
        raise data_error(task, "no images found", "add image files (png, jpg, jpeg, bmp, gif, webp)")
    return modes, first[1]


def _decode(task: str, items: Sequence[Item], open_image: ImageOpener,
            describe: Callable[[Item], str], mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode into a preallocated array: no list of per-image arrays doubles peak memory."""
    width, height = size
    out = np.empty((len(items), height, width, 1 if mode == "L" else 3), dtype=np.uint8)
    for index, item in enumerate(items):
        with _reading(task, item, describe), open_image(item) as image:
            out[index] = np.asarray(image.convert(mode)).reshape(out.shape[1:])
    return out


@contextmanager
def _reading(task: str, item: Item, describe: Callable[[Item], str]) -> Iterator[None]:
    """Turn a decoding failure of one image into a DataError that names the image."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise data_error(task, f"cannot read image {describe(item)} ({exc})",
                         "remove or re-save the broken file") from None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
