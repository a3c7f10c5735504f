"""The ACMR authors' data files: Python-2 pickles (read with encoding="latin1").

Wikipedia ("wiki-pickle", a folder like the demo's data/wikipedia_dataset):
  train_img_feats.pkl, train_txt_vecs.pkl   n x d arrays (or lists of rows)
  train_labels.pkl                          n class ids 1..10
  test_img_feats.pkl, test_txt_vecs.pkl, test_labels.pkl
NUS-WIDE-10k ("nuswide10k", a folder like data/nuswide), dicts keyed by item id:
  img_train_id_feats.pkl {id: image features}, train_id_bow.pkl {id: text BoW},
  train_id_label_map.pkl {id: one-hot label row}, train_ids.pkl [ids, in the file's order],
  and the same with test_ instead of train_.
The program shuffles the NUS-WIDE-10k id lists once at start-up (unseeded); we keep the
file's order (the trainer's `shuffle` setting shuffles per epoch, seeded).

Both return (images, texts, labels, split): train rows first, then test rows; the test rows
are the queries and the training rows are training set and database (the standard protocol).
"""
import os
import pickle

import numpy as np

from utils.data.splits import Split
from utils.data.validate import check_finite, check_inputs
from utils.errors import UserError

WIKI_FILES = ("train_img_feats", "train_txt_vecs", "train_labels", "test_img_feats", "test_txt_vecs", "test_labels")
NUSWIDE_FILES = tuple(f"{stem.format(part)}" for part in ("train", "test")
                      for stem in ("img_{}_id_feats", "{}_id_bow", "{}_id_label_map", "{}_ids"))


def load_pickle(path):
    """One Python-2 (or 3) pickle; latin1 turns Py2 byte strings (NumPy buffers, ids) into str."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found; the folder must hold the ACMR authors' pickle files")
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise UserError(f"cannot unpickle {path} ({type(error).__name__}: {error}); "
                        f"give the authors' original .pkl files") from None


def _matrix(value, path):
    try:
        array = np.asarray(value if not isinstance(value, list) else np.stack(value), dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise UserError(f"{path}: rows cannot form a matrix ({error}); every row needs the same length") from None
    if array.ndim != 2:
        raise UserError(f"{path}: expected an items x dims matrix, got shape {array.shape}")
    check_finite(array, path)
    return array


def _combine(train, test, name):
    (img_tr, txt_tr, lab_tr), (img_te, txt_te, lab_te) = train, test
    for part, (img, txt, lab) in (("train", train), ("test", test)):
        if not len(img) == len(txt) == len(lab):
            raise UserError(f"{name}: {part} images, texts and labels have {len(img)}, {len(txt)} and "
                            f"{len(lab)} rows; they must be pairs")
    n_train, n_test = len(img_tr), len(img_te)
    split = Split(query=np.arange(n_train, n_train + n_test), train=np.arange(n_train),
                  database=np.arange(n_train))
    return (np.concatenate([img_tr, img_te]), np.concatenate([txt_tr, txt_te]),
            np.concatenate([lab_tr, lab_te]).astype(np.float32), split)


def read_wiki_pickles(folder):
    """The demo's Wikipedia pickles -> (images, texts, one-hot labels, split)."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder; pass --data PATH/wikipedia_dataset (the folder "
                        f"holding {', '.join(f + '.pkl' for f in WIKI_FILES[:3])}, ...)")
    loaded = {name: load_pickle(os.path.join(folder, name + ".pkl")) for name in WIKI_FILES}
    classes = {}
    for part in ("train", "test"):
        ids = check_inputs(folder, class_ids={f"{part}_labels.pkl": loaded[f"{part}_labels"]})
        classes[part] = ids[f"{part}_labels.pkl"] - 1  # the authors number classes 1..C
    num_classes = int(max(classes["train"].max(initial=0), classes["test"].max(initial=0))) + 1
    parts = [(_matrix(loaded[f"{part}_img_feats"], f"{folder}/{part}_img_feats.pkl"),
              _matrix(loaded[f"{part}_txt_vecs"], f"{folder}/{part}_txt_vecs.pkl"),
              np.eye(num_classes, dtype=np.float32)[classes[part]]) for part in ("train", "test")]
    return _combine(parts[0], parts[1], folder)


def read_nuswide10k_pickles(folder):
    """The demo's NUS-WIDE-10k id-keyed dict pickles -> (images, texts, labels, split), rows in
    the order of train_ids / test_ids."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder; pass --data PATH/nuswide (the folder holding "
                        f"img_train_id_feats.pkl, train_id_bow.pkl, ...)")
    parts = []
    for part in ("train", "test"):
        ids = list(load_pickle(os.path.join(folder, f"{part}_ids.pkl")))
        tables = {key: load_pickle(os.path.join(folder, f"{stem}.pkl")) for key, stem in
                  (("img", f"img_{part}_id_feats"), ("txt", f"{part}_id_bow"), ("lab", f"{part}_id_label_map"))}
        rows = []
        for key, table in tables.items():
            if not isinstance(table, dict):
                raise UserError(f"{folder}: the {part} {key} pickle must be a dict keyed by item id, "
                                f"got {type(table).__name__}")
            missing = [i for i in ids if i not in table]
            if missing:
                raise UserError(f"{folder}: {len(missing)} ids of {part}_ids.pkl (e.g. {missing[0]!r}) are "
                                f"missing from the {part} {key} pickle; the files are from different releases")
            rows.append(_matrix([np.asarray(table[i], dtype=np.float32).reshape(-1) for i in ids],
                                f"{folder} ({part} {key})"))
        check_inputs(folder, multi_hot={f"{part}_id_label_map.pkl (rows in {part}_ids.pkl order)": rows[2]})
        parts.append(tuple(rows))
    return _combine(parts[0], parts[1], folder)


LOADERS = {"wiki-pickle": read_wiki_pickles, "nuswide10k": read_nuswide10k_pickles}
# Where load_dataset looks for them under a data root when --data is not given.
DEFAULT_LOCATIONS = {"wiki-pickle": "wikipedia_dataset", "nuswide10k": "nuswide10k"}
