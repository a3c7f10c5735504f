"""Retrieval metrics for every method: Hamming codes and real-valued embeddings.

Ranking and tie rules (every ranked figure, codes and embeddings alike): the database
is ranked by distance to the query. Items at EQUAL distance (a tie group) are ordered
by the tie rule `ties`:
  expected     the expected value of the figure over uniformly random orders inside
               every tie group (default): what an arbitrary sort estimates, but
               deterministic;
  argsort      exactly the original programs' calc_map / calc_map@K: np.argsort (its
               default kind) of the float distances. Hamming distances are computed as
               those programs do, 0.5 * (K - q . b) on +-1 codes held in float32 (the
               SSAH program's code arrays are float32), so the order inside ties is
               the one the program gets on this machine and NumPy build;
  pessimistic  the items that are not relevant first, the relevant ones last;
  optimistic   the relevant items first.
The order among items that tie in both distance and relevance changes no figure, so
every rule but argsort is a function of how many items, and how many relevant items,
lie in each tie group: Hamming figures are computed from per-query counts by distance
without sorting anything (argsort sorts). Every report names its rule ("ties").

Relevance: a database item is relevant to a query when they share a label.
Labels are multi-hot rows (give single labels as one-hot rows), so for
single-label data "share a label" is "equal label".

AP of one query = mean over the relevant ranked items of
(rank among the relevant items / rank overall). The mean over queries divides
by ALL queries: a query with no relevant item adds 0 (the original programs'
rule). mAP@K ranks only the first K items and divides by the number of
relevant items among them, 0 when there is none (ACMR's / DCMH's calc_map@K).
top-N: precision@N = relevant among the first N / N over all queries;
recall@N = relevant among the first N / all relevant, over the queries that have one.

Hash lookup (Hamming codes): the items within Hamming radius r are retrieved.
precision(r) = relevant retrieved / retrieved, recall(r) = relevant retrieved /
relevant in the database, both averaged over queries. A query with nothing
within the radius has precision 0 and counts in the mean (TAH's rule,
`empty="zero"`); `empty="skip"` leaves such queries out of the precision mean
instead. Recall is averaged over the queries that have a relevant item.
mAP within radius r (TAH's protocol): AP over the items within the radius,
ranked as above; AP = 0 when nothing relevant lies within it. The lookup curve and
precision within the radius do not depend on the tie rule (whole tie groups).

Expected figures under random order inside ties (closed forms, checked against the
mean over random orders and exact enumeration in the tests). Take a tie group of n
items ranked after b items, r of them relevant, R relevant items before it. Place
b + j of the group is relevant with probability r / n; given that, the other r - 1
relevant items of the group are spread uniformly over its other n - 1 places, so
the expected number of them before place j is (j - 1)(r - 1)/(n - 1). The group
adds to the sum over relevant items of (rank among relevant / rank) the expected
  E = sum_{j=1..n} (r/n) (R + 1 + (j-1) c) / (b + j),   c = (r - 1)/(n - 1) (0 if n = 1)
    = (r/n) [ (R + 1 - c (b + 1)) (H(b + n) - H(b)) + c n ]          (H: harmonic numbers)
(the form of McSherry and Najork, ECIR 2008). AP = sum of E over groups / relevant
items (fixed), and likewise AP within a radius (whole groups). AP@K also divides by
the relevant items in the top K, which is random when place K cuts a group: if m
places of the group lie in the top K, the group's relevant items among them X are
hypergeometric (n, r, m), and given X = x they are uniform over those m places, so
  E[AP@K] = sum_x P(X = x) (A + E(R, b, m, x)) / (R + x)   (0 where R + x = 0),
A = the sum of E over the whole groups before. Expected found@N (top-N precision and
recall) is linear: R + (N - b) r / n inside the group holding place N.

Speed (Hamming): for each query, one pass over the database counts the items and
the relevant items at each distance 0..K (popcount of XORed packed codes, AND of
packed labels): utils/hamming_kernel.py, compiled with numba when it is installed,
else NumPy bincounts over chunks of queries (same counts, a few times slower).
Memory: the compiled pass holds no pair-sized array; the NumPy one works on chunks
of PAIRS_PER_CHUNK pairs. From the counts, AP has closed forms: a run of r relevant
items ranked right after M items, R of them relevant, adds
sum_{j=1..r} (R + j) / (M + j) = r - (M - R) (H(M + r) - H(M)) (pessimistic: M = the
items before the group plus its irrelevant ones; optimistic: M = the items before
the group), and E above for `expected`; differences of H are taken with log1p (no
cancellation). Embeddings, and the argsort rule, are ranked by a real sort (one
chunk of queries at a time).
"""
import concurrent.futures
import os
import threading

import numpy as np

from utils.errors import UserError
from utils.optional import optional_module

PR_POINTS = 100  # points of the ranking precision-recall curve
THREADS = None  # threads that count or rank; None = min(4, CPU cores)
KERNEL = "auto"  # Hamming counts: "numba" (compiled), "numpy", or "auto" (numba when installed)
ARGSORT_HAMMING_DTYPE = np.float32  # the argsort rule's Hamming distances: the SSAH program's code dtype
PAIRS_PER_CHUNK = 1 << 18  # query x database pairs held at once by the NumPy paths: ~10 MB of work
                           # arrays per thread; the fastest of 2^16..2^21 on 2,000 x 18,015 (cache-sized)


# ----------------------------------------------------------------------------- inputs

def code_bits(codes, name="codes"):
    """Boolean (items x bits) matrix of codes in {-1,+1} or {0,1} (True = +1 / 1)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (items x bits), got shape {codes.shape}")
    if codes.dtype == bool:
        return codes
    positive = codes > 0
    negative_ok = np.all(positive | (codes == -1)) or np.all(positive | (codes == 0))
    if not negative_ok:
        raise UserError(f"{name} must hold codes in {{-1,+1}} or {{0,1}}; binarise real "
                        f"outputs first (numpy.where(x >= 0, 1, -1))")
    return positive


def _label_matrix(labels, name):
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserError(f"{name} must be a 2-D multi-hot matrix (items x classes), got shape "
                        f"{labels.shape}; give single labels as one-hot rows")
    if labels.dtype != bool and np.any((labels != 0) & (labels != 1)):
        raise UserError(f"{name} must be multi-hot 0/1 rows; class ids must be turned into one-hot "
                        f"rows first (numpy.eye(classes)[ids])")
    return labels != 0


def _check_pair(query, db, query_labels, db_labels, what):
    if query.shape[1] != db.shape[1]:
        raise UserError(f"query and database {what} differ in width ({query.shape[1]} vs {db.shape[1]}); "
                        f"evaluate codes of the same length")
    if query_labels.shape[0] != query.shape[0] or db_labels.shape[0] != db.shape[0]:
        raise UserError(f"labels do not match the items: {query_labels.shape[0]} query labels for "
                        f"{query.shape[0]} queries, {db_labels.shape[0]} database labels for {db.shape[0]} items")
    if query_labels.shape[1] != db_labels.shape[1]:
        raise UserError(f"query and database labels have {query_labels.shape[1]} and "
                        f"{db_labels.shape[1]} classes; use the same label space")


def relevance(query_labels, db_labels):
    """Query x database boolean matrix: True where the items share a label."""
    query_labels = np.asarray(query_labels, dtype=np.float64)
    db_labels = np.asarray(db_labels, dtype=np.float64)
    return (query_labels @ db_labels.T) > 0


# ----------------------------------------------------------------------------- bits

def _word_dtype(bits):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= 8 * np.dtype(dtype).itemsize:
            return dtype
    return np.uint64


def pack_bits(bits, dtype=None):
    """Packs a boolean (n x K) matrix into (n x W) unsigned words: `dtype` words, by default
    the smallest word when K <= 64, else uint64 (zero padding bits)."""
    bits = np.asarray(bits, dtype=bool)
    dtype = dtype or _word_dtype(bits.shape[1])
    word_bytes = np.dtype(dtype).itemsize
    packed = np.packbits(bits, axis=1)
    padded_bytes = -(-max(packed.shape[1], 1) // word_bytes) * word_bytes
    if packed.shape[1] != padded_bytes:
        packed = np.pad(packed, ((0, 0), (0, padded_bytes - packed.shape[1])))
    return np.ascontiguousarray(packed).view(dtype)


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words):
    """Number of set bits of each unsigned word, as uint8."""
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(words)
    words = np.ascontiguousarray(words)
    per_byte = _BYTE_POPCOUNT[words.view(np.uint8)].reshape(words.shape + (words.dtype.itemsize,))
    return per_byte.sum(axis=-1, dtype=np.uint8)


def hamming_distances(query_words, db_words):
    """Query x database Hamming distances of packed codes (uint8 up to 255 bits, else uint16)."""
    n_words = query_words.shape[1]
    out_dtype = np.uint8 if n_words * 8 * query_words.dtype.itemsize <= 255 else np.uint16
    distances = popcount(query_words[:, None, 0] ^ db_words[None, :, 0]).astype(out_dtype, copy=False)
    for w in range(1, n_words):
        distances += popcount(query_words[:, None, w] ^ db_words[None, :, w])
    return distances


# ----------------------------------------------------------------------------- threads and chunks

def _chunks(n_queries, width):
    """Slices of queries holding about PAIRS_PER_CHUNK query x `width` values each."""
    size = max(1, min(n_queries, PAIRS_PER_CHUNK // max(width, 1)))
    return [slice(start, min(start + size, n_queries)) for start in range(0, n_queries, size)]


def _workers():
    return THREADS or max(1, min(4, os.cpu_count() or 1))


def _map_chunks(function, chunks):
    """Runs function over chunks on a few threads; results in chunk order."""
    if len(chunks) <= 1 or _workers() == 1:
        return [function(chunk) for chunk in chunks]
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
        return list(pool.map(function, chunks))


def _safe_divide(numerator, denominator):
    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


# ----------------------------------------------------------------------------- Hamming counts

_KERNEL_LOCK = threading.Lock()


def _compiled_kernel():
    """utils.hamming_kernel.histograms, or None for the NumPy path."""
    if KERNEL not in ("auto", "numba", "numpy"):
        raise UserError(f"unknown metrics.KERNEL '{KERNEL}'; choose auto, numba or numpy")
    if KERNEL == "numpy":
        return None
    if KERNEL == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:
            raise UserError("metrics.KERNEL = 'numba' needs the numba package: pip install numba") from None
    elif optional_module("numba", "Hamming mAPs count with NumPy instead of the compiled kernel "
                         "(same figures, a few times slower)", "numba") is None:
        return None
    from utils import hamming_kernel
    return hamming_kernel.histograms


def _histograms_numpy(query_words, db_words, query_labels, db_labels, levels):
    def chunk(rows):
        distance = popcount(query_words[rows, None, 0] ^ db_words[None, :, 0]).astype(np.intp)
        shared = query_labels[rows, None, 0] & db_labels[None, :, 0]
        for w in range(1, query_words.shape[1]):
            distance += popcount(query_words[rows, None, w] ^ db_words[None, :, w])
        for w in range(1, query_labels.shape[1]):
            shared |= query_labels[rows, None, w] & db_labels[None, :, w]
        keys = distance * 2
        keys += shared != 0
        keys += (np.arange(keys.shape[0], dtype=np.intp) * (2 * levels))[:, None]
        return np.bincount(keys.ravel(), minlength=keys.shape[0] * 2 * levels).reshape(-1, 2 * levels)

    return np.concatenate(_map_chunks(chunk, _chunks(len(query_words), len(db_words))))


def _count_histograms(query_bits, db_bits, query_labels, db_labels):
    """(queries, K+1, 2) int64 counts of validated boolean inputs (see distance_histograms)."""
    levels = query_bits.shape[1] + 1
    words = [pack_bits(a, np.uint64) for a in (query_bits, db_bits, query_labels, db_labels)]
    kernel = _compiled_kernel()
    if kernel is None:
        counts = _histograms_numpy(*words, levels)
    else:
        import numba
        with _KERNEL_LOCK:  # one parallel launch at a time: numba's fallback thread pool is not re-entrant
            previous = numba.get_num_threads()
            numba.set_num_threads(min(_workers(), numba.config.NUMBA_NUM_THREADS))
            try:
                counts = kernel(*words, levels)
            finally:
                numba.set_num_threads(previous)
    return counts.astype(np.int64).reshape(len(query_bits), levels, 2)


def distance_histograms(query_codes, db_codes, query_labels, db_labels):
    """(queries, K+1, 2) counts: [q, d, 1] = database items at Hamming distance d from query q
    that share a label with it, [q, d, 0] = the other items at distance d."""
    query_bits, db_bits, query_labels, db_labels = _validated(query_codes, db_codes, query_labels, db_labels,
                                                              "hamming")
    return _count_histograms(query_bits, db_bits, query_labels, db_labels)


# ----------------------------------------------------------------------------- closed forms

_SMALL = 64
_HARMONIC_SMALL = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, _SMALL + 1))])  # H(0..64)
_EULER_GAMMA = 0.5772156649015329


def _harmonic_tail(n):
    """H(n) - ln(n) - gamma for n >= 64 (Euler-Maclaurin; the next term is below 1e-16 / n)."""
    inverse_square = 1.0 / (n * n)
    return 0.5 / n - inverse_square * (1 / 12 - inverse_square * (1 / 120 - inverse_square / 252))


def _harmonic(n):
    n = np.asarray(n, dtype=np.float64)
    small = n < _SMALL
    out = np.empty(n.shape)
    out[small] = _HARMONIC_SMALL[n[small].astype(np.intp)]
    large = n[~small]
    out[~small] = np.log(large) + _EULER_GAMMA + _harmonic_tail(large)
    return out


def _harmonic_gap(start, count):
    """H(start + count) - H(start), accurate to rounding relative to the result (log1p for start >= 64)."""
    start, count = np.broadcast_arrays(np.asarray(start, np.float64), np.asarray(count, np.float64))
    gap = np.empty(start.shape)
    small = start < _SMALL
    gap[small] = _harmonic(start[small] + count[small]) - _HARMONIC_SMALL[start[small].astype(np.intp)]
    m, t = start[~small], count[~small]
    gap[~small] = np.log1p(t / m) + (_harmonic_tail(m + t) - _harmonic_tail(m))
    return gap


def relevant_run_sum(relevant_before, ranked_before, count):
    """sum_{j=1..count} (relevant_before + j) / (ranked_before + j): the AP terms of `count`
    relevant items ranked right after `ranked_before` items of which `relevant_before` are
    relevant; elementwise, in closed form (absolute error ~1e-16 * count)."""
    relevant_before = np.asarray(relevant_before, np.float64)
    ranked_before = np.asarray(ranked_before, np.float64)
    count = np.asarray(count, np.float64)
    return count - (ranked_before - relevant_before) * _harmonic_gap(ranked_before, count)


def expected_group_sum(relevant_before, ranked_before, size, relevant):
    """E[sum over the relevant items of a tie group of (rank among relevant / rank)] when
    the group's `size` items (`relevant` of them relevant) follow `ranked_before` items
    (`relevant_before` relevant) in uniformly random order; elementwise, closed form:
    (r/n) [(R + 1 - c (b + 1)) (H(b + n) - H(b)) + c n], c = (r - 1)/(n - 1) (module doc)."""
    relevant_before, ranked_before, size, relevant = (np.asarray(v, np.float64) for v in (
        relevant_before, ranked_before, size, relevant))
    share = _safe_divide(relevant, size)
    spread = _safe_divide(relevant - 1, size - 1)  # c; 0 for a group of one
    return share * ((relevant_before + 1 - spread * (ranked_before + 1)) * _harmonic_gap(ranked_before, size)
                    + spread * size)


def _log_binomial(n, k):
    from scipy.special import gammaln
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def expected_truncated_ap(whole_sum, relevant_before, ranked_before, taken, size, relevant):
    """E[AP@K] when place K cuts a tie group: `taken` of its `size` places lie in the top K,
    `relevant` of its items are relevant, `relevant_before` relevant and `ranked_before`
    items precede it, and `whole_sum` is the expected AP sum of the groups before it.
    sum over x of P(x relevant among the taken places, hypergeometric) *
    (whole_sum + expected_group_sum(R, b, taken, x)) / (R + x); elementwise over queries."""
    arrays = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (
        whole_sum, relevant_before, ranked_before, taken, size, relevant)))
    shape = arrays[0].shape
    whole_sum, relevant_before, ranked_before, taken, size, relevant = (v.ravel() for v in arrays)
    low = np.maximum(0, taken - (size - relevant))  # the support of x
    high = np.minimum(relevant, taken)
    width = int(np.max(high - low, initial=0)) + 1
    out = np.zeros(len(low))
    rows = max(1, PAIRS_PER_CHUNK // width)  # queries x support values at once
    for start in range(0, len(low), rows):
        part = slice(start, start + rows)
        column = lambda values: values[part, None]
        x = column(low) + np.arange(width)
        inside = x <= column(high)
        x = np.where(inside, x, column(low))
        log_probability = (_log_binomial(column(relevant), x) + _log_binomial(column(size - relevant), column(taken) - x)
                           - column(_log_binomial(size, taken)))
        value = _safe_divide(column(whole_sum) + expected_group_sum(column(relevant_before), column(ranked_before),
                                                                    column(taken), x),
                             column(relevant_before) + x)
        out[part] = np.where(inside, np.exp(log_probability) * value, 0.0).sum(axis=1)
    return out.reshape(shape)


TIE_RULES = ("expected", "argsort", "pessimistic", "optimistic")
DEFAULT_TIES = "expected"


def check_ties(ties):
    """`ties` if it names a tie rule, else a UserError listing them."""
    if ties not in TIE_RULES:
        raise UserError(f"unknown tie rule '{ties}'; choose one of {', '.join(TIE_RULES)} "
                        f"(see the README, Evaluation)")
    return ties


class _HammingCounts:
    """Per-query counts by distance (the tie groups), and every figure of a count-based
    tie rule (expected, pessimistic, optimistic) computed from them."""

    def __init__(self, histograms, ties=DEFAULT_TIES):
        if ties not in ("expected", "pessimistic", "optimistic"):
            raise ValueError(f"tie rule {ties!r} is not computed from counts")
        self.ties = ties
        relevant_at = histograms[:, :, 1]
        self.size = histograms.sum(axis=2)  # items at distance d: the tie group
        self.bits = histograms.shape[1] - 1
        self.within = np.cumsum(self.size, axis=1)  # items at distance <= d
        self.before = self.within - self.size  # items at distance < d
        self.relevant_within = np.cumsum(relevant_at, axis=1)
        self.relevant_at = relevant_at
        self.relevant_before = self.relevant_within - relevant_at  # relevant items at distance < d
        self.relevant = self.relevant_within[:, -1]
        self.n_db = int(self.within[0, -1])
        # where each group's relevant items may stand: places run_start + 1 .. run_start + run_length,
        # each relevant with probability `density` (1 for the fixed orders)
        if ties == "pessimistic":
            self.run_start, self.run_length, self.density = self.within - relevant_at, relevant_at, 1.0
        elif ties == "optimistic":
            self.run_start, self.run_length, self.density = self.before, relevant_at, 1.0
        else:
            self.run_start, self.run_length = self.before, self.size
            self.density = _safe_divide(relevant_at, self.size)

    def _group_sums(self, taken=None):
        """AP sum of each group; `taken` (fixed orders): only its first `taken` relevant items."""
        if self.ties == "expected":
            return expected_group_sum(self.relevant_before, self.before, self.size, self.relevant_at)
        return relevant_run_sum(self.relevant_before, self.run_start,
                                self.relevant_at if taken is None else taken)

    def ap(self):
        return _safe_divide(self._group_sums().sum(axis=1), self.relevant)

    def ap_at(self, k):
        """AP over the first k ranked items (divided by the relevant items among them)."""
        if k >= self.n_db:
            return self.ap()
        if self.ties != "expected":
            taken = np.clip(k - self.run_start, 0, self.relevant_at)
            return _safe_divide(self._group_sums(taken).sum(axis=1), taken.sum(axis=1))
        group = np.argmax(self.within >= k, axis=1)[:, None]  # the group holding place k
        pick = lambda values: np.take_along_axis(values, group, axis=1)[:, 0]
        sums = self._group_sums()
        whole = pick(np.cumsum(sums, axis=1) - sums)
        return expected_truncated_ap(whole, pick(self.relevant_before), pick(self.before),
                                     k - pick(self.before), pick(self.size), pick(self.relevant_at))

    def ap_within(self, radius):
        last = min(radius, self.bits) + 1
        return _safe_divide(self._group_sums()[:, :last].sum(axis=1), self.relevant_within[:, last - 1])

    def rank_sums(self, name, ranks):
        """Sums over queries of found@N and found@N / relevant (queries with a relevant item),
        found@N = relevant items among the first N (expected under `expected`), for sorted ranks N."""
        ranks = np.asarray(ranks, dtype=np.int64)
        dense = len(ranks) * 4 >= ranks[-1]  # most ranks up to the last: count along all of them
        found_sum, recall_sum = np.zeros(len(ranks)), np.zeros(len(ranks))
        for rows in _chunks(len(self.within), ranks[-1] if dense else len(ranks)):
            found = self._found_dense(rows, ranks) if dense else self._found_sparse(rows, ranks)
            relevant = self.relevant[rows]
            found_sum += found.sum(axis=0)
            inverse = _safe_divide(np.ones(len(relevant)), relevant)
            recall_sum += np.einsum("ij,i->j", found, inverse)
        return {name + "_found": found_sum, name + "_recall": recall_sum}

    def _density(self, rows):
        return self.density[rows] if isinstance(self.density, np.ndarray) else None

    def _found_dense(self, rows, ranks):
        """found@N for N = 1..max(ranks): each group's relevant run fills places
        run_start + 1 .. run_start + run_length with `density`; mark run starts and ends, sum twice."""
        last = int(ranks[-1])
        n_rows = len(self.within[rows])
        offsets = (np.arange(n_rows, dtype=np.intp) * (last + 1))[:, None]
        starts = np.minimum(self.run_start[rows], last) + offsets
        ends = np.minimum(self.run_start[rows] + self.run_length[rows], last) + offsets
        size = n_rows * (last + 1)
        weights = self._density(rows)
        weights = None if weights is None else weights.ravel()
        steps = (np.bincount(starts.ravel(), weights, minlength=size)
                 - np.bincount(ends.ravel(), weights, minlength=size))
        relevant_at_place = np.cumsum(steps.reshape(n_rows, last + 1)[:, :last], axis=1)
        return np.cumsum(relevant_at_place, axis=1)[:, ranks - 1].astype(np.float64)

    def _found_sparse(self, rows, ranks):
        """found@N at a few ranks: locate the distance group holding each rank N
        (the first d with within[d] >= N) with one search over all rows."""
        within = self.within[rows]
        offsets = np.arange(len(within), dtype=np.int64)[:, None]
        flat = (within + offsets * (self.n_db + 1)).ravel()
        group = np.searchsorted(flat, (ranks[None, :] + offsets * (self.n_db + 1)).ravel())
        group = group.reshape(len(within), len(ranks)) - offsets * (self.bits + 1)
        pick = lambda values: np.take_along_axis(values[rows], group, axis=1)
        taken = np.clip(ranks[None, :] - pick(self.run_start), 0, pick(self.run_length)).astype(np.float64)
        if isinstance(self.density, np.ndarray):
            taken *= pick(self.density)
        return pick(self.relevant_before) + taken


# ----------------------------------------------------------------------------- embeddings: a real sort

class _Labels:
    """Relevance of ranked items: class ids for single-label data, packed words otherwise."""

    def __init__(self, query_labels, db_labels):
        single = bool(np.all(query_labels.sum(axis=1) == 1) and np.all(db_labels.sum(axis=1) == 1))
        if single:
            dtype = np.int16 if query_labels.shape[1] < 2 ** 15 else np.int32
            self.query = query_labels.argmax(axis=1).astype(dtype)[:, None]
            self.db = [db_labels.argmax(axis=1).astype(dtype)]
            self.single = True
        else:
            self.query = pack_bits(query_labels)
            db_words = pack_bits(db_labels)
            self.db = [np.ascontiguousarray(db_words[:, w]) for w in range(db_words.shape[1])]
            self.single = False

    def ranked_hits(self, rows, order):
        """Boolean (len(rows) x columns of order): is the item at each ranked place relevant."""
        if self.single:
            return np.take(self.db[0], order) == self.query[rows]
        hits = None
        for w, db_words in enumerate(self.db):
            shared = np.take(db_words, order)
            shared = np.bitwise_and(shared, self.query[rows, w][:, None])
            hits = shared.astype(bool) if hits is None else hits | shared.astype(bool)
        return hits


def _expected_places(sorted_distances, hits):
    """Per ranked place, under random order inside ties: `share`, the probability that it
    holds a relevant item (r/n of its group), `term`, its expected AP term (module doc), and
    its group's first place, size, relevant items and relevant items before it."""
    n_rows, n_db = hits.shape
    place = np.arange(n_db)
    new_group = np.ones((n_rows, n_db), bool)
    new_group[:, 1:] = sorted_distances[:, 1:] != sorted_distances[:, :-1]
    group_end = np.ones((n_rows, n_db), bool)
    group_end[:, :-1] = new_group[:, 1:]
    start = np.maximum.accumulate(np.where(new_group, place, 0), axis=1)
    end = np.minimum.accumulate(np.where(group_end, place, n_db)[:, ::-1], axis=1)[:, ::-1]
    found_through = np.cumsum(hits, axis=1, dtype=np.int64)  # relevant among places 0..p
    found_before = np.concatenate([np.zeros((n_rows, 1), np.int64), found_through[:, :-1]], axis=1)
    relevant_before = np.take_along_axis(found_before, start, axis=1)
    size = end - start + 1
    relevant = np.take_along_axis(found_through, end, axis=1) - relevant_before
    share = relevant / size
    spread = _safe_divide(relevant - 1, size - 1)
    term = share * (relevant_before + 1 + (place - start) * spread) / (place + 1)
    return {"share": share, "term": term, "start": start, "size": size, "relevant_before": relevant_before,
            "relevant": relevant}


class _SortedProblem:
    """One query set against one database, ranked by a real sort (one chunk of queries at a
    time): embeddings under every tie rule, Hamming codes under the argsort rule."""

    def __init__(self, query, db, query_labels, db_labels, distance, ties):
        self.distance, self.ties = distance, ties
        self.labels = _Labels(query_labels, db_labels)
        if distance == "hamming":
            query, db = pack_bits(query, np.uint64), pack_bits(db, np.uint64)
        self.query, self.db = query, db
        self.n_queries, self.n_db = query.shape[0], db.shape[0]
        self.inverse_ranks = 1.0 / np.arange(1, self.n_db + 1, dtype=np.float64)

    def distances(self, rows):
        if self.distance == "hamming":
            # the programs' 0.5 * (K - q . b) on +-1 codes in float32: the same integers, same dtype
            return hamming_distances(self.query[rows], self.db).astype(ARGSORT_HAMMING_DTYPE)
        return embedding_distances(self.query[rows], self.db, self.distance)

    def ranked(self, rows):
        """(distances, order of the database, relevance of the ranked items) under the tie rule."""
        distances = self.distances(rows)
        relevant = self.labels.ranked_hits(rows, np.arange(self.n_db)[None, :])
        if self.ties == "argsort":
            order = np.argsort(distances, axis=1)  # the programs' call: default kind, same dtype
        elif self.ties == "optimistic":
            order = np.lexsort((~relevant, distances), axis=-1)
        else:  # pessimistic; expected only needs the groups, any order inside them
            order = np.lexsort((relevant, distances), axis=-1)
        return distances, order, np.take_along_axis(relevant, order, axis=1)

    def figures(self, rows, top_ks, n_max, pr_ranks, radius=None):
        """Per-query AP figures and summed rank curves of one chunk of queries."""
        distances, order, hits = self.ranked(rows)
        if self.ties == "expected":
            groups = _expected_places(np.take_along_axis(distances, order, axis=1), hits)
            term = groups["term"]
            found = np.cumsum(groups["share"], axis=1)  # expected relevant items among the first n
        else:
            found = np.cumsum(hits, axis=1, dtype=np.int32)
            term = found * hits * self.inverse_ranks  # k / place at the k-th relevant place, 0 elsewhere
        relevant = np.round(found[:, -1]).astype(np.float64)
        term_sums = np.cumsum(term, axis=1)
        out = {"relevant": relevant, "ap": _safe_divide(term_sums[:, -1], relevant)}
        for k in top_ks:  # K beyond the database ranks all of it (mAP@K = mAP there)
            last = min(k, self.n_db) - 1
            if self.ties != "expected" or last == self.n_db - 1:
                out[f"ap@{k}"] = _safe_divide(term_sums[:, last], found[:, last].astype(np.float64))
                continue
            first = groups["start"][:, last]  # the group holding place k, and the places before it
            whole = np.where(first > 0, term_sums[np.arange(len(first)), np.maximum(first - 1, 0)], 0.0)
            out[f"ap@{k}"] = expected_truncated_ap(whole, groups["relevant_before"][:, last], first,
                                                   last + 1 - first, groups["size"][:, last],
                                                   groups["relevant"][:, last])
        if radius is not None:  # whole distance groups: a prefix of the ranking
            inside = (distances <= radius).sum(axis=1)
            at = np.maximum(inside - 1, 0)
            rows_index = np.arange(len(inside))
            out["ap_radius"] = np.where(inside > 0, _safe_divide(term_sums[rows_index, at],
                                                                 np.asarray(found[rows_index, at], np.float64)), 0.0)
        has_relevant = relevant > 0
        sums = {}
        for name, ranks in (("top_n", np.arange(1, n_max + 1)), ("ranking_pr", pr_ranks)):
            top_found = found[:, ranks - 1].astype(np.float64)
            sums[name + "_found"] = top_found.sum(axis=0)
            sums[name + "_recall"] = (top_found[has_relevant] / relevant[has_relevant, None]).sum(axis=0)
        return out, sums


def _embeddings(values, name):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise UserError(f"{name} embeddings must be a 2-D array (items x dims), got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise UserError(f"{name} embeddings hold NaN or infinite values; the run diverged: "
                        f"evaluate an earlier checkpoint")
    return values


def embedding_distances(query, db, metric="euclidean"):
    """Query x database distances of real embeddings, pair by pair (no BLAS expansion, so
    equal items give exactly equal distances)."""
    from scipy.spatial.distance import cdist
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"unknown metric '{metric}'; choose euclidean or cosine")
    return cdist(query, db, metric=metric)


def _sorted_figures(problem, top_ks, n_max, pr_ranks, radius=None):
    chunks = _chunks(problem.n_queries, problem.n_db)
    parts = _map_chunks(lambda rows: problem.figures(rows, top_ks, n_max, pr_ranks, radius), chunks)
    per_query = {key: np.concatenate([p[0][key] for p in parts]) for key in parts[0][0]}
    sums = {key: np.sum([p[1][key] for p in parts], axis=0) for key in parts[0][1]}
    return per_query, sums


# ----------------------------------------------------------------------------- validation

def _validated(query, db, query_labels, db_labels, kind):
    """Checked inputs: boolean codes (hamming) or float embeddings, boolean label matrices."""
    query_labels = _label_matrix(query_labels, "query_labels")
    db_labels = _label_matrix(db_labels, "db_labels")
    if kind == "hamming":
        query, db = code_bits(query, "query_codes"), code_bits(db, "db_codes")
        what = "codes"
    else:
        query, db = _embeddings(query, "query"), _embeddings(db, "db")
        what = "embeddings"
    _check_pair(query, db, query_labels, db_labels, what)
    if query.shape[0] == 0 or db.shape[0] == 0:
        raise UserError(f"nothing to evaluate: {query.shape[0]} queries, {db.shape[0]} database items")
    return query, db, query_labels, db_labels


def _check_top_k(top_k):
    if top_k is not None and int(top_k) < 1:
        raise UserError(f"top_k must be >= 1 (or None for the whole database), got {top_k}")


def _pr_ranks(n_db):
    """Ranks N at which the ranking PR curve is sampled: log-spaced, ending at the whole database."""
    return np.unique(np.round(np.geomspace(1, n_db, PR_POINTS)).astype(np.int64))


# ----------------------------------------------------------------------------- public API

def mean_average_precision(query_codes, db_codes, query_labels, db_labels, top_k=None, ties=DEFAULT_TIES):
    """mAP of Hamming ranking ({-1,+1} or {0,1} codes); top_k=None ranks the whole database.

    ties: the tie rule (module doc; default expected). Queries with no relevant item add 0
    but count in the divisor; with top_k, AP divides by the relevant items in the top K.
    """
    return float(average_precisions(query_codes, db_codes, query_labels, db_labels, top_k, ties).mean())


def average_precisions(query_codes, db_codes, query_labels, db_labels, top_k=None, ties=DEFAULT_TIES):
    """Each query's AP (float64, one per query) under the rules of mean_average_precision, whose
    figure is their plain mean: for weighting queries (e.g. importance-weighted validation)."""
    _check_top_k(top_k)
    check_ties(ties)
    if ties == "argsort":
        problem = _SortedProblem(*_validated(query_codes, db_codes, query_labels, db_labels, "hamming"),
                                 "hamming", ties)
        per_query, _ = _sorted_figures(problem, () if top_k is None else (int(top_k),), 1, np.array([1]))
        return per_query["ap" if top_k is None else f"ap@{int(top_k)}"]
    counts = _HammingCounts(distance_histograms(query_codes, db_codes, query_labels, db_labels), ties)
    return counts.ap() if top_k is None else counts.ap_at(int(top_k))


def random_codes_map(query_labels, db_labels, bits, draws=3, seed=0, ties=DEFAULT_TIES):
    """The chance level: mAP of random +-1 codes (seeded, mean over `draws`) on these labels."""
    rng = np.random.RandomState(seed)
    return float(np.mean([mean_average_precision(np.sign(rng.randn(len(query_labels), bits)),
                                                 np.sign(rng.randn(len(db_labels), bits)),
                                                 query_labels, db_labels, ties=ties) for _ in range(draws)]))


def embedding_map(query, db, query_labels, db_labels, metric="euclidean", top_k=None, ties=DEFAULT_TIES):
    """mAP of ranking real-valued embeddings by euclidean or cosine distance; same AP and tie rules."""
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"unknown metric '{metric}'; choose euclidean or cosine")
    _check_top_k(top_k)
    problem = _SortedProblem(*_validated(query, db, query_labels, db_labels, "embedding"), metric, check_ties(ties))
    top_ks = () if top_k is None else (int(top_k),)
    per_query, _ = _sorted_figures(problem, top_ks, 1, np.array([1]))
    return float(per_query["ap" if top_k is None else f"ap@{int(top_k)}"].mean())


# ----------------------------------------------------------------------------- full report

EMPTY_RULES = ("zero", "skip")


def _check_empty(empty):
    if empty not in EMPTY_RULES:
        raise UserError(f"unknown empty-radius rule '{empty}'; choose 'zero' (TAH: precision 0, "
                        f"counted) or 'skip' (left out of the mean)")


def _hamming_figures(counts, top_ks, n_max, pr_ranks, radius):
    per_query = {"relevant": counts.relevant.astype(np.float64), "ap": counts.ap(),
                 "ap_radius": counts.ap_within(radius)}
    for k in top_ks:
        per_query[f"ap@{k}"] = counts.ap_at(k)
    sums = counts.rank_sums("top_n", np.arange(1, n_max + 1))
    sums.update(counts.rank_sums("ranking_pr", pr_ranks))
    return per_query, sums


def _rank_curve(per_query, sums, name, ranks):
    """precision@N over all queries and recall@N over queries with a relevant item, at ranks N."""
    precision = sums[name + "_found"] / len(per_query["relevant"]) / ranks
    answered = int((per_query["relevant"] > 0).sum())
    recall = sums[name + "_recall"] / answered if answered else np.zeros(len(ranks))
    return {"n": [int(n) for n in ranks], "precision": precision.tolist(), "recall": recall.tolist()}


def _lookup(per_query, bits, radius, empty):
    within, relevant_within = per_query["within"], per_query["relevant_within"]
    precision_each = _safe_divide(relevant_within, within)
    if empty == "zero":
        precision = precision_each.mean(axis=0)
    else:
        answered = (within > 0).sum(axis=0)
        precision = _safe_divide(precision_each.sum(axis=0), answered.astype(np.float64))
    has_relevant = per_query["relevant"] > 0
    recall = ((relevant_within[has_relevant] / per_query["relevant"][has_relevant, None]).mean(axis=0)
              if has_relevant.any() else np.zeros(bits + 1))
    r = min(radius, bits)
    return ({"radius": list(range(bits + 1)), "precision": precision.tolist(), "recall": recall.tolist()},
            {f"map_radius{radius}": float(per_query["ap_radius"].mean()),
             f"precision_radius{radius}": float(precision[r])})


def retrieval_report(query, db, query_labels, db_labels, distance="hamming", top_ks=(), n_max=1000,
                     radius=2, empty="zero", ties=DEFAULT_TIES):
    """Every figure of one retrieval direction (one counting pass for codes, one sort for
    embeddings and for the argsort rule).

    distance: "hamming" (codes), "euclidean" or "cosine" (embeddings).
    ties: the tie rule of every ranked figure (module doc), recorded as report["ties"].
    Returns map, map@K for K in top_ks, top_n {n, precision, recall} for N = 1..n_max
    (precision@N over all queries; recall@N over queries with a relevant item), the same
    at about 100 log-spaced N up to the whole database (ranking_pr: the PR curve of a
    ranking, used for embeddings) and, for hamming, the hash-lookup curve
    {radius 0..K, precision, recall} and map/precision within `radius` (empty rule
    `empty`, see the module doc).
    """
    _check_empty(empty)
    check_ties(ties)
    if int(radius) < 0:
        raise UserError(f"radius must be >= 0, got {radius}")
    kind = "hamming" if distance == "hamming" else "embedding"
    if kind == "embedding" and distance not in ("euclidean", "cosine"):
        raise UserError(f"unknown distance '{distance}'; choose hamming, euclidean or cosine")
    query, db, query_labels, db_labels = _validated(query, db, query_labels, db_labels, kind)
    top_ks = sorted({int(k) for k in top_ks})
    if any(k < 1 for k in top_ks):
        raise UserError(f"top_k values must be >= 1, got {top_ks}")
    n_db = db.shape[0]
    n_max = max(1, min(int(n_max), n_db))
    pr_ranks = _pr_ranks(n_db)
    if kind == "hamming":
        histograms = _count_histograms(query, db, query_labels, db_labels)
        if ties == "argsort":
            counts = _HammingCounts(histograms, "pessimistic")  # the lookup curve only (no tie rule)
            problem = _SortedProblem(query, db, query_labels, db_labels, "hamming", ties)
            per_query, sums = _sorted_figures(problem, top_ks, n_max, pr_ranks, int(radius))
        else:
            counts = _HammingCounts(histograms, ties)
            per_query, sums = _hamming_figures(counts, top_ks, n_max, pr_ranks, int(radius))
        per_query["within"] = counts.within.astype(np.float64)
        per_query["relevant_within"] = counts.relevant_within.astype(np.float64)
    else:
        problem = _SortedProblem(query, db, query_labels, db_labels, distance, ties)
        per_query, sums = _sorted_figures(problem, top_ks, n_max, pr_ranks)
    report = {"map": float(per_query["ap"].mean()), "ties": ties,
              "queries": query.shape[0], "database": n_db,
              "queries_without_relevant": int((per_query["relevant"] == 0).sum())}
    for k in top_ks:
        report[f"map@{k}"] = float(per_query[f"ap@{k}"].mean())
    report["top_n"] = _rank_curve(per_query, sums, "top_n", np.arange(1, n_max + 1))
    report["ranking_pr"] = _rank_curve(per_query, sums, "ranking_pr", pr_ranks)
    if kind == "hamming":
        report["bits"] = counts.bits
        report["hash_lookup"], radius_part = _lookup(per_query, counts.bits, int(radius), empty)
        report.update(radius_part)
    return report


def radius_figures(query_codes, db_codes, query_labels, db_labels, radius=2, empty="zero", ties=DEFAULT_TIES):
    """TAH's figures: {"map_radius<r>": mAP within Hamming radius r, "precision_radius<r>": ...}."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, "hamming", n_max=1,
                              radius=radius, empty=empty, ties=ties)
    return {key: report[key] for key in (f"map_radius{radius}", f"precision_radius{radius}")}


def hash_lookup_curve(query_codes, db_codes, query_labels, db_labels, empty="zero"):
    """Precision and recall within Hamming radius r for r = 0..K: {radius, precision, recall}
    (whole distance groups: no tie rule)."""
    return retrieval_report(query_codes, db_codes, query_labels, db_labels, "hamming", n_max=1,
                            empty=empty, ties="pessimistic")["hash_lookup"]


def top_n_curve(query, db, query_labels, db_labels, n_max=1000, distance="hamming", ties=DEFAULT_TIES):
    """precision@N and recall@N for N = 1..n_max: {n, precision, recall}."""
    return retrieval_report(query, db, query_labels, db_labels, distance, n_max=n_max, ties=ties)["top_n"]


# ----------------------------------------------------------------------------- what makes a figure meaningless

# Codes have collapsed when fewer than this fraction of the items have distinct codes, or more
# than this fraction of the bits is the same for every item: most items then tie at every
# distance and the ranking (and its mAP) says little about the network.
COLLAPSE_DISTINCT_FRACTION = 0.02
COLLAPSE_CONSTANT_BITS_FRACTION = 0.5


def code_diversity(codes, name="codes"):
    """{"items", "bits", "distinct": distinct codes, "constant_bits": bits equal in every item,
    "collapsed"} of one set of binary codes (items x bits, {-1,+1} or {0,1})."""
    bits = code_bits(codes, name)
    items, width = bits.shape
    distinct = int(len(np.unique(pack_bits(bits), axis=0))) if items else 0
    constant = int(np.sum(bits.all(axis=0) | ~bits.any(axis=0))) if items else width
    collapsed = bool(items > 1 and (distinct < COLLAPSE_DISTINCT_FRACTION * items
                                    or constant > COLLAPSE_CONSTANT_BITS_FRACTION * width))
    return {"items": int(items), "bits": int(width), "distinct": distinct, "constant_bits": constant,
            "collapsed": collapsed}


def collapse_warning(diversity, when=""):
    """The one warning line for {name: code_diversity} when any set has collapsed, else None."""
    collapsed = {name: d for name, d in diversity.items() if d["collapsed"]}
    if not collapsed:
        return None
    parts = ", ".join(f"{name} {d['distinct']} distinct of {d['items']} ({d['constant_bits']} of {d['bits']} bits "
                      f"constant)" for name, d in collapsed.items())
    return (f"warning: the codes have collapsed{when}: {parts}; most items tie, so the mAP says little (a trunk "
            f"from random weights, too high a learning rate or too few epochs; see troubleshooting)")


def trivially_relevant(query_labels, db_labels, chunk=512):
    """True when every query item shares a label with every database item (e.g. one class):
    then any ranking has mAP 1 and the figure means nothing. Stops at the first pair that
    shares no label (at once on real data)."""
    query = _label_matrix(query_labels, "query labels").astype(np.float32)
    db = _label_matrix(db_labels, "database labels").astype(np.float32)
    if not len(query) or not len(db):
        return False
    if np.any(query.all(axis=0) & db.all(axis=0)):  # a label every item has
        return True
    return all(np.all(query[start:start + chunk] @ db.T > 0) for start in range(0, len(query), chunk))


def trivial_relevance_warning(query_labels, db_labels, what):
    """The one warning line when every query item of `what` is relevant to every database item, else None."""
    if not trivially_relevant(query_labels, db_labels):
        return None
    classes = int(np.any(np.asarray(db_labels) != 0, axis=0).sum()) if np.ndim(db_labels) == 2 else "?"
    return (f"warning: in {what} every query item shares a label with every database item ({classes} "
            f"class(es) in use): every mAP is trivially 1 and says nothing; use labels with several classes")
