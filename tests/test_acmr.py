"""ACMR: losses against NumPy, the authors' pickle layouts, presets, and train.py end to end."""
import dataclasses
import io as std_io
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from losses import acmr as L
from trainers import acmr
from utils.data import acmr_pickles, load_dataset
from utils.errors import UserError


def embeddings(seed=0, n=8, dim=6, classes=3):
    rng = np.random.RandomState(seed)
    emb_img = np.tanh(rng.normal(size=(n, dim))).astype(np.float32)
    emb_txt = np.tanh(rng.normal(size=(n, dim))).astype(np.float32)
    classes_ = rng.randint(0, classes, size=n)
    return emb_img, emb_txt, np.eye(classes, dtype=np.float32)[classes_], classes_


def np_softmax_ce(logits, targets):
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    return -(targets * log_p).sum(axis=1)


# ----------------------------------------------------------------------------- losses vs NumPy

def test_label_and_modality_losses_match_numpy():
    rng = np.random.RandomState(1)
    _, _, labels, _ = embeddings(1)
    logits_img, logits_txt = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    expected = np.mean(np_softmax_ce(logits_img, labels) + np_softmax_ce(logits_txt, labels))
    assert float(L.label_loss(logits_img, logits_txt, labels)) == pytest.approx(expected, rel=1e-6)
    dom_img, dom_txt = rng.normal(size=(8, 2)), rng.normal(size=(8, 2))
    image_target, text_target = np.tile([0.0, 1.0], (8, 1)), np.tile([1.0, 0.0], (8, 1))
    expected = np.mean(np_softmax_ce(dom_img, image_target) + np_softmax_ce(dom_txt, text_target))
    assert float(L.modality_loss(dom_img, dom_txt)) == pytest.approx(expected, rel=1e-6)
    right = np.concatenate([dom_img.argmax(1) == 1, dom_txt.argmax(1) == 0])
    assert float(L.modality_accuracy(dom_img, dom_txt)) == pytest.approx(right.mean())
    # Zero logits: chance, 2 ln 2 (the original program's resting value).
    assert float(L.modality_loss(np.zeros((4, 2)), np.zeros((4, 2)))) == pytest.approx(2 * np.log(2), rel=1e-6)


def test_simple_program_losses_match_numpy():
    emb_img, emb_txt, labels, classes = embeddings(2)
    e_i, e_t = emb_img.astype(np.float64), emb_txt.astype(np.float64)
    assert float(L.similar_loss(emb_img, emb_txt)) == pytest.approx(np.linalg.norm(e_i - e_t), rel=1e-6)
    distance = np.array([[e_i[i].sum() - e_i[i] @ e_t[j] + e_t[j].sum() for j in range(8)] for i in range(8)])
    np.testing.assert_allclose(L.pseudo_distance(emb_img, emb_txt).numpy(), distance, rtol=1e-5, atol=1e-6)
    mask = (classes[:, None] != classes[None, :]).astype(np.float64)
    expected = np.mean(np.maximum(0.0, 0.1 - distance * mask))
    assert float(L.dissimilar_loss(emb_img, emb_txt, labels, margin=0.1)) == pytest.approx(expected, rel=1e-5)
    assert 0 < expected  # the hinge is active for some pairs, so the check can fail


def test_coded_triplet_loss_matches_numpy_in_both_hinge_states():
    emb_img, emb_txt, labels, classes = embeddings(3)
    txt_neg, img_neg = emb_txt[::-1].copy(), emb_img[np.roll(np.arange(8), 1)]
    e_i, e_t = emb_img.astype(np.float64), emb_txt.astype(np.float64)

    def np_coded(margin, alpha):
        half = lambda x: 0.5 * np.sum(x ** 2)  # noqa: E731
        return (max(0.0, margin + alpha * half(e_i - e_t) - half(e_i - txt_neg))
                + max(0.0, margin + alpha * half(e_t - e_i) - half(e_t - img_neg)))

    for margin, alpha in ((0.1, 5.0), (0.1, 0.01), (50.0, 0.5)):
        expected = np_coded(margin, alpha)
        got = float(L.triplet_loss_coded(emb_img, emb_txt, txt_neg, img_neg, margin, alpha))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert np_coded(0.1, 0.01) == 0.0 < np_coded(0.1, 5.0)  # both hinge states are exercised


def test_paper_triplet_loss_matches_numpy_per_triplet():
    emb_img, emb_txt, _, _ = embeddings(4)
    txt_neg, img_neg = emb_txt[::-1].copy(), emb_img[np.roll(np.arange(8), 3)]
    e_i, e_t = emb_img.astype(np.float64), emb_txt.astype(np.float64)
    dist = lambda a, b: np.linalg.norm(a - b, axis=1)  # noqa: E731
    for margin, weight in ((0.1, 1.0), (2.5, 0.3)):
        expected = (np.sum(dist(e_i, e_t) + weight * np.maximum(0, margin - dist(e_i, txt_neg)))
                    + np.sum(dist(e_t, e_i) + weight * np.maximum(0, margin - dist(e_t, img_neg))))
        got = float(L.triplet_loss_paper(emb_img, emb_txt, txt_neg, img_neg, margin, weight))
        assert got == pytest.approx(expected, rel=1e-5)


def test_mining_takes_the_most_cosine_similar_other_label_row_with_a_multiplicative_mask():
    features = np.array([[1, 0], [1, 0.1], [0.9, 0.5], [0, 1], [0.2, 1]], dtype=np.float32)
    classes = np.array([0, 0, 1, 1, 2])
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = unit @ unit.T
    expected = [int(np.argmax(np.where(classes != classes[i], sim[i], -np.inf))) for i in range(5)]
    np.testing.assert_array_equal(L.mine_negatives(features, classes), expected)
    np.testing.assert_array_equal(L.mine_negatives(features, np.eye(3)[classes], "exclude"), expected)
    # The quirk: with every other-label similarity negative, the multiplied mask's zeros win.
    opposed = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    assert L.mine_negatives(opposed, np.array([0, 0, 1]))[0] == 0  # itself, not row 2
    assert L.mine_negatives(opposed, np.array([0, 0, 1]), "exclude")[0] == 2


def test_tensorflow_mining_finds_the_numpy_negatives_ties_and_all_one_class_batches_included():
    rng = np.random.RandomState(2)
    one_class = np.tile(np.eye(4, dtype=np.float32)[:1], (6, 1))
    opposed = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]], np.float32)
    cases = [(rng.rand(32, 12).astype(np.float32), np.eye(5, dtype=np.float32)[rng.randint(0, 5, 32)]),
             (rng.randn(16, 3).astype(np.float32), (rng.rand(16, 6) < 0.3).astype(np.float32)),  # multi-hot
             (np.repeat(rng.rand(4, 5), 3, axis=0).astype(np.float32), np.eye(3, dtype=np.float32)[np.arange(12) % 3]),
             (np.vstack([np.zeros((2, 4)), rng.rand(6, 4)]).astype(np.float32), np.eye(2, dtype=np.float32)[np.arange(8) % 2]),
             (rng.rand(6, 4).astype(np.float32), one_class),
             (opposed, np.eye(2, dtype=np.float32)[[0, 0, 1]])]
    for features, labels in cases:
        for mask in ("multiply", "exclude"):
            np.testing.assert_array_equal(L.mine_negatives_tf(features, labels, mask).numpy(),
                                          L.mine_negatives(features, labels, mask), err_msg=mask)


def test_tensorflow_mining_finds_the_programs_negatives_on_the_golden_batches():
    from tests.conftest import load_golden
    golden = load_golden("acmr-three-steps.npz")
    classes = golden["init/lc_fc_0/weights"].shape[1]
    for step in range(3):
        labels = np.eye(classes, dtype=np.float32)[golden[f"step{step}/input/labels"] - 1]
        for side, negative in (("img", "img_negative_index"), ("txt", "txt_negative_index")):
            np.testing.assert_array_equal(L.mine_negatives_tf(golden[f"step{step}/input/{side}"], labels).numpy(),
                                          golden[f"step{step}/input/{negative}"])


def test_presets_and_explicit_options():
    import argparse
    from train import build_config
    from utils.config import add_config_arguments

    def config_for(argv):
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, acmr.Config)
        return build_config(acmr.METHOD, parser.parse_args(argv))

    original = config_for([])
    assert (original.variant, original.dataset, original.adversarial_in_projector_loss,
            original.train_label_classifier, original.shuffle, original.drop_last) == ("original", "wiki", False,
                                                                                        False, False, True)
    paper = config_for(["--variant", "paper"])
    assert (paper.adversarial_in_projector_loss, paper.train_label_classifier, paper.lambda_schedule,
            paper.lambda_value, paper.projector_steps, paper.architecture) == (True, True, "fixed", 0.05, 5, "paper")
    mixed = config_for(["--variant", "original", "--train-label-classifier", "true"])
    assert mixed.train_label_classifier and not mixed.adversarial_in_projector_loss
    assert acmr.resolved(original) == {"program": "triplet", "epochs": 50, "label_weight": 100.0,
                                       "dissimilar_weight": 0.0}
    simple = dataclasses.replace(original, loss_program="simple", dataset="nuswide10k")
    assert acmr.resolved(simple)["label_weight"] == 50.0 and acmr.resolved(simple)["dissimilar_weight"] == 0.2
    assert acmr.resolved(dataclasses.replace(simple, dataset="wiki"))["epochs"] == 200
    assert (original.regularisation_weight, paper.regularisation_weight) == (0.0, 1.0)
    assert config_for(["--variant", "paper", "--regularisation-weight", "0"]).regularisation_weight == 0.0


def test_paper_regulariser_is_the_sum_of_the_projectors_frobenius_norms():
    rng = np.random.RandomState(4)
    matrices = [rng.normal(size=(5, 3)), rng.normal(size=(3, 2))]
    expected = sum(np.sqrt((m ** 2).sum()) for m in matrices)
    assert float(L.frobenius_regulariser(matrices)) == pytest.approx(expected, rel=1e-6)
    tf.keras.utils.set_random_seed(2)
    config = dataclasses.replace(acmr.Config(), **acmr.PRESETS["paper"])
    model = acmr.AcmrModel(config, 12, 5, 4)
    kernels = [layer.kernel.numpy() for net in (model.nets.image_projector, model.nets.text_projector)
               for layer in net.dense_layers]
    assert [k.shape for k in kernels] == [(12, 2000), (2000, 200), (5, 500), (500, 200)]  # the paper's layers
    rng = np.random.RandomState(0)
    img, txt = rng.rand(6, 12).astype(np.float32), rng.rand(6, 5).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    negatives = L.mine_negatives(img, labels), L.mine_negatives(txt, labels)
    with_reg, _ = model.loss_terms(img, txt, labels, *negatives)
    model.config = dataclasses.replace(config, regularisation_weight=0.0)
    without, _ = model.loss_terms(img, txt, labels, *negatives)
    assert "regularisation" not in without
    norms = sum(np.sqrt((k.astype(np.float64) ** 2).sum()) for k in kernels)
    assert float(with_reg["regularisation"]) == pytest.approx(norms, rel=1e-5)
    assert float(with_reg["emb"] - without["emb"]) == pytest.approx(norms, rel=1e-4)


def test_original_batches_keep_file_order_and_drop_the_partial_batch():
    batches = acmr.epoch_batches(2173, 64, shuffle=False, drop_last=True, seed=0, epoch=0)
    assert len(batches) == 33 and all(len(b) == 64 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(33 * 64))
    shuffled = acmr.epoch_batches(2173, 64, shuffle=True, drop_last=False, seed=0, epoch=1)
    assert len(shuffled) == 34 and sorted(np.concatenate(shuffled).tolist()) == list(range(2173))
    again = acmr.epoch_batches(2173, 64, shuffle=True, drop_last=False, seed=0, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(shuffled, again))


def test_network_sizes_follow_the_architecture_setting():
    from models.acmr import AcmrNetworks, layer_sizes
    nets = AcmrNetworks(128, 10, 10, *layer_sizes("coded", "wiki"))
    shapes = {k: v.shape for k, v in nets.slim_variables().items() if k.endswith("weights")}
    assert shapes == {"vf_fc_0/weights": (128, 512), "vf_fc_1/weights": (512, 100), "vf_fc_2/weights": (100, 40),
                      "le_fc_0/weights": (10, 40), "le_fc_1/weights": (40, 100), "le_fc_2/weights": (100, 40),
                      "lc_fc_0/weights": (40, 10), "dc_fc_0/weights": (40, 20), "dc_fc_1/weights": (20, 10),
                      "dc_fc_2/weights": (10, 2)}
    assert all(np.all(v == 0) for k, v in nets.slim_variables().items() if k.endswith("biases"))
    assert layer_sizes("coded", "nuswide10k")[:2] == ((4096, 1000, 40), (1000, 300, 40))
    paper = AcmrNetworks(128, 10, 10, *layer_sizes("paper", "wiki"))
    assert paper.slim_variables()["dc_fc_0/weights"].shape == (200, 50)
    # tanh after every projector layer, the last included.
    out = nets.image_projector(tf.constant(np.random.RandomState(0).normal(size=(4, 128)) * 100, tf.float32))
    assert np.all(np.abs(out.numpy()) <= 1.0)


@pytest.mark.slow
def test_input_standardisation_feeds_the_projectors_training_standardised_rows():
    """--image-norm / --text-norm standardize: each projector sees (x - training mean) / training
    std (here: the same weights on rows standardised by hand); none (the program) the raw rows."""
    from models import portable
    data = load_dataset("synthetic")
    config = dataclasses.replace(acmr.Config(dataset="synthetic"), image_norm="standardize", text_norm="standardize")
    stats = acmr.input_standardization(config, data)
    train_img, train_txt, _ = data.part("train")
    np.testing.assert_allclose(stats["image"][0], train_img.mean(axis=0), rtol=1e-5, atol=1e-6)
    text_std = np.asarray(train_txt, np.float64).std(axis=0)
    assert (text_std == 0).any()  # tag dimensions no training item has: divided by 1, not by 0
    np.testing.assert_allclose(stats["text"][1], np.where(text_std > 0, text_std, 1.0), rtol=1e-4)
    assert acmr.input_standardization(acmr.Config(), data) == {"image": None, "text": None}
    model = acmr.AcmrModel(config, train_img.shape[1], train_txt.shape[1], data.num_classes, input_stats=stats)
    raw = acmr.AcmrModel(dataclasses.replace(config, image_norm="none", text_norm="none"),
                         train_img.shape[1], train_txt.shape[1], data.num_classes)
    for mine, plain in ((model.nets.image_projector, raw.nets.image_projector),
                        (model.nets.text_projector, raw.nets.text_projector)):
        for a, b in zip(mine.dense_layers, plain.dense_layers):
            b.set_weights(a.get_weights())
    query_img, query_txt, _ = data.part("query")
    e_img, e_txt = model.embed(query_img, query_txt)
    by_hand = raw.embed((query_img - stats["image"][0]) / stats["image"][1], (query_txt - stats["text"][0]) / stats["text"][1])
    np.testing.assert_allclose(e_img, by_hand[0], atol=1e-5)
    np.testing.assert_allclose(e_txt, by_hand[1], atol=1e-5)
    assert not np.allclose(e_img, raw.embed(query_img, query_txt)[0], atol=1e-3)
    # The exported encoder applies the same statistics.
    encoder = portable.acmr_projector_model(model.nets.text_projector, train_txt.shape[1], "text")
    np.testing.assert_allclose(encoder(np.asarray(query_txt, np.float32)).numpy(), e_txt, atol=1e-5)
    with pytest.raises(ValueError, match="input_standardization"):
        acmr.AcmrModel(config, train_img.shape[1], train_txt.shape[1], data.num_classes)


# ----------------------------------------------------------------------------- the authors' pickles

class Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote: byte strings as STRING opcodes (Py2 `str`) and
    NumPy's module as numpy.core, so the loader's latin1 path is really exercised."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + module.replace("numpy._core", "numpy.core").encode() + b"\n"
                       + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type] = save_global


def dump_py2(path, obj):
    buffer = std_io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    if isinstance(obj, np.ndarray):  # like a real Py2 pickle, it needs encoding="latin1" to load
        with pytest.raises(UnicodeDecodeError):
            pickle.loads(data)
    with open(path, "wb") as handle:
        handle.write(data)


def write_wiki_pickles(folder, n_train=70, n_test=66, image_dim=12, text_dim=5, seed=0):
    rng = np.random.RandomState(seed)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        arrays[part] = (rng.rand(n, image_dim).astype(np.float32), rng.rand(n, text_dim).astype(np.float32),
                        [int(c) for c in rng.randint(1, 11, size=n)])
        dump_py2(os.path.join(folder, f"{part}_img_feats.pkl"), arrays[part][0])
        dump_py2(os.path.join(folder, f"{part}_txt_vecs.pkl"), arrays[part][1])
        dump_py2(os.path.join(folder, f"{part}_labels.pkl"), arrays[part][2])
    return arrays


def test_wiki_pickles_load_through_load_dataset(tmp_path):
    arrays = write_wiki_pickles(str(tmp_path))
    data = load_dataset("wiki-pickle", str(tmp_path))
    np.testing.assert_array_equal(data.images, np.concatenate([arrays["train"][0], arrays["test"][0]]))
    np.testing.assert_array_equal(data.texts, np.concatenate([arrays["train"][1], arrays["test"][1]]))
    classes = np.concatenate([arrays["train"][2], arrays["test"][2]]) - 1
    np.testing.assert_array_equal(data.labels.argmax(axis=1), classes)
    assert data.labels.shape[1] == classes.max() + 1 and np.all(data.labels.sum(axis=1) == 1)
    np.testing.assert_array_equal(data.split.train, np.arange(70))
    np.testing.assert_array_equal(data.split.query, np.arange(70, 136))
    np.testing.assert_array_equal(data.split.database, np.arange(70))


def test_nuswide10k_id_keyed_pickles_follow_the_id_lists(tmp_path):
    rng = np.random.RandomState(5)
    expected = {}
    for part, n in (("train", 9), ("test", 4)):
        ids = [f"{part}_{i:04d}".encode() for i in rng.permutation(n)]  # Py2 str ids, file order
        classes = rng.randint(0, 10, size=n)
        img = {i: rng.rand(7).astype(np.float32) for i in ids}
        bow = {i: rng.randint(0, 2, size=6).astype(np.float32) for i in ids}
        label_map = {i: np.eye(10)[c].tolist() for i, c in zip(ids, classes)}
        dump_py2(str(tmp_path / f"img_{part}_id_feats.pkl"), img)
        dump_py2(str(tmp_path / f"{part}_id_bow.pkl"), bow)
        dump_py2(str(tmp_path / f"{part}_id_label_map.pkl"), label_map)
        dump_py2(str(tmp_path / f"{part}_ids.pkl"), ids)
        expected[part] = (np.stack([img[i] for i in ids]), np.stack([bow[i] for i in ids]), np.eye(10)[classes])
    data = load_dataset("nuswide10k", str(tmp_path))
    np.testing.assert_array_equal(data.images, np.concatenate([expected["train"][0], expected["test"][0]]))
    np.testing.assert_array_equal(data.texts, np.concatenate([expected["train"][1], expected["test"][1]]))
    np.testing.assert_array_equal(data.labels, np.concatenate([expected["train"][2], expected["test"][2]]))
    assert (len(data.split.train), len(data.split.query)) == (9, 4)
    # A missing id is named in a one-line error.
    table = acmr_pickles.load_pickle(str(tmp_path / "test_id_bow.pkl"))
    table.pop(next(iter(table)))
    with open(tmp_path / "test_id_bow.pkl", "wb") as handle:
        pickle.dump(table, handle, protocol=2)
    with pytest.raises(UserError, match="missing from the test txt pickle"):
        load_dataset("nuswide10k", str(tmp_path))


def test_pickle_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("wiki-pickle", str(tmp_path / "absent"))
    write_wiki_pickles(str(tmp_path))
    (tmp_path / "test_labels.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot unpickle") as error:
        load_dataset("wiki-pickle", str(tmp_path))
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- train.py end to end

@pytest.mark.slow
def test_train_main_on_wiki_pickles_writes_results_codes_and_resumes(tmp_path, capsys):
    import train
    from utils import io
    data_dir = tmp_path / "wiki"
    data_dir.mkdir()
    write_wiki_pickles(str(data_dir), n_train=140, n_test=70)
    common = ["--method", "acmr", "--dataset", "wiki-pickle", "--data", str(data_dir), "--runs-dir",
              str(tmp_path / "runs"), "--batch-size", "32", "--log-every", "1"]
    results = train.main(common + ["--variant", "paper", "--epochs", "3", "--run-name", "paper"])
    run_dir = tmp_path / "runs" / "paper"
    saved = io.load_json(str(run_dir / "results.json"))
    assert saved["final"] == results["final"] and len(saved["epochs"]) == 3
    for protocol in (acmr.TEST_PROTOCOL, acmr.DATABASE_PROTOCOL):
        for direction in ("i->t", "t->i", "average"):
            assert 0.0 <= results["final"][protocol][direction] <= 1.0
    assert results["final"][acmr.TEST_PROTOCOL]["test_pairs"] == 64  # only full test batches: 2 x 32 of 70
    codes = scipy.io.loadmat(str(run_dir / "codes.mat"))
    assert codes["Qi"].shape == (70, 200) and codes["Dt"].shape == (140, 200)  # the paper's 200-d space
    assert codes["query_L"].shape[0] == 70 and codes["retrieval_L"].shape[0] == 140
    assert not np.all(np.isin(codes["Qi"], (-1, 1)))  # real-valued embeddings
    assert results["iterations"] == 3 * (140 // 32)
    assert any(name.startswith("events") for name in os.listdir(run_dir / "tb"))
    # Resume a finished run: nothing left to train, same final figures.
    resumed = train.main(["--resume", str(run_dir)])
    assert resumed["final"] == results["final"]

    # Original variant, one epoch, the program's embedding width.
    original = train.main(common + ["--epochs", "1", "--run-name", "original"])
    assert scipy.io.loadmat(str(tmp_path / "runs" / "original" / "codes.mat"))["Qt"].shape == (70, 40)
    assert 0.0 <= original["final"][acmr.DATABASE_PROTOCOL]["average"] <= 1.0


@pytest.fixture(scope="module")
def whole_paper_run(tmp_path_factory):
    """(argv without --epochs and the run's names, the run's folder, its results) of an
    uninterrupted 3-epoch paper-variant run on 96 training items in batches of 32 (shuffled; k = 5:
    the modality classifier's update falls mid-epoch), checkpoints every 2 updates, the last three
    kept: the reference of the tests that stop a run and resume it."""
    import train
    root = tmp_path_factory.mktemp("acmr-paper")
    data_dir = root / "wiki"
    data_dir.mkdir()
    write_wiki_pickles(str(data_dir), n_train=96, n_test=40, seed=4)
    common = ["--method", "acmr", "--dataset", "wiki-pickle", "--data", str(data_dir), "--batch-size", "32",
              "--variant", "paper", "--architecture", "coded", "--seed", "5", "--eval-every", "3",
              "--log-every", "5"]  # a read (and report) at 5
    whole = train.main(common + ["--epochs", "3", "--runs-dir", str(root / "runs"), "--run-name", "whole",
                                 "--checkpoint-every", "2", "--keep-checkpoints", "3"])
    return common, root / "runs" / "whole", whole


@pytest.mark.slow
def test_resume_continues_a_killed_run_exactly(tmp_path, monkeypatch, capsys, whole_paper_run):
    import train
    common, whole_dir, straight = whole_paper_run
    train.main(common + ["--epochs", "2", "--runs-dir", str(tmp_path / "runs"), "--run-name", "killed"])
    # Pretend the killed run was asked for 3 epochs: edit its saved config, then resume.
    from utils import io
    path = str(tmp_path / "runs" / "killed" / "config.json")
    saved = io.load_json(path)
    saved["config"]["epochs"] = 3
    io.save_json(path, saved)
    calls = []
    from trainers.loop import TrainingLoop
    original_done = TrainingLoop.updates_done
    monkeypatch.setattr(TrainingLoop, "updates_done", lambda self, n=1, *a: calls.extend([1] * n) or original_done(self, n, *a))
    resumed = train.main(["--resume", str(tmp_path / "runs" / "killed")])
    assert "resumed from" in capsys.readouterr().out
    assert len(calls) == 96 // 32  # only the third epoch was trained
    assert resumed["final"] == straight["final"] and resumed["iterations"] == straight["iterations"]
    for name in ("Qi", "Qt", "Di", "Dt"):
        np.testing.assert_array_equal(scipy.io.loadmat(str(tmp_path / "runs" / "killed" / "codes.mat"))[name],
                                      scipy.io.loadmat(str(whole_dir / "codes.mat"))[name])


@pytest.mark.slow
def test_checkpoint_holds_every_variable_of_the_networks_and_optimisers(tmp_path):
    from tests.test_metah import variable_values

    def build():
        tf.keras.backend.clear_session()  # the same variable paths in both builds
        tf.keras.utils.set_random_seed(1)
        return acmr.AcmrModel(dataclasses.replace(acmr.Config(), **{**acmr.PRESETS["paper"], "architecture": "coded"}),
                              12, 5, 4)

    def state(model):
        n = model.nets
        return [n.image_projector, n.text_projector, n.label_classifier, n.modality_classifier,
                model.projector_optimizer, model.modality_optimizer]
    trained = build()
    rng = np.random.RandomState(0)
    img, txt = rng.rand(8, 12).astype(np.float32), rng.rand(8, 5).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[rng.randint(0, 4, 8)]
    trained.set_lambda(0.2)
    trained.update(img, txt, labels, L.mine_negatives(img, labels), L.mine_negatives(txt, labels), True)
    position = [tf.Variable(v, dtype=tf.int64) for v in (1, 9)] + [tf.Variable('{"batches": 3}')]
    saved = trained.checkpoint(*position).save(str(tmp_path / "ckpt"))
    expected = variable_values(state(trained))
    fresh = build()
    for variable in [v for obj in state(fresh) for v in obj.variables]:
        variable.assign(variable.numpy() + 1)  # differs from the saved value everywhere
    restored_position = [tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64), tf.Variable("")]
    fresh.checkpoint(*restored_position).restore(saved)
    restored = variable_values(state(fresh))
    assert set(restored) == set(expected) and len(expected) > 30
    for path, value in expected.items():
        np.testing.assert_array_equal(restored[path], value, err_msg=path)
    assert [v.numpy() for v in restored_position] == [1, 9, b'{"batches": 3}']


@pytest.mark.slow
def test_signal_mid_epoch_writes_a_checkpoint_and_the_resumed_run_equals_the_whole_one(tmp_path, monkeypatch,
                                                                                      whole_paper_run):
    """SIGINT during iteration 5 of 3 epochs x 3 batches (shuffled, paper variant: k = 5, so the
    modality classifier's update falls mid-epoch) stops after a checkpoint inside epoch 2;
    the resumed run's embeddings equal the uninterrupted run's bit for bit and its epoch
    records (loss means over whole epochs, per-batch accuracies) are the same."""
    import signal

    from tests.conftest import stop_by_signal
    common, whole_dir, whole = whole_paper_run
    # Every 2 updates inside an epoch (2, 4, 8) and at every epoch end (3, 6, 9), numbered by
    # iteration; --keep-checkpoints 3 keeps the last three.
    kept = tf.train.get_checkpoint_state(str(whole_dir / "checkpoints")).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in kept] == ["ckpt-6", "ckpt-8", "ckpt-9"]
    stop_by_signal(monkeypatch, common + ["--epochs", "3", "--runs-dir", str(tmp_path / "runs"), "--run-name",
                                          "stopped"], signal.SIGINT, 5)
    stopped = tmp_path / "runs" / "stopped"
    assert os.path.basename(tf.train.latest_checkpoint(str(stopped / "checkpoints"))) == "ckpt-5"
    import train
    resumed = train.main(["--resume", str(stopped)])
    for name in ("Qi", "Qt", "Di", "Dt"):
        np.testing.assert_array_equal(scipy.io.loadmat(str(stopped / "codes.mat"))[name],
                                      scipy.io.loadmat(str(whole_dir / "codes.mat"))[name])
    assert resumed["final"] == whole["final"] and resumed["iterations"] == whole["iterations"] == 9
    assert resumed["epochs"] == whole["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["original", "paper"])
def test_the_loops_tf_data_updates_equal_one_by_one_updates_on_numpy_mined_batches(tmp_path, variant):
    """fit's batches come through tf.data, are mined in TensorFlow and run several updates per
    call (the paper's modality turn every 5th update decided in the graph); by hand, the same
    epochs go batch by batch through AcmrModel.update with NumPy mining. Same embeddings, same
    mean losses and per-batch accuracies (drop_last false: the partial last batch included)."""
    write_wiki_pickles(str(tmp_path), n_train=75, n_test=20, seed=6)
    data = load_dataset("wiki-pickle", str(tmp_path))
    config = dataclasses.replace(acmr.Config(dataset="wiki-pickle"), **{**acmr.PRESETS[variant], "architecture": "coded", "drop_last": False},
                                 variant=variant, epochs=2, batch_size=16, log_every=3,
                                 full_test_batches=False)
    models = []
    for _ in range(2):
        tf.keras.utils.set_random_seed(11)
        models.append(acmr.AcmrModel(config, 12, 5, data.num_classes))
    result = acmr.fit(config, data=data, model=models[0])
    img, txt, labels = data.part("train")
    by_hand, iteration = models[1], 0
    for epoch in range(2):
        by_hand.set_lambda(acmr.lambda_for_epoch(config, epoch, 2))
        sums, accuracies = {}, []
        for rows in acmr.epoch_batches(len(img), 16, config.shuffle, False, config.seed, epoch):
            terms = by_hand.update(img[rows], txt[rows], labels[rows], L.mine_negatives(img[rows], labels[rows]),
                                   L.mine_negatives(txt[rows], labels[rows]),
                                   (iteration + 1) % config.projector_steps == 0)
            iteration += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            accuracies.append(float(terms["modality_accuracy"]))
        record = result["epochs"][epoch]
        assert record["modality_accuracy_batches"] == pytest.approx(accuracies, abs=1e-6)
        assert record["losses"] == pytest.approx({k: v / len(accuracies) for k, v in sums.items()}, rel=1e-5)
    assert result["iterations"] == iteration == 2 * 5
    query_img, query_txt, _ = data.part("query")
    for ours, theirs in zip(models[0].embed(query_img, query_txt), by_hand.embed(query_img, query_txt)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_best_checkpoint_is_the_epoch_with_the_best_validation_map(tmp_path):
    """--validation-size: the validation items (out of training) ranked against the database
    without them; the kept best checkpoint is the epoch whose validation average is highest."""
    import train
    from utils import io
    write_wiki_pickles(str(tmp_path), n_train=120, n_test=40, seed=2)
    results = train.main(["--method", "acmr", "--dataset", "wiki-pickle", "--data", str(tmp_path), "--batch-size", "16",
                          "--epochs", "3", "--validation-size", "30", "--runs-dir", str(tmp_path / "runs"),
                          "--run-name", "v"])
    scores = [r["map"][acmr.VALIDATION_PROTOCOL]["average"] for r in results["epochs"]]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert results["iterations"] == 3 * (90 // 16)  # the 30 validation items are not trained on
    best = io.load_json(str(tmp_path / "runs" / "v" / "checkpoints" / "best" / "score.json"))
    assert best["score"] == max(scores)
    assert best["checkpoint"] == f"ckpt-{(scores.index(max(scores)) + 1) * (90 // 16)}"


def test_bad_input_gives_one_line_errors(tmp_path):
    import train
    with pytest.raises(UserError, match="at least 2"):
        train.main(["--method", "acmr", "--dataset", "synthetic", "--batch-size", "1",
                    "--runs-dir", str(tmp_path)])
    with pytest.raises(UserError, match="not found"):
        train.main(["--method", "acmr", "--dataset", "wiki", "--data", str(tmp_path / "nope.mat"),
                    "--runs-dir", str(tmp_path)])
    config = dataclasses.replace(acmr.Config(), epochs=-1)
    with pytest.raises(UserError, match="--epochs"):
        acmr.check_config(config)


@pytest.mark.slow
def test_train_main_on_the_real_wikipedia_features(tmp_path):
    import train
    from tests.conftest import shared_path
    path = shared_path("data", "wikipedia", "wikiData.mat")
    results = train.main(["--method", "acmr", "--data", path, "--epochs", "1", "--runs-dir", str(tmp_path),
                          "--run-name", "wiki"])
    assert results["settings"]["program"] == "triplet" and results["iterations"] == 33  # 2173 // 64 batches
    assert results["final"][acmr.TEST_PROTOCOL]["test_pairs"] == 640  # only full test batches, as the program
    codes = scipy.io.loadmat(str(tmp_path / "wiki" / "codes.mat"))
    assert codes["Qi"].shape == (693, 40) and codes["Di"].shape == (2173, 40)
    # Re-ranking the exported embeddings with the metrics helper gives the reported figure.
    from utils.metrics import embedding_map
    again = embedding_map(codes["Qt"], codes["Di"], codes["query_L"], codes["retrieval_L"])
    assert again == pytest.approx(results["final"][acmr.DATABASE_PROTOCOL]["t->i"], rel=1e-6)


class ScaledEmbedder:
    """Embeds each item of either modality as its one-hot class (its input) times the item's own
    scale (the input's last column): the direction carries the class, the norm only the scale."""

    def embed(self, images, texts):
        scaled = lambda rows: np.asarray(rows[:, :-1] * rows[:, -1:], np.float32)
        return scaled(images), scaled(texts)


def test_the_retrieval_distance_ranks_every_figure_and_cosine_ignores_the_embedding_norms():
    """Embeddings point at their class with norms 0.1-5: cosine ranks every relevant item first
    (mAP 1 in every protocol, validation too); Euclidean puts near-zero items of other classes
    before long ones of the query's class."""
    from utils.data import CrossModalData
    from utils.data.splits import Split
    labels = np.eye(4, dtype=np.float32)[np.arange(128) % 4]
    rng = np.random.default_rng(0)
    with_scales = lambda: np.hstack([labels, rng.uniform(0.1, 5.0, (128, 1)).astype(np.float32)])
    data = CrossModalData("toy", with_scales(), with_scales(), labels,
                          Split(query=np.arange(64), train=np.arange(64, 128), database=np.arange(64, 128),
                                validation=np.arange(64, 80)), single_label=True)
    for distance, perfect in (("cosine", True), ("euclidean", False)):
        config = acmr.Config(dataset="synthetic", batch_size=32, top_k=20, retrieval_distance=distance)
        figures, _ = acmr.evaluate(ScaledEmbedder(), data, config)
        validation = acmr.validation_figures(ScaledEmbedder(), data, config)
        values = [figures[p][d] for p in (acmr.TEST_PROTOCOL, acmr.DATABASE_PROTOCOL) for d in ("i->t", "t->i")]
        values += [validation["i->t"], validation["t->i"]]
        if perfect:
            assert values == pytest.approx([1.0] * 6)
        else:
            assert max(values) < 0.99
