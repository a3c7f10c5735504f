"""Loaders of the cross-modal datasets, on real files and on files the tests write."""
import os

import h5py
import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_path
from utils.data import load_dataset
from utils.data.dcmh import HDF5Images, read_dcmh
from utils.data.splits import load_split, permutation_split
from utils.errors import UserError


def write_dcmh_hdf5(path, images, texts, labels):
    """Writes arrays the way MATLAB v7.3 stores them: every axis reversed."""
    with h5py.File(path, "w") as f:
        f["images"] = np.ascontiguousarray(images.T)
        f["YAll"] = np.ascontiguousarray(texts.T)
        f["LAll"] = np.ascontiguousarray(labels.T)


def small_dcmh_arrays(n=12, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 8, 6, 3)).astype(np.uint8)  # h != w catches a swapped transpose
    texts = (rng.rand(n, 7) < 0.3).astype(np.uint8)
    labels = (rng.rand(n, 4) < 0.4).astype(np.uint8)
    return images, texts, labels


def test_hdf5_file_is_transposed_back_and_read_lazily(tmp_path):
    images, texts, labels = small_dcmh_arrays()
    path = str(tmp_path / "set.h5")
    write_dcmh_hdf5(path, images, texts, labels)
    lazy, got_texts, got_labels, mean_image = read_dcmh(path)
    assert isinstance(lazy, HDF5Images) and lazy.shape == images.shape
    assert mean_image is None
    np.testing.assert_array_equal(got_texts, texts)
    np.testing.assert_array_equal(got_labels, labels)
    rows = np.array([5, 1, 5, 11, 0])  # unsorted with a repeat: h5py alone refuses this
    np.testing.assert_array_equal(lazy[rows], images[rows])


def test_hdf5_features_select_feature_images(tmp_path):
    rng = np.random.RandomState(1)
    features = rng.rand(10, 5).astype(np.float32)
    _, texts, labels = small_dcmh_arrays(10)
    path = str(tmp_path / "feat.h5")
    write_dcmh_hdf5(path, features, texts, labels)
    data = load_dataset("flickr", path, split_sizes=(2, 5))
    assert data.image_kind == "features"
    np.testing.assert_allclose(data.images, features)
    images, _, part_labels = data.part("train")
    np.testing.assert_allclose(images, features[data.split.train])
    np.testing.assert_array_equal(part_labels, labels[data.split.train])


def test_v5_folder_of_three_files(tmp_path):
    images, texts, labels = small_dcmh_arrays()
    scipy.io.savemat(tmp_path / "x-iall.mat", {"IAll": images})
    scipy.io.savemat(tmp_path / "x-yall.mat", {"YAll": texts})
    scipy.io.savemat(tmp_path / "x-lall.mat", {"LAll": labels})
    data = load_dataset("nuswide", str(tmp_path), seed=3, split_sizes=(3, 6))
    assert data.image_kind == "images"
    np.testing.assert_array_equal(data.images, images)
    lazy_images, _, _ = data.part("query")
    np.testing.assert_array_equal(np.asarray(lazy_images), images[data.split.query])


def test_dcmh_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_dcmh(str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="iall"):
        read_dcmh(str(tmp_path))
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((3, 4, 4, 2), np.uint8)
        f["YAll"] = np.zeros((5, 2))
    with pytest.raises(UserError, match="no 'LAll'"):
        read_dcmh(path)
    images, texts, labels = small_dcmh_arrays()
    write_dcmh_hdf5(path, images, texts, labels[:-1])
    with pytest.raises(UserError, match="different numbers of rows"):
        read_dcmh(path)


def test_unknown_dataset_is_one_line_error():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_permutation_split_follows_the_dcmh_protocol():
    split = permutation_split(100, 10, 30, seed=7)
    assert len(split.query) == 10 and len(split.train) == 30 and len(split.database) == 90
    assert not set(split.query) & set(split.database)
    assert set(split.train) <= set(split.database)  # the training set lies inside the database
    again = permutation_split(100, 10, 30, seed=7)
    np.testing.assert_array_equal(split.query, again.query)
    with pytest.raises(UserError, match="only 100"):
        permutation_split(100, 60, 60, seed=0)


def test_split_file_round_trip_and_range_check(tmp_path):
    split = permutation_split(50, 5, 20, seed=2)
    path = str(tmp_path / "split.npz")
    split.save(path)
    loaded = load_split(path, 50)
    np.testing.assert_array_equal(loaded.train, split.train)
    with pytest.raises(UserError, match="0..39"):
        load_split(path, 40)


def test_synthetic_default_carries_label_structure_in_both_modalities():
    data = load_dataset("synthetic")
    assert data.image_kind == "features"
    assert len(data.split.query) == 200 and len(data.split.train) == 1000
    assert (data.labels.sum(1) >= 1).all()
    # Items sharing a label are closer in both modalities than items that share none.
    share = (data.labels @ data.labels.T) > 0
    for features in (data.images, data.texts):
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        cosine = unit @ unit.T
        assert cosine[share].mean() > cosine[~share].mean() + 0.05


def test_real_wikipedia_split_and_labels():
    data = load_dataset("wiki", shared_path("data", "wikipedia", "wikiData.mat"))
    assert data.images.shape == (2866, 128) and data.texts.shape == (2866, 10)
    assert data.single_label and data.num_classes == 10
    assert len(data.split.query) == 693 and len(data.split.train) == 2173
    np.testing.assert_array_equal(data.split.train, data.split.database)
    np.testing.assert_array_equal(data.labels.sum(1), 1)


def test_real_mirflickr_tags_and_labels_with_made_features(tmp_path):
    folder = shared_path("data", "mirflickr25k")
    for name in os.listdir(folder):
        os.symlink(os.path.join(folder, name), tmp_path / name)
    labels = scipy.io.loadmat(os.path.join(folder, "mirflickr25k-lall.mat"))["LAll"]
    features = (labels @ np.random.RandomState(0).rand(labels.shape[1], 16)).astype(np.float32)
    scipy.io.savemat(tmp_path / "features-iall.mat", {"IAll": features})
    data = load_dataset("flickr", str(tmp_path), seed=0)
    assert data.texts.shape == (20015, 1386) and data.labels.shape == (20015, 24)
    assert (len(data.split.query), len(data.split.train), len(data.split.database)) == (2000, 10000, 18015)
