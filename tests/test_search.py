"""HammingIndex: faiss and NumPy backends give identical neighbours and distances,
with ties broken by the smallest database index (the metrics' stable rule)."""
import numpy as np
import pytest

from utils.errors import UserError
from utils.search import HammingIndex, faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (pip install faiss-cpu)")


def reference_knn(query, db, k):
    """Plain loop: Hamming distance to every item, stable argsort, first k."""
    distances, indices = [], []
    for row in query:
        dist = (row[None, :] != db).sum(axis=1)
        order = np.argsort(dist, kind="stable")[:k]
        distances.append(dist[order])
        indices.append(order)
    return np.array(distances), np.array(indices)


def random_codes(seed, n, bits, distinct=None):
    rng = np.random.default_rng(seed)
    if distinct is None:
        return np.where(rng.random((n, bits)) < 0.5, 1, -1)
    base = np.where(rng.random((distinct, bits)) < 0.5, 1, -1)
    return base[rng.integers(0, distinct, n)]


@needs_faiss
@pytest.mark.parametrize("kind", ["flat", "hash", "mih"])
def test_faiss_and_numpy_agree_on_100000_codes(kind):
    db = random_codes(0, 100_000, 32)
    db[50_000:60_000] = db[:10_000]  # exact duplicates: distance ties across the database
    query = np.concatenate([db[[3, 70_000]], random_codes(1, 3, 32)])
    query[1, :2] *= -1  # a near neighbour at distance 2
    numpy_index = HammingIndex(db, backend="numpy")
    faiss_index = HammingIndex(db, backend="faiss", kind=kind)
    expected = reference_knn(query[:2], db, 25)
    for k in (1, 25):
        got_numpy = numpy_index.search(query, k)
        got_faiss = faiss_index.search(query, k)
        np.testing.assert_array_equal(got_numpy[0], got_faiss[0])
        np.testing.assert_array_equal(got_numpy[1], got_faiss[1])
    np.testing.assert_array_equal(got_faiss[0][:2], expected[0])
    np.testing.assert_array_equal(got_faiss[1][:2], expected[1])
    assert got_faiss[1][0, 0] == 3 and got_faiss[1][0, 1] == 50_003  # duplicate pair, smaller index first
    for radius in (0, 2, 3):
        for (d_numpy, i_numpy), (d_faiss, i_faiss) in zip(numpy_index.range_search(query, radius),
                                                          faiss_index.range_search(query, radius)):
            np.testing.assert_array_equal(d_numpy, d_faiss)
            np.testing.assert_array_equal(i_numpy, i_faiss)
            assert np.all(d_faiss <= radius)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
@pytest.mark.parametrize("kind", ["flat", "hash", "mih"])
def test_tie_heavy_codes_keep_the_smallest_indices(backend, kind):
    # 8-bit codes with 4 distinct values: k cuts through large tie groups
    db = random_codes(2, 3000, 8, distinct=4)
    query = random_codes(3, 6, 8, distinct=4)
    index = HammingIndex(db, backend=backend, kind=kind)
    for k in (1, 40, 2000):
        distances, indices = index.search(query, k)
        expected_distances, expected_indices = reference_knn(query, db, k)
        np.testing.assert_array_equal(distances, expected_distances)
        np.testing.assert_array_equal(indices, expected_indices)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("faiss", marks=needs_faiss)])
def test_bit_widths_not_multiple_of_eight(backend):
    db = random_codes(4, 2000, 20)
    query = random_codes(5, 4, 20)
    distances, indices = HammingIndex(db, backend=backend).search(query, 30)
    expected_distances, expected_indices = reference_knn(query, db, 30)
    np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(indices, expected_indices)
    zero_one = HammingIndex((db > 0) * 1, backend=backend).search((query > 0) * 1, 30)
    np.testing.assert_array_equal(zero_one[1], indices)


def test_auto_backend_falls_back_to_numpy_without_faiss(monkeypatch):
    import utils.search
    monkeypatch.setattr(utils.search, "faiss_available", lambda: False)
    db = random_codes(8, 500, 16)
    index = HammingIndex(db, kind="mih")
    assert index.backend == "numpy"
    distances, indices = index.search(db[:3], 5)
    np.testing.assert_array_equal(indices, reference_knn(db[:3], db, 5)[1])
    with pytest.raises(UserError, match="pip install faiss-cpu"):
        HammingIndex(db, backend="faiss")


def test_bad_arguments_are_user_errors():
    db = random_codes(6, 100, 16)
    with pytest.raises(UserError, match="backend"):
        HammingIndex(db, backend="annoy")
    with pytest.raises(UserError, match="kind"):
        HammingIndex(db, kind="lsh")
    index = HammingIndex(db, backend="numpy")
    with pytest.raises(UserError, match="bits"):
        index.search(random_codes(7, 3, 32), 5)
    with pytest.raises(UserError, match="between 1"):
        index.search(db[:2], 0)
    with pytest.raises(UserError, match="codes in"):
        HammingIndex(db * 0.3)


def check_exact_up_to_the_code_length():
    """Range search at every radius up to K and k-NN with max_radius = K agree with NumPy,
    for each kind; widths 8 (hash on all 8 bits), 24 (one 16-bit mih table) and 32."""
    for bits in (8, 24, 32):
        db = random_codes(bits, 1000, bits)
        query = np.concatenate([db[:1], random_codes(bits + 1, 2, bits)])
        numpy_index = HammingIndex(db, backend="numpy")
        expected_knn = numpy_index.search(query, 1000)
        for kind in ("flat", "hash", "mih"):
            index = HammingIndex(db, backend="faiss", kind=kind, max_radius=bits)
            for radius in (bits // 2, bits - 1, bits, bits + 5):
                for (d_numpy, i_numpy), (d_faiss, i_faiss) in zip(numpy_index.range_search(query, radius),
                                                                  index.range_search(query, radius)):
                    np.testing.assert_array_equal(d_faiss, d_numpy)
                    np.testing.assert_array_equal(i_faiss, i_numpy)
            got_knn = index.search(query, 1000)  # needs every radius up to K before it has all items
            np.testing.assert_array_equal(got_knn[0], expected_knn[0])
            np.testing.assert_array_equal(got_knn[1], expected_knn[1])


@needs_faiss
def test_hash_lookups_answer_for_every_radius_up_to_the_code_length():
    # In a child process: faiss's lookup loops forever when nflip exceeds the table's bits,
    # which would otherwise hang the whole test run instead of failing this test.
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        result = subprocess.run([sys.executable, "-c", "from tests.test_search import "
                                 "check_exact_up_to_the_code_length as check; check()"],
                                cwd=repo, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a hash lookup did not return within 120 s (nflip beyond the table's bits?)")
    assert result.returncode == 0, result.stderr[-3000:]
