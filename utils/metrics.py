"""Retrieval metrics for every method: Hamming codes and real-valued embeddings.

Ranking rule (every metric): the database is ranked by distance to the query;
ties keep database order (a stable sort, smallest index first). The original
programs use an unstable sort, so their tie order is arbitrary; with this rule
every figure is reproducible.

Relevance: a database item is relevant to a query when they share a label.
Labels are multi-hot rows (give single labels as one-hot rows), so for
single-label data "share a label" is "equal label".

AP of one query = mean over the relevant ranked items of
(rank among the relevant items / rank overall). The mean over queries divides
by ALL queries: a query with no relevant item adds 0 (the original programs'
rule). mAP@K ranks only the first K items and divides by the number of
relevant items among them, 0 when there is none (ACMR's / DCMH's calc_map@K).

Hash lookup (Hamming codes): the items within Hamming radius r are retrieved.
precision(r) = relevant retrieved / retrieved, recall(r) = relevant retrieved /
relevant in the database, both averaged over queries. A query with nothing
within the radius has precision 0 and counts in the mean (TAH's rule,
`empty="zero"`); `empty="skip"` leaves such queries out of the precision mean
instead. Recall is averaged over the queries that have a relevant item.
mAP within radius r (TAH's protocol): AP over the items within the radius,
ranked as above; AP = 0 when nothing relevant lies within it.

Speed: codes are bit-packed and compared with popcount; each chunk of queries
is ranked with a stable radix sort of its small integer distances; chunks are
sized so that memory stays bounded for any database size and run on a few
threads (NumPy releases the GIL).
"""
import concurrent.futures
import os

import numpy as np

from utils.errors import UserError

PR_POINTS = 100  # points of the ranking precision-recall curve
THREADS = None  # threads that rank chunks; None = min(4, CPU cores)
PAIRS_PER_CHUNK = 1 << 18  # query x database pairs ranked at once: ~10 MB of work arrays per thread;
                           # the fastest of 2^16..2^21 on 2,000 x 18,015 (cache-sized)


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


def pack_bits(bits):
    """Packs a boolean (n x K) matrix into (n x W) unsigned words (the smallest word when K <= 64)."""
    bits = np.asarray(bits, dtype=bool)
    n, width = bits.shape
    dtype = _word_dtype(width)
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
            np.bitwise_and(shared, self.query[rows, w][:, None], out=shared)
            hits = shared.astype(bool) if hits is None else hits | shared.astype(bool)
        return hits


# ----------------------------------------------------------------------------- ranking core

def _chunks(n_queries, n_db):
    size = max(1, min(n_queries, PAIRS_PER_CHUNK // max(n_db, 1)))
    return [slice(start, min(start + size, n_queries)) for start in range(0, n_queries, size)]


def _workers():
    return THREADS or max(1, min(4, os.cpu_count() or 1))


def _map_chunks(function, chunks):
    """Runs function over chunks on a few threads; results in chunk order."""
    if len(chunks) <= 1 or _workers() == 1:
        return [function(chunk) for chunk in chunks]
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
        return list(pool.map(function, chunks))


def _weighted_sum(matrix, weights):
    """Row sums of matrix * weights. einsum, not matmul: BLAS's threaded matrix-vector
    product stalls on one long row when the cores are busy (measured 8-16 ms vs 0.06 ms)."""
    return np.einsum("ij,j->i", matrix, weights[:matrix.shape[1]])


def _ap_sums(hits, inverse_ranks):
    """Per row: sum over hits of (hits so far / rank), and the number of hits."""
    found = np.cumsum(hits, axis=1, dtype=np.int32)
    counts = found[:, -1].astype(np.float64) if found.shape[1] else np.zeros(len(found))
    found *= hits  # k at the k-th relevant place, 0 elsewhere
    return _weighted_sum(found, inverse_ranks), counts


def _safe_divide(numerator, denominator):
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


class _Problem:
    """One query set against one database: distances of a chunk of queries, and relevance."""

    def __init__(self, kind, query, db, query_labels, db_labels, metric="hamming"):
        self.kind = kind
        self.metric = metric
        self.labels = _Labels(query_labels, db_labels)
        self.n_queries, self.n_db = query.shape[0], db.shape[0]
        if kind == "hamming":
            self.bits = query.shape[1]
            self.query, self.db = pack_bits(query), pack_bits(db)
        else:
            self.query, self.db = query, db
        self.inverse_ranks = 1.0 / np.arange(1, self.n_db + 1, dtype=np.float64)
        # ranks N at which the ranking PR curve is sampled: log-spaced, ending at the whole database
        self.pr_ranks = np.unique(np.round(np.geomspace(1, self.n_db, PR_POINTS)).astype(np.int64))

    def distances(self, rows):
        if self.kind == "hamming":
            return hamming_distances(self.query[rows], self.db)
        return embedding_distances(self.query[rows], self.db, self.metric)

    def ranking(self, rows, top=None):
        """(distances, stable order truncated to `top` columns, ranked relevance)."""
        distances = self.distances(rows)
        order = np.argsort(distances, axis=1, kind="stable")
        if top is not None:
            order = order[:, :top]
        return distances, order, self.labels.ranked_hits(rows, order)


def _prepare(query, db, query_labels, db_labels, kind, metric="hamming"):
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
    return _Problem(kind, query, db, query_labels, db_labels, metric)


def _mean_ap(problem, top_k):
    if top_k is not None and int(top_k) < 1:
        raise UserError(f"top_k must be >= 1 (or None for the whole database), got {top_k}")
    top = None if top_k is None else min(int(top_k), problem.n_db)

    def chunk_ap(rows):
        _, _, hits = problem.ranking(rows, top)
        sums, counts = _ap_sums(hits, problem.inverse_ranks)
        return _safe_divide(sums, counts)

    ap = np.concatenate(_map_chunks(chunk_ap, _chunks(problem.n_queries, problem.n_db)))
    return float(ap.mean())


# ----------------------------------------------------------------------------- public API

def mean_average_precision(query_codes, db_codes, query_labels, db_labels, top_k=None):
    """mAP of Hamming ranking ({-1,+1} or {0,1} codes); top_k=None ranks the whole database.

    Ties keep database order; queries with no relevant item add 0 but count in
    the divisor; with top_k, AP divides by the relevant items in the top K.
    """
    problem = _prepare(query_codes, db_codes, query_labels, db_labels, "hamming")
    return _mean_ap(problem, top_k)


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


def embedding_map(query, db, query_labels, db_labels, metric="euclidean", top_k=None):
    """mAP of ranking real-valued embeddings by euclidean or cosine distance; same AP rules."""
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"unknown metric '{metric}'; choose euclidean or cosine")
    problem = _prepare(query, db, query_labels, db_labels, "embedding", metric)
    return _mean_ap(problem, top_k)


# ----------------------------------------------------------------------------- full report

EMPTY_RULES = ("zero", "skip")


def _check_empty(empty):
    if empty not in EMPTY_RULES:
        raise UserError(f"unknown empty-radius rule '{empty}'; choose 'zero' (TAH: precision 0, "
                        f"counted) or 'skip' (left out of the mean)")


def _chunk_figures(problem, rows, top_ks, n_max, radius):
    """Every per-query figure of one chunk of queries from one stable ranking."""
    distances, order, hits = problem.ranking(rows)
    found = np.cumsum(hits, axis=1, dtype=np.int32)  # relevant items among the first n
    relevant = found[:, -1].astype(np.float64)
    weighted = found * hits  # k at the k-th relevant place, 0 elsewhere
    inverse = problem.inverse_ranks
    out = {"relevant": relevant,
           "ap": _safe_divide(_weighted_sum(weighted, inverse), relevant)}
    has_relevant = relevant > 0
    sums = {}  # summed over the chunk's queries here, so memory does not grow with the query count
    for name, columns in (("top_n", slice(0, n_max)), ("ranking_pr", problem.pr_ranks - 1)):
        top_found = found[:, columns].astype(np.float64)
        sums[name + "_found"] = top_found.sum(axis=0)
        sums[name + "_recall"] = (top_found[has_relevant] / relevant[has_relevant, None]).sum(axis=0)
    for k in top_ks:  # K beyond the database ranks all of it (mAP@K = mAP there)
        ranked = min(k, problem.n_db)
        out[f"ap@{k}"] = _safe_divide(_weighted_sum(weighted[:, :ranked], inverse),
                                      found[:, ranked - 1].astype(np.float64))
    if problem.kind == "hamming":
        levels = problem.bits + 1
        keys = distances.astype(np.int64) + (np.arange(len(distances), dtype=np.int64) * levels)[:, None]
        per_distance = np.bincount(keys.ravel(), minlength=len(distances) * levels).reshape(-1, levels)
        within = np.cumsum(per_distance, axis=1)  # items within radius r, r = 0..K
        found_padded = np.concatenate([np.zeros((len(found), 1), np.int32), found], axis=1)
        relevant_within = np.take_along_axis(found_padded, within, axis=1).astype(np.float64)
        out["within"] = within.astype(np.float64)
        out["relevant_within"] = relevant_within
        n_in = within[:, min(radius, problem.bits)]
        widest = int(n_in.max())
        inside = np.arange(widest) < n_in[:, None]
        out["ap_radius"] = _safe_divide(_weighted_sum(weighted[:, :widest] * inside, inverse),
                                        relevant_within[:, min(radius, problem.bits)])
    return out, sums


def _gather(problem, top_ks, n_max, radius):
    chunks = _chunks(problem.n_queries, problem.n_db)

    parts = _map_chunks(lambda rows: _chunk_figures(problem, rows, top_ks, n_max, radius), chunks)
    per_query = {key: np.concatenate([p[0][key] for p in parts]) for key in parts[0][0]}
    sums = {key: np.sum([p[1][key] for p in parts], axis=0) for key in parts[0][1]}
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
                     radius=2, empty="zero"):
    """Every figure of one retrieval direction from a single ranking pass.

    distance: "hamming" (codes), "euclidean" or "cosine" (embeddings).
    Returns map, map@K for K in top_ks, top_n {n, precision, recall} for N = 1..n_max
    (precision@N over all queries; recall@N over queries with a relevant item), the same
    at about 100 log-spaced N up to the whole database (ranking_pr: the PR curve of a
    ranking, used for embeddings) and, for hamming, the hash-lookup curve
    {radius 0..K, precision, recall} and map/precision within `radius` (empty rule
    `empty`, see the module doc).
    """
    _check_empty(empty)
    if int(radius) < 0:
        raise UserError(f"radius must be >= 0, got {radius}")
    kind = "hamming" if distance == "hamming" else "embedding"
    if kind == "embedding" and distance not in ("euclidean", "cosine"):
        raise UserError(f"unknown distance '{distance}'; choose hamming, euclidean or cosine")
    problem = _prepare(query, db, query_labels, db_labels, kind, distance)
    top_ks = sorted({int(k) for k in top_ks})
    if any(k < 1 for k in top_ks):
        raise UserError(f"top_k values must be >= 1, got {top_ks}")
    n_max = max(1, min(int(n_max), problem.n_db))
    per_query, sums = _gather(problem, top_ks, n_max, radius)
    report = {"map": float(per_query["ap"].mean()),
              "queries": problem.n_queries, "database": problem.n_db,
              "queries_without_relevant": int((per_query["relevant"] == 0).sum())}
    for k in top_ks:
        report[f"map@{k}"] = float(per_query[f"ap@{k}"].mean())
    report["top_n"] = _rank_curve(per_query, sums, "top_n", np.arange(1, n_max + 1))
    report["ranking_pr"] = _rank_curve(per_query, sums, "ranking_pr", problem.pr_ranks)
    if kind == "hamming":
        report["bits"] = problem.bits
        report["hash_lookup"], radius_part = _lookup(per_query, problem.bits, radius, empty)
        report.update(radius_part)
    return report


def radius_figures(query_codes, db_codes, query_labels, db_labels, radius=2, empty="zero"):
    """TAH's figures: {"map_radius<r>": mAP within Hamming radius r, "precision_radius<r>": ...}."""
    report = retrieval_report(query_codes, db_codes, query_labels, db_labels, "hamming", n_max=1,
                              radius=radius, empty=empty)
    return {key: report[key] for key in (f"map_radius{radius}", f"precision_radius{radius}")}


def hash_lookup_curve(query_codes, db_codes, query_labels, db_labels, empty="zero"):
    """Precision and recall within Hamming radius r for r = 0..K: {radius, precision, recall}."""
    return retrieval_report(query_codes, db_codes, query_labels, db_labels, "hamming", n_max=1,
                            empty=empty)["hash_lookup"]


def top_n_curve(query, db, query_labels, db_labels, n_max=1000, distance="hamming"):
    """precision@N and recall@N for N = 1..n_max: {n, precision, recall}."""
    return retrieval_report(query, db, query_labels, db_labels, distance, n_max=n_max)["top_n"]
