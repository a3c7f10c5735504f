"""The four tie rules side by side on one SSAH run and one ACMR run (Wikipedia features).

    python benchmarks/tie_rules.py                   # two short runs (a few minutes), then the table
    python benchmarks/tie_rules.py --runs-dir DIR    # runs already in DIR are read, not redone

Trains `python train.py --method ssah --dataset wiki --backbone features --bits 32` and
`python train.py --method acmr --dataset wiki` (defaults otherwise, seed --seed), then
evaluates their exported codes / embeddings under expected, argsort, pessimistic and
optimistic (utils.metrics): SSAH mAP over the whole database and mAP@50 (query vs
database); ACMR the authors' protocol (mAP@50, test vs test, only full batches) and mAP
over the whole database (test queries vs the training pairs). Prints a Markdown table and
writes benchmarks/results/tie_rules.json.
"""
import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)
from utils import metrics  # noqa: E402

RUNS = {
    "ssah": ["--method", "ssah", "--dataset", "wiki", "--backbone", "features", "--bits", "32"],
    "acmr": ["--method", "acmr", "--dataset", "wiki"],
}
DIRECTIONS = ("i->t", "t->i")


def train(name, args):
    """The run folder of `name`, trained unless it already holds codes."""
    folder = os.path.join(args.runs_dir, f"{name}-seed{args.seed}")
    if not os.path.exists(os.path.join(folder, "codes.mat")):
        command = [sys.executable, os.path.join(REPO, "train.py")] + RUNS[name] + [
            "--seed", str(args.seed), "--runs-dir", args.runs_dir, "--run-name", os.path.basename(folder)]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder


def ssah_figures(folder):
    """{(protocol, direction, figure): {rule: value}} of an SSAH run."""
    from eval import Source, evaluate
    source = Source(folder)
    out = {}
    for rule in metrics.TIE_RULES:
        reports = evaluate(source, top_ks=(50,), n_max=1, directions=list(DIRECTIONS), ties=rule)
        for direction, report in reports.items():
            for figure in ("map", "map@50"):
                out.setdefault(("query vs database", direction, figure), {})[rule] = report[figure]
    return out


def acmr_figures(folder):
    """The same for an ACMR run: the authors' protocol and mAP over the whole database."""
    from eval import Source
    source = Source(folder)
    config = source.config
    out = {}
    for direction in DIRECTIONS:
        query, db, query_labels, db_labels = source.direction(direction)
        test_query, test_db = ("Qi", "Qt") if direction == "i->t" else ("Qt", "Qi")
        test_query, test_db = source.fields[test_query], source.fields[test_db]
        n_test = (len(test_query) // config["batch_size"]) * config["batch_size"] \
            if config.get("full_test_batches", True) else len(test_query)
        for rule in metrics.TIE_RULES:
            out.setdefault((f"authors: test vs test ({n_test})", direction, f"map@{config['top_k']}"), {})[rule] = \
                metrics.embedding_map(test_query[:n_test], test_db[:n_test], query_labels[:n_test],
                                      query_labels[:n_test], top_k=config["top_k"], ties=rule)
            out.setdefault(("query vs database", direction, "map"), {})[rule] = \
                metrics.embedding_map(query, db, query_labels, db_labels, ties=rule)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=os.path.join("/tmp", "tie-rules"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "tie_rules.json"))
    args = parser.parse_args(argv)
    folders = {name: train(name, args) for name in RUNS}
    tables = {"ssah": ssah_figures(folders["ssah"]), "acmr": acmr_figures(folders["acmr"])}
    rules = list(metrics.TIE_RULES)
    print(f"\nWikipedia features, seed {args.seed}: every figure under the four tie rules\n")
    print("| method | protocol | direction | figure | " + " | ".join(rules) + " |")
    print("|---|---|---|---|" + "---|" * len(rules))
    rows = []
    for method, figures in tables.items():
        for (protocol, direction, figure), values in sorted(figures.items(), key=lambda item: item[0][::2]):
            print(f"| {method} | {protocol} | {direction} | {figure} | "
                  + " | ".join(f"{values[rule]:.4f}" for rule in rules) + " |")
            rows.append({"method": method, "protocol": protocol, "direction": direction, "figure": figure,
                         **{rule: float(values[rule]) for rule in rules}})
    results_io.write_results(args.out, {"seed": args.seed, "ties": rules, "commands": {k: " ".join(v) for k, v in RUNS.items()},
                                        "runs": folders, "rows": rows})
    print(f"\nwritten {args.out}")
    return rows


if __name__ == "__main__":
    main()
