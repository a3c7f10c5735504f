"""SSAH on the real MIRFLICKR-25K tags and labels, with image features made from the labels.

No MIRFLICKR images are available here, so the image side is 64-d features = labels @ a random
projection + unit noise (seeded); the text side is the real 1,386-d tag vectors. Trains with
train.py on the standard 2,000 / 10,000 / 18,015 split and prints t->t, i->t, t->i and i->i
mAP next to the mAP of random codes on the same split.

    python benchmarks/ssah_mirflickr_tags.py [--data DIR] [--schedule short]
        [--epochs 2] [--bits 16] [--extra "--variant paper"]

DIR holds mirflickr25k-yall.mat and mirflickr25k-lall.mat; by default the folder where
`train.py --dataset flickr` finds its data.
"""
import argparse
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

import numpy as np  # noqa: E402

# Small nets; image/text rates raised so that a few passes learn (the program's 10^-4.5 / 10^-3.5
# suit a pretrained CNN-F and many passes).
SMALL = ["--embed-dim", "64", "--hidden-dim", "256", "--lr-img-exponent", "2", "--lr-txt-exponent", "2"]


def make_folder(source, target, seed=0):
    """A DCMH-layout folder: links to the real tag and label files plus made image features."""
    import scipy.io
    labels = scipy.io.loadmat(os.path.join(source, "mirflickr25k-lall.mat"))["LAll"].astype(np.float32)
    rng = np.random.RandomState(seed)
    features = labels @ rng.randn(labels.shape[1], 64) + rng.randn(len(labels), 64)
    for name in ("mirflickr25k-yall.mat", "mirflickr25k-lall.mat"):
        os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(target, name))
    scipy.io.savemat(os.path.join(target, "mirflickr25k-iall.mat"), {"IAll": features.astype(np.float32)})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="folder with mirflickr25k-yall.mat and -lall.mat")
    parser.add_argument("--schedule", default="short")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more train.py options")
    from utils.metrics import DEFAULT_TIES, TIE_RULES
    parser.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES, help="tie rule of the figures")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ssah_mirflickr_tags.json"),
                        help="results JSON")
    args = parser.parse_args()
    import scipy.io

    import train
    from utils.metrics import random_codes_map
    from utils.data import resolve_path
    source = args.data or resolve_path("flickr", "")
    with tempfile.TemporaryDirectory() as folder:
        data_dir = os.path.join(folder, "flickr")
        os.mkdir(data_dir)
        make_folder(source, data_dir)
        command = ["--method", "ssah", "--dataset", "flickr", "--data", data_dir, "--backbone", "features",
                   "--bits", str(args.bits), "--schedule", args.schedule, "--epochs", str(args.epochs),
                   "--seed", str(args.seed), "--runs-dir", folder, "--run-name", "mir", "--ties", args.ties] + SMALL
        command += shlex.split(args.extra)
        print("train.py " + " ".join(command), flush=True)
        results = train.main(command)
        codes = scipy.io.loadmat(os.path.join(folder, "mir", "codes.mat"))
        baseline = random_codes_map(codes["query_L"], codes["retrieval_L"], args.bits, ties=args.ties)
    final = results["final"]
    print(f"\nmAP (ties: {args.ties}): " + "  ".join(f"{d} {final[d]:.4f}" for d in ("t->t", "i->t", "t->i", "i->i"))
          + f"  | random codes {baseline:.4f}")
    settings = {k: v for k, v in vars(args).items() if k not in ("data", "out")}
    results_io.write_results(args.out, {"final": final, "random_codes_map": baseline, "settings": settings,
                                        "train_options": command})


if __name__ == "__main__":
    from utils.errors import run_command_line
    run_command_line(main)
