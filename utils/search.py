"""Hamming search over binary codes: exact k nearest neighbours and hash lookup.

    index = HammingIndex(db_codes)                  # {-1,+1}, {0,1} or bool codes
    distances, indices = index.search(query_codes, k)
    hits = index.range_search(query_codes, radius)  # per query: items within the radius
    index.save("db.index.npz"); index = HammingIndex.load("db.index.npz")

Listing order: equal distances are ordered by database index, smallest first, so
the k nearest are the first k of the stable ranking. (A listing knows no relevance;
the figures of utils.metrics rank irrelevant items first among equal distances.)
faiss's IndexBinaryFlat already keeps the smallest indices on ties (checked in
tests/test_search.py); every backend sorts its results by (distance, index).

Backends: "faiss" (faiss binary indexes) or "numpy" (popcount, exhaustive);
"auto" takes faiss when it is installed. Kinds (faiss only; numpy is always
exhaustive and gives the same results):
  flat  IndexBinaryFlat: exhaustive, exact.
  hash  IndexBinaryHash on the first b = min(16, K) bits: lookup with nflip =
        radius flips, exact for range search (an item within radius r of the query
        is within r on any subset of the bits).
  mih   IndexBinaryMultiHash (multi-index hashing): m disjoint 16-bit substrings,
        nflip = radius // m, exact by the pigeonhole argument.
  Once nflip would reach b, every bucket is a candidate: the flat scan answers
  instead (faiss's lookup never returns for nflip > b).
faiss's own k-NN search on the hash indexes is approximate, so for those kinds
search() grows a radius with exact range searches until k items are found and
falls back to the flat scan beyond `max_radius`.
"""
import numpy as np

from utils.errors import UserError
from utils.metrics import PAIRS_PER_CHUNK, code_bits, hamming_distances, pack_bits
from utils.optional import announce_missing

BACKENDS = ("auto", "faiss", "numpy")
KINDS = ("flat", "hash", "mih")
HASH_BITS = 16  # bits per hash table: 2^16 buckets, about one item each for 100,000 codes


def faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _byte_codes(codes, name):
    """Codes as (n x ceil(K/8)) uint8 rows, the layout faiss wants (zero padding bits)."""
    bits = code_bits(codes, name)
    return np.ascontiguousarray(np.packbits(bits, axis=1)), bits


def _sort_pairs(distances, indices):
    """Orders one query's results by (distance, index)."""
    order = np.lexsort((indices, distances))
    return distances[order], indices[order]


class HammingIndex:
    def __init__(self, db_codes, backend="auto", kind="flat", max_radius=4):
        if backend not in BACKENDS:
            raise UserError(f"unknown search backend '{backend}'; choose one of {', '.join(BACKENDS)}")
        if kind not in KINDS:
            raise UserError(f"unknown index kind '{kind}'; choose one of {', '.join(KINDS)}")
        if backend == "faiss" and not faiss_available():
            raise UserError("backend 'faiss' needs the faiss package: pip install faiss-cpu, "
                            "or use backend='numpy'")
        if backend == "auto":
            backend = "faiss" if faiss_available() else "numpy"
            if backend == "numpy":
                announce_missing("faiss", "Hamming search scans with NumPy instead of faiss's indexes "
                                 "(same neighbours, slower on large databases)", "faiss-cpu")
        self.backend = backend
        self.kind = kind
        self.max_radius = max_radius
        self.db_bytes, db_bits = _byte_codes(db_codes, "db_codes")
        self.bits = db_bits.shape[1]
        self.size = db_bits.shape[0]
        if self.size == 0:
            raise UserError("the database holds no codes; build the index from at least one code")
        self.db_words = pack_bits(db_bits)
        if self.backend == "faiss":
            self._build_faiss()

    def _build_faiss(self):
        import faiss
        width = 8 * self.db_bytes.shape[1]
        self.flat = faiss.IndexBinaryFlat(width)
        self.flat.add(self.db_bytes)
        self.lookup = None
        if self.kind == "hash":
            self.lookup = faiss.IndexBinaryHash(width, min(HASH_BITS, width))
        elif self.kind == "mih":
            tables = max(1, width // HASH_BITS)
            self.lookup = faiss.IndexBinaryMultiHash(width, tables, min(HASH_BITS, width))
        if self.lookup is not None:
            self.lookup.add(self.db_bytes)

    # ------------------------------------------------------------------ saving

    def save(self, path):
        """Writes the index (packed codes, settings and, with faiss, the serialised flat index)
        to an .npz file atomically."""
        from utils import io
        arrays = {"db_bytes": self.db_bytes, "bits": np.int64(self.bits), "kind": np.str_(self.kind),
                  "max_radius": np.int64(self.max_radius)}
        if self.backend == "faiss":
            import faiss
            arrays["faiss_flat"] = faiss.serialize_index_binary(self.flat)
        io.save_npz(path, arrays)

    @classmethod
    def load(cls, path, backend="auto"):
        """An index written by `save`; a saved faiss index is read back as it is when faiss is used."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                saved = dict(saved)
            codes = np.unpackbits(saved["db_bytes"], axis=1)[:, :int(saved["bits"])].astype(bool)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"cannot read the search index {path} ({error}); build it again") from None
        index = cls(codes, backend, str(saved["kind"]), int(saved["max_radius"]))
        if index.backend == "faiss" and "faiss_flat" in saved:
            import faiss
            index.flat = faiss.deserialize_index_binary(saved["faiss_flat"])
        return index

    def _queries(self, query_codes):
        query_bytes, query_bits = _byte_codes(query_codes, "query_codes")
        if query_bits.shape[1] != self.bits:
            raise UserError(f"query codes have {query_bits.shape[1]} bits but the index holds "
                            f"{self.bits}-bit codes; use codes of the same length")
        return query_bytes, query_bits

    # ------------------------------------------------------------------ k nearest

    def search(self, query_codes, k):
        """(distances int32 n x k, indices int64 n x k): the k nearest, ties by smallest index."""
        query_bytes, query_bits = self._queries(query_codes)
        k = int(k)
        if not 1 <= k <= self.size:
            raise UserError(f"k must be between 1 and the database size {self.size}, got {k}")
        if self.backend == "numpy":
            return self._numpy_search(pack_bits(query_bits), k)
        if self.lookup is None:
            distances, indices = self.flat.search(query_bytes, k)
            return self._tidy(distances, indices)
        return self._search_by_radius(query_bytes, k)

    def _numpy_search(self, query_words, k):
        rows = max(1, PAIRS_PER_CHUNK // self.size)
        distances = np.empty((len(query_words), k), np.int32)
        indices = np.empty((len(query_words), k), np.int64)
        for start in range(0, len(query_words), rows):
            block = hamming_distances(query_words[start:start + rows], self.db_words)
            order = np.argsort(block, axis=1, kind="stable")[:, :k]
            indices[start:start + rows] = order
            distances[start:start + rows] = np.take_along_axis(block, order, axis=1)
        return distances, indices

    def _tidy(self, distances, indices):
        distances = distances.astype(np.int32)
        indices = indices.astype(np.int64)
        for row in range(len(distances)):
            distances[row], indices[row] = _sort_pairs(distances[row], indices[row])
        return distances, indices

    def _search_by_radius(self, query_bytes, k):
        distances = np.empty((len(query_bytes), k), np.int32)
        indices = np.empty((len(query_bytes), k), np.int64)
        pending = np.arange(len(query_bytes))
        for radius in range(min(self.max_radius, self.bits) + 1):
            if not len(pending):
                break
            results = self._faiss_range(query_bytes[pending], radius)
            done = []
            for row, (found_distances, found_indices) in zip(pending, results):
                if len(found_indices) >= k:  # everything nearer than the k-th is inside the radius
                    distances[row], indices[row] = found_distances[:k], found_indices[:k]
                    done.append(row)
            pending = np.setdiff1d(pending, done)
        if len(pending):
            flat_distances, flat_indices = self.flat.search(query_bytes[pending], k)
            distances[pending], indices[pending] = self._tidy(flat_distances, flat_indices)
        return distances, indices

    # ------------------------------------------------------------------ hash lookup

    def range_search(self, query_codes, radius):
        """Per query, (distances, indices) of every item within Hamming distance <= radius,
        ordered by (distance, index)."""
        query_bytes, query_bits = self._queries(query_codes)
        radius = int(radius)
        if radius < 0:
            raise UserError(f"radius must be >= 0, got {radius}")
        if self.backend == "numpy":
            return self._numpy_range(pack_bits(query_bits), radius)
        return self._faiss_range(query_bytes, radius)

    def _numpy_range(self, query_words, radius):
        results = []
        rows = max(1, PAIRS_PER_CHUNK // self.size)
        for start in range(0, len(query_words), rows):
            block = hamming_distances(query_words[start:start + rows], self.db_words)
            for row in block:
                inside = np.flatnonzero(row <= radius)
                results.append(_sort_pairs(row[inside].astype(np.int32), inside.astype(np.int64)))
        return results

    def _faiss_range(self, query_bytes, radius):
        index = self.flat
        if self.lookup is not None:
            # exact lookup: hash -> every flip up to the radius; mih -> pigeonhole over the tables
            nflip = radius if self.kind == "hash" else radius // self.lookup.nhash
            # faiss never returns when nflip exceeds the table's bits, and from nflip = bits on it
            # visits every bucket anyway: the flat scan gives the same (exact) answer sooner.
            if nflip < self.lookup.b:
                index = self.lookup
                index.nflip = nflip
        limits, distances, indices = index.range_search(query_bytes, radius + 1)  # faiss: distance < radius
        return [_sort_pairs(distances[a:b].astype(np.int32), indices[a:b].astype(np.int64))
                for a, b in zip(limits[:-1], limits[1:])]
