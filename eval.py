"""Evaluate exported codes: every figure, plots, and item-level look-ups.

  python eval.py RUN_DIR                   re-evaluate RUN_DIR/codes.mat -> RUN_DIR/report/
  python eval.py CODES.mat                 a bare codes file (SSAH fields unless --method)
  python eval.py --compare RUN_A RUN_B ... overlay runs in one plot, print one table
  python eval.py RUN_DIR --ties all         the figures under the four tie rules side by side
  python eval.py RUN_DIR --against paper    the run's figures beside the papers' (utils/papers.py)
  python eval.py RUN_DIR --query N --top 10
                                           the top database items for query item N,
                                           with distances and labels, in every direction

The fields and directions come from the run's method's exports (trainers.registry, utils.exports)
(RUN_DIR/config.json). Metrics and their tie rules (--ties: expected, argsort,
pessimistic, optimistic; default: the run's own --ties, else expected): utils/metrics.py.
"""
import argparse
import os

import numpy as np

from utils import io, metrics, plots
from trainers.registry import METHODS, get_method
from utils.errors import UserError, run_command_line

DISTANCES = ("hamming", "euclidean", "cosine")


# ----------------------------------------------------------------------------- loading

def load_mat(path):
    """Fields of a MATLAB file (v5 via scipy, v7.3 via h5py), without MATLAB's metadata."""
    import scipy.io
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:  # v7.3 files are HDF5
        import h5py
        with io.open_hdf5(path, "codes file") as f:
            data = {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except (ValueError, OSError) as error:
        raise UserError(f"cannot read {path}: {error}; give a codes.mat written by train.py") from None
    return {k: v for k, v in data.items() if not k.startswith("__")}


def label_matrix(labels, n_items=None):
    """Multi-hot rows; a single column of class ids becomes one-hot (relevant = equal label).
    A 1-D vector of ids comes back from MATLAB files as one row: it is read as a column."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[0] == 1 and n_items not in (None, 1) and labels.shape[1] == n_items:
        labels = labels.T
    if labels.ndim == 1 or labels.shape[1] == 1:
        ids = labels.reshape(-1).astype(np.int64)
        _, inverse = np.unique(ids, return_inverse=True)
        return np.eye(inverse.max() + 1, dtype=np.uint8)[inverse]
    return labels


class Source:
    """One evaluable thing: a run folder or a bare codes file."""

    def __init__(self, path, method=None, distance=None):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            self.run_dir = self.path
            config_path = os.path.join(self.path, "config.json")
            if not os.path.exists(config_path):
                raise UserError(f"{self.path} is not a run folder (no config.json); "
                                f"give the folder that train.py printed, or a codes .mat file")
            saved = io.load_json(config_path)
            self.method = method or saved.get("method")
            self.config = saved.get("config", {})
            self.codes_path = os.path.join(self.path, "codes.mat")
            if not os.path.exists(self.codes_path):
                raise UserError(f"{self.path} has no codes.mat yet: the run has not finished an "
                                f"evaluation; wait for it or resume it with train.py --resume {self.path}")
        elif os.path.isfile(self.path):
            self.run_dir = None
            self.method = method or "ssah"
            self.config = {}
            self.codes_path = self.path
        else:
            raise UserError(f"{self.path} does not exist; give a run folder or a codes .mat file")
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r} for {self.path}; known: {', '.join(METHODS)} "
                            f"(pass --method)")
        self.spec = get_method(self.method).exports
        # A run ranks as it was evaluated in training (ACMR: its --retrieval-distance), unless told otherwise.
        self.distance = distance or self.config.get("retrieval_distance") or self.spec["distance"]
        if self.distance not in DISTANCES:
            raise UserError(f"unknown distance '{self.distance}'; choose one of {', '.join(DISTANCES)}")
        self.label = os.path.basename(os.path.normpath(self.path))
        self._fields = None

    @property
    def fields(self):
        if self._fields is None:
            self._fields = load_mat(self.codes_path)
        return self._fields

    def direction(self, name):
        """(query, database, query labels, database labels) arrays of one direction."""
        names = self.spec["directions"][name]
        missing = [f for f in names if f not in self.fields]
        if missing:
            exported = sorted({f for fields in self.spec["directions"].values() for f in fields})
            raise UserError(f"{self.codes_path} lacks field(s) {', '.join(missing)} needed for {name} "
                            f"({self.method} exports {', '.join(exported)}); "
                            f"pass --method if this file belongs to another method")
        query, db, query_labels, db_labels = (self.fields[f] for f in names)
        if self.distance == "hamming":
            query, db = binarise(query), binarise(db)
        return query, db, label_matrix(query_labels, len(query)), label_matrix(db_labels, len(db))


def binarise(codes):
    """Codes as they are when already binary; otherwise sign with 0 -> +1 (real outputs)."""
    codes = np.asarray(codes)
    if np.all(np.isin(codes, (-1, 1))) or np.all(np.isin(codes, (0, 1))):
        return codes
    return np.where(codes >= 0, 1, -1).astype(np.int8)


# ----------------------------------------------------------------------------- evaluation

def evaluate(source, top_ks=(50, 500), n_max=1000, radius=2, empty="zero", directions=None,
             ties=metrics.DEFAULT_TIES):
    """{direction: retrieval_report} for every direction of the source's method, tie rule `ties`."""
    names = list(source.spec["directions"]) if not directions else directions
    unknown = [d for d in names if d not in source.spec["directions"]]
    if unknown:
        raise UserError(f"unknown direction(s) {', '.join(unknown)} for {source.method}; "
                        f"choose from {', '.join(source.spec['directions'])}")
    return {name: metrics.retrieval_report(*source.direction(name), distance=source.distance, top_ks=top_ks,
                                           n_max=n_max, radius=radius, empty=empty, ties=ties)
            for name in names}


def unfinished(source):
    """For a run folder whose training has not finished (stopped, or still running), {"done",
    "of", "unit"}: the epoch (METAH: iteration) its codes.mat is from and the configured length;
    else None. A finished run's results.json says what length it completed ("completed"); a
    run extended with --resume since then is unfinished again."""
    if not source.run_dir:
        return None
    path = os.path.join(source.run_dir, "results.json")
    results = io.load_json(path) if os.path.exists(path) else {}
    completed = results.get("completed")
    if completed:
        field = next((k for k in completed if k != "trained"), None)
        if field is None or source.config.get(field) == completed[field]:
            return None
    elif "final" in results:
        return None  # finished before train.py marked completion
    unit = "iteration" if "iterations" in source.config else "epoch"
    records = [r for r in results.get("epochs", []) if unit in r]
    return {"done": records[-1][unit] if records else 0, "of": source.config.get(unit + "s"), "unit": unit}


def unfinished_note(source, state):
    length = f"{state['of']}" if state["of"] else "the program's length"
    return (f"note: {source.path} is unfinished: its codes are from {state['unit']} {state['done']} of {length}, "
            f"not the run's final ones (it was stopped or is still training; continue it with "
            f"python train.py --resume {source.path})")


def trivial_note(source):
    """The warning line when every query of the source's first direction is relevant to every
    database item (one class): every mAP is then trivially 1. None otherwise."""
    first = next(iter(source.spec["directions"]))
    _, _, query_labels, db_labels = source.direction(first)
    return metrics.trivial_relevance_warning(query_labels, db_labels, source.codes_path)


def summary_row(reports):
    """The scalar figures of each direction (no curves)."""
    return {direction: {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
            for direction, report in reports.items()}


def write_report(source, reports, settings, tensorboard=True, by_tie_rule=None, unfinished=None):
    """RUN_DIR/report/report.json and PNGs (beside CODES.mat for a bare file); returns the folder.
    settings["ties"] names the rule of `reports`; by_tie_rule: {rule: summary_row} of --ties all."""
    if source.run_dir:
        folder = os.path.join(source.run_dir, "report")
    else:
        folder = os.path.splitext(source.codes_path)[0] + "-report"
    title = f"{source.method} {source.label} (ties: {settings['ties']})"
    pngs = {"pr_curve": plots.pr_curve_png(reports, title), "top_n": plots.top_n_png(reports, title)}
    for name, png in pngs.items():
        plots.save_png(os.path.join(folder, f"{name}.png"), png)
    content = {"method": source.method, "codes": os.path.abspath(source.codes_path), "distance": source.distance,
               "ties": settings["ties"], "settings": settings, "summary": summary_row(reports),
               "directions": reports, "plots": {name: f"{name}.png" for name in pngs}}
    if by_tie_rule:
        content["by_tie_rule"] = by_tie_rule
    if unfinished:
        content["unfinished"] = unfinished
    io.save_json(os.path.join(folder, "report.json"), content)
    if tensorboard and source.run_dir:
        from utils.run import Run
        run = Run(source.run_dir, source.method, source.config)
        for name, png in pngs.items():
            run.log_image(0, f"eval/{name}", png)
        run.flush()
    return folder


def format_table(rows):
    """rows: {label: {direction: summary}} -> a Markdown table of mAP and the other scalars
    (the tie rule comes from each summary's "ties")."""
    keys = []
    for per_direction in rows.values():
        for summary in per_direction.values():
            keys += [k for k in summary if k.startswith(("map", "precision")) and k not in keys]
    directions = []
    for per_direction in rows.values():
        directions += [d for d in per_direction if d not in directions]
    header = ["run", "direction", "ties"] + keys
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_direction in rows.items():
        for direction in directions:
            if direction in per_direction:
                summary = per_direction[direction]
                values = [f"{summary[k]:.4f}" if k in summary else "-" for k in keys]
                lines.append("| " + " | ".join([label, direction, summary.get("ties", "-")] + values) + " |")
    return "\n".join(lines)


def format_tie_rules(by_tie_rule):
    """{rule: {direction: summary}} -> a Markdown table: one row per direction and figure,
    one column per tie rule."""
    rules = list(by_tie_rule)
    first = by_tie_rule[rules[0]]
    lines = ["| direction | figure | " + " | ".join(rules) + " |", "|" + "---|" * (len(rules) + 2)]
    for direction, summary in first.items():
        for key in [k for k in summary if k.startswith(("map", "precision"))]:
            values = [f"{by_tie_rule[rule][direction][key]:.4f}" for rule in rules]
            lines.append(f"| {direction} | {key} | " + " | ".join(values) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- look-ups

def nearest_items(source, query_index, top=10):
    """{direction: [(rank, database index, distance, labels, relevant)]} for one query item."""
    out = {}
    for name in source.spec["directions"]:
        query, db, query_labels, db_labels = source.direction(name)
        if not 0 <= query_index < len(query):
            raise UserError(f"query item {query_index} does not exist: {name} has {len(query)} queries "
                            f"(0..{len(query) - 1})")
        top = max(1, min(int(top), len(db)))
        if source.distance == "hamming":
            from utils.search import HammingIndex
            distances, indices = HammingIndex(db).search(query[query_index:query_index + 1], top)
            distances, indices = distances[0], indices[0]
        else:
            all_distances = metrics.embedding_distances(np.asarray(query[query_index:query_index + 1], float),
                                                        np.asarray(db, float), source.distance)[0]
            indices = np.argsort(all_distances, kind="stable")[:top]
            distances = all_distances[indices]
        query_classes = set(np.flatnonzero(query_labels[query_index]).tolist())
        out[name] = {"query_labels": sorted(query_classes), "items": [
            {"rank": rank + 1, "index": int(i), "distance": float(d),
             "labels": np.flatnonzero(db_labels[i]).tolist(),
             "relevant": bool(query_classes & set(np.flatnonzero(db_labels[i]).tolist()))}
            for rank, (d, i) in enumerate(zip(distances, indices))]}
    return out


def print_nearest(source, query_index, top):
    for name, result in nearest_items(source, query_index, top).items():
        print(f"{name}: query {query_index}, labels {result['query_labels']}")
        print(f"  {'rank':>4} {'item':>8} {'distance':>9}  relevant  labels")
        for item in result["items"]:
            distance = f"{item['distance']:.0f}" if source.distance == "hamming" else f"{item['distance']:.4f}"
            print(f"  {item['rank']:>4} {item['index']:>8} {distance:>9}  {'yes' if item['relevant'] else 'no':<8}"
                  f"  {item['labels']}")


# ----------------------------------------------------------------------------- encoding hook

def encode_new_items(run_dir, inputs, modality):
    """Codes of new items from a trained run: the registered method's
    encode(run_dir, inputs, modality) -> codes (modality as in its exports, e.g. "image"/"text"
    for SSAH and ACMR, "image" for METAH), which rebuilds its model from the latest checkpoint.
    """
    source = Source(run_dir)
    return get_method(source.method).encode(run_dir, inputs, modality)


# ----------------------------------------------------------------------------- command line

def parse_top_ks(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--top-k takes a comma list of integers such as 50,500, got '{text}'") from None
    if any(v < 1 for v in values):
        raise UserError(f"--top-k values must be >= 1, got '{text}'")
    return tuple(values)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run folder(s) or codes .mat file(s)")
    parser.add_argument("--compare", action="store_true", help="overlay several runs; print one table")
    parser.add_argument("--method", choices=sorted(METHODS), help="fields of a bare codes file (default ssah)")
    parser.add_argument("--distance", choices=DISTANCES, help="override the distance (default: the run's own: "
                        "Hamming for codes, ACMR's --retrieval-distance for its embeddings)")
    parser.add_argument("--directions", default="", help="comma list, e.g. 'i->t,t->i' (default: all)")
    parser.add_argument("--top-k", default="50,500", help="mAP@K for these K (comma list)")
    parser.add_argument("--n-max", type=int, default=1000, help="top-N curve up to N (default 1000)")
    parser.add_argument("--radius", type=int, default=2, help="hash-lookup radius for map/precision (default 2)")
    parser.add_argument("--empty", choices=metrics.EMPTY_RULES, default="zero",
                        help="a query with nothing within the radius: precision 0 (zero, TAH) or left out (skip)")
    parser.add_argument("--ties", choices=metrics.TIE_RULES + ("all",),
                        help="order of items at equal distance: expected (mean over random orders), argsort "
                             "(the original programs' np.argsort), pessimistic, optimistic, or all four side "
                             "by side (default: the run's own --ties, else expected)")
    parser.add_argument("--query", type=int, help="list the top database items for this query item")
    parser.add_argument("--top", type=int, default=10, help="how many items --query lists (default 10)")
    parser.add_argument("--out", default="compare.png", help="--compare: the plot's path (default compare.png)")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not log the plots to the run's TensorBoard")
    parser.add_argument("--curve", choices=("pr", "top_n"), default="pr", help="--compare: which curve to overlay")
    parser.add_argument("--against", choices=("paper",), help="paper: print the run's figures beside the published "
                        "ones for its method, dataset, code length and directions (benchmarks/paper_tables.json)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.n_max < 1:
        raise UserError(f"--n-max must be >= 1, got {args.n_max}")
    if args.radius < 0:
        raise UserError(f"--radius must be >= 0, got {args.radius}")
    settings = {"top_ks": parse_top_ks(args.top_k), "n_max": args.n_max, "radius": args.radius,
                "empty": args.empty}
    directions = [d.strip() for d in args.directions.split(",") if d.strip()] or None
    sources = [Source(p, args.method, args.distance) for p in args.paths]
    if len(sources) > 1 and not args.compare:
        raise UserError("several paths given: add --compare to overlay them, or give one path")
    if args.against and args.compare:
        raise UserError("--against paper sets one run beside the papers; give one run folder without --compare")
    if args.ties == "all" and args.compare:
        raise UserError("--ties all sets the four tie rules side by side for one run; with --compare "
                        "choose one rule (--ties expected, argsort, pessimistic or optimistic)")
    if args.query is not None:
        for source in sources:
            print_nearest(source, args.query, args.top)
        return None
    results = {}
    for source in sources:
        state = unfinished(source)
        for line in (unfinished_note(source, state) if state else None, trivial_note(source)):
            if line:
                print(line)
        ties = args.ties if args.ties not in (None, "all") else source.config.get("ties", metrics.DEFAULT_TIES)
        reports = evaluate(source, directions=directions, ties=ties, **settings)
        results[source.label] = reports
        if not args.compare:
            by_tie_rule = None
            if args.ties == "all":
                by_tie_rule = {rule: summary_row(reports) if rule == ties else
                               summary_row(evaluate(source, directions=directions, ties=rule, **settings))
                               for rule in metrics.TIE_RULES}
                print(f"{source.label}: every figure under the four tie rules")
                print(format_tie_rules(by_tie_rule))
            else:
                print(f"{source.label}: tie rule {ties}")
                print(format_table({source.label: summary_row(reports)}))
            folder = write_report(source, reports, dict(settings, ties=ties), tensorboard=not args.no_tensorboard,
                                  by_tie_rule=by_tie_rule, unfinished=state)
            print(f"report: {os.path.join(folder, 'report.json')}")
            if args.against:
                from utils import papers
                print("\n".join(papers.compare_run(source.run_dir, source.method, source.config, summary_row(reports))))
    if args.compare:
        plots.save_png(args.out, plots.compare_png(results, curve=args.curve))
        print(format_table({label: summary_row(r) for label, r in results.items()}))
        print(f"plot: {args.out}")
    return results


if __name__ == "__main__":
    run_command_line(main)
