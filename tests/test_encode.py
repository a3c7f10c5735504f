"""encode(run_dir, inputs, modality) of each trainer: rebuilt from the run folder, it gives
the codes (or embeddings) that the run exported for the same items. The runs are the shared
small ones (tests/trained_runs.py), trained once per session: encode only reads them."""
import numpy as np
import pytest

from tests.trained_runs import CNNF_SPLIT, golden_width_cnnf
from utils.errors import UserError


def synthetic_queries():
    """The synthetic query images and texts (the shared SSAH and ACMR runs' queries)."""
    from utils.data import load_dataset
    query_images, query_texts, _ = load_dataset("synthetic").part("query")
    return query_images, query_texts


@pytest.mark.slow
def test_ssah_encode_reproduces_the_exported_codes(trained_runs, monkeypatch):
    import trainers.ssah as ssah
    run = trained_runs.get("ssah")
    run_dir, exported = run.dir, run.codes
    query_images, query_texts = synthetic_queries()
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
def test_ssah_encode_of_a_cnnf_run_reproduces_the_exported_image_codes(trained_runs, monkeypatch):
    """Every trunk variable is in the checkpoint: the rebuilt CNN-F gives the run's own codes."""
    import trainers.ssah as ssah
    import utils.data
    run = trained_runs.get("ssah_cnnf")  # SSAH with a CNN-F of the golden file's few channels
    run_dir, exported = run.dir, run.codes
    golden_width_cnnf(monkeypatch)  # the nets rebuilt as the run trained them
    data = utils.data.load_dataset("coco", run.data, split_sizes=CNNF_SPLIT)
    query_images, query_texts, _ = data.part("query")
    query_images = query_images[np.arange(len(query_images))]  # read from the lazy HDF5 source
    assert len(np.unique(exported["Qi"], axis=0)) > 1  # codes that tell the items apart
    np.testing.assert_array_equal(ssah.encode(run_dir, query_images, "image"), exported["Qi"])
    np.testing.assert_array_equal(ssah.encode(run_dir, query_texts, "text"), exported["Qt"])


@pytest.mark.slow
def test_acmr_encode_reproduces_the_exported_embeddings(trained_runs):
    import trainers.acmr as acmr
    run = trained_runs.get("acmr")
    run_dir, exported = run.dir, run.codes
    query_images, query_texts = synthetic_queries()
    np.testing.assert_array_equal(acmr.encode(run_dir, query_images, "image"), exported["Qi"])
    np.testing.assert_array_equal(acmr.encode(run_dir, query_texts, "text"), exported["Qt"])
    with pytest.raises(UserError, match="features"):
        acmr.encode(run_dir, query_texts, "image")
    with pytest.raises(UserError, match="expected ssah"):
        __import__("trainers.ssah").ssah.encode(run_dir, query_texts, "text")


@pytest.mark.slow
def test_metah_encode_reproduces_the_exported_codes(trained_runs):
    import trainers.metah as metah
    from utils.run import saved_config
    run = trained_runs.get("metah")
    run_dir, exported = run.dir, run.codes
    pair = metah.load_pair(saved_config(run_dir, {"metah": metah.Config})[1])
    # target queries and source database items: both normalised with the source statistics
    np.testing.assert_array_equal(metah.encode(run_dir, pair.target.inputs[pair.target_query]), exported["Q"])
    np.testing.assert_array_equal(metah.encode(run_dir, pair.source.inputs[pair.source_train], "image"),
                                  exported["Ds"])
    with pytest.raises(UserError, match="shape"):
        metah.encode(run_dir, pair.source.inputs[:, :3])
