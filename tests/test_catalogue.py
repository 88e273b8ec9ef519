"""The offline task catalogue and the stream69 order."""
from __future__ import annotations

import numpy as np
import pytest

import mupath
from mupath.data.catalogue import CATALOGUE, catalogue_markdown
from mupath.errors import ConfigError


def test_stream69_has_69_distinct_tasks_in_a_fixed_order():
    names = mupath.stream_tasks("stream69")
    assert len(names) == 69 == len(set(names))
    assert names[:4] == ["fashion_mnist", "mnist", "digits", "lfw_faces"]
    with pytest.raises(ConfigError, match="unknown stream"):
        mupath.stream_tasks("stream70")


@pytest.mark.parametrize("name", ["split_digits_4_5", "digits_parity", "digits_inverted", "digits_mirrored",
                                  "digits_blurred", "digits_noisy", "digits_tinted", "lfw_faces_inverted"])
def test_catalogue_tasks_transform_their_base(name):
    base = mupath.load_task(next(r for r in CATALOGUE if r["name"] == name)["base"])
    task = mupath.load_task(name)
    assert task.name == name and len(task.test) > 0 and len(task.validation) > 0
    again = mupath.load_task(name)
    assert np.array_equal(task.train.images, again.train.images)          # deterministic
    if name.startswith("split_"):
        assert task.num_classes == 2 and set(np.unique(task.train.labels)) == {0, 1}
        assert len(task.train) < len(base.train)
    elif name.endswith("_parity"):
        assert np.array_equal(task.test.labels, base.test.labels % 2)
    elif name.endswith("_inverted"):
        assert np.array_equal(task.test.images, 255 - base.test.images)
    elif name.endswith("_mirrored"):
        assert np.array_equal(task.test.images, base.test.images[:, :, ::-1])
    elif name.endswith("_tinted"):
        assert task.image_shape[-1] == 3
    else:
        assert not np.array_equal(task.test.images, base.test.images)


def test_permuted_and_rotated_mnist_are_fixed_transformations():
    a, b = mupath.load_task("permuted_mnist_1"), mupath.load_task("permuted_mnist_2")
    assert sorted(a.test.images[0].ravel()) == sorted(b.test.images[0].ravel())   # same pixels, moved
    assert not np.array_equal(a.test.images, b.test.images)
    rot = mupath.load_task("rotated_mnist_180")
    base = mupath.load_task("mnist")
    assert np.abs(rot.test.images.astype(int) - base.test.images[:, ::-1, ::-1].astype(int)).mean() < 2


def test_catalogue_is_documented():
    table = catalogue_markdown()
    assert table.count("\n") == 69 + 1
    docs = (__import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "tasks.md").read_text()
    assert table in docs
