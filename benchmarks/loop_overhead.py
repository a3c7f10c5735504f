"""Training updates per second of each method with tiny networks, where the loop, not the maths, dominates.

Each method trains through `train.main([...])` in this process (the command line users type,
so the figure covers everything a run does per update: batching, the compiled step, loss
bookkeeping, logging, checkpoints at epoch ends) on small data: SSAH on the built-in synthetic
image-text set (1,000 training pairs of 256-d / 300-d features) with 32-wide networks, ACMR on a
generated Wikipedia-format file of the same size with 16-d image and 8-d text features (its
program's layer sizes d->512->100->40; on the synthetic set's 256-d / 300-d inputs the maths of
an update, not the loop, dominates), METAH on a generated pair of feature domains (600 source,
450 target items of 16-d) with 32-wide networks. After an untimed warm-up run
(first-use costs of TensorFlow), a run of a short length and one of a long length are timed
(the fastest of --repeats each); set-up, tracing and the final evaluation cost both the same, so

    updates/s = (updates of the long run - updates of the short run) / (seconds long - seconds short).

Seconds are wall-clock; the same difference of the process's CPU seconds (all its threads) is
printed too, as updates per CPU-second: on a machine shared with other work, wall-clock figures
move with the load, CPU seconds much less. To measure an earlier commit, export its tree
(`git archive COMMIT | tar -x -C DIR`), copy this script into DIR/benchmarks and run it there
with `--code-commit COMMIT --out THIS_REPO/benchmarks/results/loop_overhead.json`.

    python benchmarks/loop_overhead.py --label before|after [--methods ssah,acmr,metah] [--repeats 2]

Figures of each label are kept side by side in benchmarks/results/loop_overhead.json.
"""
import argparse
import contextlib
import io as text_io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

TRAIN_PAIRS = 1000        # the synthetic set's training part (utils.data: synthetic split 200 / 1000)
SSAH_BATCH = 64
SSAH_STEPS_PER_EPOCH = 4  # the tiny schedule: one pass of each of LabNet, D, ImgNet, TxtNet
ACMR_BATCH = 32
METAH_BATCH = 16


def write_domains(folder, seed=0):
    """Two 4-class feature domains (600 source, 450 target items, 16-d); the target is shifted."""
    import numpy as np
    rng = np.random.RandomState(seed)
    centres = rng.randn(4, 16) * 3
    ys, yt = np.arange(600) % 4, np.arange(450) % 4
    np.savez(os.path.join(folder, "src.npz"), features=(centres[ys] + rng.randn(600, 16)).astype(np.float32),
             labels=ys)
    np.savez(os.path.join(folder, "tgt.npz"), features=(1.5 * centres[yt] + 2 + rng.randn(450, 16)).astype(np.float32),
             labels=yt)


def write_wiki_features(folder, seed=0):
    """A wikiData.mat of 1,000 training and 200 test pairs: 16-d images, 8-d texts, 10 classes."""
    import numpy as np
    import scipy.io
    rng = np.random.RandomState(seed)
    image_centres, text_centres = rng.randn(10, 16) * 2, rng.randn(10, 8) * 2
    fields = {}
    for part, n in (("tr", TRAIN_PAIRS), ("te", 200)):
        classes = np.arange(n) % 10
        fields["I_" + part] = (image_centres[classes] + rng.randn(n, 16)).astype(np.float32)
        fields["T_" + part] = (text_centres[classes] + rng.randn(n, 8)).astype(np.float32)
        fields["L_" + part] = (classes + 1)[:, None]  # the file's classes are 1..10
    scipy.io.savemat(os.path.join(folder, "wikiData.mat"), fields)


def cases(data_dir):
    """Per method: (argv for a given length, the length field's short and long values, updates of a length)."""
    ssah = ["--method", "ssah", "--dataset", "synthetic", "--bits", "16", "--backbone", "features",
            "--hidden-dim", "32", "--embed-dim", "16", "--discriminator-hidden", "16,16", "--schedule", "tiny",
            "--early-stop", "false", "--batch-size", str(SSAH_BATCH)]
    acmr = ["--method", "acmr", "--dataset", "wiki", "--data", os.path.join(data_dir, "wikiData.mat"),
            "--batch-size", str(ACMR_BATCH), "--eval-every", "1000"]
    metah = ["--method", "metah", "--dataset", "folder:src->tgt", "--data", data_dir, "--bits", "16",
             "--hidden", "32", "--discriminator-hidden", "32", "--batch-size", str(METAH_BATCH),
             "--eval-every-epoch", "false"]
    return {
        "ssah": (ssah, "--epochs", 1, 16, lambda n: n * SSAH_STEPS_PER_EPOCH * (TRAIN_PAIRS // SSAH_BATCH)),
        "acmr": (acmr, "--epochs", 1, 40, lambda n: n * (TRAIN_PAIRS // ACMR_BATCH)),
        "metah": (metah, "--iterations", 40, 1500, lambda n: n),
    }


def timed_run(argv, runs_dir, name):
    """(wall seconds, CPU seconds of this process) of one train.main run."""
    import train
    quiet = text_io.StringIO()
    start, start_cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        train.main(argv + ["--runs-dir", runs_dir, "--run-name", name])
    return time.perf_counter() - start, time.process_time() - start_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="name of this measurement, e.g. before or after")
    parser.add_argument("--methods", default="ssah,acmr,metah")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per length (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads (0 = all)")
    parser.add_argument("--out", default=results_io.results_path("loop_overhead.json"))
    parser.add_argument("--code-commit", default="", help="the commit whose exported tree this runs in "
                        "(recorded with the figures when the tree is not a git checkout)")
    args = parser.parse_args()

    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from utils import io

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_domains(tmp)
        write_wiki_features(tmp)
        all_cases = cases(tmp)
        for method in args.methods.split(","):
            argv, flag, short, long, updates = all_cases[method]
            timed_run(argv + [flag, str(short)], os.path.join(tmp, "runs"), f"{method}-warm-up")  # first-use costs
            seconds, cpu = {}, {}
            for length in (short, long):
                times = [timed_run(argv + [flag, str(length)], os.path.join(tmp, "runs"), f"{method}-{length}-{repeat}")
                         for repeat in range(args.repeats)]
                seconds[length], cpu[length] = min(t[0] for t in times), min(t[1] for t in times)
            extra_updates = updates(long) - updates(short)
            extra_seconds, extra_cpu = seconds[long] - seconds[short], cpu[long] - cpu[short]
            figures[method] = {"updates_per_second": extra_updates / extra_seconds,
                               "updates_per_cpu_second": extra_updates / extra_cpu, "extra_updates": extra_updates,
                               "seconds_short": seconds[short], "seconds_long": seconds[long],
                               "cpu_seconds_short": cpu[short], "cpu_seconds_long": cpu[long],
                               "lengths": [short, long], "length_option": flag}
            print(f"{method}: {figures[method]['updates_per_second']:.1f} updates/s "
                  f"({extra_updates} updates in {extra_seconds:.2f} s; runs {seconds[short]:.2f} s / "
                  f"{seconds[long]:.2f} s); {figures[method]['updates_per_cpu_second']:.1f} updates per CPU-second",
                  flush=True)

    saved = io.load_json(args.out) if os.path.exists(args.out) else {}
    labels = saved.get("labels", {})
    labels[args.label] = {"methods": figures, "provenance": results_io.provenance()}
    if args.code_commit:
        labels[args.label]["code_commit"] = args.code_commit
    if "before" in labels and "after" in labels:
        for method in labels["after"]["methods"]:
            if method in labels["before"]["methods"]:
                for key in ("updates_per_second", "updates_per_cpu_second"):
                    after, before = (labels[n]["methods"][method].get(key) for n in ("after", "before"))
                    if after and before:
                        print(f"{method}: after / before = {after / before:.2f}x ({key})")
    results_io.write_results(args.out, {"labels": labels})


if __name__ == "__main__":
    main()
