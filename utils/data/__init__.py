"""Cross-modal datasets behind one call: `load_dataset(name, path, seed)`.

Every dataset becomes a `CrossModalData`: images (features n x d, or uint8
images n x h x w x 3, possibly lazy), texts (n x d_t), multi-hot labels
(n x c; single-label sets are one-hot, so "shares a label" = "same class"),
and a split into query / train / database rows.
"""
import dataclasses
import os
from typing import Optional

import numpy as np

from utils.data import acmr_pickles, dcmh, splits, synthetic, wiki
from utils.data.splits import Split
from utils.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Standard protocols of the DCMH/SSAH papers: queries, training items; database = all but queries.
SPLIT_SIZES = {
    "flickr": (2000, 10000),
    "nuswide": (2100, 10500),
    "coco": (5000, 10000),
    "synthetic": (200, 1000),
}

# Where a dataset is looked for when --data is not given, relative to each data root: the file
# `python prepare.py NAME` writes by default (prepared_path), then a DCMH-layout folder.
PREPARED = ("flickr", "nuswide", "coco")
DEFAULT_LOCATIONS = {
    "wiki": ("wikipedia/wikiData.mat",),
    "flickr": ("flickr.h5", "mirflickr25k"),
    "nuswide": ("nuswide.h5", "nuswide"),
    "coco": ("coco.h5", "coco"),
    **{name: (location,) for name, location in acmr_pickles.DEFAULT_LOCATIONS.items()},
}

DATASETS = ("synthetic", "wiki", "flickr", "nuswide", "coco") + tuple(acmr_pickles.LOADERS)
# Datasets whose image side is always feature vectors (no image trunk, so no trunk weights).
FEATURE_DATASETS = ("synthetic", "wiki") + tuple(acmr_pickles.LOADERS)


def data_roots():
    """Folders searched for datasets: $ADVHASH_DATA, ./data, then ../shared/data beside the repo."""
    roots = [os.environ.get("ADVHASH_DATA", ""), os.path.join(REPO_ROOT, "data"),
             os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")]
    return [root for root in roots if root]


@dataclasses.dataclass
class CrossModalData:
    name: str
    images: object            # np.ndarray (n, d) features or (n, h, w, 3) uint8, or dcmh.HDF5Images
    texts: np.ndarray         # (n, d_t) float32
    labels: np.ndarray        # (n, c) float32 multi-hot
    split: Split
    mean_image: Optional[np.ndarray] = None
    single_label: bool = False

    @property
    def image_kind(self):
        return "features" if self.images.ndim == 2 else "images"

    @property
    def num_classes(self):
        return self.labels.shape[1]

    @property
    def text_dim(self):
        return self.texts.shape[1]

    def part(self, name):
        """(images, texts, labels) of one split part (query, train, database, validation, or
        validation_database: the database without the validation items); images stay lazy when
        the source is lazy."""
        rows = getattr(self.split, name)
        images = self.images[rows] if isinstance(self.images, np.ndarray) else LazyRows(self.images, rows)
        return images, self.texts[rows], self.labels[rows]


class LazyRows:
    """A row subset of a lazy image source; indexing reads only the rows asked for."""

    def __init__(self, source, rows):
        self.source, self.rows = source, np.asarray(rows)
        self.shape = (len(self.rows),) + tuple(source.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = source.dtype

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.source[self.rows[index]]


def standardization(rows):
    """(mean, std) per dimension of `rows` (in their dtype) for (x - mean) / std; a dimension
    constant in them (std <= 1e-8) keeps std 1, so it is centred and not blown up."""
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def prepared_path(name):
    """Where `python prepare.py NAME` writes by default: DATA_ROOT/NAME.h5 in the first
    data root ($ADVHASH_DATA, else ./data of the repository), the first place train.py looks."""
    return os.path.join(data_roots()[0], f"{name}.h5")


def resolve_path(name, path):
    if path:
        return path
    if name not in DEFAULT_LOCATIONS:
        return ""
    for root in data_roots():
        for location in DEFAULT_LOCATIONS[name]:
            candidate = os.path.join(root, location)
            if os.path.exists(candidate):
                return candidate
    if name in PREPARED:
        raise UserError(f"dataset '{name}' is not prepared: no {prepared_path(name)}; build it with "
                        f"python prepare.py {name} ... (README, section Full-scale data and "
                        f"training), or pass --data PATH")
    raise UserError(f"dataset '{name}' not found under {data_roots()}; pass --data PATH "
                    f"(see README, section Datasets)")


def sidecar_paths(out):
    """FILE.vocab.json, FILE.manifest.json and FILE.split.npz beside FILE.h5."""
    stem = out[:-3] if out.endswith(".h5") else out
    return stem + ".vocab.json", stem + ".manifest.json", stem + ".split.npz"


def load_dataset(name, path="", seed=0, split_file="", split_sizes=None, validation_size=0):
    """Loads a dataset by name; `split_sizes=(query, train)` overrides the standard protocol;
    `validation_size` training items (seeded) become the validation part (splits.carve_validation)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    if split_sizes and (name == "wiki" or name in acmr_pickles.LOADERS or split_file):
        given = "--split-file gives one" if split_file else f"{name} has its own"
        raise UserError(f"--split-sizes draws a split, but {given}: drop --split-sizes")
    path = resolve_path(name, path)
    mean_image, single_label = None, False
    if name == "synthetic":
        images, texts, labels = synthetic.make_synthetic()
    elif name == "wiki":
        (img_tr, txt_tr, cls_tr), (img_te, txt_te, cls_te) = wiki.read_wiki_mat(path)
        images = np.concatenate([img_tr, img_te])
        texts = np.concatenate([txt_tr, txt_te])
        labels = wiki.one_hot(np.concatenate([cls_tr, cls_te]))
        single_label = True
        n_train = len(img_tr)
        # Standard protocol: the test pairs are the queries; training set = database.
        split = Split(query=np.arange(n_train, len(images)), train=np.arange(n_train),
                      database=np.arange(n_train))
    elif name in acmr_pickles.LOADERS:
        # The ACMR authors' pickles carry their own train/test split (test pairs = queries).
        images, texts, labels, split = acmr_pickles.LOADERS[name](path)
        single_label = True
    else:
        images, texts, labels, mean_image = dcmh.read_dcmh(path)
    if not split_file and name in SPLIT_SIZES:
        check_split_sizes(name, split_sizes or SPLIT_SIZES[name], len(labels))

    if split_file:
        split = splits.load_split(split_file, len(labels))  # checked there, naming the file
    else:
        if name != "wiki" and name not in acmr_pickles.LOADERS:
            num_query, num_train = split_sizes or SPLIT_SIZES[name]
            split = splits.permutation_split(len(labels), num_query, num_train, seed)
        splits.check_split(split, len(labels), f"{path or name}: the {name} split")
    split = splits.carve_validation(split, validation_size, seed)
    from utils.metrics import trivial_relevance_warning
    warning = trivial_relevance_warning(labels[split.query], labels[split.database], f"{name}'s query and database")
    if warning:
        print(warning, flush=True)  # stdout: a run's train.log keeps it
    return CrossModalData(name=name, images=images, texts=texts, labels=labels, split=split,
                          mean_image=mean_image, single_label=single_label)


def check_split_sizes(name, sizes, num_items):
    """(queries, training items) when they fit the dataset; a one-line error naming
    --split-sizes otherwise."""
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"--split-sizes takes two positive numbers QUERY,TRAIN (got {','.join(map(str, sizes))})")
    num_query, num_train = sizes
    if num_query + num_train > num_items:
        small = f"{max(1, num_items // 8)},{max(1, num_items // 2)}"
        raise UserError(f"the split of '{name}' needs {num_query} queries + {num_train} training items but the "
                        f"data has only {num_items}; pass smaller sizes, e.g. --split-sizes {small}")
    return num_query, num_train


def validation_view(data):
    """The data with the validation items as queries, ranked against the database without them,
    and training on the training items left: a method's usual evaluation of this view gives its
    validation figures, and no query of the dataset is used."""
    split = data.split
    if not len(split.validation):
        raise UserError("the data has no validation part; give --validation-size N")
    view = Split(query=split.validation, train=split.train, database=split.validation_database)
    return dataclasses.replace(data, split=view)
