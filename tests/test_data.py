"""Tests for mupath.data: tasks, normalisation, carving, sources and the flat-array roundtrip."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mupath.data import (BUILTIN_TASKS, Split, Task, limit_train, load_task, task_from_arrays_dict,
                         task_to_arrays)
from mupath.data.builtin import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from mupath.data.idx import parse_idx, read_idx
from mupath.data.validate import sanitise_task_name
from mupath.errors import ConfigError, DataError


def expected_carve_sizes(labels: np.ndarray, fraction: float) -> int:
    """Independent statement of the carving rule: round(f*count), >= 1 when count >= 3."""
    counts = np.bincount(labels)
    return sum(max(int(np.floor(fraction * c + 0.5)), 1 if c >= 3 else 0) for c in counts)


def indexed_images(n: int) -> np.ndarray:
    """Images whose pixels encode their own index, so splits can be traced back to inputs."""
    index = np.arange(n)
    return np.stack([index % 256, index // 256], axis=1).astype(np.uint8).reshape(n, 1, 2)


def image_ids(split: Split) -> set[int]:
    flat = split.images.reshape(len(split), 2).astype(int)
    return set((flat[:, 0] + 256 * flat[:, 1]).tolist())


def make_task(n_per_class: int = 10, classes: int = 3, seed: int = 0, **kwargs) -> Task:
    labels = np.repeat(np.arange(classes), n_per_class)
    return Task.from_arrays("toy", indexed_images(len(labels)), labels, seed=seed, **kwargs)


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# --- built-in tasks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape, classes, total", [
    ("digits", (8, 8, 1), 10, 1797),
    ("mnist", (28, 28, 1), 10, 5000),
    ("lfw_faces", (25, 25, 1), 2, 200),
])
def test_carved_builtin_loads_with_expected_shapes_and_split_sizes(name, shape, classes, total):
    task = load_task(name)
    assert task.name == name and task.image_shape == shape and task.num_classes == classes
    labels = np.concatenate([s.labels for s in task.splits.values()])
    assert len(labels) == total
    assert len(task.test) == expected_carve_sizes(labels, 0.2)
    remainder = np.concatenate([task.train.labels, task.validation.labels])
    assert len(task.validation) == expected_carve_sizes(remainder, 0.1)
    assert all(s.images.dtype == np.uint8 and s.images.flags.c_contiguous
               for s in task.splits.values())
    assert task.train.images.max() > 200  # rescaled to the full 0-255 range, not left at 0-16 / 0-1


def test_lfw_faces_class_names_and_balance():
    task = load_task("lfw_faces")
    assert task.class_names == ("not_face", "face")
    all_labels = np.concatenate([s.labels for s in task.splits.values()])
    assert np.bincount(all_labels).tolist() == [100, 100]


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_uses_official_test_split_and_carves_validation():
    task = load_task("fashion_mnist")
    assert task.class_names == FASHION_MNIST_CLASSES
    assert task.image_shape == (28, 28, 1)
    assert (len(task.train), len(task.validation), len(task.test)) == (54000, 6000, 10000)
    assert np.bincount(task.test.labels).tolist() == [1000] * 10


def test_fashion_mnist_missing_files_says_how_to_install(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_fashion_mnist(tmp_path)
    assert_one_line_error(excinfo, "apt-get install dataset-fashion-mnist", "make demo")


def test_builtin_names_are_described():
    assert set(BUILTIN_TASKS) == {"fashion_mnist", "mnist", "digits", "lfw_faces"}
    assert all(BUILTIN_TASKS.values())


def test_idx_reader_parses_header_and_rejects_bad_files(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 4) + data.tobytes()))
    assert np.array_equal(read_idx(path), data)
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)
    with pytest.raises(DataError, match="header says"):
        parse_idx(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x01")


# --- carving ---------------------------------------------------------------------------------------


def test_carving_is_deterministic_per_seed():
    assert load_task("digits", seed=3) == load_task("digits", seed=3)
    first, other = make_task(seed=1), make_task(seed=2)
    assert image_ids(first.test) != image_ids(other.test)


def test_carving_is_stratified_every_digit_class_in_every_split():
    task = load_task("digits")
    for split in task.splits.values():
        assert set(split.labels.tolist()) == set(range(10))


def test_carved_splits_partition_the_input():
    task = make_task(n_per_class=10, classes=3)
    ids = [image_ids(s) for s in task.splits.values()]
    assert sum(map(len, ids)) == 30 and set().union(*ids) == set(range(30))
    assert [len(s) for s in task.splits.values()] == [21, 3, 6]  # test 2/class, val 1/class


def test_given_splits_are_kept_and_only_missing_ones_carved():
    images, labels = indexed_images(40), np.tile([0, 1], 20)
    task = Task.from_arrays("toy", images[:30], labels[:30], test=(images[30:], labels[30:]))
    assert image_ids(task.test) == set(range(30, 40))
    assert len(task.train) + len(task.validation) == 30


def test_small_classes_keep_at_least_one_image_per_carved_split():
    task = make_task(n_per_class=4, classes=2)  # round(0.2*4)=1 test, round(0.1*3)=0 -> 1 val
    assert [sorted(s.labels.tolist()) for s in task.splits.values()] == [[0, 0, 1, 1], [0, 1], [0, 1]]


def test_max_train_keeps_a_stratified_deterministic_subset():
    task = load_task("digits", max_train=100)
    full = load_task("digits")
    assert len(task.train) == 100 and set(task.train.labels.tolist()) == set(range(10))
    assert task.test == full.test and task.validation == full.validation
    assert task == load_task("digits", max_train=100)
    assert load_task("digits", max_train=10**6).train == full.train


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_bad_max_train_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        limit_train(make_task(), bad)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"val_fraction": 0.0},
                                    {"test_fraction": 1.0}, {"test_fraction": "0.2"}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        make_task(**kwargs)


# --- normalisation ---------------------------------------------------------------------------------


def test_float_images_are_scaled_and_rounded_to_uint8():
    images = np.array([0.0, 0.5, 1.0, 0.2]).reshape(4, 1, 1)
    task = Task.from_arrays("f", np.repeat(images, 5, axis=0), np.tile([0, 1], 10))
    values = set(np.concatenate([s.images.ravel() for s in task.splits.values()]).tolist())
    assert values == {0, 128, 255, 51}


def test_rgba_alpha_is_dropped_and_greyscale_gets_a_channel_axis():
    rgba = np.zeros((20, 2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert Task.from_arrays("rgba", rgba, np.tile([0, 1], 10)).image_shape == (2, 2, 3)
    grey = np.zeros((20, 2, 3), dtype=np.int16)
    assert Task.from_arrays("grey", grey, np.tile([0, 1], 10)).image_shape == (2, 3, 1)


def test_integral_float_labels_and_default_class_names():
    task = Task.from_arrays("t", np.zeros((30, 2, 2), np.uint8), np.tile([0.0, 1.0, 4.0], 10))
    assert task.class_names == ("0", "1", "2", "3", "4")
    assert task.train.labels.dtype == np.int64


def test_ragged_list_of_images_is_a_mixed_shapes_error():
    images = [np.zeros((4, 4), np.uint8)] * 5 + [np.zeros((5, 5), np.uint8)] * 5
    with pytest.raises(DataError) as excinfo:
        Task.from_arrays("ragged", images, np.tile([0, 1], 5))
    assert_one_line_error(excinfo, "'ragged'", "mixed shapes", "resize")


def _ok_images(n=20):
    return np.zeros((n, 4, 4), np.uint8)


def _ok_labels(n=20):
    return np.tile([0, 1], n // 2)


BAD_CASES = {
    "label too large": (dict(labels=np.tile([0, 12], 10), class_names=[str(i) for i in range(10)]),
                        ["out of range", "max label 12 but 10 classes", "13 entries"]),
    "negative label": (dict(labels=np.tile([0, -1], 10)), ["negative"]),
    "empty train": (dict(images=np.zeros((0, 4, 4), np.uint8), labels=np.zeros(0, int)), ["empty"]),
    "length mismatch": (dict(labels=np.tile([0, 1], 9)), ["20 images but 18 labels"]),
    "mixed shapes between splits": (dict(test=(np.zeros((4, 5, 5), np.uint8), [0, 1, 0, 1])),
                                    ["mixed shapes"]),
    "NaN": (dict(images=np.full((20, 4, 4), np.nan)), ["NaN"]),
    "inf": (dict(images=np.full((20, 4, 4), np.inf, np.float32)), ["inf"]),
    "float out of range": (dict(images=np.full((20, 4, 4), 255.0)), ["[0, 1]", "divide"]),
    "int out of range": (dict(images=np.full((20, 4, 4), 256, np.int32)), ["0-255"]),
    "one class": (dict(labels=np.zeros(20, int)), ["only one class"]),
    "bool images": (dict(images=np.zeros((20, 4, 4), bool)), ["dtype bool"]),
    "complex images": (dict(images=np.zeros((20, 4, 4), complex)), ["dtype complex"]),
    "object images": (dict(images=np.empty((20, 4, 4), object)), ["dtype object"]),
    "2-d images": (dict(images=np.zeros((20, 16), np.uint8)), ["shape (20, 16)"]),
    "5-d images": (dict(images=np.zeros((20, 2, 2, 2, 1), np.uint8)), ["shape"]),
    "two channels": (dict(images=np.zeros((20, 4, 4, 2), np.uint8)), ["C in {1, 3, 4}"]),
    "fractional labels": (dict(labels=np.tile([0.0, 1.5], 10)), ["non-integer"]),
    "NaN labels": (dict(labels=np.tile([0.0, np.nan], 10)), ["non-integer"]),
    "2-d labels": (dict(labels=np.zeros((20, 1), int)), ["1-d"]),
    "bool labels": (dict(labels=np.tile([False, True], 10)), ["dtype bool"]),
    "duplicate class names": (dict(class_names=["a", "a"]), ["duplicates"]),
    "huge label": (dict(labels=np.tile([0, 10**9], 10)), ["out of range", "class_names"]),
    "carved split empty": (dict(images=_ok_images(4), labels=[0, 0, 1, 1]),
                           ["test (carved from train) split is empty", "at least 3 images"]),
    "val not a pair": (dict(val=np.zeros((4, 4, 4))), ["(images, labels) pair"]),
    "slash in name": (dict(name="a/b"), ["invalid task name"]),
    "dot dot name": (dict(name=".."), ["invalid task name"]),
    "dot dot inside name": (dict(name="a..b"), ["invalid task name"]),
    "empty name": (dict(name=""), ["invalid task name"]),
    "long name": (dict(name="x" * 65), ["invalid task name"]),
    "name starting with dash": (dict(name="-x"), ["invalid task name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_raises_one_line_data_error(case):
    overrides, fragments = BAD_CASES[case]
    args = dict(name="bad_task", images=_ok_images(), labels=_ok_labels()) | overrides
    with pytest.raises(DataError) as excinfo:
        Task.from_arrays(args.pop("name"), args.pop("images"), args.pop("labels"), **args)
    name_fragment = [] if "name" in case else ["task 'bad_task'"]
    assert_one_line_error(excinfo, *name_fragment, *fragments)


def test_split_checks_canonical_form_when_built_directly():
    with pytest.raises(DataError):
        Split(np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(DataError):
        Split(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int64))


def test_sanitise_task_name_produces_valid_names():
    assert sanitise_task_name("my data (v2)") == "my_data__v2_"
    assert sanitise_task_name("../..") == "task"
    assert sanitise_task_name(".hidden..x") == "hidden_x"


# --- flat array roundtrip --------------------------------------------------------------------------


def test_task_arrays_roundtrip_is_exact():
    task = load_task("lfw_faces")
    arrays = task_to_arrays(task)
    assert sorted(arrays) == sorted(f"{s}.{f}" for s in ("train", "validation", "test")
                                    for f in ("images", "labels"))
    back = task_from_arrays_dict(task.name, arrays, task.class_names, task.source)
    assert back == task
    for key, array in task_to_arrays(back).items():
        assert array.dtype == arrays[key].dtype and np.array_equal(array, arrays[key])


def test_task_from_arrays_dict_reports_missing_keys_and_revalidates():
    arrays = task_to_arrays(make_task())
    with pytest.raises(DataError, match="missing keys"):
        task_from_arrays_dict("toy", {k: v for k, v in arrays.items() if k != "test.labels"},
                              ("0", "1", "2"), "x")
    with pytest.raises(DataError, match="out of range"):
        task_from_arrays_dict("toy", arrays, ("0", "1"), "x")


# --- path sources ----------------------------------------------------------------------------------


def write_png(path: Path, value: int, size=(4, 3), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(channels, value, np.uint8), mode).save(path)


def test_flat_image_folder_source(tmp_path):
    root = tmp_path / "my shapes"
    for c, cls in enumerate(["circle", "square"]):
        for i in range(10):
            write_png(root / cls / f"{i}.png", 10 * c + i)
    (root / "notes.txt").write_text("ignored")
    task = load_task(str(root))
    assert task.name == "my_shapes" and task.class_names == ("circle", "square")
    assert task.image_shape == (3, 4, 1)
    assert sum(len(s) for s in task.splits.values()) == 20
    pixels = {int(img[0, 0, 0]): int(label) for s in task.splits.values()
              for img, label in zip(s.images, s.labels)}
    assert pixels == {v: (0 if v < 10 else 1) for v in range(20)}


def test_split_image_folder_source_with_rgb(tmp_path):
    for split, count in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(count):
                write_png(tmp_path / "ds" / split / cls / f"{i}.png", 50, mode="RGB" if i else "L")
    task = load_task(str(tmp_path / "ds"), name="split_ds")
    assert task.name == "split_ds" and task.image_shape == (3, 4, 3)
    assert len(task.test) == 4 and len(task.train) + len(task.validation) == 12


def test_image_folder_with_mixed_sizes_asks_for_resizing(tmp_path):
    write_png(tmp_path / "d" / "a" / "1.png", 0, size=(4, 4))
    write_png(tmp_path / "d" / "b" / "1.png", 0, size=(5, 4))
    with pytest.raises(DataError) as excinfo:
        load_task(str(tmp_path / "d"))
    assert_one_line_error(excinfo, "share one size", "resize")


def test_image_folder_with_an_empty_class_folder_is_an_error(tmp_path):
    for i in range(5):
        write_png(tmp_path / "d" / "a" / f"{i}.png", i)
        write_png(tmp_path / "d" / "b" / f"{i}.png", i)
    (tmp_path / "d" / "c").mkdir()
    (tmp_path / "d" / "c" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError) as excinfo:
        load_task(str(tmp_path / "d"))
    assert_one_line_error(excinfo, "['c']", "contain no images")


def test_npz_source(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.random.default_rng(0).random((30, 5, 5)), y_train=np.tile([0, 1, 2], 10),
             x_test=np.zeros((6, 5, 5)), y_test=np.tile([0, 1, 2], 2),
             class_names=np.array(["x", "y", "z"]))
    task = load_task(str(path))
    assert task.name == "data" and task.class_names == ("x", "y", "z")
    assert len(task.test) == 6 and len(task.train) + len(task.validation) == 30
    alias = tmp_path / "alias.npz"
    np.savez(alias, images=np.zeros((20, 3, 3), np.uint8), labels=np.tile([0, 1], 10))
    assert load_task(str(alias)).num_classes == 2


@pytest.mark.parametrize("arrays, fragment", [
    (dict(x_train=np.array([object()] * 20), y_train=np.tile([0, 1], 10)), "unpickling"),
    (dict(x_train=np.zeros((20, 3, 3))), "no y_train"),
    (dict(pixels=np.zeros((20, 3, 3))), "no training arrays"),
    (None, "single array"),
])
def test_bad_npz_sources(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    if arrays is None:  # a plain .npy file that only looks like an .npz
        with open(path, "wb") as stream:
            np.save(stream, np.zeros(3))
    else:
        np.savez(path, **arrays)
    with pytest.raises(DataError) as excinfo:
        load_task(str(path))
    assert_one_line_error(excinfo, fragment)


def test_unknown_source_lists_builtins_and_path_kinds(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_task(str(tmp_path / "nope"))
    assert_one_line_error(excinfo, "digits", "fashion_mnist", ".npz", "Hugging Face")
    (tmp_path / "file.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported file"):
        load_task(str(tmp_path / "file.csv"))


def test_hugging_face_save_to_disk_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})

    def make(n: int):
        images = [Image.fromarray(np.full((6, 6, 3), i, np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict({"img": images, "label": [i % 2 for i in range(n)]},
                                          features=features)

    datasets.DatasetDict({"train": make(20), "test": make(6)}).save_to_disk(str(tmp_path / "dd"))
    task = load_task(str(tmp_path / "dd"))
    assert task.name == "dd" and task.class_names == ("cat", "dog")
    assert task.image_shape == (6, 6, 3) and len(task.test) == 6
    make(20).save_to_disk(str(tmp_path / "single"))
    single = load_task(str(tmp_path / "single"), seed=1)
    assert sum(len(s) for s in single.splits.values()) == 20 and single.num_classes == 2


# --- property test ---------------------------------------------------------------------------------

VALID_DTYPES = [np.uint8, np.int16, np.int64, np.float32, np.float64]
INVALID_DTYPES = [np.bool_, np.complex64]


def often(draw, valid, invalid):
    """Mostly valid values, so the invariants get checked; sometimes a corruption."""
    return draw(st.sampled_from([valid] * 4 + [invalid]))


@st.composite
def raw_task_inputs(draw):
    """Random images/labels/class names: mostly well-formed, each part occasionally corrupted."""
    dtype = np.dtype(draw(st.sampled_from(often(draw, VALID_DTYPES, INVALID_DTYPES))))
    n = draw(st.integers(0, 30))
    channels = draw(st.sampled_from(often(draw, [(), (1,), (3,), (4,)], [(2,), (5,)])))
    height = draw(st.integers(*often(draw, (1, 3), (0, 0))))
    shape = (n, height, draw(st.integers(1, 3)), *channels)
    shape = often(draw, shape, shape[1:])  # wrong ndim
    if dtype.kind == "f":
        elements = st.floats(0, 1, width=dtype.itemsize * 8)
        elements = often(draw, elements, elements | st.sampled_from([-0.25, 1.25, np.nan, np.inf]))
    elif dtype.kind == "i":
        elements = often(draw, st.integers(0, 255), st.integers(-2, 260))
    else:
        elements = None
    images = draw(hnp.arrays(dtype, shape, elements=elements))
    label_count = max(0, n + often(draw, 0, draw(st.sampled_from([1, -1]))))
    classes = draw(st.integers(2, 4))
    if often(draw, True, False):
        labels = draw(hnp.arrays(np.int64, label_count, elements=st.integers(
            *often(draw, (0, classes - 1), (-1, classes + 1)))))
    else:
        labels = draw(hnp.arrays(np.float64, label_count,
                                 elements=st.sampled_from([0.0, 1.0, 2.5, 3.0, np.nan])))
    class_names = draw(st.none() | st.lists(st.text("abc", min_size=1, max_size=3),
                                            min_size=classes - 1, max_size=classes + 1))
    return images, labels, class_names


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_task_inputs(), st.integers(0, 3))
def test_from_arrays_gives_a_valid_task_or_a_data_error(inputs, seed):
    images, labels, class_names = inputs
    try:
        task = Task.from_arrays("prop", images, labels, class_names=class_names, seed=seed)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    shapes = {split.images.shape[1:] for split in task.splits.values()}
    assert len(shapes) == 1 and next(iter(shapes))[-1] in (1, 3)
    for split in task.splits.values():
        assert split.images.dtype == np.uint8 and split.images.ndim == 4 and len(split) > 0
        assert split.labels.dtype == np.int64
        assert 0 <= split.labels.min() and split.labels.max() < task.num_classes
    assert len(set(task.train.labels.tolist())) >= 2


@st.composite
def well_formed_inputs(draw):
    """Valid inputs with >= 4 images per class: carving must always succeed on these."""
    counts = draw(st.lists(st.integers(4, 8), min_size=2, max_size=4))
    labels = np.array(draw(st.permutations(np.repeat(np.arange(len(counts)), counts).tolist())))
    dtype = np.dtype(draw(st.sampled_from(VALID_DTYPES)))
    shape = (len(labels), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
             *draw(st.sampled_from([(), (1,), (3,), (4,)])))
    elements = (st.floats(0, 1, width=dtype.itemsize * 8) if dtype.kind == "f"
                else st.integers(0, 255))
    return draw(hnp.arrays(dtype, shape, elements=elements)), labels


@settings(max_examples=40, deadline=None)
@given(well_formed_inputs(), st.integers(0, 3))
def test_well_formed_arrays_always_give_a_task_with_every_class_in_every_split(inputs, seed):
    images, labels = inputs
    task = Task.from_arrays("prop", images, labels, seed=seed)
    assert sum(len(s) for s in task.splits.values()) == len(labels)
    assert task.image_shape[:2] == images.shape[1:3] and task.image_shape[2] in (1, 3)
    for split in task.splits.values():
        assert set(split.labels.tolist()) == set(range(task.num_classes))
    assert task == Task.from_arrays("prop", images, labels, seed=seed)


def test_a_class_only_in_validation_or_test_is_refused():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 4
    with pytest.raises(DataError, match=r"validation has labels never seen in training \(c7\)"):
        Task.from_arrays("t", x, y, val=(x[:8], np.full(8, 7)), test=(x[:8], y[:8]),
                         class_names=[f"c{i}" for i in range(8)])
    task = Task.from_arrays("t", x, y, val=(x[:8], y[:8]), test=(x[:8], y[:8]),
                            class_names=[f"c{i}" for i in range(8)])     # unused class names stay allowed
    assert task.num_classes == 8


def test_a_train_cap_below_the_class_count_is_a_settings_error(digits_small):
    with pytest.raises(ConfigError, match="max_train 5 is below the 10 classes"):
        limit_train(digits_small, 5)
    assert len(np.unique(limit_train(digits_small, 10).train.labels)) == 10
