"""Turn whatever arrays a user hands us into the one canonical form (uint8 NHWC images, int64 labels).

Everything downstream (training, the store, the no-forgetting check) assumes that form, so every
deviation is either normalised here or rejected with a one-line `DataError` that names the task, the
problem and the fix. Nothing in this module knows about splits or carving.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from mupath.errors import DataError

TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Task names become file names in the store, so they must be short and free of path syntax."""

MAX_INFERRED_CLASSES = 100_000
"""Without class names the class count is max(label)+1; a stray huge label would otherwise make us
build millions of default names. Larger label spaces need explicit class names."""

_LABEL_LIMIT = 2**62
"""Labels beyond this cannot be meaningful class indices and would overflow int64 conversion."""


def data_error(task: str, problem: str, fix: str) -> DataError:
    """Build the one-line error every data problem reports: task, problem, fix.

    Newlines are flattened because the CLI prints the message as a single line.
    """
    message = f"task {task!r}: {problem}; {fix}"
    return DataError(" ".join(message.splitlines()))


def check_task_name(name: Any) -> str:
    """Return `name` if it is safe to use as a file name in the store, else raise `DataError`."""
    if not isinstance(name, str):
        raise data_error(str(name), f"task name must be a string, got {type(name).__name__}",
                         "pass a name such as 'digits'")
    if not TASK_NAME_PATTERN.match(name) or ".." in name:
        raise data_error(name, "invalid task name",
                         "use 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter or "
                         "digit, without '..' (names become file names)")
    return name


def sanitise_task_name(raw: str) -> str:
    """Make a valid task name out of a file or directory stem (used when the user gives no name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw)
    name = re.sub(r"\.{2,}", "_", name).lstrip("_.-")[:64]
    return name or "task"


def as_images(task: str, split: str, images: Any) -> np.ndarray:
    """Normalise images to C-contiguous uint8 (N, H, W, C) with C in {1, 3}.

    Accepts (N,H,W) or (N,H,W,C) with C in {1,3,4} (alpha is dropped), uint8/integers in 0-255, or
    floats in [0, 1] (scaled by 255 and rounded). Refuses anything else instead of guessing.
    """
    array = _as_array(task, f"{split} images", images)
    _check_numeric_dtype(task, f"{split} images", array,
                         "pass uint8 (0-255) or float (0-1) pixel values")
    array = _as_nhwc(task, split, array)
    return np.ascontiguousarray(_to_uint8(task, split, array))


def as_labels(task: str, split: str, labels: Any, expected_length: int) -> np.ndarray:
    """Normalise labels to C-contiguous int64 (N,), refusing non-integral, negative or huge values."""
    array = _as_array(task, f"{split} labels", labels)
    _check_numeric_dtype(task, f"{split} labels", array, "pass integer class indices")
    if array.ndim != 1:
        raise data_error(task, f"{split} labels must be 1-d (N,) but have shape {array.shape}",
                         "pass one integer class index per image, e.g. labels.reshape(-1)")
    if len(array) != expected_length:
        raise data_error(task, f"{split} has {expected_length} images but {len(array)} labels",
                         "pass exactly one label per image")
    if array.dtype.kind == "f" and not _all_integral(array):
        raise data_error(task, f"{split} labels contain non-integer values (e.g. NaN or 1.5)",
                         "pass integer class indices 0..K-1")
    if array.size:
        low, high = array.min(), array.max()
        if low < 0:
            raise data_error(task, f"{split} labels out of range: negative label {_num(low)}",
                             "labels must be class indices 0..K-1; relabel with "
                             "np.unique(labels, return_inverse=True)")
        if high > _LABEL_LIMIT:
            raise data_error(task, f"{split} labels out of range: label {_num(high)} is too large",
                             "relabel to 0..K-1 with np.unique(labels, return_inverse=True)")
    return np.ascontiguousarray(array.astype(np.int64))


def as_class_names(task: str, class_names: Any) -> tuple[str, ...]:
    """Validate user-given class names: a non-string sequence of distinct, non-empty strings."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, (Sequence, np.ndarray)):
        raise data_error(task, "class_names must be a list of strings",
                         "pass e.g. class_names=['cat', 'dog']")
    names = tuple(_decode_name(n) for n in class_names)
    if any(not isinstance(n, str) or not n for n in names):
        raise data_error(task, "class_names must be non-empty strings",
                         "pass e.g. class_names=['cat', 'dog']")
    if len(set(names)) != len(names):
        raise data_error(task, "class_names contain duplicates", "give every class a distinct name")
    return names


def default_class_names(task: str, max_label: int) -> tuple[str, ...]:
    """Name classes "0".."K-1" when the user gives none; K = max label + 1 (bounded, see above)."""
    count = max_label + 1
    if count > MAX_INFERRED_CLASSES:
        raise data_error(task, f"labels out of range: max label {max_label} implies {count} classes",
                         "pass class_names explicitly or relabel to 0..K-1 with "
                         "np.unique(labels, return_inverse=True)")
    return tuple(str(i) for i in range(count))


def _as_array(task: str, what: str, value: Any) -> np.ndarray:
    """np.asarray that turns ragged input into the 'mixed shapes' error instead of a ValueError."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        if _is_ragged(value):
            raise data_error(task, f"{what} have mixed shapes",
                             "all images must share one (H, W, C) size; resize them first") from None
        raise data_error(task, f"{what} cannot be converted to an array ({exc})",
                         "pass a numpy array") from None


def _is_ragged(value: Any) -> bool:
    """True for a sequence whose elements have different shapes (what np.asarray refuses)."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return False
    try:
        shapes = {np.shape(item) for item in value}
    except (ValueError, TypeError):
        return True  # the elements are ragged themselves
    return len(shapes) > 1


def _check_numeric_dtype(task: str, what: str, array: np.ndarray, fix: str) -> None:
    """Allow only real numbers: bool, complex, strings, objects and dates have no pixel meaning."""
    if array.dtype.kind not in "uif":
        raise data_error(task, f"{what} have unsupported dtype {array.dtype}", fix)


def _as_nhwc(task: str, split: str, array: np.ndarray) -> np.ndarray:
    """Bring images to (N,H,W,C), C in {1,3}; reject other layouts and empty splits or sizes."""
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise data_error(task, f"{split} images have shape {array.shape}",
                         "pass (N, H, W) greyscale or (N, H, W, C) with C in {1, 3, 4}")
    if array.shape[0] == 0:
        raise data_error(task, f"{split} split is empty",
                         "provide at least one image (and at least 3 per class when splits "
                         "are carved automatically)")
    if 0 in array.shape[1:3]:
        raise data_error(task, f"{split} images have an empty dimension: shape {array.shape}",
                         "pass images with height and width of at least 1 pixel")
    return array[..., :3] if array.shape[-1] == 4 else array


def _to_uint8(task: str, split: str, array: np.ndarray) -> np.ndarray:
    """Map integer 0-255 or float 0-1 pixels to uint8; out-of-range values are refused, not clipped."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise data_error(task, f"{split} images contain NaN or inf",
                             "replace missing pixels before building the task")
        low, high = array.min(), array.max()
        if low < 0 or high > 1:
            raise data_error(task, f"float {split} images must be in [0, 1] but range is "
                             f"[{_num(low)}, {_num(high)}]",
                             "divide 0-255 data by 255 or pass uint8")
        return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise data_error(task, f"integer {split} images must be in 0-255 but range is "
                         f"[{_num(low)}, {_num(high)}]", "rescale to 0-255 or pass floats in [0, 1]")
    return array.astype(np.uint8)


def _all_integral(array: np.ndarray) -> bool:
    """Float labels are fine only when every value is a finite whole number."""
    return bool(np.isfinite(array).all() and (array == np.floor(array)).all())


def _decode_name(name: Any) -> Any:
    """Class names read from .npz files may be numpy strings or bytes; make them plain str."""
    if isinstance(name, bytes):
        return name.decode("utf-8", errors="replace")
    if isinstance(name, np.str_):
        return str(name)
    return name


def _num(value: Any) -> str:
    """Format a numpy scalar compactly for messages (12 rather than 12.0 or np.int64(12))."""
    number = value.item() if hasattr(value, "item") else value
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:g}" if isinstance(number, float) else str(number)
