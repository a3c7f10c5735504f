"""METAH ablation grid: source-only, TAH, TAH+SP, TAH+ME, METAH on every Office-Caltech10
GoogleNet pair and MNIST->USPS, at 16/32/64 bits, over seeds; both retrieval protocols.

    python benchmarks/metah_ablation.py                        # the whole grid (7 x 3 x 5 x 5 runs)
    python benchmarks/metah_ablation.py --pairs A-D,mnist-usps --bits 32 --seeds 0,1
    python benchmarks/metah_ablation.py --table-only           # print the table of what is done

Every finished run is added to --out (JSON, written atomically), and runs already there
are skipped, so a killed grid continues where it stopped. Runs are ordered bits first
(in the order given), then seeds, then pairs, so an unfinished grid still covers every
pair and preset at the first code lengths.

Hyperparameters are fixed in advance for every pair (trainers.metah.Config defaults:
TAH's weights as its program applies them (pairwise 1, target unquantised), q 9, domain 0.8; our alpha = beta = 1 with the entropy weight
ramped by the DANN schedule; SGD momentum 0.9, lr 0.03, 300 iterations, 64 + 64 per
batch). The learning rate and the iteration count were picked on SOURCE validation
queries (validation_fraction 0.2), never on target queries. The `tuned` preset is METAH with the
pair's committed trainers/presets/metah-PAIR.json (python tune.py, scored on source
validation queries): its settings replace the defaults above for that pair. The seed sets the weights,
the batches and the seeded 10% target query split.

--ties (default expected) is the tie rule of the mAP figures (utils.metrics); it is
recorded in --out, and a file of runs under another rule (files from before the setting:
pessimistic) is not extended: give a fresh --out.
"""
import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402
from utils import io  # noqa: E402
from utils.metrics import DEFAULT_TIES, TIE_RULES  # noqa: E402

PAIRS = {
    "A-D": "office-googlenet:amazon->dslr", "A-W": "office-googlenet:amazon->webcam",
    "D-A": "office-googlenet:dslr->amazon", "D-W": "office-googlenet:dslr->webcam",
    "W-A": "office-googlenet:webcam->amazon", "W-D": "office-googlenet:webcam->dslr",
    "mnist-usps": "mnist->usps",
}
PRESET_ORDER = ("source-only", "tah", "tah+sp", "tah+me", "metah")
# METAH with each pair's committed tuned preset: a column of its own once its runs exist.
TUNED = "tuned"
ALL_PRESETS = PRESET_ORDER + (TUNED,)
PROTOCOLS = ("target->target", "target->source")
FIGURES = (("map", "mAP"), ("map_radius2", "mAP@H<=2"), ("precision_radius2", "P@H<=2"))
DEFAULT_OUT = os.path.join("benchmarks", "results", "metah_ablation.json")


def run_key(pair, bits, seed, preset):
    return f"{pair}|{bits}|{seed}|{preset}"


def parse_list(text, kind=str):
    return [kind(part.strip()) for part in text.split(",") if part.strip()]


def convert(current, text):
    """A --set value in the type of the setting it replaces."""
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(current, tuple):
        return tuple(type(current[0])(part) for part in text.split(",")) if current else tuple(text.split(","))
    return type(current)(text)


def tuned_settings(pair_name):
    """The settings of the pair's committed tuned preset (a one-line error naming the tune
    command when the pair has none)."""
    from trainers import metah
    from utils.presets import committed_preset, read_preset
    return read_preset(committed_preset("metah", pair_name, "--preset"), "metah", metah.Config)


def run_grid(args, results):
    import keras
    import tensorflow as tf
    from trainers import metah
    from utils.run import set_seed
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    overrides = dict(arg.split("=", 1) for arg in args.set)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(metah.Config)})
    if unknown:
        raise SystemExit(f"error: --set names unknown settings {unknown}; see python train.py --method metah --help")
    if TUNED in args.presets:
        for pair in args.pairs:
            tuned_settings(PAIRS[pair])  # every pair's preset exists before the grid starts
    todo = [(bits, seed, pair, preset) for bits in args.bits for seed in args.seeds
            for pair in args.pairs for preset in args.presets
            if run_key(pair, bits, seed, preset) not in results["runs"]]
    print(f"{len(todo)} runs to do ({len(results['runs'])} already in {args.out})", flush=True)
    loaded = {}
    started = time.perf_counter()
    for index, (bits, seed, pair, preset) in enumerate(todo):
        config = metah.Config(dataset=PAIRS[pair], bits=bits, seed=seed, preset=preset,
                              eval_every_epoch=False, ties=args.ties, **metah.PRESETS[preset])
        if preset == TUNED:
            config = dataclasses.replace(config, **tuned_settings(PAIRS[pair]))
        config = dataclasses.replace(config, **{k: convert(getattr(config, k), v) for k, v in overrides.items()})
        if (pair, seed) not in loaded:
            loaded.clear()  # one pair in memory at a time
            loaded[(pair, seed)] = metah.load_pair(config)
        set_seed(seed)
        keras.utils.clear_session()
        outcome = metah.fit(config, pair=loaded[(pair, seed)])
        results["runs"][run_key(pair, bits, seed, preset)] = {
            "final": outcome["final"], "seconds": outcome["seconds"], "iterations": outcome["iterations"]}
        results["settings"] = {**{k: v for k, v in dataclasses.asdict(config).items()
                                  if k not in ("dataset", "bits", "seed", "preset", "alpha", "beta",
                                               "domain_weight", "quantise_target")}}
        results_io.write_results(args.out, results, announce=False)
        elapsed = time.perf_counter() - started
        final = outcome["final"]
        print(f"[{index + 1}/{len(todo)} {elapsed / 60:.1f} min] {pair} {bits}b seed {seed} {preset:11s} "
              f"t->t mAP {final['target->target']['map']:.4f}  t->s mAP {final['target->source']['map']:.4f}  "
              f"({outcome['seconds']:.1f} s)", flush=True)


def summarise(results, pairs, bits_list, presets):
    """{(pair, bits, preset, protocol, figure): (mean, std, n)} over the seeds done."""
    table = {}
    for pair in pairs:
        for bits in bits_list:
            for preset in presets:
                finals = [run["final"] for key, run in results["runs"].items()
                          if key.rsplit("|", 3)[0] == pair and key.split("|")[1] == str(bits)
                          and key.split("|")[3] == preset]
                for protocol in PROTOCOLS:
                    for figure, _ in FIGURES:
                        values = [f[protocol][figure] for f in finals]
                        if values:
                            table[(pair, bits, preset, protocol, figure)] = (
                                float(np.mean(values)), float(np.std(values)), len(values))
    return table


def print_table(results, pairs, bits_list, presets):
    table = summarise(results, pairs, bits_list, presets)
    if not table:
        print("no finished runs yet")
        return table
    for protocol in PROTOCOLS:
        for figure, figure_name in FIGURES:
            print(f"\n### {figure_name}, protocol {protocol} "
                  f"(query = target queries, database = {protocol.split('->')[1]} database); mean ± std over seeds\n")
            print("| pair | bits | " + " | ".join(presets) + " | seeds |")
            print("|---|---|" + "---|" * (len(presets) + 1))
            for bits in bits_list:
                for pair in pairs + ["mean"]:
                    if pair == "mean":
                        cells, counts = [], []
                        for preset in presets:
                            means = [table[(p, bits, preset, protocol, figure)][0] for p in pairs
                                     if (p, bits, preset, protocol, figure) in table]
                            cells.append(f"**{np.mean(means):.3f}**" if len(means) == len(pairs) else "-")
                        print(f"| mean of pairs | {bits} | " + " | ".join(cells) + " | |")
                        continue
                    cells, counts = [], []
                    for preset in presets:
                        entry = table.get((pair, bits, preset, protocol, figure))
                        cells.append(f"{entry[0]:.3f} ± {entry[1]:.3f}" if entry else "-")
                        counts.append(entry[2] if entry else 0)
                    if any(counts):
                        print(f"| {pair} | {bits} | " + " | ".join(cells) + f" | {min(counts)}-{max(counts)} |")
    return table


def paired_differences(results, pairs, bits_list, protocol, other):
    """METAH's mAP minus `other`'s, one value per (pair, bits, seed) that both finished."""
    diffs = []
    for key, run in results["runs"].items():
        pair, bits, seed, preset = key.split("|")
        if preset != "metah" or pair not in pairs or int(bits) not in bits_list:
            continue
        other_run = results["runs"].get(run_key(pair, bits, seed, other))
        if other_run:
            diffs.append(run["final"][protocol]["map"] - other_run["final"][protocol]["map"])
    return np.asarray(diffs)


def print_comparisons(results, pairs, bits_list, presets):
    """How often and by how much METAH beats TAH and source-only (paired by pair, bits, seed)."""
    for protocol in PROTOCOLS:
        for other in ("tah", "source-only"):
            diffs = paired_differences(results, pairs, bits_list, protocol, other)
            if len(diffs):
                print(f"METAH - {other:11s} mAP, {protocol}: mean {diffs.mean():+.4f}, median "
                      f"{np.median(diffs):+.4f}, METAH higher in {np.sum(diffs > 0)}/{len(diffs)} paired runs")


def plot(results, pairs, bits_list, presets, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    table = summarise(results, pairs, bits_list, presets)
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(6 * len(PROTOCOLS), 4), sharey=True)
    width = 0.8 / len(presets)
    for ax, protocol in zip(np.atleast_1d(axes), PROTOCOLS):
        for i, preset in enumerate(presets):
            means = [np.mean([table[(p, b, preset, protocol, "map")][0] for p in pairs
                              if (p, b, preset, protocol, "map") in table] or [np.nan]) for b in bits_list]
            ax.bar(np.arange(len(bits_list)) + i * width, means, width, label=preset)
        ax.set_xticks(np.arange(len(bits_list)) + 0.4 - width / 2, [f"{b} bits" for b in bits_list])
        ax.set_title(f"mean mAP over pairs, {protocol}")
        ax.set_ylim(0, 1)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {', '.join(PAIRS)}")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--presets", default=",".join(PRESET_ORDER),
                        help=f"comma list of {', '.join(ALL_PRESETS)} ({TUNED}: needs every pair's preset)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="results JSON (resumed if it exists)")
    parser.add_argument("--plot", default="", help="also write a PNG bar chart of mean mAP here")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a trainers.metah.Config setting for every run (e.g. iterations=600); "
                             "use a fresh --out, since finished runs are not redone")
    parser.add_argument("--table-only", action="store_true", help="only print the table of finished runs")
    parser.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES, help="tie rule of the mAP figures")
    args = parser.parse_args(argv)
    args.pairs, args.presets = parse_list(args.pairs), parse_list(args.presets)
    args.bits, args.seeds = parse_list(args.bits, int), parse_list(args.seeds, int)
    unknown = [p for p in args.pairs if p not in PAIRS] + [p for p in args.presets if p not in ALL_PRESETS]
    if unknown:
        parser.error(f"unknown pairs/presets {unknown}; pairs: {', '.join(PAIRS)}; presets: {', '.join(ALL_PRESETS)}")
    results = io.load_json(args.out) if os.path.exists(args.out) else {"runs": {}, "ties": args.ties}
    results.setdefault("ties", "pessimistic")  # the only rule before --ties
    if not args.table_only and results["runs"] and results["ties"] != args.ties:
        parser.error(f"{args.out} holds runs evaluated with tie rule {results['ties']}; give a fresh --out "
                     f"for --ties {args.ties} (or --ties {results['ties']} to extend it)")
    results["ties"] = results["ties"] if results["runs"] else args.ties
    malformed = [arg for arg in args.set if "=" not in arg]
    if malformed:
        parser.error(f"--set takes FIELD=VALUE (e.g. --set quantise_target=true), not {malformed}")
    overrides = dict(arg.split("=", 1) for arg in args.set)
    if not args.table_only and results["runs"] and results.get("overrides", {}) != overrides:
        parser.error(f"{args.out} holds runs made with --set {results.get('overrides', {})}; give a fresh --out "
                     f"for --set {overrides}")
    results["overrides"] = results.get("overrides", {}) if results["runs"] else overrides
    if not args.table_only:
        run_grid(args, results)
    print(f"tie rule of the mAP figures: {results['ties']}")
    print_table(results, args.pairs, args.bits, args.presets)
    print()
    print_comparisons(results, args.pairs, args.bits, args.presets)
    if args.plot:
        plot(results, args.pairs, args.bits, args.presets, args.plot)


if __name__ == "__main__":
    from utils.errors import run_command_line
    run_command_line(main)
