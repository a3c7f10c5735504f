"""Loaders of the cross-modal datasets, on real files and on files the tests write."""
import os

import h5py
import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_path
from utils.data import load_dataset
from utils.data import dcmh
from utils.data.pipeline import DEVICE_ALIGNMENT
from utils.data.dcmh import HDF5Images, read_dcmh
from utils.data.splits import load_split, permutation_split
from utils.errors import UserError


def write_dcmh_hdf5(path, images, texts, labels):
    """Writes MATLAB N x h x w x 3 images (items first) the way MATLAB v7.3 stores them:
    every axis reversed. (Earlier versions of prepare.py wrote this layout.)"""
    with h5py.File(path, "w") as f:
        f["images"] = np.ascontiguousarray(images.T)
        f["YAll"] = np.ascontiguousarray(texts.T)
        f["LAll"] = np.ascontiguousarray(labels.T)


def write_program_layout_hdf5(path, images, texts, labels, image_key="images"):
    """Writes a file exactly as the SSAH program's loader reads it: it takes h5py's `images`
    (N x 3 x w x h; MATLAB h x w x 3 x N, items on the LAST axis) through transpose(0, 3, 2, 1)
    to N x h x w x 3, and `YAll` / `LAll` (d x N, c x N) through transpose(1, 0)."""
    stored = np.ascontiguousarray(images.transpose(0, 3, 2, 1))
    with h5py.File(path, "w") as f:
        f[image_key] = stored
        f["YAll"] = np.ascontiguousarray(texts.T)
        f["LAll"] = np.ascontiguousarray(labels.T)
    with h5py.File(path, "r") as f:  # the program's own reading gives back the images
        np.testing.assert_array_equal(f[image_key][:].transpose(0, 3, 2, 1), images)
        np.testing.assert_array_equal(f["LAll"][:].transpose(1, 0), labels)


def small_dcmh_arrays(n=12, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 8, 6, 3)).astype(np.uint8)  # h != w catches a swapped transpose
    texts = (rng.rand(n, 7) < 0.3).astype(np.uint8)
    labels = (rng.rand(n, 4) < 0.4).astype(np.uint8)
    labels[np.arange(n), np.arange(n) % 4] = 1  # every item labelled, as the standard protocols keep
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


@pytest.mark.slow
def test_validation_items_are_held_out_of_training_and_never_queries(tmp_path):
    data = load_dataset("synthetic", validation_size=100, seed=3)
    whole = load_dataset("synthetic", seed=3)
    split = data.split
    assert len(split.validation) == 100 and len(split.train) == len(whole.split.train) - 100
    np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.validation])),
                                  np.sort(whole.split.train))
    assert not set(split.validation) & set(split.query)
    np.testing.assert_array_equal(split.query, whole.split.query)        # queries untouched
    np.testing.assert_array_equal(split.database, whole.split.database)  # test protocol untouched
    ranked = split.validation_database
    assert not set(ranked) & set(split.validation) and len(ranked) == len(split.database) - 100
    assert data.part("validation")[0].shape == (100, data.images.shape[1])
    again = load_dataset("synthetic", validation_size=100, seed=3)
    np.testing.assert_array_equal(again.split.validation, split.validation)
    # Saved and reloaded with the split, refused when it would overlap training or be carved twice.
    path = str(tmp_path / "split.npz")
    split.save(path)
    np.testing.assert_array_equal(load_split(path, len(data.labels)).validation, split.validation)
    with pytest.raises(UserError, match="already holds 100 validation"):
        load_dataset("synthetic", split_file=path, validation_size=10)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, query=split.query, train=whole.split.train, database=split.database, validation=split.validation)
    with pytest.raises(UserError, match="both a validation and a train item"):
        load_split(bad, len(data.labels))
    with pytest.raises(UserError, match="leaves no training items"):
        load_dataset("synthetic", validation_size=len(whole.split.train))


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


# ----------------------------------------------------------------------------- the authors' layout

@pytest.mark.parametrize("n", [12, 8])  # 8 = the image height: two axes have the item count
def test_file_in_the_layout_the_program_reads_gives_its_images(tmp_path, n):
    images, texts, labels = small_dcmh_arrays(n)  # 8 x 6 images: a swapped height/width shows
    path = str(tmp_path / "authors.mat")
    write_program_layout_hdf5(path, images, texts, labels)
    lazy, got_texts, got_labels, _ = read_dcmh(path)
    assert isinstance(lazy, HDF5Images) and lazy.shape == images.shape
    rows = np.array([5, 1, 5, n - 1, 0])
    np.testing.assert_array_equal(lazy[rows], images[rows])
    np.testing.assert_array_equal(got_texts, texts)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_texts.ctypes.data % DEVICE_ALIGNMENT == 0  # the device shares it (pipeline.device_matrix)
    data = load_dataset("flickr", path, seed=1, split_sizes=(2, 4))
    part_images, _, part_labels = data.part("query")
    np.testing.assert_array_equal(part_images[np.arange(2)], images[data.split.query])
    np.testing.assert_array_equal(part_labels, labels[data.split.query])
    # Without an item count given, HDF5Images takes it from the file's LAll.
    np.testing.assert_array_equal(HDF5Images(path, "images")[rows], images[rows])


class CountingDataset:
    """An h5py dataset that counts the reads made of it."""

    def __init__(self, dataset):
        self.dataset, self.chunks, self.reads = dataset, dataset.chunks, 0

    def __getitem__(self, index):
        self.reads += 1
        return self.dataset[index]


@pytest.mark.parametrize("items_first_in_file", [True, False])
@pytest.mark.parametrize("storage", dcmh.STORAGE_KINDS)
def test_image_reads_choose_their_strategy_by_the_files_storage(tmp_path, storage, items_first_in_file):
    """Every storage kind in both layouts: the rows read (unsorted, repeated) are the images;
    contiguous: one selection of all rows; one item a chunk: a read per row; several items a
    chunk: one read per chunk that holds wanted rows."""
    images, texts, labels = small_dcmh_arrays(40)
    path = str(tmp_path / "images.h5")
    with h5py.File(path, "w") as f:
        dataset = dcmh.write_images(f, "images", images, items_first_in_file, storage, items_per_chunk=16)
        f["YAll"], f["LAll"] = np.ascontiguousarray(texts.T), np.ascontiguousarray(labels.T)
        item_chunk = None if dataset.chunks is None else dataset.chunks[0 if items_first_in_file else 3]
    lazy = HDF5Images(path, "images")
    assert lazy.items_first_in_file == items_first_in_file and lazy.shape == images.shape
    expected_plan = "selection" if item_chunk is None else "rows" if item_chunk == 1 else "spans"
    assert lazy.read_plan == expected_plan
    assert storage != "chunked" or (expected_plan, item_chunk) == ("spans", 16)
    assert storage != "chunked per image" or expected_plan == "rows"
    rows = np.array([33, 2, 17, 2, 39, 0, 18, 5])
    counting = CountingDataset(lazy._dataset())
    lazy._dataset = lambda: counting
    np.testing.assert_array_equal(lazy[rows], images[rows])
    wanted = np.unique(rows)
    expected_reads = {"selection": 1, "rows": len(wanted),
                      "spans": len(np.unique(wanted // (item_chunk or 1)))}[expected_plan]
    assert counting.reads == expected_reads
    np.testing.assert_array_equal(lazy[[7]], images[[7]])
    assert lazy[np.zeros(0, np.int64)].shape == (0,) + images.shape[1:]


def test_items_first_file_with_as_many_items_as_channels_still_reads(tmp_path):
    images, texts, labels = small_dcmh_arrays(3)  # MATLAB 3 x 8 x 6 x 3: first and last axis are 3
    path = str(tmp_path / "three.h5")
    write_dcmh_hdf5(path, images, texts, labels)
    np.testing.assert_array_equal(read_dcmh(path)[0][np.arange(3)], images)


def test_folder_images_in_either_layout(tmp_path):
    images, texts, labels = small_dcmh_arrays()
    scipy.io.savemat(tmp_path / "x-yall.mat", {"YAll": texts})
    scipy.io.savemat(tmp_path / "x-lall.mat", {"LAll": labels})
    # v5: scipy keeps MATLAB's order, so the authors' layout is h x w x 3 x N.
    scipy.io.savemat(tmp_path / "x-iall.mat", {"IAll": np.ascontiguousarray(images.transpose(1, 2, 3, 0))})
    np.testing.assert_array_equal(read_dcmh(str(tmp_path))[0], images)
    # v7.3 (HDF5 inside the .mat): read lazily, as from the single file.
    os.remove(tmp_path / "x-iall.mat")
    with h5py.File(tmp_path / "x-iall.mat", "w") as f:
        f["IAll"] = np.ascontiguousarray(images.transpose(0, 3, 2, 1))
    lazy = read_dcmh(str(tmp_path))[0]
    assert isinstance(lazy, HDF5Images)
    np.testing.assert_array_equal(lazy[np.arange(len(images))], images)
    # Features stored d x N are turned to N x d as well.
    features = np.random.RandomState(2).rand(len(images), 5).astype(np.float32)
    os.remove(tmp_path / "x-iall.mat")
    scipy.io.savemat(tmp_path / "x-iall.mat", {"IAll": features.T})
    np.testing.assert_array_equal(read_dcmh(str(tmp_path))[0], features)


def test_image_array_without_the_item_count_is_named(tmp_path):
    images, texts, labels = small_dcmh_arrays()
    path = str(tmp_path / "other.h5")
    write_program_layout_hdf5(path, images[:10], texts, labels)
    with pytest.raises(UserError, match=r"other.h5: images has shape 8 x 6 x 3 x 10 .* LAll has 12 rows") as error:
        read_dcmh(path)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- input checks at load

def write_wiki(path, shift=0, nan_at=None):
    rng = np.random.RandomState(0)
    arrays = {"I_tr": rng.rand(20, 6), "I_te": rng.rand(8, 6), "T_tr": rng.rand(20, 3), "T_te": rng.rand(8, 3),
              "L_tr": (np.arange(20) % 10 + 1 - shift)[:, None], "L_te": (np.arange(8) % 10 + 1 - shift)[:, None]}
    if nan_at:
        arrays[nan_at[0]][nan_at[1], 2] = np.nan
    scipy.io.savemat(path, arrays)


def test_zero_based_wikipedia_labels_are_refused(tmp_path):
    path = str(tmp_path / "wikiData.mat")
    write_wiki(path)
    data = load_dataset("wiki", path)
    assert data.num_classes == 10 and data.labels[0].argmax() == 0
    write_wiki(path, shift=1)  # classes 0..9: class 0 used to become class 9
    with pytest.raises(UserError, match=r"wikiData.mat: L_tr: row 0 \(0-based\) holds class 0 "
                                        r"\(the labels look 0-based\); the file must store class ids 1..C"):
        load_dataset("wiki", path)


def test_non_finite_values_are_refused_at_load_naming_file_array_and_row(tmp_path):
    path = str(tmp_path / "wikiData.mat")
    write_wiki(path, nan_at=("I_te", 3))
    with pytest.raises(UserError, match=r"wikiData.mat: I_te: row 3 \(0-based\) holds nan"):
        load_dataset("wiki", path)
    images, texts, labels = small_dcmh_arrays()
    texts = texts.astype(np.float32)
    texts[7, 1] = np.inf
    h5 = str(tmp_path / "set.h5")
    write_program_layout_hdf5(h5, images, texts, labels)
    with pytest.raises(UserError, match=r"set.h5: YAll: row 7 \(0-based\) holds inf"):
        read_dcmh(h5)
    features = np.random.RandomState(3).rand(12, 5)
    features[4, 0] = np.nan
    scipy.io.savemat(tmp_path / "f-iall.mat", {"IAll": features})
    scipy.io.savemat(tmp_path / "f-yall.mat", {"YAll": texts[:, :1] * 0})
    scipy.io.savemat(tmp_path / "f-lall.mat", {"LAll": labels})
    with pytest.raises(UserError, match=r"f-iall.mat: IAll: row 4 \(0-based\) holds nan"):
        read_dcmh(str(tmp_path))


def test_label_matrices_must_be_zero_one_with_some_label(tmp_path):
    images, texts, labels = small_dcmh_arrays()
    path = str(tmp_path / "set.h5")
    write_program_layout_hdf5(path, images, texts, np.zeros_like(labels))
    with pytest.raises(UserError, match=r"set.h5: LAll: no item has a label \(all 12 rows are zero\)"):
        read_dcmh(path)
    counts = labels.copy()
    counts[5, 2] = 2
    write_program_layout_hdf5(path, images, texts, counts)
    with pytest.raises(UserError, match=r"set.h5: LAll: row 5 \(0-based\) holds 2"):
        read_dcmh(path)
    some_empty = labels.copy()
    some_empty[[4, 9]] = 0
    write_program_layout_hdf5(path, images, texts, some_empty)
    with pytest.warns(UserWarning, match=r"2 of 12 items have no label \(first: row 4\)"):
        read_dcmh(path)


def test_domain_features_and_new_items_are_checked_for_non_finite_values(tmp_path):
    from utils.data.domains import read_generic
    from utils.run import item_rows
    features = np.random.RandomState(4).rand(6, 3).astype(np.float32)
    features[2, 1] = np.nan
    np.savez(tmp_path / "amazon.npz", features=features, labels=np.arange(6) % 2)
    with pytest.raises(UserError, match=r"amazon.npz: features: row 2 \(0-based\) holds nan"):
        read_generic(str(tmp_path / "amazon.npz"))
    np.savez(tmp_path / "dslr.npz", features=features[:2] * 0, labels=np.array([1.0, 2.5]))
    with pytest.raises(UserError, match=r"dslr.npz: labels: row 1 \(0-based\) holds 2.5; class ids must be whole"):
        read_generic(str(tmp_path / "dslr.npz"))
    # A query item given to encode(): a NaN used to give an all -1 code without a word.
    with pytest.raises(UserError, match=r"image inputs: row 2 \(0-based\) holds nan"):
        item_rows(features, (3,), "image inputs")
    np.testing.assert_array_equal(item_rows(features[0], (3,), "image inputs"), features[:1])


# ----------------------------------------------------------------------------- split files

def test_split_files_are_checked_before_training(tmp_path):
    split = permutation_split(50, 5, 20, seed=2)
    good = dict(query=split.query, train=split.train, database=split.database)
    cases = [
        ("split.txt", None, "neither .npz nor .mat"),
        ("broken.npz", None, "cannot read split file"),
        ("empty.npz", dict(good, query=np.zeros(0, np.int64)), "the query part is empty"),
        ("repeat.npz", dict(good, train=np.r_[split.train[:3], split.train[1]]),
         rf"train\[3\] = {split.train[1]} repeats an earlier index"),
        ("float.npz", dict(good, database=split.database + 0.5), r"database\[0\] = .* is not a whole number"),
        ("text.npz", dict(good, query=np.array(["a", "b"])), "must hold integer row indices"),
        ("range.npz", dict(good, query=np.r_[split.query, 50]), r"query\[5\] = 50 lies outside 0..49"),
    ]
    for name, arrays, message in cases:
        path = str(tmp_path / name)
        if arrays is None:
            with open(path, "w") as f:
                f.write("1 2 3\n")
        else:
            np.savez(path, **arrays)
        with pytest.raises(UserError, match=message) as error:
            load_split(path, 50)
        assert "\n" not in str(error.value) and name in str(error.value)
    # load_dataset reads the split before any training starts.
    with pytest.raises(UserError, match="the query part is empty"):
        load_dataset("synthetic", split_file=str(tmp_path / "empty.npz"))
    # MATLAB saves indices as doubles: whole numbers are fine.
    scipy.io.savemat(tmp_path / "split.mat", {k: v.astype(np.float64) for k, v in good.items()})
    np.testing.assert_array_equal(load_split(str(tmp_path / "split.mat"), 50).train, split.train)
    with pytest.raises(UserError, match="at least one query"):
        permutation_split(50, 0, 20, seed=0)


def test_metah_is_pointed_from_validation_size_to_its_validation_fraction():
    import train
    from trainers import metah
    with pytest.raises(UserError, match="--validation-fraction"):
        train.check_config(metah.Config(validation_size=50), metah.METHOD)
