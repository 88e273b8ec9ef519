"""Reading images for `predict`: image files through PIL, numpy arrays without pickles."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mupath.errors import DataError


def read_images(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, images) per input file; any unreadable file is a one-line DataError naming it."""
    for file in files:
        path = Path(file).expanduser().resolve()
        if path.is_dir():
            raise DataError(f"input {file} is a folder; give image files (PNG/JPEG) or .npy/.npz arrays")
        if not path.is_file():
            raise DataError(f"input file {file} does not exist")
        if path.suffix in (".npy", ".npz"):
            yield str(file), _read_array(path)
        else:
            yield str(file), _read_picture(path)


def _read_array(path: Path) -> np.ndarray:
    """A numeric array from .npy, or from .npz (its `images` array, else its first), never unpickled."""
    import tokenize
    import zipfile
    import zlib
    try:
        loaded = np.load(path, allow_pickle=False)     # numpy reads the format from the bytes, not the name
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as data:
            if not data.files:
                raise DataError(f"{path.name} holds no arrays; save the images with np.savez(file, images=x)")
            return data["images" if "images" in data.files else data.files[0]]
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile,
            zlib.error) as exc:                # a damaged header fails in numpy's header parser
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path.name} as a numeric array ({reason}); save it with np.save/np.savez "
                        "from a numeric array") from None


def _read_picture(path: Path) -> np.ndarray:
    """One image through PIL, as a batch of one: greyscale kept as one channel, the rest as RGB."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            picture = img.convert("L") if img.mode in ("L", "1", "I", "I;16") else img.convert("RGB")
            return np.asarray(picture)[None]
    except UnidentifiedImageError:
        raise DataError(f"{path.name} is not an image PIL can read; give PNG/JPEG files or .npy arrays") from None
    except OSError as exc:
        raise DataError(f"cannot read the image {path.name} ({exc}); check the file") from None
