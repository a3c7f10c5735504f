"""Streaming batches through tf.data: values, order, shuffling, lazy sources."""
import h5py
import numpy as np
import pytest

from utils.data import LazyRows, load_dataset
from utils.data.dcmh import HDF5Images
from utils.data.pipeline import batch_rows, feature_batches, image_batches
from utils.errors import UserError


def write_images(path, n=23, height=10, width=7, seed=0, items_last=True):
    """A DCMH-layout file (MATLAB axis order) with one image per chunk: the images h x w x 3 x n
    in MATLAB terms as prepare.py and the authors write them, or n x h x w x 3 (items_last=False)."""
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, height, width, 3)).astype(np.uint8)
    labels = (rng.rand(n, 4) < 0.5).astype(np.uint8)
    labels[:, 0] = 1
    with h5py.File(path, "w") as f:
        if items_last:  # h5py: n x 3 x w x h
            f.create_dataset("images", data=np.ascontiguousarray(images.transpose(0, 3, 2, 1)),
                             chunks=(1, 3, width, height))
        else:  # h5py: 3 x w x h x n
            f.create_dataset("images", data=np.ascontiguousarray(images.T), chunks=(3, width, height, 1))
        f["YAll"] = np.ascontiguousarray((rng.rand(n, 5) < 0.5).astype(np.uint8).T)
        f["LAll"] = np.ascontiguousarray(labels.T)
    return images


def collect(dataset):
    batches, rows = zip(*[(b.numpy(), r.numpy()) for b, r in dataset])
    return list(batches), list(rows)


@pytest.mark.parametrize("items_last", [True, False])
def test_batches_equal_direct_reads_minus_the_mean(tmp_path, items_last):
    path = str(tmp_path / "images.h5")
    images = write_images(path, items_last=items_last)
    source = HDF5Images(path, "images")
    mean = np.random.RandomState(1).rand(10, 7, 3).astype(np.float32) * 255
    rows = np.array([22, 3, 3, 0, 17, 9, 4, 11, 5, 6, 1])  # unsorted, with a repeat
    batches, batch_rows_out = collect(image_batches(source, rows, 4, mean))
    assert [len(b) for b in batches] == [4, 4, 3]  # the last batch is short, none dropped
    np.testing.assert_array_equal(np.concatenate(batch_rows_out), rows)  # order kept without shuffle
    got = np.concatenate(batches)
    assert got.dtype == np.float32 and got.shape == (11, 10, 7, 3)
    np.testing.assert_allclose(got, images[rows].astype(np.float32) - mean, rtol=0, atol=1e-4)

    per_channel = np.array([120.0, 110.0, 100.0], np.float32)
    batches, _ = collect(image_batches(source, rows[:5], 5, per_channel))
    np.testing.assert_allclose(batches[0], images[rows[:5]] - per_channel, atol=1e-4)


def test_shuffle_is_a_seeded_permutation(tmp_path):
    path = str(tmp_path / "images.h5")
    images = write_images(path)
    source = HDF5Images(path, "images")
    rows = np.arange(3, 23)
    batches, first = collect(image_batches(source, rows, 6, shuffle_seed=5))
    _, again = collect(image_batches(source, rows, 6, shuffle_seed=5))
    _, other = collect(image_batches(source, rows, 6, shuffle_seed=6))
    order = np.concatenate(first)
    assert sorted(order) == list(rows) and not np.array_equal(order, rows)
    np.testing.assert_array_equal(order, np.concatenate(again))
    assert not np.array_equal(order, np.concatenate(other))
    np.testing.assert_array_equal(order, np.concatenate(batch_rows(rows, 6, 5)))
    np.testing.assert_array_equal(np.concatenate(batches), images[order])  # pixels follow their rows


def test_lazy_row_subset_from_a_loaded_dataset(tmp_path):
    path = str(tmp_path / "images.h5")
    images = write_images(path, n=30)
    data = load_dataset("coco", path, seed=2, split_sizes=(5, 12))
    train_images, _, _ = data.part("train")
    assert isinstance(train_images, LazyRows)
    positions = np.arange(len(train_images))
    batches, rows = collect(image_batches(train_images, positions, 5, np.full(3, 100.0, np.float32)))
    np.testing.assert_array_equal(np.concatenate(rows), positions)
    np.testing.assert_allclose(np.concatenate(batches), images[data.split.train] - 100.0, atol=1e-4)


def test_feature_path_and_bad_mean(tmp_path):
    features = np.random.RandomState(3).rand(17, 6).astype(np.float64)
    rows = np.array([16, 0, 8, 2])
    batches, batch_rows_out = collect(feature_batches(features, rows, 3))
    np.testing.assert_array_equal(np.concatenate(batch_rows_out), rows)
    got = np.concatenate(batches)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, features[rows], rtol=1e-6)
    with pytest.raises(UserError, match="does not fit"):
        image_batches(features, rows, 3, mean_image=np.zeros(5, np.float32))
    with pytest.raises(UserError, match="at least 1"):
        batch_rows(rows, 0)
