"""The figure blocks of README.md and docs/*.md, rendered from the benchmarks' results files.

A figure block is

    <!-- figures: RENDERER FILE [FILE ...] -->
    ...markdown rendered from the FILEs...
    <!-- /figures -->

RENDERER names a function of RENDERERS (optionally `NAME:ARGUMENT`); it receives the loaded
results files in the order given and returns the block's markdown; `render_block` adds one
provenance line per results file (machine, commit, date, command: results_io.describe). A FILE
written `?FILE` is optional: the renderer receives None when it is absent (and a file without a
`provenance` block, such as benchmarks/paper_tables.json, adds no provenance line).
benchmarks/check_readme.py compares every block with this rendering (and --write rewrites
the blocks from it).
"""
import os
import shlex
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import results_io  # noqa: E402
from trainers.registry import METHODS  # noqa: E402
from utils import io  # noqa: E402

DIRECTIONS = ("i->t", "t->i")


def table(header, rows):
    """Markdown table from a header list and rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["|" + "|".join(f" {c} " if str(c) else " " for c in row) + "|" for row in rows])


def mean_std(values, ddof=0, digits=3):
    values = np.asarray(values, float)
    spread = values.std(ddof=ddof) if len(values) > ddof else 0.0
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def option_pairs(options):
    """'--a 1 --b x --flag' -> ['--a 1', '--b x', '--flag']."""
    pairs = []
    for token in shlex.split(options or ""):
        if token.startswith("--") or not pairs:
            pairs.append(token)
        else:
            pairs[-1] += " " + token
    return pairs


def tie_rule(f):
    """The tie rule of a results file's mAPs: its `ties` (or its settings'); a file that records
    none was written before `--ties` existed, when every figure was pessimistic."""
    return f.get("ties") or (f.get("settings") or {}).get("ties") or "pessimistic"


def tie_rule_sentence(*files, labels=None):
    """'Tie rule: `R`.' or, when the files differ, each rule with the label of its file."""
    rules = [tie_rule(f) for f in files]
    if len(set(rules)) == 1:
        return f"Tie rule: `{rules[0]}`."
    return "Tie rules: " + ", ".join(f"`{r}` ({label})" for r, label in zip(rules, labels)) + "."


# ---------------------------------------------------------------- SSAH

def ssah_wiki_table(_, *files):
    """benchmarks/ssah_wiki_table.py: mean ± std over seeds per variant, direction and code length.
    A row is labelled with its variant plus the train.py options that not every row shares."""
    groups = [(f, variant, options) for f in files for variant, options in f["options"].items()]
    common = set.intersection(*(set(option_pairs(o)) for _, _, o in groups))
    bits = files[0]["bits"]
    rows = []
    for f, variant, options in groups:
        extra = [p for p in option_pairs(options) if p not in common]
        label = variant + (f", `{' '.join(extra)}`" if extra else "")
        for direction in DIRECTIONS:
            by_bits = {r["bits"]: r for r in f["rows"] if r["variant"] == variant and r["direction"] == direction}
            rows.append([label, direction] + [f"{by_bits[k]['mean']:.3f} ± {by_bits[k]['std']:.3f}" for k in bits])
    labels = [", ".join(f["options"]) for f in files]
    return (table(["variant", "direction"] + [f"{k} bits" for k in bits], rows)
            + "\n\n" + tie_rule_sentence(*files, labels=labels))


def ssah_wiki_causes(_, f):
    """benchmarks/ssah_wiki_causes.py: one changed setting per row, mAP and constant database bits."""
    from benchmarks.ssah_wiki_causes import ROWS
    rows = []
    for name in sorted(f["rows"], key=lambda n: list(ROWS).index(n) if n in ROWS else len(ROWS)):
        row = f["rows"][name]
        m = row["mean"]
        rows.append([name, f"`{' '.join(row['options'])}`" if row["options"] else "(train.py's wiki defaults)",
                     f"{m['i->t']:.3f}", f"{m['t->i']:.3f}", f"{m['t->t']:.3f}",
                     f"{m['constant_bits_image']:.1f} / {m['constant_bits_text']:.1f}", len(row["seeds"])])
    return (table(["row", "options", "i->t", "t->i", "t->t", f"constant bits of {f['bits']}, image / text", "seeds"],
                  rows) + "\n\n" + tie_rule_sentence(f))


def ssah_vs_acmr(_, ssah, acmr):
    """SSAH's 16-bit original row against ACMR's mAP over all (same queries and database)."""
    picked = {r["direction"]: r["mean"] for r in ssah["rows"] if r["variant"] == "original" and r["bits"] == 16}
    seeds = len(ssah["seeds"])
    average = (picked["i->t"] + picked["t->i"]) / 2
    acmr_cells = []
    for variant in ("original", "paper"):
        rows = [r for r in acmr["rows"] if r["variant"] == variant]
        acmr_cells.append(" / ".join(f"{np.mean([r[f'map_test_vs_database/{d}'] for r in rows]):.3f}"
                                     for d in ("i->t", "t->i", "average")) + f" ({variant})")
    return (f"SSAH original variant, 16-bit binary codes, {seeds} seeds: i->t {picked['i->t']:.3f}, "
            f"t->i {picked['t->i']:.3f}, average {average:.3f}, against ACMR's {acmr_cells[0]} and "
            f"{acmr_cells[1]} with real-valued embeddings and Euclidean ranking. "
            + tie_rule_sentence(ssah, acmr, labels=("SSAH", "ACMR")))


def ssah_mirflickr_tags(_, f):
    """benchmarks/ssah_mirflickr_tags.py: the four directions against random codes."""
    s, final = f["settings"], f["final"]
    epochs = f"{s['epochs']} epoch" + ("s" if s["epochs"] != 1 else "")
    return (f"`{s['schedule']}` schedule, {epochs}, seed {s['seed']}, {s['bits']} bits: "
            + ", ".join(f"{d} {final[d]:.3f}" for d in ("t->t", "i->t", "t->i", "i->i"))
            + f"; random codes on the same split: {f['random_codes_map']:.3f}. " + tie_rule_sentence(f))


def ssah_step_precision(_, f):
    """benchmarks/ssah_step_speed.py: each step per precision, its GFLOP/s as a fraction of the same
    run's float32 matmul rate, the speed-up over the first precision, and (--profile) where the
    time goes."""
    matmul, precisions = f["matmul"], f["settings"]["precision"]
    runs = {(run["trunk"], run["precision"]): run for run in f["runs"]}
    header = ["trunk (batch)", "step", "GFLOP / update"]
    for i, precision in enumerate(precisions):
        header += [f"{precision}: s", "of matmul"] + (["speed-up"] if i else [])
    rows = []
    for trunk in f["settings"]["trunk"]:
        base = runs[(trunk, precisions[0])]
        for k, step in enumerate(base["steps"]):
            row = [f"{trunk} ({base['batch']})", step["step"], f"{step['gflop']:.3g}"]
            for i, precision in enumerate(precisions):
                other = runs[(trunk, precision)]["steps"][k]
                rate = other["gflop"] / other["median_seconds"]
                row += [f"{other['median_seconds']:.3g}", f"{rate / matmul['float32_gflops']:.0%}"]
                if i:
                    row.append(f"{step['median_seconds'] / other['median_seconds']:.2f}x")
            rows.append(row)
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in f.get("cpu_flags", {}).items())
    text = (table(header, rows)
            + f"\n\n{matmul['size']}^3 matmul in the same run: float32 {matmul['float32_gflops']:.1f} GFLOP/s, "
              f"bfloat16 {matmul['bfloat16_gflops']:.1f} GFLOP/s ({f['device']}; CPU flags: {flags}; "
              f"TF_ENABLE_ONEDNN_OPTS={f['onednn']}).")
    for run in f["runs"]:
        if run.get("monitoring"):
            text += ("\n\nMonitoring loss over all n items (once per checked early-stop pass): "
                     + ", ".join(f"{m['net']} {m['seconds']:.2f} s" for m in run["monitoring"]) + ".")
        for step in run["steps"]:
            if step.get("profile_seconds_by_op"):
                # the costliest kinds (a results file is written with its keys sorted by name)
                top = sorted(step["profile_seconds_by_op"].items(), key=lambda kv: -kv[1])[:6]
                text += (f"\n\nWhere a {run['trunk']} {step['step']} update's {step['median_seconds']:.3g} s go "
                         f"({run['precision']}, op time summed over both threads): "
                         + ", ".join(f"{kind} {seconds:.3g} s" for kind, seconds in top) + ".")
    return text


def stream_memory(_, *files):
    """benchmarks/stream_memory.py, one row per file (the first one's peak against the 2 GB target)."""
    rows = []
    for i, f in enumerate(files):
        peak = f"{f['peak_rss_mb']:,.0f} MB"
        rows.append([f"{f['images']:,}", f"{f['file_mb']:,.0f} MB", f"{f['baseline_rss_mb']:,.0f} MB",
                     f"**{peak}** (target: under 2 GB)" if i == 0 else peak, f"{f['images_per_second']:,.0f}"])
    return table(["images in the file", "file size", "RSS after loading TensorFlow and the dataset",
                  "peak RSS while streaming", "images/s"], rows)


# ---------------------------------------------------------------- ACMR

ACMR_PROTOCOLS = (("map_top_k_test_vs_test", "mAP@50, test vs test (640 pairs)"),
                  ("map_test_vs_database", "mAP over all, test vs database = training pairs (693 x 2,173)"))


# The paper's figures as printed, under its labels (benchmarks/acmr_wiki_table.py prints the same caveat):
# the program's own deep-feature output has them the other way round, see docs/acmr.md.
ACMR_PAPER_ROW = "the paper's Table (shallow features; its direction labels appear swapped, see below)"


def acmr_wiki_table(argument, f):
    """benchmarks/acmr_wiki_table.py: mean ± std (ddof 1) over seeds, both protocols, and the paper's
    row (`acmr_wiki_table:no-paper` leaves it out: a page prints it once)."""
    variants = list(dict.fromkeys(r["variant"] for r in f["rows"]))
    seeds = sorted({r["seed"] for r in f["rows"]})
    rows = []
    for variant in variants:
        picked = [r for r in f["rows"] if r["variant"] == variant]
        for protocol, label in ACMR_PROTOCOLS:
            rows.append([variant, label] + [mean_std([r[f"{protocol}/{d}"] for r in picked], ddof=1)
                                            for d in ("i->t", "t->i", "average")])
    paper = f["paper_shallow"]
    if argument != "no-paper":
        rows.append([ACMR_PAPER_ROW, "mAP, its own 1,300 / 1,566 split"]
                    + [f"{paper[d]:.3f}" for d in ("i->t", "t->i", "average")])
    times = ", ".join(f"{np.mean([r['seconds'] for r in f['rows'] if r['variant'] == v]):.0f} s ({v})"
                      for v in variants)
    return (table([f"variant ({len(seeds)} seeds, mean ± std)", "protocol", "i->t", "t->i", "average"], rows)
            + f"\n\nSeeds {', '.join(map(str, seeds))}; mean wall time per run: {times}. " + tie_rule_sentence(f))


MODALITY_GAME_SETTINGS = {
    "original": "the program", "paper": "lambda 0.05, k = 5, classifier lr 1e-4, without L_reg",
    "paper-no-adv": "the same, lambda 0", "fast-adv": "k = 1, classifier lr 1e-2, lambda 1",
    "fast-no-adv": "the same, lambda 0",
}


def test_protocol_map(final_map):
    """ACMR's figures under the authors' protocol (mAP@top_k, test vs test): named
    map_top_k_test_vs_test now, 'authors' in files written before the rename."""
    from trainers.acmr import TEST_PROTOCOL
    return final_map[TEST_PROTOCOL] if TEST_PROTOCOL in final_map else final_map["authors"]


def acmr_modality_game(_, f):
    """benchmarks/acmr_modality_game.py: live accuracy, separability, fresh classifier, mAP per run."""
    def pick(values, indices):
        return " / ".join(f"{values[min(i, len(values) - 1)]:.2f}" for i in indices)

    rows = []
    order = list(MODALITY_GAME_SETTINGS) + sorted(set(f["runs"]) - set(MODALITY_GAME_SETTINGS))
    for name in [n for n in order if n in f["runs"]]:
        c = f["runs"][name]
        acc, sep = c["epoch_accuracy"], c["separability"]
        rows.append([name, MODALITY_GAME_SETTINGS.get(name, c["variant"]), pick(acc, (0, 1, 4, len(acc) - 1)),
                     f"{c['live_test'][-1]:.2f}", pick(sep, (0, 1, 5, len(sep) - 1)),
                     f"{c['frozen_classifier_test']:.2f} ({c['classifier_updates']:,})",
                     f"{test_protocol_map(c['final_map'])['average']:.3f}"])
    return (table(["run", "settings", "live accuracy, batch mean, epoch 1 / 2 / 5 / 50", "live on test, end",
                   "separability: init / ep 1 / 5 / 50",
                   "fresh classifier, same settings and updates, frozen final embeddings", "mAP@50 avg"], rows)
            + f"\n\nSeed {f['seed']}, {len(acc)} epochs; wall time of the "
              f"{len(rows)} runs: {sum(c['seconds'] for c in f['runs'].values()) / 60:.0f} min in all. "
            + tie_rule_sentence(f))


# ---------------------------------------------------------------- METAH

def metah_ablation(protocol, f):
    """benchmarks/metah_ablation.py: mAP mean ± std over seeds per pair, code length and preset."""
    from benchmarks.metah_ablation import ALL_PRESETS, PAIRS, summarise
    keys = [k.split("|") for k in f["runs"]]
    presets = [p for p in ALL_PRESETS if any(k[3] == p for k in keys)]  # tuned once its runs exist
    pairs = [p for p in PAIRS if any(k[0] == p for k in keys)]
    bits_list = sorted({int(k[1]) for k in keys})
    summary = summarise(f, pairs, bits_list, presets)
    rows = []
    for bits in bits_list:
        for pair in pairs:
            entries = [summary[(pair, bits, preset, protocol, "map")] for preset in presets]
            counts = sorted({e[2] for e in entries})
            rows.append([pair, bits] + [f"{e[0]:.3f} ± {e[1]:.3f}" for e in entries]
                        + ["-".join(map(str, counts))])
        means = [np.mean([summary[(p, bits, preset, protocol, "map")][0] for p in pairs]) for preset in presets]
        rows.append(["mean of pairs", bits] + [f"**{m:.3f}**" for m in means] + [""])
    return table(["pair", "bits", *presets, "seeds"], rows) + "\n\n" + tie_rule_sentence(f)


def metah_comparisons(_, f):
    """benchmarks/metah_ablation.py: METAH against TAH and source-only, paired by pair, bits and seed."""
    from benchmarks.metah_ablation import PAIRS, PROTOCOLS, paired_differences
    bits_list = sorted({int(k.split("|")[1]) for k in f["runs"]})
    lines = []
    for protocol in PROTOCOLS:
        parts = []
        for other, name in (("tah", "TAH"), ("source-only", "source-only")):
            d = paired_differences(f, list(PAIRS), bits_list, protocol, other)
            if not len(d):
                continue
            parts.append(f"minus {name} {d.mean():+.3f} on average (median {np.median(d):+.3f}; METAH higher "
                         f"in {int(np.sum(d > 0))} of {len(d)} paired runs)")
        lines.append(f"- {protocol.replace('->', ' -> ')}: METAH " + ", ".join(parts))
    return "\n".join(lines) + "\n\n" + tie_rule_sentence(f)


# What each set of --set overrides of benchmarks/metah_ablation.py changes in the `tah` preset.
TAH_BASES = {
    (): "the program's (target unquantised, pairwise 1)",
    (("pairwise_weight", "6"), ("quantise_target", "true")): "the previous base",
    (("pairwise_weight", "6"),): "only the pairwise weight of the previous base",
    (("quantise_target", "true"),): "only the target quantisation of the previous base",
    (("pairwise_gradient_accumulates", "true"),): "the program's, pairwise gradient accumulating",
}


def train_options(overrides):
    """metah_ablation's --set FIELD=VALUE overrides as train.py options."""
    return " ".join(f"--{field.replace('_', '-')} {value}" for field, value in sorted(overrides.items()))


def tah_base(_, *files):
    """benchmarks/metah_ablation.py, one file per base (its --set overrides), one preset, one code
    length: mean over seeds of target->target / target->source mAP and target->target mAP within
    Hamming radius 2 per pair; then the first file minus the second in target->target mAP."""
    from benchmarks.metah_ablation import PAIRS
    keys = [key.split("|") for f in files for key in f["runs"]]
    pairs = [p for p in PAIRS if any(k[0] == p for k in keys)]
    (bits,), (preset,) = {k[1] for k in keys}, {k[3] for k in keys}
    seeds = sorted({int(k[2]) for k in keys})

    def mean(f, pair, protocol, figure):
        values = [run["final"][protocol][figure] for key, run in f["runs"].items() if key.split("|")[0] == pair]
        if len(values) != len(seeds):
            raise ValueError(f"{pair}: {len(values)} runs where the other cells have {len(seeds)} seeds")
        return float(np.mean(values))

    def title(pair):
        return "mnist->usps" if pair == "mnist-usps" else f"office-googlenet {pair.replace('-', '->')}"

    rows, names = [], []
    for f in files:
        overrides = f.get("overrides", {})
        names.append(TAH_BASES.get(tuple(sorted((k, str(v).lower()) for k, v in overrides.items())), "other"))
        options = "`" + " ".join(filter(None, [f"--preset {preset}", train_options(overrides)])) + "`"
        rows.append([names[-1], options] + [" / ".join(f"{mean(f, pair, *figure):.3f}" for figure in (
            ("target->target", "map"), ("target->source", "map"), ("target->target", "map_radius2")))
            for pair in pairs])
    lines = [f"`{preset}` preset, {bits} bits, seeds {', '.join(map(str, seeds))}; mean over seeds of mAP "
             f"target->target / target->source / target->target within Hamming radius 2:", "",
             table(["base", "options", *map(title, pairs)], rows)]
    if len(files) > 1:
        lines += ["", f"{names[0][0].upper() + names[0][1:]} minus {names[1]}, target->target mAP: " + ", ".join(
            f"{mean(files[0], p, 'target->target', 'map') - mean(files[1], p, 'target->target', 'map'):+.3f} "
            f"({title(p)})" for p in pairs) + ". " + tie_rule_sentence(*files, labels=names)]
    else:
        lines += ["", tie_rule_sentence(*files)]
    return "\n".join(lines)


def metah_speed(_, f):
    """benchmarks/metah_speed.py: one fresh process per row."""
    rows = [[r["pair"], r["bits"], r["preset"], f"{r['seconds_per_epoch']:.2f}", f"{r['ms_per_iteration']:.1f}",
             f"{r['train_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in f["rows"]]
    iterations = sorted({r["iterations"] for r in f["rows"]})
    return table(["pair", "bits", "preset", "s / epoch", "ms / iteration",
                  f"train s ({', '.join(map(str, iterations))} it.)", "peak RSS MB"], rows)


def metah_validation_study(_, *files):
    """benchmarks/metah_validation_study.py: each file's rows (means over its seeds) in one table."""
    from benchmarks.metah_validation_study import reproduction_sentence, table_rows
    header, rows = table_rows(files[0])
    for f in files[1:]:
        rows += table_rows(f)[1]
    return (table(header, rows) + "\n\n" + tie_rule_sentence(*files) + " "
            + reproduction_sentence({"runs": {key: row for f in files for key, row in f["runs"].items()}}))


# ---------------------------------------------------------------- evaluation and quick start

def tie_rules(_, f):
    """benchmarks/tie_rules.py: every figure of one SSAH and one ACMR run under each tie rule."""
    rules = list(f["ties"])
    rows = [[r["method"], r["protocol"], r["direction"], r["figure"]] + [f"{r[rule]:.3f}" for rule in rules]
            for r in f["rows"]]
    runs = "; ".join(f"{method.upper()}: `python train.py {command} --seed {f['seed']}`"
                     for method, command in f["commands"].items())
    return (f"Wikipedia features, seed {f['seed']}, every figure under the {len(rules)} tie rules ({runs}):\n\n"
            + table(["method", "protocol", "direction", "figure", *(f"`{rule}`" for rule in rules)], rows))


def eval_speed(_, f):
    """benchmarks/eval_speed.py: ours against the authors' calc_map loop at MIRFLICKR-25K size
    (speed-ups under `expected`, equality under `argsort`), then NUS-WIDE size when measured."""
    est = " (est.)" if f["quick"] else ""
    repeats = f.get("repeats", {"loops": 2, "ours": 5})
    rows = []
    for r in f["mirflickr"]:
        loop = r["authors_calc_map_s"]
        rows.append([r["bits"], f"{loop:.2f}{est}", f"{r['expected_s']:.3f}", f"{loop / r['expected_s']:.0f}x",
                     f"{r['expected_one_thread_s']:.3f}", f"{loop / r['expected_one_thread_s']:.0f}x",
                     f"{r['argsort_s']:.2f}", f"{r['argsort_minus_calc_map']:.1e}",
                     f"{r['calc_map_value']:.4f} / {r['expected_value']:.4f}", f"{r['lexsort_loop_s']:.2f}{est}",
                     f"{r['pessimistic_s']:.3f}", f"{r['pessimistic_minus_lexsort_loop']:.1e}",
                     f"{r['full_report_expected_s']:.2f}"])
    speed_ups = [r["authors_calc_map_s"] / r["expected_s"] for r in f["mirflickr"]]
    single = [r["authors_calc_map_s"] / r["expected_one_thread_s"] for r in f["mirflickr"]]
    quick = " The loops ran on 200 queries and are scaled to 2,000 (`--quick`)." if f["quick"] else ""
    parts = [
        f"MIRFLICKR-25K size: 2,000 queries x 18,015 items, {f['labels']}, {f['cpu_cores']} CPU cores, "
        f"numpy {f['numpy']}, Hamming kernel: {f['kernel']}, load average {f['load_average']:.1f} at the start; "
        f"times are the best of {repeats['loops']} for the loops, of {repeats['ours']} for ours.{quick} "
        "Tie rules: `expected` for the speed-ups, `argsort` for equality with the calc_map loop, "
        "`pessimistic` for equality with the lexsort loop.",
        table(["bits", "authors' calc_map loop (s)", "ours, `expected` (s)", "speed-up", "ours, `expected`, 1 thread (s)",
               "speed-up, 1 thread", "ours, `argsort` (s)", "abs(argsort - calc_map)", "mAP calc_map / expected",
               "lexsort loop (s)", "ours, `pessimistic` (s)", "abs(pessimistic - lexsort loop)",
               "full report, `expected` (s)"], rows),
        f"Speed-up against the authors' calc_map loop under `expected`: {min(speed_ups):.0f}-{max(speed_ups):.0f}x "
        f"(one thread: {min(single):.0f}-{max(single):.0f}x)."]
    if f.get("nuswide"):
        parts += [f"NUS-WIDE size: 2,100 queries x 193,734 items, random 21-class multi-hot labels, ours alone "
                  "(`expected`)",
                  table(["bits", "kernel", "mAP@all (s)", "full report (s)", "peak traced memory during the call (MB)",
                         "inputs (MB)", "ru_maxrss (MB)"],
                        [[r["bits"], r["kernel"], f"{r['map_s']:.2f}", f"{r['full_report_s']:.2f}",
                          f"{r['peak_traced_mb']:.1f}", f"{r['inputs_mb']:.1f}", f"{r['ru_maxrss_mb']:.0f}"]
                         for r in f["nuswide"]])]
    else:
        parts.append("NUS-WIDE size: not measured in this results file (`--skip-nuswide`).")
    return "\n\n".join(parts)


def quickstart(_, f):
    """benchmarks/quickstart.py: each quick-start command, its wall time and its final figures."""
    rows = []
    for run in f["runs"]:
        figures = ", ".join(f"{d} {run['final'][d]:.3f}" for d in DIRECTIONS if d in run["final"])
        rows.append([f"`{run['readme_command']}`", f"{run['seconds']:.0f}", figures])
    return table(["command", "wall time (s)", "printed mAP"], rows)


def loop_overhead(_, f):
    """benchmarks/loop_overhead.py: training updates per wall-clock second and per CPU-second of
    each method, before and after the shared loop, each label with the commit it measured. A
    wall-clock difference that came out negative (the machine's load moved between the two
    timed runs) is shown as such, not as a figure."""
    labels = f["labels"]
    names = [name for name in ("before", "after") if name in labels]

    def commit(name):
        label = labels[name]
        return (label.get("code_commit") or label["provenance"].get("commit") or "?")[:7]

    def cell(value):
        return "not measured" if value is None else (f"{value:.0f}" if value > 0 else "negative (load)")
    header = ["method"] + [f"updates/s {n} ({commit(n)})" for n in names] + \
        [f"updates per CPU-second {n}" for n in names] + \
        (["after / before (updates/s)", "after / before (per CPU-second)"] if len(names) == 2 else [])

    def ratio(pair):
        return f"{pair[1] / pair[0]:.2f}x" if pair[0] and pair[1] and pair[0] > 0 and pair[1] > 0 else ""
    rows = []
    for method in METHODS:
        figures = [labels[n]["methods"].get(method, {}) for n in names]
        wall = [fig.get("updates_per_second") for fig in figures]
        cpu = [fig.get("updates_per_cpu_second") for fig in figures]
        row = [method.upper()] + [cell(v) for v in wall] + [cell(v) for v in cpu]
        if len(names) == 2:
            row += [ratio(wall), ratio(cpu)]
        rows.append(row)
    return table(header, rows)


# ---------------------------------------------------------------- front page

OPTIONAL = "?"  # a block FILE written ?FILE may be absent (the renderer then receives None)
DOMAIN_INITIALS = {"amazon": "a", "dslr": "d", "webcam": "w", "caltech": "c", "caltech10": "c"}
DIRECTION_NAMES = {"img->txt": "i->t", "txt->img": "t->i", "image->text": "i->t", "text->image": "t->i"}


def ssah_scale(_, f):
    """benchmarks/ssah_scale.py: each figure at every n and its exponent of growth in n (the file's)."""
    points, batch = f["points"], f["settings"]["batch"]
    figures = [("draws of one pass (s)", lambda p: p["draw_pass_seconds"]),
               ("draws per batch (s)", lambda p: p["draw_pass_seconds"] / max(1, p["n"] // batch)),
               ("monitoring check (s)", lambda p: p["monitor_seconds"]),
               ("monitoring peak above data (MB)", lambda p: p["monitor_peak_above_data_mb"]),
               ("peak RSS (MB)", lambda p: p["peak_mb"])] + [
              (f"{step} update (s)", lambda p, step=step: p["step_seconds"].get(step))
              for step in ("lab", "dis", "img", "txt")]
    def figure(v):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"
    rows = []
    for name, value in figures:
        exponent = f["exponents"].get(name)
        rows.append([name] + ["-" if value(p) is None else figure(value(p)) for p in points]
                    + ["" if exponent is None else f"{exponent:.2f}"])
    return table(["figure"] + [f"n = {p['n']:,}" for p in points] + ["exponent in n"], rows)


def ssah_epoch_speed(_, f):
    """benchmarks/ssah_epoch_speed.py: one whole SSAH epoch per image storage kind against the epoch with
    the images in memory, and the ImgNet and discriminator updates against the trunk's own work."""
    rows = []
    order = [k for k in str(f.get("settings", {}).get("kinds", "")).split(",") if k in f["kinds"]]
    for kind in order + sorted(k for k in f["kinds"] if k not in order):  # the order they were run in
        entry = f["kinds"][kind]
        img, dis = entry["steps"]["img"]["mean_seconds"], entry["steps"]["dis"]["mean_seconds"]
        rows.append([kind, entry["read_plan"] or "no reads", f"{entry['epoch_seconds']:.1f}",
                     f"{entry['vs_memory']:.2f}x" if entry.get("vs_memory") else "", f"{entry['read_seconds']:.1f}",
                     f"{img:.3f}" if img else "", f"{entry['img_vs_reference']:.2f}x" if img else "",
                     f"{dis:.3f}" if dis else "", f"{entry['dis_vs_trunk_forward']:.2f}x" if dis else ""])
    reference = f["reference"]
    return (table(["images", "read plan", "epoch (s)", "vs in memory", "reads (s)", "ImgNet update (s)",
                   "vs trunk f+b + all-n term", "discriminator update (s)", "vs trunk forward"], rows)
            + f"\n\nOn one batch in the same run: CNN-F forward + backward {reference['trunk_forward_backward']:.3f} s, "
              f"forward {reference['trunk_forward']:.3f} s; the ImgNet step's all-n discriminator term "
              f"{reference['all_n_discriminator_term']:.3f} s.")


def dataset_key(name):
    """A dataset or domain pair as one comparable key: 'wiki', 'flickr', 'a-d', 'mnist-usps'
    ('Wikipedia', 'office-googlenet:amazon->dslr', 'A->D' and 'A-D' all land on the project's key)."""
    name = str(name).strip().lower()
    name = {"wikipedia": "wiki", "mirflickr-25k": "flickr", "mirflickr25k": "flickr", "mirflickr": "flickr",
            "nus-wide": "nuswide", "ms-coco": "coco", "mscoco": "coco"}.get(name, name)
    name = name.split(":", 1)[-1].replace("->", "-").replace(" ", "")
    if "-" in name:
        source, _, target = name.partition("-")
        name = f"{DOMAIN_INITIALS.get(source, source)}-{DOMAIN_INITIALS.get(target, target)}"
    return name


def public_where(where):
    """A source's address as a reader of the front page can follow it: a path into the project's
    shared folder (outside a user's clone) is left out, its description kept."""
    if not where or not str(where).startswith("../shared/"):
        return where
    rest = str(where).split(None, 1)[1] if len(str(where).split(None, 1)) > 1 else ""
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest


class PaperFigures:
    """The papers' published figures (benchmarks/paper_tables.json: {"entries": [{"method", "dataset",
    "direction", "bits", "metric", "value", "source": {"paper", "table", "where"}, "protocol"}]}), looked
    up by method, dataset, direction and code length; each cell cites its source as a numbered note.
    Without the file every paper cell is "-"; with it, a figure the papers do not report is
    "not reported"."""

    def __init__(self, data):
        self.present = data is not None
        self.entries = list((data or {}).get("entries", []))
        self.used, self.notes = set(), []

    def _matches(self, method, dataset, direction, bits):
        return [i for i, e in enumerate(self.entries)
                if str(e.get("method", "")).lower() == method and dataset_key(e.get("dataset", "")) == dataset
                and DIRECTION_NAMES.get(str(e.get("direction", "")).lower(), str(e.get("direction", "")).lower())
                == direction and (e.get("bits") or None) == (bits or None)]

    def _note(self, entry):
        source = entry.get("source") or {}
        # The protocol of each figure is in the file and in `eval.py --against paper`; a note names the source.
        text = ", ".join(str(x) for x in (source.get("paper"), source.get("table"), public_where(source.get("where")))
                         if x)
        if text not in self.notes:
            self.notes.append(text)
        return self.notes.index(text) + 1

    def cell(self, method, dataset, direction, bits=None, metric=None):
        """The paper's figure of this metric with its note number (a figure of another metric
        is a different protocol: "not reported")."""
        if not self.present:
            return "-"
        found = [i for i in self._matches(method, dataset, direction, bits)
                 if str(self.entries[i].get("metric", "")).lower() == (metric or "map").lower()]
        if not found:
            return "not reported"
        i = found[0]
        self.used.add(i)
        return f"{float(self.entries[i]['value']):.3f} [{self._note(self.entries[i])}]"

    def unplaced(self, method):
        """One line per dataset and direction of the method's figures that no row shows."""
        groups = {}
        for i, e in enumerate(self.entries):
            if i not in self.used and str(e.get("method", "")).lower() == method:
                key = (str(e.get("dataset")), str((e.get("source") or {}).get("table", "")), str(e.get("direction")),
                       str(e.get("metric", "mAP")))
                groups.setdefault(key, []).append(e)
        lines = []
        for (dataset, source_table, direction, metric), entries in groups.items():
            entries.sort(key=lambda e: e.get("bits") or 0)
            figures = " / ".join(f"{float(e['value']):.3f}" for e in entries)
            bits = " / ".join(str(e["bits"]) for e in entries if e.get("bits"))
            notes = ", ".join(dict.fromkeys(f"[{self._note(e)}]" for e in entries))
            lines.append(f"- {dataset} {direction}, {metric}" + (f" ({source_table})" if source_table else "")
                         + f": {figures}" + (f" at {bits} bits" if bits else "")
                         + f" {notes}")
        return lines

    def footer(self):
        if not self.present:
            return "Paper column: `benchmarks/paper_tables.json` is absent, so no published figure is shown (-)."
        return "Sources: " + "; ".join(f"[{n}] {text}" for n, text in enumerate(self.notes, 1)) + "." \
            if self.notes else "Sources: none of the papers' figures matches these rows."


def seed_count(values):
    return f"{len(values)} seed" + ("s" if len(values) != 1 else "")


def results_summary(_, ssah, ssah_tuned, acmr, acmr_tuned, metah, paper=None):
    """The front page's summary: per method the paper's figure (benchmarks/paper_tables.json, optional),
    the authors' program, the port's original variant and the tuned preset, each table captioned
    with its data, protocol, seeds and results files."""
    papers = PaperFigures(paper)
    parts = []

    def ssah_cell(f, variant, direction, bits):
        r = next(r for r in f["rows"] if r["variant"] == variant and r["direction"] == direction and r["bits"] == bits)
        return f"{r['mean']:.3f} ± {r['std']:.3f}"
    rows = [[d, bits, papers.cell("ssah", "wiki", d, bits, "mAP"), "not run",
             ssah_cell(ssah, "original", d, bits), ssah_cell(ssah_tuned, "tuned", d, bits)]
            for bits in ssah["bits"] for d in DIRECTIONS]
    parts.append(f"**SSAH**, Wikipedia (128-d SIFT / 10-d LDA features, feature trunk), mAP over the whole "
                 f"database (693 test queries x 2,173 training pairs), mean ± std over "
                 f"{seed_count(ssah['seeds'])} (original) and {seed_count(ssah_tuned['seeds'])} (tuned); "
                 f"`ssah_wiki_table.json`, `ssah_wiki_tuned.json`:\n\n"
                 + table(["direction", "bits", "paper", "authors' program", "original variant", "tuned preset"], rows))

    def acmr_cell(f, variant, protocol, direction):
        values = [r[f"{protocol}/{direction}"] for r in f["rows"] if r["variant"] == variant]
        return mean_std(values, ddof=1)
    rows = []
    for protocol, label in ACMR_PROTOCOLS:
        metric = "mAP@50" if protocol.startswith("map_top_k") else "mAP"
        for d in DIRECTIONS + ("average",):
            rows.append([label, d, papers.cell("acmr", "wiki", d, None, metric), "not run",
                         acmr_cell(acmr, "original", protocol, d), acmr_cell(acmr_tuned, "tuned", protocol, d)])
    seeds = sorted({r["seed"] for r in acmr["rows"]}), sorted({r["seed"] for r in acmr_tuned["rows"]})
    parts.append(f"**ACMR**, Wikipedia (the same features and split; 40-d real-valued embeddings), mean ± std "
                 f"over {seed_count(seeds[0])} (original) and {seed_count(seeds[1])} (tuned); "
                 f"`acmr_wiki_table.json`, `acmr_wiki_tuned.json`:\n\n"
                 + table(["protocol", "direction", "paper", "authors' program", "original variant", "tuned preset"],
                         rows))

    from benchmarks.metah_ablation import PAIRS, summarise
    keys = [k.split("|") for k in metah["runs"]]
    bits_list = sorted({int(k[1]) for k in keys})
    pairs = [p for p in PAIRS if any(k[0] == p for k in keys)]
    presets = ["source-only", "tah", "metah", "tuned"]
    summary = summarise(metah, pairs, bits_list, presets)
    protocol = "target->target"
    rows = []
    for pair in pairs:
        entries = [summary[(pair, 32, p, protocol, "map")] for p in presets]
        rows.append([pair, 32, papers.cell("metah", dataset_key(pair), protocol, 32, "mAP")]
                    + [f"{e[0]:.3f} ± {e[1]:.3f}" for e in entries])
    for bits in bits_list:
        means = [np.mean([summary[(p, bits, preset, protocol, "map")][0] for p in pairs]) for preset in presets]
        rows.append(["mean of pairs", bits, ""] + [f"{m:.3f}" for m in means])
    metah_seeds = sorted({int(k[2]) for k in keys})
    parts.append(f"**METAH**, Office-Caltech10 (1024-d GoogleNet features; A amazon, D dslr, W webcam) and "
                 f"MNIST -> USPS, target queries against the target database, mAP, mean ± std over "
                 f"{seed_count(metah_seeds)}; `metah` is the port's default (the authors released no program; "
                 f"`tah` follows TAH's program, read, not run); `metah_tuned.json`:\n\n"
                 + table(["pair", "bits", "paper", "source-only", "tah", "metah (default)", "tuned preset"], rows))

    also = [line for name in ("ssah", "acmr", "metah") for line in
            ([f"{name.upper()}:"] + papers.unplaced(name) if papers.unplaced(name) else [])]
    text = "\n\n".join(parts)
    if also:
        text += "\n\nThe papers' other figures, on data or settings not measured here:\n\n" + "\n".join(also)
    rules = sorted({tie_rule(f) for f in (ssah, ssah_tuned, acmr, acmr_tuned, metah)})
    return (text + "\n\n" + papers.footer() + " Tie rule"
            + (f": `{rules[0]}`." if len(rules) == 1 else "s: " + ", ".join(f"`{r}`" for r in rules) + "."))


RENDERERS = {
    "ssah_wiki_table": ssah_wiki_table, "ssah_vs_acmr": ssah_vs_acmr, "ssah_wiki_causes": ssah_wiki_causes,
    "ssah_mirflickr_tags": ssah_mirflickr_tags, "ssah_step_precision": ssah_step_precision,
    "stream_memory": stream_memory,
    "acmr_wiki_table": acmr_wiki_table, "acmr_modality_game": acmr_modality_game,
    "metah_ablation": metah_ablation, "metah_comparisons": metah_comparisons, "metah_speed": metah_speed,
    "metah_validation_study": metah_validation_study,
    "tah_base": tah_base, "tie_rules": tie_rules, "eval_speed": eval_speed,
    "quickstart": quickstart, "loop_overhead": loop_overhead, "results_summary": results_summary,
    "ssah_scale": ssah_scale, "ssah_epoch_speed": ssah_epoch_speed,
}


def render(renderer, datas):
    """The block's markdown without provenance: RENDERERS[name](argument, *datas)."""
    name, _, argument = renderer.partition(":")
    if name not in RENDERERS:
        raise KeyError(f"unknown figures renderer {name!r}; known: {', '.join(sorted(RENDERERS))}")
    return RENDERERS[name](argument, *datas)


def load_block_file(path, repo=REPO):
    """A block's results file; an optional one (?FILE) that is absent is None."""
    optional = path.startswith(OPTIONAL)
    full = os.path.join(repo, path[len(OPTIONAL):] if optional else path)
    return None if optional and not os.path.exists(full) else io.load_json(full)


def render_block(renderer, paths, repo=REPO):
    """The whole block: the rendering, then one provenance line per results file (paths relative to
    repo; an absent optional file or a file of published figures without provenance adds none)."""
    datas = [load_block_file(p, repo) for p in paths]
    lines = [results_io.describe(d.get("provenance")) for p, d in zip(paths, datas)
             if d is not None and not (p.startswith(OPTIONAL) and "provenance" not in d)]
    return render(renderer, datas) + "\n\n" + "\n\n".join(dict.fromkeys(lines))

