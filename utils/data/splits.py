"""Query / train / database splits, from a seeded permutation or a split file."""
import dataclasses
import os

import numpy as np
import scipy.io

from utils import io
from utils.errors import UserError


@dataclasses.dataclass
class Split:
    query: np.ndarray     # row indices of the query items
    train: np.ndarray     # row indices of the training items
    database: np.ndarray  # row indices of the retrieval database

    def save(self, path):
        io.save_npz(path, {"query": self.query, "train": self.train, "database": self.database})


def permutation_split(num_items, num_query, num_train, seed, num_database=None):
    """The DCMH/SSAH protocol: one permutation; queries first, training items next,
    database = every permuted item after the queries (so it contains the training set)."""
    if num_query < 1 or num_train < 1:
        raise UserError(f"split sizes must give at least one query and one training item, got "
                        f"{num_query} queries and {num_train} training items; pass larger split sizes")
    if num_query + num_train > num_items:
        raise UserError(f"split needs {num_query} queries + {num_train} training items but the "
                        f"dataset has only {num_items}; pass smaller split sizes")
    order = np.random.RandomState(seed).permutation(num_items)
    end = num_items if num_database is None else num_query + num_database
    return Split(query=order[:num_query], train=order[num_query:num_query + num_train],
                 database=order[num_query:end])


SPLIT_PARTS = ("query", "train", "database")


def check_split(split, num_items, where):
    """Every part non-empty, without repeats, and inside 0..num_items-1: checked before
    training, so a bad split never costs an epoch."""
    for name in SPLIT_PARTS:
        part = np.asarray(getattr(split, name))
        if part.size == 0:
            raise UserError(f"{where}: the {name} part is empty; every split needs query, train and "
                            f"database items")
        bad = np.flatnonzero((part < 0) | (part >= num_items))
        if bad.size:
            raise UserError(f"{where}: {name}[{bad[0]}] = {part[bad[0]]} lies outside 0..{num_items - 1} "
                            f"(indices are 0-based); this split belongs to another dataset")
        order = np.argsort(part, kind="stable")
        repeats = order[1:][part[order[1:]] == part[order[:-1]]]  # every later occurrence
        if repeats.size:
            repeat = int(repeats.min())
            raise UserError(f"{where}: {name}[{repeat}] = {part[repeat]} repeats an earlier index; each item "
                            f"may appear once per part")


def _index_array(values, name, path):
    """A split part as int64 indices; floats are accepted only when whole (MATLAB saves doubles)."""
    array = np.asarray(values).reshape(-1)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or \
            np.issubdtype(array.dtype, np.complexfloating):
        raise UserError(f"split file {path}: {name} has dtype {array.dtype}; it must hold integer row "
                        f"indices (0-based)")
    if np.issubdtype(array.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if bad.size:
            raise UserError(f"split file {path}: {name}[{bad[0]}] = {array[bad[0]]} is not a whole "
                            f"number; give integer row indices (0-based)")
    return array.astype(np.int64)


def load_split(path, num_items):
    """Reads `query`, `train`, `database` index arrays (0-based) from .npz or .mat."""
    if not os.path.exists(path):
        raise UserError(f"split file {path} does not exist; give an .npz or .mat with "
                        f"query/train/database index arrays")
    if not path.lower().endswith((".npz", ".mat")):
        raise UserError(f"split file {path} is neither .npz nor .mat; give an .npz (as train.py "
                        f"writes) or .mat with query/train/database index arrays")
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        else:
            arrays = scipy.io.loadmat(path)
    except Exception as error:
        raise UserError(f"cannot read split file {path} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); give an .npz or .mat "
                        f"with query/train/database index arrays") from None
    missing = [k for k in SPLIT_PARTS if k not in arrays]
    if missing:
        raise UserError(f"split file {path} lacks {missing}; it needs 0-based index arrays "
                        f"named query, train and database")
    split = Split(*(_index_array(arrays[k], k, path) for k in SPLIT_PARTS))
    check_split(split, num_items, f"split file {path}")
    return split
