"""Speed and memory of utils.metrics against the original program's per-query loop.

    python benchmarks/eval_speed.py              # the whole table (a few minutes)
    python benchmarks/eval_speed.py --quick      # the loops on 200 queries only, scaled
    python benchmarks/eval_speed.py --quick --skip-nuswide --out /tmp/eval_speed.json   # a short check

MIRFLICKR-25K size: 2,000 queries x 18,015 database items, random codes, the real
24-concept labels when $ADVHASH_SHARED (default: the folder `shared` beside the repository)
holds data/mirflickr25k/mirflickr25k-lall.mat (else random 24-class multi-hot). The baseline is the authors' own calc_map loop (authors_calc_map below:
one query at a time, float32 codes as the SSAH program holds them, hamming =
0.5 * (K - q . B^T), ind = np.argsort(hamm), cumulative counts). Against it: ours under
the default tie rule `expected` (all threads and one thread) and under `argsort` (the
same values as the loop: max abs difference column), and the figure that `expected`
and the loop give (they differ by the luck of the tie order). Also the lexsort loop
(reference_loop_map: the same loop sorting by (distance, relevance), the pessimistic
rule) against ours under `pessimistic`. Ours is warmed up first (numba compiles or
loads its cache once). Writes every timing as data (results_io: with the machine and the
commit) to --out, benchmarks/results/eval_speed.json by default (eval_speed_quick.json with
--quick); the README's table is rendered from it (benchmarks/readme_figures.py: eval_speed).
NUS-WIDE size: 2,100 x 193,734, ours alone (compiled and NumPy kernels), with the
peak memory that tracemalloc sees during the call (NumPy reports its buffers to
tracemalloc; the compiled kernel holds only queries x (K+1) counts) and ru_maxrss.
"full report" = retrieval_report: mAP, mAP@50/500, hash-lookup PR curve, radius-2
figures, top-N curve to 1000, ranking PR curve, from one ranking pass.
"""
import argparse
import os
import resource
import sys
import time
import tracemalloc

# The reference loop's per-query np.dot is a BLAS matrix-vector product; with BLAS threads
# it stalls when other processes hold the cores (seen: 3-8x slower), which would flatter us.
# One BLAS thread keeps the comparison fair; our hot path uses no BLAS.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)
from utils import metrics  # noqa: E402

LOOP_REPEATS, OURS_REPEATS = 2, 5  # best of: the loops take seconds, ours milliseconds

SHARED = os.environ.get("ADVHASH_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       "..", "shared"))


def mirflickr_labels(rng):
    path = os.path.join(SHARED, "data", "mirflickr25k", "mirflickr25k-lall.mat")
    if os.path.exists(path):
        import scipy.io
        labels = scipy.io.loadmat(path)["LAll"]
        order = rng.permutation(len(labels))
        return labels[order[:2000]], labels[order[2000:]], "real MIRFLICKR-25K labels"
    return ((rng.random((2000, 24)) < 0.15).astype(np.uint8), (rng.random((18015, 24)) < 0.15).astype(np.uint8),
            "random 24-class labels")


def reference_loop_map(query_codes, db_codes, query_labels, db_labels, tie_rule=True):
    """The original programs' calc_map, one query at a time (arrays converted once, as
    there). tie_rule: sort by (distance, relevance) with np.lexsort, as utils.metrics
    ranks; False: np.argsort of the distances, as the original programs do."""
    query_codes, db_codes = query_codes.astype(np.float64), db_codes.astype(np.float64)
    query_labels, db_labels = query_labels.astype(np.float64), db_labels.astype(np.float64)
    bits = query_codes.shape[1]
    total = 0.0
    for i in range(len(query_codes)):
        relevant = (query_labels[i] @ db_labels.T) > 0
        hamming = 0.5 * (bits - query_codes[i] @ db_codes.T)
        relevant = relevant[np.lexsort((relevant, hamming)) if tie_rule else np.argsort(hamming)]
        count = int(relevant.sum())
        if count == 0:
            continue
        total += np.mean(np.linspace(1, count, count) / (np.flatnonzero(relevant) + 1.0))
    return total / len(query_codes)


def authors_calc_map(qB, rB, query_L, retrieval_L):
    """The original programs' calc_map as the authors wrote it: for each query, relevance by
    a label dot product, hamming = 0.5 * (K - q . B^T), ind = np.argsort(hamm), the relevant
    flags in that order, AP = mean(count / tindex); queries with no relevant item add 0."""
    num_query = query_L.shape[0]
    total = 0.0
    for it in range(num_query):
        gnd = (np.dot(query_L[it, :], retrieval_L.transpose()) > 0).astype(np.float32)
        tsum = int(np.sum(gnd))
        if tsum == 0:
            continue
        hamm = 0.5 * (rB.shape[1] - np.dot(qB[it, :], rB.transpose()))
        ind = np.argsort(hamm)
        gnd = gnd[ind]
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        total += np.mean(count / tindex)
    return total / num_query


def kernel_name():
    if metrics._compiled_kernel() is None:
        return "numpy"
    import numba
    return f"numba {numba.__version__}"


def codes(rng, n, bits):
    return np.where(rng.random((n, bits)) < 0.5, 1, -1).astype(np.int8)


def best_time(function, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="time the reference on 200 queries and scale")
    parser.add_argument("--skip-nuswide", action="store_true")
    parser.add_argument("--out", default="", help="results JSON (default benchmarks/results/eval_speed.json, "
                                                  "eval_speed_quick.json with --quick)")
    args = parser.parse_args(argv)
    out = args.out or results_io.results_path("eval_speed_quick.json" if args.quick else "eval_speed.json")
    rng = np.random.default_rng(0)
    query_labels, db_labels, label_source = mirflickr_labels(rng)
    results = {"labels": label_source, "cpu_cores": os.cpu_count(), "numpy": np.__version__,
               "kernel": kernel_name(), "load_average": os.getloadavg()[0], "quick": args.quick,
               "repeats": {"loops": LOOP_REPEATS, "ours": OURS_REPEATS},
               "ties": "expected (speed-up), argsort (equality with the loop)", "mirflickr": []}
    print(f"MIRFLICKR-25K size: 2000 x 18015, {label_source}, {os.cpu_count()} CPU cores, numpy {np.__version__}, "
          f"Hamming kernel: {kernel_name()}, load average {os.getloadavg()[0]:.1f} "
          f"(times are best of {LOOP_REPEATS} for the loops, of {OURS_REPEATS} for ours)")
    print("| bits | authors' calc_map loop (s) | ours, ties expected (s) | speed-up | ours expected, 1 thread (s) "
          "| speed-up, 1 thread | ours, ties argsort (s) | abs(argsort - calc_map) | mAP calc_map / expected "
          "| lexsort loop (s) | ours, ties pessimistic (s) | abs(pessimistic - lexsort loop) | full report, expected (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    n_ref = 200 if args.quick else 2000
    scale = 2000 / n_ref
    program_labels = query_labels.astype(np.float32), db_labels.astype(np.float32)
    for bits in (16, 32, 64):
        query, db = codes(rng, 2000, bits), codes(rng, 18015, bits)
        program_codes = query.astype(np.float32), db.astype(np.float32)  # the program's code arrays
        loop_time, loop_value = best_time(lambda: authors_calc_map(
            program_codes[0][:n_ref], program_codes[1], program_labels[0][:n_ref], program_labels[1]), LOOP_REPEATS)
        loop_time *= scale
        lexsort_time, lexsort_value = best_time(
            lambda: reference_loop_map(query[:n_ref], db, query_labels[:n_ref], db_labels), LOOP_REPEATS)
        lexsort_time *= scale
        run = lambda ties, rows=slice(None): metrics.mean_average_precision(
            query[rows], db, query_labels[rows], db_labels, ties=ties)
        run("expected", slice(0, 8))  # warm-up
        expected_time, expected_value = best_time(lambda: run("expected"), OURS_REPEATS)
        metrics.THREADS = 1
        single_time, _ = best_time(lambda: run("expected"), 3)
        metrics.THREADS = None
        argsort_time, _ = best_time(lambda: run("argsort"), 2)
        argsort_difference = abs(run("argsort", slice(0, n_ref)) - loop_value)
        pessimistic_time, _ = best_time(lambda: run("pessimistic"), 3)
        pessimistic_difference = abs(run("pessimistic", slice(0, n_ref)) - lexsort_value)
        report_time, _ = best_time(lambda: metrics.retrieval_report(query, db, query_labels, db_labels,
                                                                    top_ks=(50, 500), n_max=1000), 2)
        expected_part = run("expected", slice(0, n_ref))
        estimated = " (est.)" if args.quick else ""
        print(f"| {bits} | {loop_time:.2f}{estimated} | {expected_time:.3f} | {loop_time / expected_time:.0f}x "
              f"| {single_time:.3f} | {loop_time / single_time:.0f}x | {argsort_time:.2f} | {argsort_difference:.1e} "
              f"| {loop_value:.4f} / {expected_part:.4f} | {lexsort_time:.2f}{estimated} | {pessimistic_time:.3f} "
              f"| {pessimistic_difference:.1e} | {report_time:.2f} |")
        results["mirflickr"].append({
            "bits": bits, "authors_calc_map_s": loop_time, "expected_s": expected_time,
            "speed_up_vs_calc_map": loop_time / expected_time, "expected_one_thread_s": single_time,
            "argsort_s": argsort_time, "argsort_minus_calc_map": argsort_difference,
            "calc_map_value": loop_value, "expected_value": expected_part, "lexsort_loop_s": lexsort_time,
            "pessimistic_s": pessimistic_time, "pessimistic_minus_lexsort_loop": pessimistic_difference,
            "full_report_expected_s": report_time, "expected_map_all_queries": expected_value})
    results_io.write_results(out, results)  # the MIRFLICKR part is kept even if NUS-WIDE is stopped
    if args.skip_nuswide:
        return results
    print()
    print("NUS-WIDE size: 2100 x 193734, random 21-class multi-hot labels, ours alone")
    print("| bits | kernel | mAP@all (s) | full report (s) | peak traced memory during the call (MB) | inputs (MB) "
          "| ru_maxrss (MB) |")
    print("|---|---|---|---|---|---|---|")
    query_labels = (rng.random((2100, 21)) < 0.12).astype(np.uint8)
    db_labels = (rng.random((193734, 21)) < 0.12).astype(np.uint8)
    results["nuswide"] = []
    for bits in (16, 32, 64):
        query, db = codes(rng, 2100, bits), codes(rng, 193734, bits)
        inputs = sum(a.nbytes for a in (query, db, query_labels, db_labels)) / 2 ** 20
        for kernel in ("auto", "numpy"):
            if kernel == "numpy" and kernel_name() == "numpy":
                continue
            metrics.KERNEL = kernel
            tracemalloc.start()
            start = time.perf_counter()
            metrics.mean_average_precision(query, db, query_labels, db_labels)
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            report_time, _ = best_time(lambda: metrics.retrieval_report(query, db, query_labels, db_labels,
                                                                        top_ks=(50, 500), n_max=1000), 1)
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            name = kernel_name() if kernel == "auto" else "numpy"
            print(f"| {bits} | {name} | {elapsed:.2f} | {report_time:.2f} | {peak / 2 ** 20:.1f} "
                  f"| {inputs:.1f} | {maxrss:.0f} |")
            results["nuswide"].append({"bits": bits, "kernel": name, "map_s": elapsed, "full_report_s": report_time,
                                       "peak_traced_mb": peak / 2 ** 20, "inputs_mb": inputs, "ru_maxrss_mb": maxrss})
        metrics.KERNEL = "auto"
    results_io.write_results(out, results)
    return results


if __name__ == "__main__":
    main()
