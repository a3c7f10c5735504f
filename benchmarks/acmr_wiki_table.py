"""ACMR on Wikipedia (wikiData.mat, 128-d SIFT / 10-d LDA): both variants x seeds, both protocols.

    python benchmarks/acmr_wiki_table.py [--seeds 0,1,2,3,4] [--variants original,paper] (tuned: --variants tuned)
    python benchmarks/acmr_wiki_table.py --variants tuned:image_norm=none:text_norm=none   # an ablation
                                         [--epochs 0] [--eval-every 5] [--runs-dir /tmp/acmr-wiki]

Prints mAP (authors' protocol: mAP@50 test vs test, 640 pairs; and mAP over all: test queries
vs the 2,173 training pairs), i->t, t->i and average, per run and as mean +- std per
variant, next to the paper's shallow-feature row; then the modality classifier's accuracy
over training (epoch means of the batches' accuracy before each update). Each run is a
normal run folder (TensorBoard under RUN/tb: train/modality_accuracy, epoch/modality_accuracy).
--ties (default expected): the tie rule of the figures (utils.metrics), recorded in --output.
"""
import argparse
import dataclasses
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

import numpy as np  # noqa: E402

from trainers.acmr import DATABASE_PROTOCOL, TEST_PROTOCOL  # noqa: E402

PAPER_SHALLOW = {"i->t": 0.366, "t->i": 0.277, "average": 0.322}
DIRECTIONS = ("i->t", "t->i", "average")
PROTOCOLS = (TEST_PROTOCOL, DATABASE_PROTOCOL)


def variant_config(variant):
    """The variant's settings as train.py builds them (tuned: with trainers/presets/acmr-wiki.json).
    An ablation names settings changed on top: "tuned:image_norm=none:text_norm=none"."""
    from train import build_config
    from trainers import acmr
    from tune import apply_params
    name, *changes = variant.split(":")
    overrides = {}
    for change in changes:
        key, _, text = change.partition("=")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    config = build_config(acmr.METHOD, argparse.Namespace(variant=name, dataset="wiki"))
    unknown = set(overrides) - {field.name for field in dataclasses.fields(config)}
    if unknown:
        raise SystemExit(f"--variants {variant}: ACMR has no setting {', '.join(sorted(unknown))}")
    return apply_params(config, overrides)


def run_one(variant, seed, args):
    from trainers import acmr
    from utils.run import Run, set_seed
    config = variant_config(variant)
    # --epochs 0 keeps the variant's own length (the program's 50; tuned: its preset's)
    config = dataclasses.replace(config, seed=seed, epochs=args.epochs or config.epochs, eval_every=args.eval_every,
                                 runs_dir=args.runs_dir, ties=args.ties,
                                 run_name=f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', variant)}-seed{seed}-"
                                          f"{time.strftime('%H%M%S')}")
    set_seed(seed)
    run = Run.create("acmr", config)
    return acmr.fit(config, run=run), run.dir


def accuracy_trace(results):
    return [record["losses"]["modality_accuracy"] for record in results["epochs"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variants", default="original,paper")
    parser.add_argument("--epochs", type=int, default=0, help="0: the variant's own (the program's 50; "
                        "tuned: its preset's)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--runs-dir", default=os.path.join("/tmp", "acmr-wiki"))
    parser.add_argument("--output", default="", help="also save every figure as JSON here")
    from utils.metrics import DEFAULT_TIES, TIE_RULES
    parser.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES, help="tie rule of the figures")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")

    rows, traces = [], {}
    for variant in variants:
        for seed in seeds:
            start = time.perf_counter()
            results, run_dir = run_one(variant, seed, args)
            final = results["final"]
            rows.append({"variant": variant, "seed": seed, "run": run_dir, "seconds": time.perf_counter() - start,
                         "ties": args.ties,
                         **{f"{p}/{d}": final[p][d] for p in PROTOCOLS for d in DIRECTIONS}})
            traces.setdefault(variant, []).append(accuracy_trace(results))
            print(f"{variant:8s} seed {seed}: test vs test "
                  + " ".join(f"{final[PROTOCOLS[0]][d]:.3f}" for d in DIRECTIONS)
                  + " | test vs database " + " ".join(f"{final[PROTOCOLS[1]][d]:.3f}" for d in DIRECTIONS)
                  + f"  ({rows[-1]['seconds']:.0f} s, {run_dir})", flush=True)

    print(f"\nmAP, tie rule {args.ties}")
    print("\n| variant | protocol | i->t | t->i | average |")
    print("|---|---|---|---|---|")
    for variant in variants:
        picked = [r for r in rows if r["variant"] == variant]
        for protocol, label in zip(PROTOCOLS, ("mAP@50, test vs test (640)", "mAP@all, test vs train")):
            cells = []
            for d in DIRECTIONS:
                values = np.array([r[f"{protocol}/{d}"] for r in picked])
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
            print(f"| {variant} ({len(picked)} seeds) | {label} | " + " | ".join(cells) + " |")
    print("| paper, shallow features (its direction labels appear swapped) | mAP (its own 1,300/1,566 split) | "
          + " | ".join(f"{PAPER_SHALLOW[d]:.3f}" for d in DIRECTIONS) + " |")

    print("\nModality classifier accuracy (epoch mean over batches, before each update; mean over seeds):")
    for variant, per_seed in traces.items():
        trace = np.mean(np.array(per_seed), axis=0)
        marks = sorted({0, 1, 2, 4, 9, 19, 29, len(trace) - 1} & set(range(len(trace))))
        print(f"  {variant:8s} " + "  ".join(f"ep{m + 1}: {trace[m]:.3f}" for m in marks)
              + f"  | min {trace.min():.3f} (ep{trace.argmin() + 1}) max {trace.max():.3f} (ep{trace.argmax() + 1})")
    if args.output:
        results_io.write_results(args.output, {"rows": rows, "modality_accuracy": traces, "paper_shallow": PAPER_SHALLOW,
                                               "ties": args.ties})
    return rows, traces


if __name__ == "__main__":
    main()
