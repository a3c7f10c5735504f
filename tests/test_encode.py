"""encode(run_dir, inputs, modality) of each trainer: rebuilt from the run folder, it gives
the codes (or embeddings) that the run exported for the same items."""
import numpy as np
import pytest
import scipy.io

import train
from tests.conftest import shared_path
from utils.errors import UserError

SSAH_TINY = ["--method", "ssah", "--schedule", "tiny", "--bits", "16", "--embed-dim", "32",
             "--hidden-dim", "64", "--epochs", "1"]


def trained_on_synthetic(tmp_path, options):
    """(run folder, its exported codes.mat, the synthetic query images and texts) of a fresh run."""
    from utils.data import load_dataset
    train.main(options + ["--runs-dir", str(tmp_path), "--run-name", "run"])
    run_dir = str(tmp_path / "run")
    query_images, query_texts, _ = load_dataset("synthetic").part("query")
    return run_dir, scipy.io.loadmat(f"{run_dir}/codes.mat"), query_images, query_texts


@pytest.mark.slow
def test_ssah_encode_reproduces_the_exported_codes(tmp_path, monkeypatch):
    import trainers.ssah as ssah
    run_dir, exported, query_images, query_texts = trained_on_synthetic(tmp_path, SSAH_TINY)
    np.testing.assert_array_equal(ssah.encode(run_dir, query_images, "image"), exported["Qi"])
    np.testing.assert_array_equal(ssah.encode(run_dir, query_texts, "text"), exported["Qt"])
    # tag words go through the dataset's vocabulary; synthetic data has none
    with pytest.raises(UserError, match="no vocabulary"):
        ssah.encode(run_dir, ["dog", "beach"], "text")
    vocabulary = [f"tag{j}" for j in range(query_texts.shape[1])]
    monkeypatch.setattr(ssah.encoding, "dataset_vocabulary", lambda config: vocabulary)
    assert set(np.unique(query_texts)) <= {0, 1}  # synthetic tags are binary: words give the same rows
    words = [[vocabulary[j] for j in np.flatnonzero(row)] + ["unknown-tag"] for row in query_texts[:4]]
    np.testing.assert_array_equal(ssah.encode(run_dir, words, "text"), exported["Qt"][:4])
    with pytest.raises(UserError, match="vocabulary"):
        ssah.encode(run_dir, ["unknown-tag"], "text")
    with pytest.raises(UserError, match="shape"):
        ssah.encode(run_dir, query_texts[:, :5], "text")
    with pytest.raises(UserError, match="modality"):
        ssah.encode(run_dir, query_texts, "audio")


@pytest.mark.slow
def test_ssah_encode_of_a_cnnf_run_reproduces_the_exported_image_codes(tmp_path, monkeypatch):
    """Every trunk variable is in the checkpoint: the rebuilt CNN-F gives the run's own codes."""
    import functools

    import models.cnnf
    import trainers.ssah as ssah
    import utils.data
    from tests.test_full_scale import write_small_image_file
    path = str(tmp_path / "small.h5")
    write_small_image_file(path, n=24, size=224)
    # CNN-F's geometry with few channels (the golden file's), so that a checkpoint stays small
    monkeypatch.setattr(models.cnnf, "CNNF", functools.partial(models.cnnf.CNNF, widths=models.cnnf.GOLDEN_WIDTHS))
    train.main(SSAH_TINY + ["--dataset", "coco", "--data", path, "--backbone", "cnnf", "--batch-size", "6",
                            "--split-sizes", "6,12", "--runs-dir", str(tmp_path), "--run-name", "cnnf"])
    run_dir = str(tmp_path / "cnnf")
    exported = scipy.io.loadmat(f"{run_dir}/codes.mat")
    data = utils.data.load_dataset("coco", path, split_sizes=(6, 12))
    query_images, query_texts, _ = data.part("query")
    query_images = query_images[np.arange(len(query_images))]  # read from the lazy HDF5 source
    assert len(np.unique(exported["Qi"], axis=0)) > 1  # codes that tell the items apart
    np.testing.assert_array_equal(ssah.encode(run_dir, query_images, "image"), exported["Qi"])
    np.testing.assert_array_equal(ssah.encode(run_dir, query_texts, "text"), exported["Qt"])


@pytest.mark.slow
def test_acmr_encode_reproduces_the_exported_embeddings(tmp_path):
    import trainers.acmr as acmr
    run_dir, exported, query_images, query_texts = trained_on_synthetic(
        tmp_path, ["--method", "acmr", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "100"])
    np.testing.assert_array_equal(acmr.encode(run_dir, query_images, "image"), exported["Qi"])
    np.testing.assert_array_equal(acmr.encode(run_dir, query_texts, "text"), exported["Qt"])
    with pytest.raises(UserError, match="features"):
        acmr.encode(run_dir, query_texts, "image")
    with pytest.raises(UserError, match="expected ssah"):
        __import__("trainers.ssah").ssah.encode(run_dir, query_texts, "text")


@pytest.mark.slow
def test_metah_encode_reproduces_the_exported_codes(tmp_path):
    import trainers.metah as metah
    from tests.test_metah import write_domain_files
    from utils.run import saved_config
    write_domain_files(str(tmp_path))
    train.main(["--method", "metah", "--dataset", "folder:src->tgt", "--data", str(tmp_path), "--bits", "16",
                "--iterations", "8", "--batch-size", "16", "--hidden", "32", "--discriminator-hidden", "32",
                "--runs-dir", str(tmp_path / "runs"), "--run-name", "run"])
    run_dir = str(tmp_path / "runs" / "run")
    exported = scipy.io.loadmat(f"{run_dir}/codes.mat")
    pair = metah.load_pair(saved_config(run_dir, {"metah": metah.Config})[1])
    # target queries and source database items: both normalised with the source statistics
    np.testing.assert_array_equal(metah.encode(run_dir, pair.target.inputs[pair.target_query]), exported["Q"])
    np.testing.assert_array_equal(metah.encode(run_dir, pair.source.inputs[pair.source_train], "image"),
                                  exported["Ds"])
    with pytest.raises(UserError, match="shape"):
        metah.encode(run_dir, pair.source.inputs[:, :3])
