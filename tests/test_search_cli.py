"""search.py: --build saves each database's Hamming index; a query encoded by the trained net
lists the database items that are nearest to the codes the run itself exported for it. The
runs are copies of the shared small ones (tests/trained_runs.py), trained once per session."""
import os

import numpy as np
import pytest
import scipy.io

import search
from utils.errors import UserError


def expected_ranking(query_codes, db_codes, top, distance="hamming"):
    """Distances and indices of the `top` nearest, smaller index first on equal distances."""
    query_codes, db_codes = np.asarray(query_codes, float), np.asarray(db_codes, float)
    if distance == "hamming":
        distances = (db_codes.shape[1] - query_codes @ db_codes.T) / 2
    else:
        distances = np.sqrt(((query_codes[:, None] - db_codes[None]) ** 2).sum(-1))
    order = np.argsort(distances, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(distances, order, axis=1), order


def listed(result):
    indices = np.array([[item[0] for item in row] for row in result["items"]])
    distances = np.array([[item[1] for item in row] for row in result["items"]])
    return distances, indices


@pytest.mark.slow
def test_ssah_build_and_search_by_tag_vectors_words_and_image_features(tmp_path, monkeypatch, capsys,
                                                                       trained_runs):
    import trainers.ssah as ssah
    from utils.data import load_dataset
    from utils.search import HammingIndex
    run = trained_runs.copy("ssah", tmp_path)  # --build writes into the run folder
    run_dir, exported = run.dir, run.codes
    written = search.main([run_dir, "--build"])
    assert set(written) == {"image", "text"}
    for name, field in (("image", "Di"), ("text", "Dt")):
        index = HammingIndex.load(written[name])
        assert index.size == len(exported[field]) and index.bits == 16
        np.testing.assert_array_equal(index.search(exported["Qt"][:3], 5)[1],
                                      HammingIndex(exported[field]).search(exported["Qt"][:3], 5)[1])
    capsys.readouterr()

    query_images, query_texts, _ = load_dataset("synthetic").part("query")
    np.save(tmp_path / "texts.npy", query_texts[:3].astype(np.float32))
    result = search.main([run_dir, "--text-features", str(tmp_path / "texts.npy"), "--top", "7"])
    assert result["database"] == "image"  # text queries search the images by default
    distances, indices = expected_ranking(exported["Qt"][:3], exported["Di"], 7)
    np.testing.assert_array_equal(listed(result)[1], indices)
    np.testing.assert_array_equal(listed(result)[0], distances)
    labels = exported["retrieval_L"]
    assert result["items"][0][0][2] == np.flatnonzero(labels[indices[0, 0]]).tolist()
    out = capsys.readouterr().out
    assert "no up-to-date index" not in out  # the saved index was used
    assert "query (text row 2) -> image database, by hamming distance" in out

    np.save(tmp_path / "images.npy", query_images[:2].astype(np.float32))
    result = search.main([run_dir, "--image-features", str(tmp_path / "images.npy"), "--top", "4"])
    assert result["database"] == "text"
    np.testing.assert_array_equal(listed(result)[1], expected_ranking(exported["Qi"][:2], exported["Dt"], 4)[1])
    result = search.main([run_dir, "--image-features", str(tmp_path / "images.npy"), "--database", "image"])
    np.testing.assert_array_equal(listed(result)[1], expected_ranking(exported["Qi"][:2], exported["Di"], 10)[1])

    # tag words through the dataset's vocabulary (synthetic data has none: one is given here)
    vocabulary = [f"tag{j}" for j in range(query_texts.shape[1])]
    monkeypatch.setattr(ssah.encoding, "dataset_vocabulary", lambda config: vocabulary)
    monkeypatch.setattr(search, "label_names", lambda config: [f"class{c}" for c in range(labels.shape[1])])
    row = query_texts[0]
    words = " ".join(vocabulary[j] for j in np.flatnonzero(row))
    result = search.main([run_dir, "--text", words + ", unknown-tag", "--top", "7"])
    np.testing.assert_array_equal(listed(result)[1], indices[:1])
    first = result["items"][0][0]
    assert f"({', '.join(f'class{c}' for c in first[2])})" in capsys.readouterr().out

    # codes newer than the saved index: it is not used
    os.utime(f"{run_dir}/codes.mat", (os.path.getmtime(written["image"]) + 10,) * 2)
    search.main([run_dir, "--text-features", str(tmp_path / "texts.npy")])
    assert "no up-to-date index of the image database" in capsys.readouterr().out


@pytest.mark.slow
def test_acmr_searches_by_euclidean_distance_and_has_no_index(tmp_path, trained_runs):
    from utils.data import load_dataset
    run = trained_runs.copy("acmr", tmp_path)
    run_dir, exported = run.dir, run.codes
    with pytest.raises(UserError, match="real-valued: there is no binary index to build"):
        search.main([run_dir, "--build"])
    query_images, _, _ = load_dataset("synthetic").part("query")
    np.save(tmp_path / "images.npy", query_images[:3].astype(np.float32))
    result = search.main([run_dir, "--image-features", str(tmp_path / "images.npy"), "--top", "5"])
    assert result["database"] == "text"
    distances, indices = expected_ranking(exported["Qi"][:3], exported["Dt"], 5, "euclidean")
    np.testing.assert_array_equal(listed(result)[1], indices)
    np.testing.assert_allclose(listed(result)[0], distances, rtol=1e-5)
    with pytest.raises(UserError, match="--text takes tag words for SSAH runs; give acmr text features"):
        search.main([run_dir, "--text", "dog beach"])
    with pytest.raises(UserError, match="databases image, text; got --database target"):
        search.main([run_dir, "--image-features", str(tmp_path / "images.npy"), "--database", "target"])


@pytest.mark.slow
def test_metah_searches_the_target_domain_by_default(tmp_path, trained_runs):
    import trainers.metah as metah
    from utils.run import saved_config
    run = trained_runs.copy("metah", tmp_path)
    run_dir, exported = run.dir, run.codes
    pair = metah.load_pair(saved_config(run_dir, {"metah": metah.Config})[1])
    np.save(tmp_path / "queries.npy", pair.target.inputs[pair.target_query][:2])
    for database, codes, labels in (("target", "Dt", "target_L"), ("source", "Ds", "source_L")):
        options = ["--database", database] if database == "source" else []
        result = search.main([run_dir, "--image-features", str(tmp_path / "queries.npy")] + options)
        assert result["database"] == database
        indices = expected_ranking(exported["Q"][:2], exported[codes], 10)[1]
        np.testing.assert_array_equal(listed(result)[1], indices)
        assert [item[2] for item in result["items"][0]] == [np.flatnonzero(exported[labels][i]).tolist()
                                                            for i in indices[0]]
    with pytest.raises(UserError, match="metah runs encode image items only"):
        search.main([run_dir, "--text-features", str(tmp_path / "queries.npy")])


@pytest.mark.slow
def test_search_errors_are_one_line(tmp_path):
    from eval import Source
    with pytest.raises(UserError, match="run folder not found"):
        search.main([str(tmp_path / "missing")])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"method": "ssah", "config": {}}')
    with pytest.raises(UserError, match="no codes.mat yet"):
        search.main([str(run_dir), "--build"])
    scipy.io.savemat(run_dir / "codes.mat", {"Di": np.ones((4, 8)), "Dt": np.ones((4, 8)),
                                             "retrieval_L": np.eye(4)})
    with pytest.raises(UserError, match="give one query"):
        search.main([str(run_dir)])
    with pytest.raises(UserError, match="give one query"):
        search.main([str(run_dir), "--text", "dog", "--image-features", "x.npy"])
    with pytest.raises(UserError, match="holds no words"):
        search.main([str(run_dir), "--text", " , "])
    (tmp_path / "bad.npy").write_text("not an array")
    with pytest.raises(UserError, match="give a .npy file of rows"):
        search.main([str(run_dir), "--image-features", str(tmp_path / "bad.npy")])
    with pytest.raises(UserError, match="--top must be >= 1"):
        search.main([str(run_dir), "--text", "dog", "--top", "0"])
    with pytest.raises(UserError, match="lacks Ds, source_L"):
        search.database_arrays(Source(str(run_dir), method="metah"), "source")
    (run_dir / "search").mkdir()
    (run_dir / "search" / "image.index.npz").write_text("damaged")
    with pytest.raises(UserError, match="cannot read the search index .* build it again"):
        search.load_index(search.load_source(str(run_dir)), "image", np.ones((4, 8)))


def test_listed_labels_are_label_columns_or_class_ids():
    # multi-hot rows -> their columns; a column (or MATLAB's single row) of class ids -> the id
    np.testing.assert_equal(search.label_lists(np.array([[0, 1, 1], [1, 0, 0]]), 2), [[1, 2], [0]])
    np.testing.assert_equal(search.label_lists(np.array([[3], [10], [1]]), 3), [[3], [10], [1]])
    np.testing.assert_equal(search.label_lists(np.array([[3, 10, 1]]), 3), [[3], [10], [1]])


@pytest.mark.parametrize("saved_with,loaded_with", [("faiss", "faiss"), ("faiss", "numpy"), ("numpy", "faiss"),
                                                    ("numpy", "numpy")])
def test_a_saved_index_gives_the_same_neighbours_under_either_backend(tmp_path, saved_with, loaded_with):
    from utils.search import HammingIndex, faiss_available
    if "faiss" in (saved_with, loaded_with) and not faiss_available():
        pytest.skip("faiss is not installed")
    rng = np.random.RandomState(0)
    db, queries = np.where(rng.rand(300, 20) < 0.5, -1, 1), np.where(rng.rand(6, 20) < 0.5, -1, 1)
    HammingIndex(db, backend=saved_with, kind="hash").save(tmp_path / "db.index.npz")
    assert ("faiss_flat" in np.load(tmp_path / "db.index.npz").files) == (saved_with == "faiss")
    index = HammingIndex.load(tmp_path / "db.index.npz", backend=loaded_with)
    assert (index.backend, index.kind, index.bits, index.size) == (loaded_with, "hash", 20, 300)
    expected = expected_ranking(queries, db, 12)
    distances, indices = index.search(queries, 12)
    np.testing.assert_array_equal(indices, expected[1])
    np.testing.assert_array_equal(distances, expected[0])
