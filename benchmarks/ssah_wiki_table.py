"""SSAH on Wikipedia (128-d SIFT features, 10-d LDA text): original vs paper variant.

Runs `python train.py --method ssah --dataset wiki --backbone features --bits K --variant V
--seed S` for every combination, one run at a time, and prints i->t and t->i mAP as
mean +- std over the seeds. Runs already finished in --runs-dir are read, not redone.

    python benchmarks/ssah_wiki_table.py --schedule short --epochs 1
    python benchmarks/ssah_wiki_table.py --schedule original --epochs 5   # the program's passes
    python benchmarks/ssah_wiki_table.py --variants original --extra "--pairwise-loss nll" --label -nll
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="original,paper")
    parser.add_argument("--schedule", default="short")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "ssah-wiki-table"))
    parser.add_argument("--extra", default="", help="more train.py options, e.g. '--pairwise-loss nll'")
    parser.add_argument("--label", default="", help="name for the --extra options in run names and the table")
    args = parser.parse_args()

    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    figures = {}
    for variant in variants:
        for k in bits:
            for seed in seeds:
                name = f"{variant}{args.label}-{k}b-seed{seed}-{args.schedule}-e{args.epochs}"
                results_path = os.path.join(args.runs_dir, name, "results.json")
                if not os.path.exists(results_path):
                    command = [sys.executable, os.path.join(REPO, "train.py"), "--method", "ssah",
                               "--dataset", "wiki", "--backbone", "features", "--bits", str(k),
                               "--variant", variant, "--seed", str(seed), "--schedule", args.schedule,
                               "--epochs", str(args.epochs), "--runs-dir", args.runs_dir, "--run-name", name]
                    command += args.extra.split()
                    print(" ".join(command[1:]), flush=True)
                    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
                with open(results_path) as f:
                    final = json.load(f)["final"]
                figures[(variant, k, seed)] = final
                print(f"{variant} {k} bits seed {seed}: i->t {final['i->t']:.4f} t->i {final['t->i']:.4f}",
                      flush=True)

    print(f"\nWikipedia, mAP@all, schedule {args.schedule}, {args.epochs} epoch(s), "
          f"mean +- std over seeds {seeds}\n")
    print("| variant | direction | " + " | ".join(f"{k} bits" for k in bits) + " |")
    print("|---|---|" + "---|" * len(bits))
    for variant in variants:
        for direction in ("i->t", "t->i"):
            cells = []
            for k in bits:
                values = np.array([figures[(variant, k, s)][direction] for s in seeds])
                cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
            print(f"| {variant}{' ' + args.extra if args.extra else ''} | {direction} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
