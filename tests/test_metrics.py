"""utils.metrics against plain per-query reference loops written here (the original
program's calc_map: distances, a sort, cumulative counts), to 1e-9. The loops order ties
by the rule under test: np.lexsort by (distance, relevance) for pessimistic (irrelevant
items first) and optimistic (relevant first), np.argsort of the float distances for
argsort (the programs' own call). The expected rule is checked against exact
enumeration of all tie orders and against the mean over random tie orders."""
import itertools

import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_path
from utils import metrics
from utils.errors import UserError

TOL = 1e-9


# ----------------------------------------------------------------------------- reference loops

def ref_relevant(query_label, db_labels):
    return (np.asarray(db_labels, float) @ np.asarray(query_label, float)) > 0


def ref_hamming(query_code, db_codes):
    """The programs' calc_hammingDist on their float32 +-1 codes: 0.5 * (K - q . B^T)."""
    query_code = np.where(np.asarray(query_code) > 0, 1, -1).astype(np.float32)
    db_codes = np.where(np.asarray(db_codes) > 0, 1, -1).astype(np.float32)
    return 0.5 * (db_codes.shape[1] - np.dot(query_code, db_codes.transpose()))


def ref_order(distances, relevant, ties="pessimistic"):
    if ties == "argsort":
        return np.argsort(distances)
    return np.lexsort((relevant if ties == "pessimistic" else ~relevant, distances))


def ref_ap(distances, relevant, top_k=None, ties="pessimistic"):
    order = ref_order(distances, relevant, ties)
    hits = relevant[order]
    if top_k is not None:
        hits = hits[:top_k]
    total = int(hits.sum())
    if total == 0:
        return 0.0
    count = np.linspace(1, total, total)
    places = np.flatnonzero(hits) + 1.0
    return float(np.mean(count / places))


def ref_map(query, db, query_labels, db_labels, top_k=None, distance="hamming", ties="pessimistic"):
    total = 0.0
    for i in range(len(query)):
        total += ref_ap(ref_distances(query[i], db, distance, ties), ref_relevant(query_labels[i], db_labels), top_k,
                        ties)
    return total / len(query)


def ref_distances(query_item, db, distance, ties="pessimistic"):
    if distance == "hamming":
        return ref_hamming(query_item, db)
    if ties == "argsort":  # the tie order of np.argsort depends on every bit of the distances: scipy's
        from scipy.spatial.distance import cdist
        return cdist(query_item[None], db, distance)[0]
    if distance == "euclidean":
        return np.array([np.sqrt(np.sum((row - query_item) ** 2)) for row in db])
    return np.array([1.0 - row @ query_item / (np.linalg.norm(row) * np.linalg.norm(query_item)) for row in db])


def ref_lookup(query, db, query_labels, db_labels, empty="zero", radius=2, ties="pessimistic"):
    bits = query.shape[1]
    precision = np.zeros((len(query), bits + 1))
    answered = np.zeros((len(query), bits + 1), bool)
    recall, with_relevant, radius_ap = [], [], []
    for i in range(len(query)):
        dist = ref_hamming(query[i], db)
        rel = ref_relevant(query_labels[i], db_labels)
        row_recall = []
        for r in range(bits + 1):
            inside = dist <= r
            answered[i, r] = inside.any()
            precision[i, r] = (rel & inside).sum() / inside.sum() if inside.any() else 0.0
            row_recall.append((rel & inside).sum() / rel.sum() if rel.any() else np.nan)
        if rel.any():
            recall.append(row_recall)
        # TAH: rank, keep the items within the radius, AP over them (0 when none relevant)
        hits = rel[ref_order(dist, rel, ties)][: int((dist <= radius).sum())]
        radius_ap.append(0.0 if hits.sum() == 0 else
                         np.mean(np.arange(1, hits.sum() + 1) / (np.flatnonzero(hits) + 1.0)))
    if empty == "zero":
        curve = precision.mean(axis=0)
    else:
        curve = np.array([precision[answered[:, r], r].mean() if answered[:, r].any() else 0.0
                          for r in range(bits + 1)])
    return curve, np.mean(recall, axis=0), float(np.mean(radius_ap))


def ref_top_n(query, db, query_labels, db_labels, n_max, distance="hamming", ties="pessimistic"):
    precision, recall = [], []
    for i in range(len(query)):
        relevant = ref_relevant(query_labels[i], db_labels)
        hits = relevant[ref_order(ref_distances(query[i], db, distance, ties), relevant, ties)]
        found = np.cumsum(hits)[:n_max]
        precision.append(found / np.arange(1, n_max + 1))
        if hits.any():
            recall.append(found / hits.sum())
    return np.mean(precision, axis=0), np.mean(recall, axis=0)


# ----------------------------------------------------------------------------- data

def random_case(seed, n_query, n_db, bits, classes=6, density=0.2, single=False):
    rng = np.random.default_rng(seed)
    query = np.where(rng.random((n_query, bits)) < 0.5, 1, -1)
    db = np.where(rng.random((n_db, bits)) < 0.5, 1, -1)
    if single:
        return query, db, np.eye(classes)[rng.integers(0, classes, n_query)], \
            np.eye(classes)[rng.integers(0, classes, n_db)]
    return query, db, (rng.random((n_query, classes)) < density) * 1, (rng.random((n_db, classes)) < density) * 1


def assert_report_matches(query, db, query_labels, db_labels, top_ks=(1, 7, 50), n_max=40, ties="pessimistic"):
    """Every figure of retrieval_report under a sorting tie rule against the reference loops."""
    report = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=top_ks, n_max=n_max, ties=ties)
    assert report["ties"] == ties
    assert abs(report["map"] - ref_map(query, db, query_labels, db_labels, ties=ties)) < TOL
    for k in top_ks:
        assert abs(report[f"map@{k}"] - ref_map(query, db, query_labels, db_labels, top_k=k, ties=ties)) < TOL
    for empty in ("zero", "skip"):
        report = metrics.retrieval_report(query, db, query_labels, db_labels, n_max=n_max, empty=empty, ties=ties)
        precision, recall, radius_map = ref_lookup(query, db, query_labels, db_labels, empty, ties=ties)
        np.testing.assert_allclose(report["hash_lookup"]["precision"], precision, rtol=0, atol=TOL)
        np.testing.assert_allclose(report["hash_lookup"]["recall"], recall, rtol=0, atol=TOL)
        assert abs(report["map_radius2"] - radius_map) < TOL
        assert abs(report["precision_radius2"] - precision[2]) < TOL
    top_precision, top_recall = ref_top_n(query, db, query_labels, db_labels, min(n_max, len(db)), ties=ties)
    np.testing.assert_allclose(report["top_n"]["precision"], top_precision, rtol=0, atol=TOL)
    np.testing.assert_allclose(report["top_n"]["recall"], top_recall, rtol=0, atol=TOL)
    ranks = np.array(report["ranking_pr"]["n"])  # log-spaced ranks up to the whole database
    all_precision, all_recall = ref_top_n(query, db, query_labels, db_labels, len(db), ties=ties)
    np.testing.assert_allclose(report["ranking_pr"]["precision"], all_precision[ranks - 1], rtol=0, atol=TOL)
    np.testing.assert_allclose(report["ranking_pr"]["recall"], all_recall[ranks - 1], rtol=0, atol=TOL)
    return report


SORT_RULES = ("pessimistic", "optimistic", "argsort")  # the rules that a reference loop can sort by


# ----------------------------------------------------------------------------- mAP

@pytest.mark.parametrize("ties", SORT_RULES)
@pytest.mark.parametrize("bits", [8, 16, 32, 64, 100])
def test_map_matches_reference_on_random_codes(bits, ties):
    query, db, query_labels, db_labels = random_case(bits, 25, 700, bits)
    for top_k in (None, 1, 10, 100, 700, 5000):
        got = metrics.mean_average_precision(query, db, query_labels, db_labels, top_k=top_k, ties=ties)
        assert abs(got - ref_map(query, db, query_labels, db_labels, top_k, ties=ties)) < TOL


@pytest.mark.parametrize("ties", SORT_RULES)
def test_average_precisions_are_each_querys_ap(ties):
    query, db, query_labels, db_labels = random_case(3, 12, 300, 16)
    for top_k in (None, 10):
        got = metrics.average_precisions(query, db, query_labels, db_labels, top_k=top_k, ties=ties)
        want = [ref_ap(ref_distances(q, db, "hamming", ties), ref_relevant(label, db_labels), top_k, ties)
                for q, label in zip(query, query_labels)]
        assert got.shape == (12,) and np.allclose(got, want, atol=TOL)
        assert abs(metrics.mean_average_precision(query, db, query_labels, db_labels, top_k, ties) - np.mean(want)) < TOL


@pytest.mark.parametrize("ties", metrics.TIE_RULES)
def test_zero_one_codes_and_bool_codes_give_the_same_map(ties):
    query, db, query_labels, db_labels = random_case(3, 20, 300, 24)
    plus_minus = metrics.mean_average_precision(query, db, query_labels, db_labels, ties=ties)
    assert metrics.mean_average_precision((query > 0) * 1, (db > 0) * 1, query_labels, db_labels,
                                          ties=ties) == plus_minus
    assert metrics.mean_average_precision(query > 0, db > 0, query_labels, db_labels, ties=ties) == plus_minus


@pytest.mark.parametrize("ties", SORT_RULES)
def test_single_label_one_hot_matches_reference(ties):
    query, db, query_labels, db_labels = random_case(4, 30, 500, 16, classes=10, single=True)
    assert_report_matches(query, db, query_labels, db_labels, ties=ties)


def test_labels_wider_than_one_word():
    query, db, query_labels, db_labels = random_case(5, 20, 400, 32, classes=150, density=0.02)
    assert_report_matches(query, db, query_labels, db_labels)
    query, db, query_labels, db_labels = random_case(6, 20, 400, 32, classes=150, single=True)
    assert_report_matches(query, db, query_labels, db_labels)


def test_all_codes_equal_rank_relevant_items_last_when_pessimistic():
    # every item at distance 0: the 2 irrelevant items rank first, the 4 relevant ones at places 3..6
    db_labels = np.eye(2)[[1, 0, 1, 0, 0, 0]]
    query_labels = np.eye(2)[[0]]
    codes = np.ones((6, 8))
    last = (1 / 3 + 2 / 4 + 3 / 5 + 4 / 6) / 4
    got = lambda **kw: metrics.mean_average_precision(codes[:1], codes, query_labels, db_labels, **kw)
    assert abs(got(ties="pessimistic") - last) < TOL
    assert abs(got(ties="optimistic") - 1.0) < TOL
    # random order: each place holds a relevant item with probability 4/6 (module doc's E, b = R = 0)
    c = 3 / 5
    expected = (4 / 6) * sum((1 + (j - 1) * c) / j for j in range(1, 7)) / 4
    assert abs(got() - expected) < TOL and last < expected < 1
    # database order would give another value, so the rule is observable
    database_order = (1 / 2 + 2 / 4 + 3 / 5 + 4 / 6) / 4
    assert abs(last - database_order) > 0.04
    assert abs(got(top_k=4, ties="pessimistic") - (1 / 3 + 2 / 4) / 2) < TOL
    report = metrics.retrieval_report(codes[:1], codes, query_labels, db_labels, top_ks=(2,), n_max=6,
                                      ties="pessimistic")
    assert report["map@2"] == 0.0  # the first two places hold the irrelevant items
    assert report["top_n"]["precision"] == pytest.approx([0, 0, 1 / 3, 2 / 4, 3 / 5, 4 / 6], abs=TOL)
    assert abs(report["map_radius2"] - last) < TOL
    report = metrics.retrieval_report(codes[:1], codes, query_labels, db_labels, n_max=6)
    assert report["top_n"]["precision"] == pytest.approx([4 / 6] * 6, abs=TOL)  # hypergeometric mean


def test_a_closer_item_still_ranks_first():
    # the tie rule only orders equal distances: an irrelevant item nearer than the rest ranks first
    db = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, 1, -1], [1, 1, -1, -1]])
    db_labels = np.eye(2)[[1, 0, 1, 0]]  # relevant to class 0: items 1 (distance 1) and 3 (distance 2)
    got = metrics.mean_average_precision(db[:1], db, np.eye(2)[[0]], db_labels, ties="pessimistic")
    assert abs(got - (1 / 3 + 2 / 4) / 2) < TOL  # item 2 (irrelevant, distance 1) goes before item 1


@pytest.mark.parametrize("ties", SORT_RULES)
def test_tie_heavy_codes_match_reference(ties):
    # 8-bit codes from 3 random bits: only 8 distinct codes, so every tie group is large
    rng = np.random.default_rng(7)
    base = np.where(rng.random((8, 8)) < 0.5, 1, -1)
    query = base[rng.integers(0, 8, 30)]
    db = base[rng.integers(0, 8, 900)]
    query_labels = (rng.random((30, 4)) < 0.3) * 1
    db_labels = (rng.random((900, 4)) < 0.3) * 1
    assert_report_matches(query, db, query_labels, db_labels, ties=ties)
    same = np.ones((40, 8))
    assert_report_matches(same[:5], same, query_labels[:5], db_labels[:40], ties=ties)


def test_queries_without_relevant_items_add_zero_and_count():
    query, db, query_labels, db_labels = random_case(8, 12, 300, 16, classes=5)
    query_labels = np.concatenate([query_labels, np.zeros((12, 1), int)], axis=1)
    db_labels = np.concatenate([db_labels, np.zeros((300, 1), int)], axis=1)
    query_labels[:4] = 0
    query_labels[:4, 5] = 1  # class 5 is in no database item
    for ties in metrics.TIE_RULES:
        got = metrics.mean_average_precision(query, db, query_labels, db_labels, ties=ties)
        others = metrics.mean_average_precision(query[4:], db, query_labels[4:], db_labels, ties=ties)
        assert abs(got - others * 8 / 12) < TOL
    got = metrics.mean_average_precision(query, db, query_labels, db_labels, ties="pessimistic")
    assert abs(got - ref_map(query, db, query_labels, db_labels)) < TOL
    report = assert_report_matches(query, db, query_labels, db_labels)
    assert report["queries_without_relevant"] >= 4


@pytest.mark.slow
def test_real_wikipedia_codes_cross_modal():
    data = scipy.io.loadmat(shared_path("data", "wikipedia", "wikiData.mat"))
    rng = np.random.default_rng(0)
    labels_te = np.eye(10)[data["L_te"].ravel() - 1]
    labels_tr = np.eye(10)[data["L_tr"].ravel() - 1]
    for bits in (16, 64):
        image_projection = rng.normal(size=(128, bits))
        text_projection = rng.normal(size=(10, bits))
        image_codes = lambda x: np.where((x - data["I_tr"].mean(0)) @ image_projection >= 0, 1, -1)
        text_codes = lambda x: np.where((x - data["T_tr"].mean(0)) @ text_projection >= 0, 1, -1)
        query = image_codes(data["I_te"][:60])
        db = text_codes(data["T_tr"])
        report = assert_report_matches(query, db, labels_te[:60], labels_tr, top_ks=(50, 500), n_max=100)
        assert 0.05 < report["map"] < 0.5  # near chance (0.1) for a random projection
        args = (image_codes(data["I_te"]), image_codes(data["I_tr"]), labels_te, labels_tr)
        assert abs(metrics.mean_average_precision(*args, ties="argsort") - authors_calc_map(*args)) < 1e-12


@pytest.mark.slow
def test_real_mirflickr_multi_label_codes():
    folder = shared_path("data", "mirflickr25k")
    tags = scipy.io.loadmat(f"{folder}/mirflickr25k-yall.mat")["YAll"][:2050].astype(np.float64)
    labels = scipy.io.loadmat(f"{folder}/mirflickr25k-lall.mat")["LAll"][:2050]
    projection = np.random.default_rng(1).normal(size=(tags.shape[1], 32))
    codes = np.where((tags - tags.mean(0)) @ projection >= 0, 1, -1)
    # real multi-hot labels (1 to 11 concepts per item): every figure exact against the loops
    for ties in SORT_RULES:
        assert_report_matches(codes[:50], codes[50:], labels[:50], labels[50:], top_ks=(100,), n_max=200, ties=ties)


def plain_histograms(query, db, query_labels, db_labels):
    out = np.zeros((len(query), query.shape[1] + 1, 2), int)
    for i in range(len(query)):
        distances = ref_hamming(query[i], db).astype(int)
        np.add.at(out[i], (distances, ref_relevant(query_labels[i], db_labels).astype(int)), 1)
    return out


@pytest.mark.parametrize("bits, classes", [(8, 5), (16, 24), (64, 80), (100, 150), (130, 10)])
def test_compiled_and_numpy_histograms_equal_a_plain_count(monkeypatch, bits, classes):
    query, db, query_labels, db_labels = random_case(bits + classes, 23, 301, bits, classes=classes, density=0.1)
    expected = plain_histograms(query, db, query_labels, db_labels)
    monkeypatch.setattr(metrics, "KERNEL", "numpy")
    np.testing.assert_array_equal(metrics.distance_histograms(query, db, query_labels, db_labels), expected)
    pytest.importorskip("numba")
    monkeypatch.setattr(metrics, "KERNEL", "numba")
    np.testing.assert_array_equal(metrics.distance_histograms(query, db, query_labels, db_labels), expected)


def test_numpy_kernel_matches_reference_on_ties_and_empty_queries(monkeypatch):
    monkeypatch.setattr(metrics, "KERNEL", "numpy")
    monkeypatch.setattr(metrics, "PAIRS_PER_CHUNK", 2000)  # several chunks on threads
    rng = np.random.default_rng(16)
    base = np.where(rng.random((4, 8)) < 0.5, 1, -1)
    query, db = base[rng.integers(0, 4, 20)], base[rng.integers(0, 4, 500)]
    query_labels, db_labels = (rng.random((20, 4)) < 0.3) * 1, (rng.random((500, 4)) < 0.3) * 1
    query_labels[:3] = 0  # no label: no relevant item
    assert_report_matches(query, db, query_labels, db_labels)
    assert_report_matches(query, db, query_labels, db_labels, ties="optimistic")


def test_relevant_run_sum_is_accurate_for_large_databases():
    from fractions import Fraction
    for before_relevant, before, count in [(0, 0, 5), (3, 10, 60), (5, 63, 2), (0, 64, 1), (40, 1000, 7),
                                           (100, 190000, 3000), (0, 193000, 1), (190000, 193000, 700)]:
        exact = sum(Fraction(before_relevant + j, before + j) for j in range(1, count + 1))
        got = metrics.relevant_run_sum(before_relevant, before, count)
        assert abs(float(got) - float(exact)) < 1e-12 * max(1, count)


def test_many_chunks_and_threads_give_the_same_figures(monkeypatch):
    query, db, query_labels, db_labels = random_case(9, 40, 500, 32)
    for ties in ("expected", "argsort"):
        monkeypatch.setattr(metrics, "PAIRS_PER_CHUNK", 1 << 18)
        whole = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=(10,), n_max=30, ties=ties)
        monkeypatch.setattr(metrics, "PAIRS_PER_CHUNK", 700)  # one query per chunk, 40 chunks on threads
        chunked = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=(10,), n_max=30, ties=ties)
        for key in ("map", "map@10", "map_radius2", "precision_radius2"):
            assert abs(whole[key] - chunked[key]) < TOL
        np.testing.assert_allclose(whole["hash_lookup"]["precision"], chunked["hash_lookup"]["precision"],
                                   atol=TOL)
        np.testing.assert_allclose(whole["top_n"]["recall"], chunked["top_n"]["recall"], atol=TOL)


def test_popcount_lookup_table_fallback(monkeypatch):
    rng = np.random.default_rng(10)
    words = rng.integers(0, 2 ** 63, size=(50, 3), dtype=np.uint64)
    expected = np.array([[bin(int(w)).count("1") for w in row] for row in words])
    np.testing.assert_array_equal(metrics.popcount(words), expected)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(metrics.popcount(words), expected)
    query, db, query_labels, db_labels = random_case(11, 10, 200, 40)
    assert abs(metrics.mean_average_precision(query, db, query_labels, db_labels, ties="pessimistic")
               - ref_map(query, db, query_labels, db_labels)) < TOL


# ----------------------------------------------------------------------------- embeddings

@pytest.mark.parametrize("ties", SORT_RULES)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_embedding_map_matches_reference(metric, ties):
    rng = np.random.default_rng(12)
    query = rng.normal(size=(20, 9))
    db = rng.normal(size=(300, 9))
    db[100:200] = db[:100]  # exact duplicates: ties that the stable order must break by index
    query[:5] = db[:5]
    query_labels = (rng.random((20, 5)) < 0.3) * 1
    db_labels = (rng.random((300, 5)) < 0.3) * 1
    for top_k in (None, 50):
        got = metrics.embedding_map(query, db, query_labels, db_labels, metric=metric, top_k=top_k, ties=ties)
        assert abs(got - ref_map(query, db, query_labels, db_labels, top_k, distance=metric, ties=ties)) < TOL
    report = metrics.retrieval_report(query, db, query_labels, db_labels, distance=metric, n_max=60, ties=ties)
    precision, recall = ref_top_n(query, db, query_labels, db_labels, 60, distance=metric, ties=ties)
    np.testing.assert_allclose(report["top_n"]["precision"], precision, atol=TOL)
    np.testing.assert_allclose(report["top_n"]["recall"], recall, atol=TOL)
    assert "hash_lookup" not in report
    # the ranking PR curve: the same figures at log-spaced N up to the whole database
    precision, recall = ref_top_n(query, db, query_labels, db_labels, 300, distance=metric, ties=ties)
    ranks = np.array(report["ranking_pr"]["n"])
    assert ranks[0] == 1 and ranks[-1] == 300 and np.all(np.diff(ranks) > 0)
    np.testing.assert_allclose(report["ranking_pr"]["precision"], precision[ranks - 1], atol=TOL)
    np.testing.assert_allclose(report["ranking_pr"]["recall"], recall[ranks - 1], atol=TOL)
    assert abs(report["ranking_pr"]["recall"][-1] - 1.0) < TOL


def test_embedding_ties_follow_the_rule():
    db = np.zeros((4, 3))
    labels = np.eye(2)[[1, 0, 1, 0]]
    got = lambda ties: metrics.embedding_map(db[:1], db, labels[1:2], labels, ties=ties)
    assert abs(got("pessimistic") - (1 / 3 + 2 / 4) / 2) < TOL
    assert abs(got("optimistic") - 1.0) < TOL
    # the 6 placements of 2 relevant items among 4 places, equally likely
    placements = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]
    assert abs(got("expected") - np.mean([(1 / a + 2 / b) / 2 for a, b in placements])) < TOL


# ----------------------------------------------------------------------------- tie rules

def authors_calc_map(qB, rB, query_L, retrieval_L, topk=None):
    """The original programs' calc_map (topk=None) and calc_map@K, as specified: codes held
    in float32, hamming = 0.5 * (K - q . B^T), ind = np.argsort(hamm), the first topk places
    for @K; a query with no relevant item (in its top K) adds 0 but counts in the mean."""
    qB = np.where(np.asarray(qB) > 0, 1, -1).astype(np.float32)
    rB = np.where(np.asarray(rB) > 0, 1, -1).astype(np.float32)
    total = 0.0
    for it in range(query_L.shape[0]):
        gnd = (np.dot(query_L[it, :], retrieval_L.transpose()) > 0).astype(np.float32)
        hamm = 0.5 * (rB.shape[1] - np.dot(qB[it, :], rB.transpose()))
        ind = np.argsort(hamm)
        gnd = gnd[ind] if topk is None else gnd[ind[:topk]]
        tsum = int(np.sum(gnd))
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        total += np.mean(count / tindex)
    return total / query_L.shape[0]


def tie_heavy_case(seed, n_query, n_db, bits, distinct, classes=4, density=0.3):
    """Codes drawn from `distinct` base codes: few distances, large tie groups."""
    rng = np.random.default_rng(seed)
    base = np.where(rng.random((distinct, bits)) < 0.5, 1, -1)
    return (base[rng.integers(0, distinct, n_query)], base[rng.integers(0, distinct, n_db)],
            (rng.random((n_query, classes)) < density) * 1, (rng.random((n_db, classes)) < density) * 1)


@pytest.mark.parametrize("bits, distinct", [(16, 6), (32, 40), (32, 5000)])
def test_argsort_rule_equals_the_authors_calc_map(bits, distinct):
    query, db, query_labels, db_labels = tie_heavy_case(bits + distinct, 60, 1500, bits, distinct)
    assert abs(metrics.mean_average_precision(query, db, query_labels, db_labels, ties="argsort")
               - authors_calc_map(query, db, query_labels, db_labels)) < 1e-12
    report = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=(1, 50, 500), ties="argsort")
    for k in (1, 50, 500):
        assert abs(report[f"map@{k}"] - authors_calc_map(query, db, query_labels, db_labels, topk=k)) < 1e-12
    if distinct < 100:  # the rule matters on these codes
        assert metrics.mean_average_precision(query, db, query_labels, db_labels, ties="pessimistic") \
            < report["map"] - 0.01


def enumerated_figures(distances, relevant, ranks):
    """Exact mean over every order inside the tie groups (all placements of each group's
    relevant items, equally likely) of AP, AP@k and found@N for k, N = 1..n, and of AP
    within each distance threshold."""
    groups = [np.flatnonzero(distances == d) for d in np.unique(distances)]
    thresholds = np.unique(distances)
    choices = [list(itertools.combinations(range(len(g)), int(relevant[g].sum()))) for g in groups]
    totals = {"ap": 0.0, "ap_at": np.zeros(len(ranks)), "found": np.zeros(len(ranks)),
              "ap_within": np.zeros(len(thresholds))}
    arrangements = list(itertools.product(*choices))
    for arrangement in arrangements:
        hits = np.concatenate([np.isin(np.arange(len(g)), places) for g, places in zip(groups, arrangement)])
        found = np.cumsum(hits)
        terms = found * hits / np.arange(1, len(hits) + 1)
        sums = np.cumsum(terms)
        totals["ap"] += sums[-1] / found[-1] if found[-1] else 0.0
        totals["ap_at"] += np.where(found[ranks - 1] > 0, sums[ranks - 1] / np.maximum(found[ranks - 1], 1), 0)
        totals["found"] += found[ranks - 1]
        inside = np.array([int((distances <= t).sum()) for t in thresholds])
        totals["ap_within"] += np.where(found[inside - 1] > 0, sums[inside - 1] / np.maximum(found[inside - 1], 1), 0)
    return {key: value / len(arrangements) for key, value in totals.items()}, thresholds


def test_expected_rule_equals_exact_enumeration_of_tie_orders():
    query, db, query_labels, db_labels = tie_heavy_case(21, 5, 11, 4, 5, classes=3, density=0.4)
    query_labels[0] = 0  # a query without relevant items
    n_db = len(db)
    ranks = np.arange(1, n_db + 1)
    report = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=ranks, n_max=n_db)
    assert report["ties"] == "expected"
    aps, ap_at, found, relevant, radius_aps = [], [], [], [], {r: [] for r in range(5)}
    for i in range(len(query)):
        distances = ref_hamming(query[i], db)
        rel = ref_relevant(query_labels[i], db_labels)
        figures, thresholds = enumerated_figures(distances[np.argsort(distances, kind="stable")],
                                                 rel[np.argsort(distances, kind="stable")], ranks)
        aps.append(figures["ap"])
        ap_at.append(figures["ap_at"])
        found.append(figures["found"])
        relevant.append(rel.sum())
        for r in radius_aps:  # AP within radius r: the last threshold <= r
            below = np.flatnonzero(thresholds <= r)
            radius_aps[r].append(figures["ap_within"][below[-1]] if len(below) else 0.0)
    assert abs(report["map"] - np.mean(aps)) < TOL
    for k in ranks:
        assert abs(report[f"map@{k}"] - np.mean(ap_at, axis=0)[k - 1]) < TOL
    found, relevant = np.array(found), np.array(relevant)
    np.testing.assert_allclose(report["top_n"]["precision"], found.mean(axis=0) / ranks, rtol=0, atol=TOL)
    np.testing.assert_allclose(report["top_n"]["recall"], (found[relevant > 0] / relevant[relevant > 0, None])
                               .mean(axis=0), rtol=0, atol=TOL)
    for r, values in radius_aps.items():
        got = metrics.radius_figures(query, db, query_labels, db_labels, radius=r)[f"map_radius{r}"]
        assert abs(got - np.mean(values)) < TOL
    # the same rule on embeddings with exact duplicates (equal distances)
    embeddings = np.random.default_rng(3).normal(size=(5, 3))
    db_embeddings = embeddings[np.arange(n_db) % 4]
    emb_report = metrics.retrieval_report(embeddings[:3], db_embeddings, query_labels[:3], db_labels,
                                          distance="euclidean", top_ks=ranks, n_max=n_db)
    from scipy.spatial.distance import cdist
    distances = cdist(embeddings[:3], db_embeddings)
    aps, ap_at = [], []
    for i in range(3):
        order = np.argsort(distances[i], kind="stable")
        figures, _ = enumerated_figures(distances[i][order], ref_relevant(query_labels[i], db_labels)[order], ranks)
        aps.append(figures["ap"])
        ap_at.append(figures["ap_at"])
    assert abs(emb_report["map"] - np.mean(aps)) < TOL
    for k in ranks:
        assert abs(emb_report[f"map@{k}"] - np.mean(ap_at, axis=0)[k - 1]) < TOL


def test_expected_rule_equals_the_mean_over_random_tie_orders():
    query, db, query_labels, db_labels = tie_heavy_case(22, 6, 400, 8, 6)
    report = metrics.retrieval_report(query, db, query_labels, db_labels, top_ks=(20, 100), n_max=100)
    distances = np.stack([ref_hamming(q, db) for q in query])
    relevant = np.stack([ref_relevant(ql, db_labels) for ql in query_labels])
    rng = np.random.default_rng(0)
    places = np.arange(1, db.shape[0] + 1)
    draws = {"map": [], "map@20": [], "map@100": [], "precision@50": []}
    for _ in range(2000):
        order = np.lexsort((rng.random(distances.shape), distances), axis=-1)  # random order inside ties
        hits = np.take_along_axis(relevant, order, axis=1)
        found = np.cumsum(hits, axis=1)
        sums = np.cumsum(found * hits / places, axis=1)
        draws["map"].append(np.mean(sums[:, -1] / np.maximum(found[:, -1], 1)))
        for k in (20, 100):
            draws[f"map@{k}"].append(np.mean(sums[:, k - 1] / np.maximum(found[:, k - 1], 1)))
        draws["precision@50"].append(np.mean(found[:, 49]) / 50)
    report["precision@50"] = report["top_n"]["precision"][49]
    for key, values in draws.items():
        error = np.std(values) / np.sqrt(len(values))
        assert error > 1e-5  # the order inside ties moves the figure
        assert abs(report[key] - np.mean(values)) < 3 * error, key


def test_expected_group_sum_is_accurate_for_large_groups():
    from fractions import Fraction
    for before_relevant, before, size, relevant in [(0, 0, 5, 2), (3, 10, 60, 60), (5, 63, 2, 1), (0, 64, 1, 1),
                                                    (40, 1000, 700, 3), (100, 190000, 3000, 2999),
                                                    (190000, 193000, 700, 350)]:
        spread = Fraction(relevant - 1, size - 1) if size > 1 else Fraction(0)
        exact = sum(Fraction(relevant, size) * (before_relevant + 1 + (j - 1) * spread) / (before + j)
                    for j in range(1, size + 1))
        got = metrics.expected_group_sum(before_relevant, before, size, relevant)
        assert abs(float(got) - float(exact)) < 1e-12 * max(1, size)


# ----------------------------------------------------------------------------- radius helpers and errors

def test_radius_helpers_agree_with_report():
    query, db, query_labels, db_labels = random_case(13, 15, 250, 12)
    figures = metrics.radius_figures(query, db, query_labels, db_labels, radius=2, ties="pessimistic")
    _, _, radius_map = ref_lookup(query, db, query_labels, db_labels)
    assert abs(figures["map_radius2"] - radius_map) < TOL
    curve = metrics.hash_lookup_curve(query, db, query_labels, db_labels)
    assert curve["radius"] == list(range(13))
    assert abs(curve["recall"][-1] - 1.0) < TOL  # radius K retrieves everything
    top = metrics.top_n_curve(query, db, query_labels, db_labels, n_max=250)
    assert abs(top["recall"][-1] - 1.0) < TOL


@pytest.mark.parametrize("bad, message", [
    (lambda q, d, ql, dl: (q * 0.5, d, ql, dl), "codes in"),
    (lambda q, d, ql, dl: (q[:, :8], d, ql, dl), "differ in width"),
    (lambda q, d, ql, dl: (q, d, ql[:3], dl), "labels do not match"),
    (lambda q, d, ql, dl: (q, d, ql[:, :2], dl), "classes"),
    (lambda q, d, ql, dl: (q[0], d, ql, dl), "2-D"),
    (lambda q, d, ql, dl: (q, d, ql * 3, dl), "multi-hot"),
])
def test_bad_input_is_a_user_error(bad, message):
    args = bad(*random_case(14, 5, 20, 16))
    with pytest.raises(UserError, match=message):
        metrics.mean_average_precision(*args)


def test_unknown_settings_are_user_errors():
    query, db, query_labels, db_labels = random_case(15, 5, 20, 16)
    with pytest.raises(UserError, match="tie rule 'random'.*expected, argsort"):
        metrics.retrieval_report(query, db, query_labels, db_labels, ties="random")
    with pytest.raises(UserError, match="tie rule"):
        metrics.embedding_map(query * 1.0, db * 1.0, query_labels, db_labels, ties="stable")
    with pytest.raises(UserError, match="empty"):
        metrics.retrieval_report(query, db, query_labels, db_labels, empty="ignore")
    with pytest.raises(UserError, match="metric"):
        metrics.embedding_map(query * 1.0, db * 1.0, query_labels, db_labels, metric="manhattan")
    with pytest.raises(UserError, match="radius"):
        metrics.radius_figures(query, db, query_labels, db_labels, radius=-1)
    with pytest.raises(UserError, match="top_k"):
        metrics.mean_average_precision(query, db, query_labels, db_labels, top_k=0)
    with pytest.raises(UserError, match="NaN"):
        metrics.embedding_map(np.full((2, 3), np.nan), db[:, :3] * 1.0, query_labels[:2], db_labels)
