"""Search a trained run's database with new queries.

  python search.py RUN_DIR --build                      index the run's database codes (saved in RUN_DIR/search/)
  python search.py RUN_DIR --text "dog beach"           tag words -> the nearest images (SSAH)
  python search.py RUN_DIR --image-features FILE.npy    each row a query -> the nearest texts
  python search.py RUN_DIR --text-features FILE.npy     each row a text query -> the nearest images
      --database image|text (SSAH, ACMR) or target|source (METAH)   which database to search
      --top N                                                       how many items to list (10)

The queries are encoded with the run's trained network (its latest checkpoint; tag words go
through the dataset's vocabulary), the database is the run's exported codes (codes.mat).
By default a query searches the other modality (text -> images, image -> texts); METAH
searches the target domain. Hashing runs (SSAH, METAH) rank by Hamming distance, with the
index that --build saved (utils.search.HammingIndex; faiss when installed); equal distances
list the smaller database index first. ACMR's embeddings are real-valued: its database is
ranked directly by the run's retrieval distance (Euclidean unless trained with --retrieval-distance
cosine), and there is no index to build.
Each listed item: rank, database index, distance, labels (label columns of multi-label data,
the class id of single-label data) and, when the dataset's vocabulary file has them, the
label names.
"""
import argparse
import os

import numpy as np

from trainers.registry import get_method
from utils import io
from utils.errors import UserError, run_command_line

# Each method's databases (name -> (codes field, labels field) in codes.mat) and the database a
# query of each modality searches unless --database says otherwise: its MethodSpec (trainers.registry).
INDEX_FOLDER = "search"


def index_path(run_dir, database):
    return os.path.join(run_dir, INDEX_FOLDER, f"{database}.index.npz")


def load_source(run_dir):
    from eval import Source
    if not os.path.isdir(run_dir):
        raise UserError(f"run folder not found: {run_dir}; give the folder that train.py printed")
    return Source(run_dir)


def databases_of(source, name=None):
    """The database names to use: `name` (checked) or all of the method's."""
    known = get_method(source.method).databases
    if name is None:
        return list(known)
    if name not in known:
        raise UserError(f"{source.method} runs have the databases {', '.join(known)}; got --database {name}")
    return [name]


def label_lists(labels, n_items):
    """Per item, its label columns (multi-hot rows) or its class id (a column or row of ids)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[0] == 1 and labels.shape[1] == n_items != 1:
        labels = labels.T  # MATLAB files give a 1-D vector back as one row
    if labels.ndim == 1 or labels.shape[1] == 1:
        return [[int(v)] for v in labels.reshape(-1)]
    return [np.flatnonzero(row).tolist() for row in labels]


def database_arrays(source, database):
    """(codes, per item its labels) of one database from codes.mat."""
    from eval import binarise
    codes_field, labels_field = get_method(source.method).databases[database]
    missing = [f for f in (codes_field, labels_field) if f not in source.fields]
    if missing:
        raise UserError(f"{source.codes_path} lacks {', '.join(missing)}: it was not written by a finished "
                        f"{source.method} run; resume the run with train.py --resume {source.run_dir}")
    codes = source.fields[codes_field]
    if source.distance == "hamming":
        codes = binarise(codes)
    return codes, label_lists(source.fields[labels_field], len(codes))


def build(source, database=None):
    """Builds and saves the Hamming index of each database; returns {database: path}."""
    from utils.search import HammingIndex
    if source.distance != "hamming":
        raise UserError(f"{source.method} embeddings are real-valued: there is no binary index to build; "
                        f"search the run directly (ranked by {source.distance} distance)")
    written = {}
    for name in databases_of(source, database):
        codes, _ = database_arrays(source, name)
        index = HammingIndex(codes)
        path = index_path(source.run_dir, name)
        index.save(path)
        written[name] = path
        print(f"{name} database: {index.size} items of {index.bits} bits indexed ({index.backend}) -> {path}")
    return written


def load_index(source, database, codes):
    """The saved index of a database, or one built now (saying so) when none is saved or the
    run's codes are newer than it."""
    from utils.search import HammingIndex
    path = index_path(source.run_dir, database)
    if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(source.codes_path):
        index = HammingIndex.load(path)
        if index.size == len(codes):
            return index
    print(f"no up-to-date index of the {database} database in {os.path.dirname(path)}: indexing it now "
          f"(python search.py {source.run_dir} --build saves one)")
    return HammingIndex(codes)


def label_names(config):
    """The dataset's label names (FILE.vocab.json beside a prepared FILE.h5), or None."""
    from utils.data import resolve_path, sidecar_paths
    try:
        path = resolve_path(config.get("dataset", ""), config.get("data", ""))
    except (UserError, TypeError):
        return None
    vocab_path = sidecar_paths(path)[0] if path and os.path.isfile(path) else ""
    return io.load_json(vocab_path).get("label_names") if vocab_path and os.path.exists(vocab_path) else None


def read_rows(path, what):
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {what} from {path} ({error}); give a .npy file of rows (np.save)") from None
    return rows[None] if rows.ndim == 1 else rows


def queries_of(args):
    """(modality, encoder inputs, one description per query) from the command line."""
    given = [name for name in ("text", "image_features", "text_features") if getattr(args, name) is not None]
    if len(given) != 1:
        raise UserError("give one query: --text \"WORDS\", --image-features FILE.npy or --text-features FILE.npy "
                        "(or --build to index the database)")
    if args.text is not None:
        words = [w for w in args.text.replace(",", " ").split() if w]
        if not words:
            raise UserError("--text holds no words; give tag words such as --text \"dog beach\"")
        return "text", words, [f"text: {' '.join(words)}"]
    if args.image_features is not None:
        rows = read_rows(args.image_features, "image features")
        return "image", rows, [f"image row {i}" for i in range(len(rows))]
    rows = read_rows(args.text_features, "text features")
    return "text", rows, [f"text row {i}" for i in range(len(rows))]


def nearest(source, query_codes, db_codes, top, index=None):
    """(distances, indices), each queries x top, nearest first (ties: smaller index first)."""
    if source.distance == "hamming":
        from eval import binarise
        return index.search(binarise(query_codes), top)
    from utils.metrics import embedding_distances
    distances = embedding_distances(np.asarray(query_codes, float), np.asarray(db_codes, float), source.distance)
    order = np.argsort(distances, axis=1, kind="stable")[:, :top]
    return np.take_along_axis(distances, order, axis=1), order


def search(source, modality, inputs, top=10, database=None):
    """{"database": name, "items": per query [(database index, distance, labels)], nearest first}."""
    from eval import encode_new_items
    spec = get_method(source.method)
    if modality not in spec.default_database:
        raise UserError(f"{source.method} runs encode image items only: give the queries with "
                        f"--image-features FILE.npy")
    if not spec.text_words and modality == "text" and not isinstance(inputs, np.ndarray):
        raise UserError(f"--text takes tag words for SSAH runs; give {source.method} text features with "
                        f"--text-features FILE.npy")
    database = databases_of(source, database or spec.default_database[modality])[0]
    codes, labels = database_arrays(source, database)
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    top = min(top, len(codes))
    index = load_index(source, database, codes) if source.distance == "hamming" else None
    query_codes = encode_new_items(source.run_dir, inputs, modality)
    distances, indices = nearest(source, query_codes, codes, top, index)
    return {"database": database, "items": [
        [(int(i), float(d), labels[i]) for d, i in zip(row_d, row_i)]
        for row_d, row_i in zip(distances, indices)]}


def print_results(source, result, descriptions, names):
    fmt = "{:.0f}" if source.distance == "hamming" else "{:.4f}"
    for description, items in zip(descriptions, result["items"]):
        print(f"query ({description}) -> {result['database']} database, by {source.distance} distance")
        print(f"  {'rank':>4} {'item':>8} {'distance':>9}  labels")
        for rank, (index, distance, columns) in enumerate(items, 1):
            named = f"  ({', '.join(names[c] for c in columns if c < len(names))})" if names else ""
            print(f"  {rank:>4} {index:>8} {fmt.format(distance):>9}  {columns}{named}")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", help="a finished run folder of train.py (config.json, checkpoints, codes.mat)")
    parser.add_argument("--build", action="store_true", help="index the database codes and save the index")
    parser.add_argument("--text", help="tag words of one text query, e.g. \"dog beach\" (SSAH)")
    parser.add_argument("--image-features", help=".npy file: one image query per row (features, or images)")
    parser.add_argument("--text-features", help=".npy file: one text query per row (tag vectors, text features)")
    parser.add_argument("--database", help="image|text (SSAH, ACMR), target|source (METAH); default: the other "
                        "modality, METAH's target domain; with --build: every database")
    parser.add_argument("--top", type=int, default=10, help="how many database items to list per query")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    source = load_source(args.run_dir)
    if args.build:
        return build(source, args.database)
    modality, inputs, descriptions = queries_of(args)
    result = search(source, modality, inputs, args.top, args.database)
    print_results(source, result, descriptions, label_names(source.config))
    return result


if __name__ == "__main__":
    run_command_line(main)
