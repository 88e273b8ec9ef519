"""Decoding uploaded parts into image arrays, refusing what could hurt the server before it costs
anything: a pixel limit checked from the header (decompression bombs), `.npy` headers checked against
the bytes that follow (no huge allocation from a lying header), never a pickle, and only a few
well-trodden image formats. The name a client gives a part is never used: no request names a file."""
from __future__ import annotations

import io
import math

import numpy as np

from mupath.errors import DataError
from mupath.serve.errors import ServeError
from mupath.system import prepare_images

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
#: formats PIL may decode here; others (and PIL's rarer plugins) are refused with 415
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def decode_part(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    """The images of one uploaded part: (1, H, W[, 3]) for a picture, the array itself for `.npy`.
    `index` (1-based) names the part in errors."""
    if not data:
        raise ServeError(422, f"file {index} is empty; send PNG/JPEG images or a .npy array")
    if data.startswith(NPY_MAGIC):
        return _decode_npy(data, index, max_pixels)
    if data.startswith(ZIP_MAGIC):
        raise ServeError(415, f"file {index} is a zip/.npz archive; send a .npy array (np.save) or images")
    return _decode_picture(data, index, max_pixels)


def usable_images(images: np.ndarray, index: int, label: str) -> np.ndarray:
    """`images` validated and converted the way `System.predict` does (uint8, N x H x W x C), so the
    server's answers are computed from exactly the same bytes."""
    return checked_images(images, f"file {index}", label)


def checked_images(images: np.ndarray, source: str, label: str, status: int = 422) -> np.ndarray:
    """`usable_images` for any source of images (`source` names it in the error: "file 2", "input
    'images'"); `status`: the code a refusal gets (the Open Inference Protocol answers 400)."""
    try:
        return prepare_images(images, label)
    except DataError as exc:
        raise ServeError(status, f"{source}: {exc}") from None


def check_pixels(height: int, width: int, max_pixels: int, source: str) -> None:
    """A 413 for images over the pixel limit, from their announced size, before any pixel is read."""
    if height * width > max_pixels:
        raise ServeError(413, f"{source} has {height} x {width} pixel images, over the limit of "
                         f"{max_pixels:,} pixels per image")


def _decode_npy(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ServeError(415, f"file {index} is a .npy of format {version}; save it with np.save")
    except ServeError:
        raise
    except (ValueError, SyntaxError, TypeError, OSError, EOFError) as exc:
        raise ServeError(422, f"file {index} has a damaged .npy header ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in "uif":
        raise ServeError(422, f"file {index} holds {dtype} values; images must be numeric (uint8 or float)")
    if len(shape) in (3, 4):
        check_pixels(shape[1], shape[2], max_pixels, f"file {index}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data) - buf.tell():
        raise ServeError(422, f"file {index}: its .npy header announces {expected:,} bytes of data but "
                         f"{len(data) - buf.tell():,} follow (truncated or damaged)")
    buf.seek(0)
    return np.load(buf, allow_pickle=False)


def _decode_picture(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    """One picture as a batch of one: greyscale kept as one channel, the rest as RGB (as `mupath
    predict` reads files). The size is read from the header; pixels are decoded only below the limit."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data), formats=list(PICTURE_FORMATS)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ServeError(413, f"file {index} is a {width} x {height} image, over the limit of "
                                 f"{max_pixels:,} pixels per image")
            pixels = img.convert("L") if img.mode in ("L", "1", "I", "I;16") else img.convert("RGB")
            return np.asarray(pixels)[None]
    except ServeError:
        raise
    except Image.DecompressionBombError:
        raise ServeError(413, f"file {index} is an image over the pixel limit (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ServeError(415, f"file {index} is neither an image ({', '.join(PICTURE_FORMATS)}) nor a .npy "
                         "array") from None
    except Exception as exc:        # a damaged picture can fail anywhere inside a decoder
        raise ServeError(422, f"file {index} is a damaged image ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
