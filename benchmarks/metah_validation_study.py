"""Does a label-free criterion pick METAH settings that are good on the target?

    python benchmarks/metah_validation_study.py --seeds 0,1        # every pair at 32 bits
    python benchmarks/metah_validation_study.py --pairs A-W --bits 64 --seeds 0,1
    python benchmarks/metah_validation_study.py --table-only

For each pair it retrains every trial that the search behind the pair's committed tuned preset
(trainers/presets/metah-PAIR.json) recorded, with the search's own options (validation part,
floor), plus the source-only, TAH and METAH presets, and records for each run:
- validation: mAP of the held-out SOURCE queries (what tune.py ranks trials by);
- weighted: the same with each query's AP weighted by the density ratio p(target | x) / p(source | x)
  of its input (a logistic-regression domain classifier on the inputs, PCA to 50 dimensions,
  fitted on the source training rows and the unlabelled target rows; self-normalised importance
  weighting, as IWCV/DEV weight source validation towards the target);
- balance: the target prediction balance (the search's floor reads it);
- target: target->target mAP, which the search never reads: here it only judges the criteria.
The summary gives, per pair, the Spearman correlation of each criterion with the target mAP over
the trials, the target mAP of the trial each criterion picks (the search's rule: the highest
validation mAP among trials holding the balance floor; the same with the weighted mAP), the best
target mAP of any trial (no criterion can pick better inside the search's space), that of the
presets, and how TAH's settings score on validation against the picked trial. Runs already in --out are skipped (a killed study continues).
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402
from benchmarks.metah_ablation import PAIRS, parse_list, run_key  # noqa: E402
from utils import io  # noqa: E402

DEFAULT_OUT = os.path.join("benchmarks", "results", "metah_validation_study.json")
PRESETS = ("source-only", "tah", "metah")
PCA_DIMENSIONS = 50
L2 = 0.1  # the domain classifier's weight decay: a separable pair must not give infinite ratios


def domain_ratios(training):
    """Density ratio p(target | x) / p(source | x) * n_source / n_target of every SOURCE row, from
    a logistic regression fitted on the source training rows against the unlabelled target rows
    (the inputs as the network sees them, PCA to PCA_DIMENSIONS, standardised)."""
    pair = training.pair
    source, target = (np.asarray(x, np.float64).reshape(len(x), -1) for x in training.inputs)
    fitted = np.concatenate([source[pair.source_train], target[pair.target_database]])
    centre = fitted.mean(axis=0)
    _, _, axes = np.linalg.svd(fitted - centre, full_matrices=False)
    axes = axes[:PCA_DIMENSIONS].T
    scale = ((fitted - centre) @ axes).std(axis=0) + 1e-9
    z = ((fitted - centre) @ axes) / scale
    y = np.r_[np.zeros(len(pair.source_train)), np.ones(len(pair.target_database))]
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(2000):  # gradient descent on the regularised log loss (convex; 2000 steps converge)
        g = 1.0 / (1.0 + np.exp(-(z @ w + b))) - y
        w -= 0.5 * (z.T @ g / len(y) + L2 * w)
        b -= 0.5 * g.mean()
    logit = (((source - centre) @ axes) / scale) @ w + b
    return np.exp(logit) * len(pair.source_train) / len(pair.target_database)


def one_run(config):
    """Trains `config` once and returns its criteria and target figures (ranked under its tie rule)."""
    from trainers import metah
    from utils.metrics import average_precisions
    from utils.run import set_seed
    set_seed(config.seed)
    start = time.perf_counter()
    training = metah.new_training(config)
    final = metah.fit(config, training=training)["final"]
    pair = training.pair
    source_codes = metah.binary_codes(training.model.encode(training.inputs[0])[0])
    labels = pair.one_hot(pair.source.labels)
    validation, database = pair.source_validation, pair.source_train
    aps = average_precisions(source_codes[validation], source_codes[database], labels[validation],
                             labels[database], ties=config.ties)
    ratios = domain_ratios(training)[validation]
    return {"validation": final["source-validation"]["map"],
            "weighted": float(np.sum(aps * ratios) / np.sum(ratios)),
            "effective_share": float(ratios.sum() ** 2 / np.sum(ratios ** 2) / len(ratios)),
            "balance": final["target_prediction_balance"],
            "target": final["target->target"]["map"],
            "target_classifier_accuracy": final["target_classifier_accuracy"],
            "seconds": time.perf_counter() - start}


def settings_of_pair(dataset, bits, seed):
    """[(label, Config, recorded validation mAP or None)] of a pair: the three presets, then every
    recorded trial of its search (with the validation mAP the search recorded, where `bits` and
    `seed` are the search's); and the search's target balance floor."""
    from trainers import metah
    import tune
    from utils.presets import committed_preset
    search = tune.recorded_search(committed_preset("metah", dataset, "--preset"), bits=bits, seed=seed)
    searched = bits == search.args.bits and seed == search.args.seed
    config = dataclasses.replace(search.config, eval_every_epoch=False)
    settings = [(f"preset:{name}", dataclasses.replace(config, **metah.PRESETS[name]), None) for name in PRESETS]
    settings += [(f"trial:{record['number']}",
                  dataclasses.replace(search.trial_config(record["params"]), eval_every_epoch=False),
                  record["validation_map"] if searched else None)
                 for record in search.trials()]
    return settings, search.floor


def run_study(args, results):
    for bits in args.bits:
        for seed in args.seeds:
            for pair in args.pairs:
                settings, floor = settings_of_pair(PAIRS[pair], bits, seed)
                results["floors"][pair] = floor
                for label, config, recorded in settings:
                    key = run_key(pair, bits, seed, label)
                    if key in results["runs"]:
                        continue
                    results["ties"] = config.ties
                    row = results["runs"][key] = one_run(config)
                    if recorded is not None:  # the search's own run, retrained: it should give the same figure
                        row["search_validation"] = recorded
                    print(f"{key}: validation {row['validation']:.4f}, weighted {row['weighted']:.4f}, balance "
                          f"{row['balance']:.3f}, target {row['target']:.4f} ({row['seconds']:.0f} s)", flush=True)
                    results_io.write_results(args.out, results, announce=False)


def summarise(results):
    """{(pair, bits): {criterion correlations, picks' and presets' target mAP, means over seeds}}."""
    from scipy.stats import spearmanr
    groups = {}
    for key, row in results["runs"].items():
        pair, bits, seed, label = key.split("|")
        groups.setdefault((pair, int(bits)), {}).setdefault(int(seed), {})[label] = row
    summary = {}
    for (pair, bits), seeds in groups.items():
        floor = results["floors"].get(pair, 0.0)
        per_seed = []
        for rows in seeds.values():
            trials = [row for label, row in rows.items() if label.startswith("trial:")]
            if len(trials) < 3:
                continue
            target = [row["target"] for row in trials]
            held = [row for row in trials if row["balance"] >= floor] or trials

            def pick(criterion, figure="target"):
                return max(held, key=lambda row: row[criterion])[figure]
            per_seed.append({
                "trials": len(trials),
                "corr_validation": spearmanr([row["validation"] for row in trials], target)[0],
                "corr_weighted": spearmanr([row["weighted"] for row in trials], target)[0],
                "pick_validation": pick("validation"), "pick_weighted": pick("weighted"),
                "best_trial": max(target),
                **({"tah_validation_gap": rows["preset:tah"]["validation"] - pick("validation", "validation")}
                   if "preset:tah" in rows else {}),
                **{name: rows[f"preset:{name}"]["target"] for name in PRESETS if f"preset:{name}" in rows}})
        if per_seed:
            summary[(pair, bits)] = {key: float(np.mean([s[key] for s in per_seed]))
                                     for key in per_seed[0] if all(key in s for s in per_seed)}
            summary[(pair, bits)]["seeds"] = len(per_seed)
    return summary


COLUMNS = (("trials", "trials", "{:.0f}"), ("corr_validation", "ρ validation", "{:+.2f}"),
           ("corr_weighted", "ρ weighted", "{:+.2f}"), ("pick_validation", "pick: validation", "{:.3f}"),
           ("pick_weighted", "pick: weighted", "{:.3f}"), ("best_trial", "best trial", "{:.3f}"),
           ("tah_validation_gap", "TAH's validation − pick's", "{:+.3f}"),
           ("source-only", "source-only", "{:.3f}"), ("tah", "TAH", "{:.3f}"), ("metah", "METAH", "{:.3f}"),
           ("seeds", "seeds", "{:.0f}"))


def table_rows(results):
    summary = summarise(results)
    rows = []
    for (pair, bits) in sorted(summary, key=lambda k: (k[1], list(PAIRS).index(k[0]))):
        entry = summary[(pair, bits)]
        rows.append([pair, bits] + [form.format(entry[key]) if key in entry else "-" for key, _, form in COLUMNS])
    return ["pair", "bits"] + [title for _, title, _ in COLUMNS], rows


def reproduction_sentence(results):
    """How many retrained trials, at the search's bits and seed, gave the validation mAP the search
    recorded (the study measures the search's own runs)."""
    pairs = [(row["validation"], row["search_validation"]) for row in results["runs"].values()
             if "search_validation" in row]
    if not pairs:
        return "No run here repeats a search's (bits and seed of the search)."
    same = sum(abs(a - b) < 1e-9 for a, b in pairs)
    largest = max(abs(a - b) for a, b in pairs)
    return (f"At the searches' code length and seed, {same} of {len(pairs)} retrained trials give the validation "
            f"mAP their search recorded (largest difference {largest:.4f}).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    parser.add_argument("--bits", default="32")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default=DEFAULT_OUT, help="results JSON (resumed if it exists)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (0: TensorFlow's choice, as tune.py runs; another "
                             "count changes the float sums, so the trials no longer repeat the search's runs)")
    parser.add_argument("--table-only", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args(argv)
    args.pairs, args.bits, args.seeds = parse_list(args.pairs), parse_list(args.bits, int), parse_list(args.seeds, int)
    unknown = [p for p in args.pairs if p not in PAIRS]
    if unknown:
        parser.error(f"unknown pairs {unknown}; pairs: {', '.join(PAIRS)}")
    results = io.load_json(args.out) if os.path.exists(args.out) else {"runs": {}, "floors": {}}
    if not args.table_only:
        if args.threads:
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        run_study(args, results)
        results_io.write_results(args.out, results)
    header, rows = table_rows(results)
    from benchmarks.readme_figures import table
    print(table(header, rows))
    print(reproduction_sentence(results))


if __name__ == "__main__":
    from utils.errors import run_command_line
    run_command_line(main)
