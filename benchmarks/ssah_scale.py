"""SSAH's costs as the training set grows: per-update time of each step, the batch draws of one
pass, one monitoring-loss check and peak memory at n = 10k, 100k and 1M stored items, with each
one's exponent of growth in n (time ~ n^exponent between successive points).

Features backbone, synthetic data (random multi-hot labels of 24 classes, sparse binary tags,
random features), K 32. Each n runs in a process of its own, so that its peak RSS is its own.
The method's own work grows with n: each update compares its batch with all n stored items
(exponent ~1 per update) and the monitoring loss sums all n x n pairs (~2). What the port adds
must not: the draws of one pass (n / batch batches of `batch` distinct rows: ~1 per pass, ~0 per
batch) and the monitoring loss's memory (blocks within a 512 MB budget, whatever n).
At large n the monitoring check is timed on its first --monitor-rows rows of pairs and scaled
to all n (its blocks, and so its memory, are those of the whole check).

    python benchmarks/ssah_scale.py [--points 10000,100000,1000000] [--updates 3]
        [--text-dim 256] [--image-dim 256] [--embed-dim 128] [--hidden-dim 512]
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

STEPS = ("lab", "dis", "img", "txt")


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_point(args):
    """One n in this process: {"n", "data_mb", "monitor_peak_above_data_mb", "monitor_seconds",
    "monitor_rows_timed", "draw_pass_seconds", "step_seconds": {step: median}, "peak_mb"}."""
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from losses import ssah as L
    from models.ssah import FeatureTrunk
    from trainers.ssah import PRESETS, Config, SsahModel
    from trainers.ssah.epochs import draw_batches

    n, batch, classes = args.point, args.batch, 24
    rng = np.random.default_rng(0)
    labels = (rng.random((n, classes), np.float32) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1.0
    texts = (rng.random((n, args.text_dim), np.float32) < 0.02).astype(np.float32)
    images = rng.standard_normal((n, args.image_dim), np.float32)
    config = Config(bits=32, embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, batch_size=batch,
                    **PRESETS["original"])
    trainer = SsahModel(config, labels, args.text_dim, FeatureTrunk(args.hidden_dim))
    trainer.build((args.image_dim,))
    result = {"n": n, "data_mb": rss_mb()}

    # one monitoring-loss check's pair sum (ImgNet's: all n x n pairs of (F, H), its main cost), first:
    # its peak is its own; timed on its first rows_of rows of pairs and scaled to all n
    b, rows_of = trainer.buffers, min(n, args.monitor_rows)
    start = time.perf_counter()
    float(L.all_pairs_nll(b["F"], b["H"], trainer.labels, config.similarity_scale, rows_of=rows_of))
    result["monitor_seconds"] = (time.perf_counter() - start) * n / rows_of
    result["monitor_rows_timed"] = rows_of
    result["monitor_peak_above_data_mb"] = peak_rss_mb() - result["data_mb"]

    # the batch draws of one pass, compiled as EpochLoop draws them
    updates = max(1, n // batch)
    draws = tf.function(lambda: draw_batches(trainer.rng, n, updates, batch))
    draws()
    start = time.perf_counter()
    pass_rows = draws().numpy()
    result["draw_pass_seconds"] = time.perf_counter() - start

    # per-update time of each step on drawn batches (up to --updates-up-to items)
    result["step_seconds"] = {}
    for step in STEPS if n <= args.updates_up_to else ():
        times = []
        for i in range(args.updates + 1):  # the first traces
            rows = pass_rows[i % len(pass_rows)]
            inputs = {"lab": (rows, labels[rows]), "dis": (images[rows], texts[rows], labels[rows]),
                      "img": (rows, images[rows], labels[rows]), "txt": (rows, texts[rows], labels[rows])}[step]
            start = time.perf_counter()
            float(trainer.step(step, *inputs, learning_rate=1e-4)["loss"])
            if i:
                times.append(time.perf_counter() - start)
        result["step_seconds"][step] = sorted(times)[len(times) // 2]
    result["peak_mb"] = peak_rss_mb()
    return result


def exponent(points, value):
    """Least-squares slope of log(value) against log(n) over the points."""
    xs = [math.log(p["n"]) for p in points]
    ys = [math.log(max(value(p), 1e-12)) for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="10000,100000,1000000")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--updates", type=int, default=3, help="timed updates per step and point")
    parser.add_argument("--updates-up-to", type=int, default=10 ** 7,
                        help="time updates only at points of at most this many items (they take long on a shared CPU)")
    parser.add_argument("--monitor-rows", type=int, default=256,
                        help="rows of pairs the monitoring check is timed on (all when n is at most this)")
    parser.add_argument("--text-dim", type=int, default=256)
    parser.add_argument("--image-dim", type=int, default=256)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--point", type=int, default=0, help=argparse.SUPPRESS)  # one point, in a child process
    parser.add_argument("--out", default="", help="results JSON (default: benchmarks/results/ssah_scale.json)")
    args = parser.parse_args()
    if args.point:
        print("POINT " + json.dumps(measure_point(args)), flush=True)
        return
    args.out = args.out or results_io.results_path("ssah_scale.json")
    points = []
    for n in (int(v) for v in args.points.split(",")):
        command = [sys.executable, os.path.abspath(__file__), "--point", str(n)] + [
            f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
            if key not in ("point", "points", "out")]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        points.append(json.loads(next(line for line in output.splitlines() if line.startswith("POINT "))[6:]))
        p = points[-1]
        print(f"n {n}: draws of a pass {p['draw_pass_seconds']:.3f} s, monitoring check {p['monitor_seconds']:.1f} s "
              f"(peak {p['monitor_peak_above_data_mb']:.0f} MB above the data's {p['data_mb']:.0f} MB), updates "
              + (", ".join(f"{s} {v:.4f} s" for s, v in p["step_seconds"].items()) or "not timed")
              + f", peak RSS {p['peak_mb']:.0f} MB",
              flush=True)
    columns = [("draws of one pass (s)", lambda p: p["draw_pass_seconds"]),
               ("draws per batch (s)", lambda p: p["draw_pass_seconds"] / max(1, p["n"] // args.batch)),
               ("monitoring check (s)", lambda p: p["monitor_seconds"]),
               ("monitoring peak above data (MB)", lambda p: p["monitor_peak_above_data_mb"]),
               ("peak RSS (MB)", lambda p: p["peak_mb"])] + [
              (f"{step} update (s)", lambda p, step=step: p["step_seconds"].get(step)) for step in STEPS]
    print("| figure | " + " | ".join(f"n = {p['n']:,}" for p in points) + " | exponent in n |")
    print("|---" * (len(points) + 2) + "|")
    exponents = {}
    for name, value in columns:
        measured = [p for p in points if value(p) is not None]
        exponents[name] = exponent(measured, value) if len(measured) > 1 else None
        shown = "" if exponents[name] is None else f"{exponents[name]:.2f}"
        print(f"| {name} | " + " | ".join("-" if value(p) is None else f"{value(p):.4g}" for p in points)
              + f" | {shown} |")
    settings = {k: v for k, v in vars(args).items() if k not in ("point", "out")}
    results_io.write_results(args.out, {"settings": settings, "points": points, "exponents": exponents})


if __name__ == "__main__":
    main()
