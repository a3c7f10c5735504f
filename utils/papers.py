"""The papers' published figures (benchmarks/paper_tables.json) and a run's figures beside them.

`python eval.py RUN_DIR --against paper` prints `compare_run(...)`. The table's schema:

  {"entries": [{"method": "ssah|acmr|metah|tah", "dataset": the project's --dataset name,
                "direction": "i->t|t->i|target", "bits": 16 (null: real-valued, e.g. ACMR),
                "metric": "map" (over the whole database) or "map@K", "value": 0.782,
                "source": {"paper", "table", "where": url or file:line},
                "protocol": free text (split sizes, backbone, tie rule if stated),
                optional "backbone": SSAH's image network (--backbone name),
                optional "split": {"query", "train", "database"} (null: not stated; the
                protocol text says more)}],
   "sources": [{"method", "paper", "figures", "where", "note"}]}

A figure that could not be sourced is not in the table (see each source's note).
"""
import os

from utils import io
from utils.data import DATASETS, REPO_ROOT, SPLIT_SIZES
from utils.data.domains import parse_pair_name
from utils.errors import UserError

TABLE_PATH = os.path.join(REPO_ROOT, "benchmarks", "paper_tables.json")
METHODS = ("ssah", "acmr", "metah", "tah")
DIRECTIONS = ("i->t", "t->i", "target")
# The papers a run of each of the project's methods is compared with (METAH extends TAH).
PAPERS_OF_METHOD = {"ssah": ("ssah",), "acmr": ("acmr",), "metah": ("metah", "tah")}
# A run's direction name as the tables name it.
TABLE_DIRECTION = {"target->target": "target"}
SOURCE_KEYS = ("paper", "table", "where")


def known_dataset(name):
    """A cross-modal dataset name or a METAH domain pair name of the project."""
    if name in DATASETS:
        return True
    try:
        parse_pair_name(name)
    except UserError:
        return False
    return True


def entry_problems(entry):
    """What is wrong with one table entry (an empty list when nothing is)."""
    problems = []
    for key in ("method", "dataset", "direction", "bits", "metric", "value", "source", "protocol"):
        if key not in entry:
            problems.append(f"no '{key}'")
    if problems:
        return problems
    if entry["method"] not in METHODS:
        problems.append(f"method '{entry['method']}' is not one of {', '.join(METHODS)}")
    if entry["direction"] not in DIRECTIONS:
        problems.append(f"direction '{entry['direction']}' is not one of {', '.join(DIRECTIONS)}")
    if not known_dataset(entry["dataset"]):
        problems.append(f"dataset '{entry['dataset']}' is not a --dataset name ({', '.join(DATASETS)}, "
                        f"or a METAH domain pair)")
    if entry["bits"] is not None and (not isinstance(entry["bits"], int) or entry["bits"] < 1):
        problems.append(f"bits must be a positive integer or null, got {entry['bits']!r}")
    metric = str(entry["metric"])
    if not (metric == "map" or metric.startswith("map@") and metric[4:].isdigit()):
        problems.append(f"metric '{entry['metric']}' is not map or map@K")
    if not isinstance(entry["value"], (int, float)) or not 0 <= entry["value"] <= 1:
        problems.append(f"value must be a number in [0, 1], got {entry['value']!r}")
    source = entry["source"]
    if not isinstance(source, dict) or any(not str(source.get(k, "")).strip() for k in SOURCE_KEYS):
        problems.append(f"source must name its {', '.join(SOURCE_KEYS)}")
    if not str(entry["protocol"]).strip():
        problems.append("protocol is empty")
    return problems


def load_table(path=TABLE_PATH):
    """The table, every entry checked; a bad entry is a UserError naming it."""
    try:
        table = io.load_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the papers' table {path}: {error}; restore "
                        f"benchmarks/paper_tables.json from the repository") from None
    for index, entry in enumerate(table.get("entries", [])):
        problems = entry_problems(entry)
        if problems:
            raise UserError(f"{path}: entry {index} ({entry.get('method')} {entry.get('dataset')}): "
                            f"{'; '.join(problems)}; fix the entry")
    return table


def find_rows(table, method, dataset, bits=None, direction=None, metric=None, backbone=None):
    """Entries of the papers behind `method` (a project method or a paper's) for one dataset;
    bits, direction, metric and backbone narrow them when given (bits null in the table: any)."""
    papers = PAPERS_OF_METHOD.get(method, (method,))
    rows = [e for e in table["entries"] if e["method"] in papers and e["dataset"] == dataset
            and (bits is None or e["bits"] in (None, bits))
            and (direction is None or e["direction"] == TABLE_DIRECTION.get(direction, direction))
            and (metric is None or e["metric"] == metric)]
    if backbone is not None:
        rows = [e for e in rows if e.get("backbone") in (None, backbone)]
    return rows


# ----------------------------------------------------------------------------- a run beside them

def _run_split(config, summary, dataset):
    """The run's query / train / database sizes: the evaluated ones from eval's summary, the
    training size from --split-sizes or the dataset's standard protocol (None when unknown)."""
    first = next(iter(summary.values()), {})
    sizes = config.get("split_sizes") or SPLIT_SIZES.get(dataset)
    return {"query": first.get("queries"), "train": sizes[1] if sizes else None,
            "database": first.get("database")}


def _paper_backbone(rows, run_backbone):
    """The run's backbone when some rows have it; else the first one the table lists."""
    backbones = [e["backbone"] for e in rows if e.get("backbone")]
    if not backbones:
        return None
    return run_backbone if run_backbone in backbones else backbones[0]


def _final_figures(results, direction):
    """'name value' of every figure of `direction` in results.json's final evaluation."""
    final = (results or {}).get("final") or {}
    out = []
    for key, value in final.items():
        if key == direction and isinstance(value, (int, float)):
            out.append(f"{value:.4f}")
        elif isinstance(value, dict) and isinstance(value.get(direction), (int, float)):
            out.append(f"{key} {value[direction]:.4f}")
    return "; ".join(out) or "-"


def _split_text(split):
    if not split:
        return "not stated"
    return ", ".join(f"{k} {v:,}" if v is not None else f"{k} not recorded" for k, v in split.items())


def _not_reported(table, method, dataset):
    """The one-line answer for a dataset no paper behind `method` reports, with the reasons the
    table's sources give for papers without figures."""
    paper_methods = PAPERS_OF_METHOD.get(method, (method,))
    reported = sorted({e["dataset"] for e in table["entries"] if e["method"] in paper_methods})
    why = "".join(f"; {s['method']}: {s['note']}" for s in table.get("sources", [])
                  if s["method"] in paper_methods and not s.get("figures"))
    return (f"{method} on {dataset or 'an unnamed dataset'}: the papers report no figure for this dataset "
            f"({os.path.relpath(TABLE_PATH, REPO_ROOT)}; reported: {', '.join(reported) or 'none'}{why}).")


def _figure_lines(rows, summary, results):
    """The Markdown table: each paper row beside the run's figure of the same direction and metric."""
    lines = ["| direction | metric | paper | run (eval.py) | run - paper | run (results.json final) |",
             "|---|---|---|---|---|---|"]
    missing = False
    for entry in rows:
        direction = next((d for d in summary if TABLE_DIRECTION.get(d, d) == entry["direction"]), None)
        value = summary.get(direction, {}).get(entry["metric"]) if direction else None
        missing = missing or (direction is not None and value is None)
        shown, diff = (f"{value:.4f}", f"{value - entry['value']:+.4f}") if value is not None else ("-", "-")
        lines.append(f"| {entry['direction']} | {entry['metric']} | {entry['value']:.3f} | {shown} | {diff} | "
                     f"{_final_figures(results, direction) if direction else '-'} |")
    if missing:
        lines.append("('-': eval.py did not compute that figure; ask for mAP@K with --top-k K)")
    return lines


def _protocol_lines(rows, config, summary, results, backbone):
    """The paper's protocol beside the run's: split sizes, tie rule, image network, training, variant."""
    lines = [f"- the paper's protocol: {p}" for p in dict.fromkeys(e["protocol"] for e in rows)]
    run_split = _run_split(config, summary, config.get("dataset", ""))
    lines.append(f"- split sizes: run {_split_text(run_split)}; paper {_split_text(rows[0].get('split'))}")
    ties = next(iter(summary.values()), {}).get("ties", config.get("ties", "-"))
    lines.append(f"- tie rule: run '{ties}' (eval.py --ties); the paper's: as its protocol says, else not stated")
    if backbone is not None:
        lines.append(f"- image network: run '{config.get('backbone') or 'chosen by the data'}'; paper '{backbone}'")
    # results.json "completed": {length field: as configured (0: the program's), "trained": as run}
    completed = (results or {}).get("completed") or {}
    lengths = [f"{completed['trained']} {key}" for key in completed if key != "trained" and "trained" in completed]
    lengths = lengths or [f"{config[key]} {key}" for key in ("epochs", "iterations") if key in config]
    if config.get("schedule"):
        lengths.append(f"schedule {config['schedule']}")
    lines.append(f"- training: run {', '.join(lengths) or 'not recorded'}; the paper's: not in the table")
    lines.append(f"- variant: run '{config.get('variant', '-')}' (original: the authors' program; paper: the "
                 f"published equations; tuned: a preset chosen here)")
    return lines


def compare(method, config, summary, results=None, table=None):
    """Lines that set a run's figures beside the papers' rows for its method, dataset, code
    length and directions, or the one line saying the papers report none. config: the run's
    config.json "config"; summary: eval's {direction: scalar figures}; results: its
    results.json (or None)."""
    table = table if table is not None else load_table()
    dataset, bits = config.get("dataset", ""), config.get("bits")
    rows = find_rows(table, method, dataset)
    if not rows:
        return [_not_reported(table, method, dataset)]
    with_bits = [e for e in rows if e["bits"] in (None, bits)]
    if not with_bits:
        lengths = ", ".join(str(b) for b in sorted({e["bits"] for e in rows}))
        return [f"{method} on {dataset}: the papers report no figure at {bits} bits (reported: {lengths} bits)."]
    backbone = _paper_backbone(with_bits, config.get("backbone"))
    rows = [e for e in with_bits if backbone is None or e.get("backbone") in (None, backbone)]
    length = f"{bits} bits" if rows[0]["bits"] is not None else "real-valued"
    sources = dict.fromkeys((e["source"]["paper"], e["source"]["table"], e["source"]["where"]) for e in rows)
    return ([f"Against the papers ({os.path.relpath(TABLE_PATH, REPO_ROOT)}): {method}, {dataset}, {length}", ""]
            + _figure_lines(rows, summary, results)
            + ["", "Sources:"] + [f"- {paper}, {name}: {where}" for paper, name, where in sources]
            + ["", "Protocol differences that can explain the gap:"]
            + _protocol_lines(rows, config, summary, results, backbone))


def compare_run(run_dir, method, config, summary, table=None):
    """compare() for a run folder, reading its results.json when there is one."""
    if not run_dir:
        raise UserError("--against paper needs a run folder (its config.json names the dataset and code "
                        "length), not a bare codes file")
    results_path = os.path.join(run_dir, "results.json")
    results = io.load_json(results_path) if os.path.exists(results_path) else None
    return compare(method, config, summary, results, table)
