"""METAH speed and memory on CPU: seconds per epoch, per iteration, evaluation time and
peak resident memory of single runs, each in a fresh process (so peaks do not mix).

    python benchmarks/metah_speed.py                          # default grid, 2 threads
    python benchmarks/metah_speed.py --pairs A-D --bits 32 --presets metah --iterations 100

An epoch is one pass over the larger of the source training set and the target
database at 64 + 64 items per step (mnist->usps: 32 steps, amazon->dslr: 15 steps).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

from benchmarks.metah_ablation import PAIRS  # noqa: E402


def one_run(pair, bits, preset, iterations, threads):
    """Runs in the child process; prints one JSON line."""
    started = time.perf_counter()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from trainers import metah
    from utils.run import set_seed
    config = metah.Config(dataset=PAIRS[pair], bits=bits, preset=preset, iterations=iterations,
                          eval_every_epoch=False, **metah.PRESETS[preset])
    set_seed(0)
    loaded = time.perf_counter()
    data = metah.load_pair(config)
    load_seconds = time.perf_counter() - loaded
    fit_started = time.perf_counter()
    result = metah.fit(config, pair=data)
    total_fit = time.perf_counter() - fit_started
    steady = (result["seconds"] - result["first_step_seconds"]) / (iterations - 1)  # tracing excluded
    epochs = iterations / result["steps_per_epoch"]
    print(json.dumps({
        "pair": pair, "bits": bits, "preset": preset, "iterations": iterations,
        "train_seconds": result["seconds"], "seconds_per_epoch": steady * result["steps_per_epoch"],
        "ms_per_iteration": 1000 * steady, "first_step_seconds": result["first_step_seconds"],
        "epochs": epochs,
        "build_and_eval_seconds": total_fit - result["seconds"], "load_seconds": load_seconds,
        "process_seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="A-D,D-A,mnist-usps")
    parser.add_argument("--bits", default="16,64")
    parser.add_argument("--presets", default="source-only,metah")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "metah_speed.json"),
                        help="results JSON")
    parser.add_argument("--one", nargs=3, metavar=("PAIR", "BITS", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        one_run(args.one[0], int(args.one[1]), args.one[2], args.iterations, args.threads)
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    print("| pair | bits | preset | s / epoch | ms / iteration | first step s (tracing) | train s (iterations) "
          "| build + eval s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for pair in args.pairs.split(","):
        for bits in args.bits.split(","):
            for preset in args.presets.split(","):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", pair, bits, preset,
                                      "--iterations", str(args.iterations), "--threads", str(args.threads)],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(f"| {pair} | {bits} | {preset} | failed: {out.stderr.strip().splitlines()[-1]} |")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"| {pair} | {bits} | {preset} | {row['seconds_per_epoch']:.2f} | {row['ms_per_iteration']:.1f} "
                      f"| {row['first_step_seconds']:.2f} | {row['train_seconds']:.1f} ({row['iterations']}) | {row['build_and_eval_seconds']:.1f} "
                      f"| {row['peak_rss_mb']:.0f} |", flush=True)
    print(f"\n{os.cpu_count()} CPUs visible, {args.threads} TensorFlow threads; load average "
          f"{os.getloadavg()[0]:.1f} at the end (the machine is shared, so times vary).")
    results_io.write_results(args.out, {"rows": rows, "threads": args.threads,
                                        "load_average_at_end": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
