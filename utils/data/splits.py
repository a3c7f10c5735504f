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
    # Rows held out of training to choose settings and checkpoints (carve_validation); never queries.
    validation: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def validation_database(self):
        """The database the validation items are ranked against: the database without them."""
        return self.database[~np.isin(self.database, self.validation)]

    def save(self, path):
        parts = {"query": self.query, "train": self.train, "database": self.database}
        if len(self.validation):
            parts["validation"] = self.validation
        io.save_npz(path, parts)


def carve_validation(split, size, seed):
    """`size` training items (a seeded draw) become the validation part: they leave the training
    set, so settings and checkpoints chosen on them are chosen on items never trained on, and
    the queries stay untouched. Validation items are ranked against the database without them."""
    if size <= 0:
        return split
    if len(split.validation):
        raise UserError(f"the split file already holds {len(split.validation)} validation items; drop "
                        f"--validation-size (or the file's validation array)")
    if size >= len(split.train):
        raise UserError(f"--validation-size {size} leaves no training items (the training set has "
                        f"{len(split.train)}); give a smaller --validation-size")
    order = np.random.RandomState([seed, 7919]).permutation(len(split.train))
    held = np.sort(order[:size])
    keep = np.sort(order[size:])
    return dataclasses.replace(split, train=split.train[keep], validation=split.train[held])


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
    validation = np.asarray(split.validation)
    if validation.size:
        bad = np.flatnonzero((validation < 0) | (validation >= num_items))
        if bad.size:
            raise UserError(f"{where}: validation[{bad[0]}] = {validation[bad[0]]} lies outside "
                            f"0..{num_items - 1}; this split belongs to another dataset")
        for name in ("query", "train"):
            shared = np.intersect1d(validation, getattr(split, name))
            if shared.size:
                raise UserError(f"{where}: item {shared[0]} is both a validation and a {name} item; "
                                f"validation items must be held out of both")


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
    if "validation" in arrays:
        split.validation = _index_array(arrays["validation"], "validation", path)
    check_split(split, num_items, f"split file {path}")
    return split
