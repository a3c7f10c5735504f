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
    if num_query + num_train > num_items:
        raise UserError(f"split needs {num_query} queries + {num_train} training items but the "
                        f"dataset has only {num_items}; pass smaller split sizes")
    order = np.random.RandomState(seed).permutation(num_items)
    end = num_items if num_database is None else num_query + num_database
    return Split(query=order[:num_query], train=order[num_query:num_query + num_train],
                 database=order[num_query:end])


def load_split(path, num_items):
    """Reads `query`, `train`, `database` index arrays (0-based) from .npz or .mat."""
    if not os.path.exists(path):
        raise UserError(f"split file {path} does not exist; give an .npz or .mat with "
                        f"query/train/database index arrays")
    arrays = np.load(path) if path.endswith(".npz") else scipy.io.loadmat(path)
    missing = [k for k in ("query", "train", "database") if k not in arrays]
    if missing:
        raise UserError(f"split file {path} lacks {missing}; it needs 0-based index arrays "
                        f"named query, train and database")
    split = Split(*(np.asarray(arrays[k]).reshape(-1).astype(np.int64)
                    for k in ("query", "train", "database")))
    for name in ("query", "train", "database"):
        part = getattr(split, name)
        if part.size and (part.min() < 0 or part.max() >= num_items):
            raise UserError(f"split file {path}: {name} indices must lie in 0..{num_items - 1} "
                            f"(0-based); this split belongs to another dataset")
    return split
