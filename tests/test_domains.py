"""Cross-domain loaders (utils/data/domains.py): generic files, image folders, real files, splits."""
import os

import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_path
from utils.data.domains import load_domain_pair, stratified_holdout
from utils.errors import UserError


def write_generic_pair(folder, n_source=40, n_target=30, dim=6, classes=4, seed=0):
    """source.mat: features stored as columns, labels 1..C (MATLAB style);
    target.npz: key X, labels 1..C. Returns the arrays written (rows, 0-based ids)."""
    rng = np.random.RandomState(seed)
    xs, ys = rng.rand(n_source, dim).astype(np.float32), rng.randint(0, classes, n_source)
    xt, yt = rng.rand(n_target, dim).astype(np.float32), rng.randint(0, classes, n_target)
    ys[:classes], yt[:classes] = np.arange(classes), np.arange(classes)  # every class present
    scipy.io.savemat(os.path.join(folder, "source.mat"), {"fts": xs.T, "labels": (ys + 1)[None, :]})
    np.savez(os.path.join(folder, "target.npz"), X=xt, labels=yt + 1)
    return xs, ys, xt, yt


def test_generic_files_are_read_transposed_and_zero_based(tmp_path):
    xs, ys, xt, yt = write_generic_pair(str(tmp_path))
    pair = load_domain_pair("folder:source->target", str(tmp_path), seed=3)
    np.testing.assert_allclose(pair.source.inputs, xs)
    np.testing.assert_allclose(pair.target.inputs, xt)
    np.testing.assert_array_equal(pair.source.labels, ys)
    np.testing.assert_array_equal(pair.target.labels, yt)
    assert pair.num_classes == 4 and pair.source.kind == "features"
    # The same files named directly as a (source, target) tuple.
    direct = load_domain_pair((str(tmp_path / "source.mat"), str(tmp_path / "target.npz")), seed=3)
    np.testing.assert_array_equal(direct.target_query, pair.target_query)


def test_target_split_is_stratified_seeded_and_disjoint(tmp_path):
    _, _, _, yt = write_generic_pair(str(tmp_path), n_target=200)
    pair = load_domain_pair("folder:source->target", str(tmp_path), seed=5, query_fraction=0.1)
    query, database = pair.target_query, pair.target_database
    assert not set(query) & set(database)
    assert sorted(np.concatenate([query, database])) == list(range(200))
    for cls in range(4):  # round(10% of each class)
        assert np.sum(yt[query] == cls) == round(0.1 * np.sum(yt == cls))
    np.testing.assert_array_equal(pair.source_train, np.arange(40))  # all source = training = database
    assert pair.source_validation.size == 0
    again = load_domain_pair("folder:source->target", str(tmp_path), seed=5)
    other = load_domain_pair("folder:source->target", str(tmp_path), seed=6)
    np.testing.assert_array_equal(again.target_query, query)
    assert not np.array_equal(other.target_query, query)


def test_source_validation_split_holds_out_part_of_the_source_only(tmp_path):
    _, ys, _, _ = write_generic_pair(str(tmp_path), n_source=100)
    pair = load_domain_pair("folder:source->target", str(tmp_path), validation_fraction=0.2)
    assert len(pair.source_validation) == sum(round(0.2 * np.sum(ys == c)) for c in range(4))
    assert not set(pair.source_validation) & set(pair.source_train)
    assert len(pair.source_validation) + len(pair.source_train) == 100


def test_holdout_keeps_one_of_each_class_and_never_empties_a_class():
    labels = np.array([0, 0, 1, 1, 1, 2])
    held, rest = stratified_holdout(labels, 0.1, seed=0)
    assert sorted(labels[held]) == [0, 1]  # at least one of each class with 2+ items; class 2 has 1
    assert set(labels[rest]) == {0, 1, 2}


def test_split_file_replaces_the_seeded_target_split(tmp_path):
    write_generic_pair(str(tmp_path))
    split = tmp_path / "split.npz"
    np.savez(split, query=np.arange(5), train=np.arange(5, 30), database=np.arange(5, 30))
    pair = load_domain_pair("folder:source->target", str(tmp_path), split_file=str(split))
    np.testing.assert_array_equal(pair.target_query, np.arange(5))
    np.testing.assert_array_equal(pair.target_database, np.arange(5, 30))
    np.savez(split, query=np.arange(5), train=np.arange(5, 10), database=np.arange(5, 30))
    with pytest.raises(UserError, match="train equal to database"):
        load_domain_pair("folder:source->target", str(tmp_path), split_file=str(split))


def write_image_folder(root, domain, class_sizes, seed):
    import tensorflow as tf
    rng = np.random.RandomState(seed)
    for class_name, (count, (h, w)) in class_sizes.items():
        os.makedirs(os.path.join(root, domain, class_name), exist_ok=True)
        for i in range(count):
            pixels = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
            encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels)
            suffix = ".png" if i % 2 else ".jpg"
            tf.io.write_file(os.path.join(root, domain, class_name, f"{i}{suffix}"), encoded)


def test_image_folders_decode_resize_and_share_class_ids(tmp_path):
    root = str(tmp_path)
    write_image_folder(root, "photo", {"cat": (3, (20, 30)), "dog": (2, (12, 12))}, seed=0)
    write_image_folder(root, "sketch", {"dog": (4, (9, 17))}, seed=1)  # the target lacks "cat"
    (tmp_path / "photo" / "cat" / "notes.txt").write_text("not an image")
    pair = load_domain_pair("images:photo->sketch", root, image_size=16)
    assert pair.source.inputs.shape == (5, 16, 16, 3) and pair.source.inputs.dtype == np.uint8
    assert pair.source.kind == "images"
    np.testing.assert_array_equal(pair.source.labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(pair.target.labels, [1, 1, 1, 1])  # "dog" keeps the source's id
    # A flat-colour image stays that colour after decoding and resizing.
    import tensorflow as tf
    tf.io.write_file(os.path.join(root, "sketch", "dog", "flat.png"),
                     tf.io.encode_png(np.full((7, 11, 3), 200, np.uint8)))
    pair = load_domain_pair("images:photo->sketch", root, image_size=16)
    assert np.all(pair.target.inputs[-1] == 200)
    write_image_folder(root, "sketch", {"bird": (1, (8, 8))}, seed=2)
    with pytest.raises(UserError, match="bird"):
        load_domain_pair("images:photo->sketch", root, image_size=16)


@pytest.mark.parametrize("name, path, match", [
    ("office-googlenet:amazon->caltech10", "", "unknown domain 'caltech10'"),
    ("office-resnet:A->D", "", "unknown domain family"),
    ("mnist->svhn", "", "unknown domain pair"),
    ("amazon-dslr", "", "SOURCE->TARGET"),
    ("office-surf:A->A", "", "same source and target"),
    ("folder:source->target", "", "--data ROOT"),
    ("mnist->usps", "/nonexistent/MNIST_vs_USPS.mat", "not found; pass --data"),
])
def test_bad_names_and_paths_give_one_line_user_errors(name, path, match):
    with pytest.raises(UserError, match=match) as error:
        load_domain_pair(name, path)
    assert "\n" not in str(error.value)


def test_missing_field_and_mismatched_shapes_are_user_errors(tmp_path):
    write_generic_pair(str(tmp_path))
    np.savez(tmp_path / "nolabels.npz", features=np.zeros((3, 6)))
    with pytest.raises(UserError, match="lacks field labels"):
        load_domain_pair("folder:source->nolabels", str(tmp_path))
    np.savez(tmp_path / "wide.npz", features=np.zeros((3, 7)), labels=np.arange(3))
    with pytest.raises(UserError, match="same feature set"):
        load_domain_pair("folder:source->wide", str(tmp_path))
    with pytest.raises(UserError, match="no absent.mat or absent.npz"):
        load_domain_pair("folder:source->absent", str(tmp_path))


def test_real_office_caltech10_googlenet_and_surf():
    root = shared_path("data", "office-caltech10")
    pair = load_domain_pair("office-googlenet:A->D", root, seed=0)
    raw = scipy.io.loadmat(os.path.join(root, "googlenet1024", "dslr.mat"))
    assert pair.source.inputs.shape == (958, 1024) and pair.target.inputs.shape == (157, 1024)
    np.testing.assert_array_equal(pair.target.inputs, raw["fts"])
    np.testing.assert_array_equal(pair.target.labels, raw["labels"].ravel() - 1)
    assert pair.num_classes == 10 and set(pair.source.labels) == set(range(10))
    counts = np.bincount(pair.target.labels)
    assert len(pair.target_query) == sum(max(round(0.1 * c), 1) for c in counts)  # 10% per class
    assert len(pair.target_query) + len(pair.target_database) == 157
    surf = load_domain_pair("office-surf:caltech10->webcam", root)
    assert surf.source.inputs.shape == (1123, 800) and surf.target.inputs.shape == (295, 800)
    with pytest.raises(UserError, match="caltech10"):
        load_domain_pair("office-googlenet:caltech10->webcam", root)


def test_real_mnist_usps_columns_become_rows():
    path = shared_path("data", "mnist-usps", "MNIST_vs_USPS.mat")
    raw = scipy.io.loadmat(path)
    pair = load_domain_pair("mnist->usps", path)
    assert pair.source.inputs.shape == (2000, 256) and pair.target.inputs.shape == (1800, 256)
    np.testing.assert_array_equal(pair.source.inputs[7], raw["X_src"][:, 7])
    np.testing.assert_array_equal(pair.target.labels, raw["Y_tar"].ravel() - 1)
    reverse = load_domain_pair("usps->mnist", os.path.dirname(path))
    assert reverse.source.inputs.shape == (1800, 256)
