"""Reading images for `predict`: image files through PIL, numpy arrays without pickles."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from mupath.errors import DataError


def read_images(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for file in files:
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"input file {file} does not exist")
        if path.suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise DataError(f"cannot read {file.name} as a numeric array ({exc})") from None
            yield str(file), arr
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                key = "images" if "images" in data else data.files[0]
                yield str(file), data[key]
        else:
            from PIL import Image, UnidentifiedImageError
            try:
                with Image.open(path) as img:
                    img = img.convert("L") if img.mode in ("L", "1", "I", "I;16", "P") and img.mode != "P" else img.convert("RGB")
                    yield str(file), np.asarray(img)[None]
            except UnidentifiedImageError:
                raise DataError(f"{file.name} is not an image PIL can read; give PNG/JPEG files or .npy arrays") from None
