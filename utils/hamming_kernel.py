"""Compiled per-query distance histograms (numba); utils.metrics falls back to NumPy without it.

histograms(query_words, db_words, query_label_words, db_label_words, levels) -> int32
(queries x 2*levels): column 2*d + 1 counts the database items at Hamming distance d
that share a label with the query, column 2*d the others. Codes and multi-hot labels
come packed in uint64 words. One pass over the pairs, no pair-sized memory: popcount
of the XOR, AND of the label words, one increment; queries are taken eight at a time so
that the eight increments of a database item are independent.
"""
import numba
import numpy as np
from numba.core.extending import intrinsic

TILE = 8  # queries per database pass: 8 independent increments per item (measured 1.2-1.6x over 4 on one thread)


@intrinsic
def _popcount(typingctx, word):
    """LLVM's ctpop: one popcnt instruction."""
    def codegen(context, builder, signature, args):
        function = builder.module.declare_intrinsic("llvm.ctpop", [args[0].type])
        return builder.call(function, args)
    return word(word), codegen


@numba.njit(parallel=True, cache=True, nogil=True)
def histograms(query_words, db_words, query_labels, db_labels, levels):
    n_query, n_db = query_words.shape[0], db_words.shape[0]
    words, label_words = query_words.shape[1], query_labels.shape[1]
    out = np.zeros((n_query, 2 * levels), np.int32)
    for tile in numba.prange((n_query + TILE - 1) // TILE):
        first = tile * TILE
        count = min(TILE, n_query - first)
        counts = np.zeros((TILE, 2 * levels), np.int32)
        if words == 1 and label_words == 1 and count == TILE:
            code0, code1 = query_words[first, 0], query_words[first + 1, 0]
            code2, code3 = query_words[first + 2, 0], query_words[first + 3, 0]
            code4, code5 = query_words[first + 4, 0], query_words[first + 5, 0]
            code6, code7 = query_words[first + 6, 0], query_words[first + 7, 0]
            label0, label1 = query_labels[first, 0], query_labels[first + 1, 0]
            label2, label3 = query_labels[first + 2, 0], query_labels[first + 3, 0]
            label4, label5 = query_labels[first + 4, 0], query_labels[first + 5, 0]
            label6, label7 = query_labels[first + 6, 0], query_labels[first + 7, 0]
            for j in range(n_db):
                code, label = db_words[j, 0], db_labels[j, 0]
                counts[0, 2 * np.intp(_popcount(code0 ^ code)) + np.intp((label0 & label) != 0)] += 1
                counts[1, 2 * np.intp(_popcount(code1 ^ code)) + np.intp((label1 & label) != 0)] += 1
                counts[2, 2 * np.intp(_popcount(code2 ^ code)) + np.intp((label2 & label) != 0)] += 1
                counts[3, 2 * np.intp(_popcount(code3 ^ code)) + np.intp((label3 & label) != 0)] += 1
                counts[4, 2 * np.intp(_popcount(code4 ^ code)) + np.intp((label4 & label) != 0)] += 1
                counts[5, 2 * np.intp(_popcount(code5 ^ code)) + np.intp((label5 & label) != 0)] += 1
                counts[6, 2 * np.intp(_popcount(code6 ^ code)) + np.intp((label6 & label) != 0)] += 1
                counts[7, 2 * np.intp(_popcount(code7 ^ code)) + np.intp((label7 & label) != 0)] += 1
        else:
            for j in range(n_db):
                for k in range(count):
                    distance = np.intp(0)
                    for w in range(words):
                        distance += np.intp(_popcount(query_words[first + k, w] ^ db_words[j, w]))
                    relevant = np.intp(0)
                    for w in range(label_words):
                        if (query_labels[first + k, w] & db_labels[j, w]) != 0:
                            relevant = np.intp(1)
                    counts[k, 2 * distance + relevant] += 1
        for k in range(count):
            out[first + k] = counts[k]
    return out
