"""SSAH on Wikipedia (128-d SIFT features, 10-d LDA text): original vs paper vs tuned variant.

Runs `python train.py --method ssah --dataset wiki --backbone features --bits K --variant V
--seed S` for every combination, one run at a time, and prints i->t and t->i mAP as
mean +- std over the seeds (JSON to --json, with every setting of each variant as train.py
builds it). Runs already finished in --runs-dir are read, not redone, but only when their
saved settings are the ones the command asks for now (otherwise: an error naming the
difference; a stale folder once put a relu-LabNet run into the sigmoid paper row).

Defaults: the program's passes (--schedule original), one epoch, and train.py's rates for
--dataset wiki (trainers.ssah.DATASET_DEFAULTS: LabNet/ImgNet 10^-2.5 / 10^-3.5 instead of
the program's 10^-2 / 10^-4.5). With the program's LabNet rate
(1e-2) the first Adam steps kill LabNet's relu units on Wikipedia (90% of pairs dissimilar
push every feature down) and every code collapses to one; 10^-4.5 is the program's rate for
a pretrained CNN-F and barely moves the random feature trunk.

    python benchmarks/ssah_wiki_table.py
    python benchmarks/ssah_wiki_table.py --lr "--lr-lab-exponent 2 --lr-img-exponent 4.5"   # the program's rates
    python benchmarks/ssah_wiki_table.py --variants paper --label=-relu-pw \
        --variant-extra "paper=--labnet-activation relu --ms-fusion per_window" --json /tmp/relu.json
    python benchmarks/ssah_wiki_table.py --ties argsort      # the figures the program's calc_map prints

The tuned variant (the program plus trainers/presets/ssah-wiki.json, chosen by tune.py on
validation items) takes its passes and epochs from the preset: --schedule and --epochs apply
to the other variants only. The table ends with the published rows of SePH and CMFH (same
features, split and protocol) to compare with.

    python benchmarks/ssah_wiki_table.py --variants original,paper,tuned --seeds 0,1,2,3,4   # the issue's table

--ties (default expected) is the tie rule of the figures (utils.metrics); it is given to
new runs and recorded in the JSON; a finished run evaluated under another rule is
re-evaluated from its codes.mat (runs from before the setting used pessimistic).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from utils.metrics import DEFAULT_TIES, TIE_RULES  # noqa: E402

# Published mAP on Wikipedia (same 128-d SIFT / 10-d LDA features, 2,173 / 693 split, whole-database
# ranking), 16 / 32 / 64 bits: SePH (Lin et al., CVPR 2015) and CMFH (Ding et al., CVPR 2014).
PUBLISHED = {
    "SePH": {"i->t": {16: 0.276, 32: 0.296, 64: 0.304}, "t->i": {16: 0.631, 32: 0.658, 64: 0.663}},
    "CMFH": {"i->t": {16: 0.213, 32: 0.225, 64: 0.236}, "t->i": {16: 0.488, 32: 0.513, 64: 0.526}},
}
# Variants whose passes and epochs come from their preset, not from --schedule / --epochs.
PRESET_LENGTH = ("tuned",)


def figures_under(run_dir, final, ties):
    """The run's i->t / t->i mAP under tie rule `ties`: its own figures when it was evaluated
    under that rule, else recomputed from its codes.mat."""
    from eval import Source, evaluate
    with open(os.path.join(run_dir, "config.json")) as f:
        run_ties = json.load(f)["config"].get("ties", "pessimistic")  # the only rule before --ties
    if run_ties == ties:
        return final
    reports = evaluate(Source(run_dir), top_ks=(), n_max=1, directions=["i->t", "t->i"], ties=ties)
    return {direction: report["map"] for direction, report in reports.items()}


PER_RUN_SETTINGS = ("bits", "seed", "run_name", "runs_dir")


def planned_settings(options):
    """Every setting train.py builds from `options` (a train.py argument list), as JSON values."""
    from train import build_config
    from trainers import ssah
    from utils.config import add_config_arguments
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ssah.Config)
    return json.loads(json.dumps(dataclasses.asdict(build_config(ssah.METHOD, parser.parse_args(options)))))


def check_reused_run(run_dir, planned):
    """Stops when a finished run folder was trained with other settings than those planned now
    (the tie rule aside: figures_under re-evaluates a run under the rule asked for)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)["config"]
    differences = [f"{name} {saved.get(name)!r} (now {value!r})" for name, value in planned.items()
                   if name not in ("run_name", "runs_dir", "ties") and saved.get(name) != value]
    if differences:
        sys.exit(f"error: {run_dir} was trained with {', '.join(differences)}: delete it or use another "
                 "--runs-dir or --label")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--variants", default="original,paper")
    parser.add_argument("--schedule", default="original")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "ssah-wiki-table"))
    parser.add_argument("--lr", default="", help="learning-rate options given to every run "
                        "('' = train.py's --dataset wiki defaults)")
    parser.add_argument("--extra", default="", help="more train.py options, e.g. '--pairwise-loss nll'")
    parser.add_argument("--variant-extra", action="append", default=[], metavar="VARIANT=OPTIONS",
                        help="train.py options for one variant only, e.g. 'paper=--labnet-activation relu'")
    parser.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "ssah_wiki_table.json"))
    parser.add_argument("--label", default="", help="name for the --extra options in run names and the table")
    parser.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES, help="tie rule of the figures")
    args = parser.parse_args()

    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    variant_extra = dict(item.split("=", 1) for item in args.variant_extra)
    options = {v: " ".join(filter(None, (args.lr, args.extra, variant_extra.get(v, "")))) for v in variants}
    lr_tag = "-" + "-".join(args.lr.replace("--lr-", "").replace("-exponent", "").split()) if args.lr else ""
    figures, settings = {}, {}
    for variant in variants:
        for k in bits:
            for seed in seeds:
                length = ([] if variant in PRESET_LENGTH
                          else ["--schedule", args.schedule, "--epochs", str(args.epochs)])
                name = (f"{variant}{args.label}{lr_tag}-{k}b-seed{seed}"
                        + ("" if variant in PRESET_LENGTH else f"-{args.schedule}-e{args.epochs}"))
                results_path = os.path.join(args.runs_dir, name, "results.json")
                train_options = ["--dataset", "wiki", "--backbone", "features", "--bits", str(k),
                                 "--variant", variant, "--seed", str(seed), *length,
                                 "--runs-dir", args.runs_dir, "--run-name", name, "--ties", args.ties]
                train_options += options[variant].split()
                planned = planned_settings(train_options)
                settings[variant] = {key: v for key, v in planned.items() if key not in PER_RUN_SETTINGS}
                if os.path.exists(results_path):
                    check_reused_run(os.path.dirname(results_path), planned)
                else:
                    command = [sys.executable, os.path.join(REPO, "train.py"), "--method", "ssah"] + train_options
                    print(" ".join(command[1:]), flush=True)
                    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
                with open(results_path) as f:
                    final = figures_under(os.path.dirname(results_path), json.load(f)["final"], args.ties)
                figures[(variant, k, seed)] = final
                print(f"{variant} {k} bits seed {seed}: i->t {final['i->t']:.4f} t->i {final['t->i']:.4f}",
                      flush=True)

    print(f"\nWikipedia, mAP@all (ties: {args.ties}), schedule {args.schedule}, {args.epochs} epoch(s), "
          f"mean +- std over seeds {seeds}\n")
    table = {"schedule": args.schedule, "epochs": args.epochs, "seeds": seeds, "bits": bits,
             "options": options, "settings": settings, "ties": args.ties, "rows": []}
    print("| variant | direction | " + " | ".join(f"{k} bits" for k in bits) + " |")
    print("|---|---|" + "---|" * len(bits))
    for variant in variants:
        for direction in ("i->t", "t->i"):
            cells = []
            for k in bits:
                values = np.array([figures[(variant, k, s)][direction] for s in seeds])
                cells.append(f"{values.mean():.4f} ± {values.std():.4f}")
                table["rows"].append({"variant": variant, "options": options[variant], "direction": direction,
                                      "bits": k, "mean": float(values.mean()), "std": float(values.std()),
                                      "per_seed": values.tolist()})
            print(f"| {variant} {options[variant]} | {direction} | " + " | ".join(cells) + " |")
    for method, published in PUBLISHED.items():
        for direction in ("i->t", "t->i"):
            print(f"| {method} (published) | {direction} | "
                  + " | ".join(f"{published[direction][k]:.3f}" if k in published[direction] else "-" for k in bits)
                  + " |")
    table["published"] = {m: {d: {str(k): v for k, v in p.items()} for d, p in rows.items()}
                          for m, rows in PUBLISHED.items()}
    if args.json:
        sys.path.insert(0, REPO)
        from benchmarks import results_io
        results_io.write_results(args.json, table)
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
