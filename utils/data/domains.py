"""Cross-domain retrieval data: a labelled source domain and an unlabelled target domain.

`load_domain_pair(name, path, seed)` returns a `DomainPair`. Names (the
`--dataset` option of METAH):

  mnist->usps, usps->mnist              mnist-usps/MNIST_vs_USPS.mat (16x16 digits as 256-d rows)
  office-googlenet:amazon->dslr         office-caltech10/googlenet1024/{amazon,dslr,webcam}.mat
  office-surf:caltech10->webcam         office-caltech10/surf/{amazon,caltech10,dslr,webcam}.mat
  folder:SRC->TGT  (--data ROOT)        ROOT/SRC.mat|.npz and ROOT/TGT.mat|.npz with `features`
                                        (or `fts` / `X`) and `labels` (1-based or 0-based ids)
  images:SRC->TGT  (--data ROOT)        ROOT/SRC/<class>/*.jpg|png (decoded and resized with tf.image)

Office domains may be abbreviated to their initial: office-googlenet:A->D.
`load_domain_pair((source_file, target_file))` reads two generic files directly.

Splits (stated so that every program sees the same protocol):
  target: a seeded, class-stratified `query_fraction` (default 10%, at least one per
          class) are the target queries; the rest is the target database, which is also
          the unlabelled target training set.
  source: every item is labelled training data and the source database. With
          `validation_fraction > 0` a seeded, class-stratified part of the source is
          held out instead as validation queries (retrieving from the remaining source),
          the only split used to choose hyperparameters.
"""
import dataclasses
import os

import numpy as np
import scipy.io

from utils.data import data_roots
from utils.data.splits import load_split
from utils.data.validate import check_inputs
from utils.errors import UserError

OFFICE_FEATURE_SETS = {"office-googlenet": "googlenet1024", "office-surf": "surf"}
OFFICE_DOMAINS = {"office-googlenet": ("amazon", "dslr", "webcam"),
                  "office-surf": ("amazon", "caltech10", "dslr", "webcam")}
OFFICE_INITIALS = {"a": "amazon", "c": "caltech10", "d": "dslr", "w": "webcam"}
DIGIT_DOMAINS = {"mnist": ("X_src", "Y_src"), "usps": ("X_tar", "Y_tar")}
FEATURE_KEYS = ("features", "fts", "X")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FAMILIES = ("mnist->usps", "usps->mnist", "office-googlenet:S->T", "office-surf:S->T",
            "folder:S->T", "images:S->T")
DEFAULT_PAIR = "mnist->usps"


@dataclasses.dataclass
class DomainData:
    """One domain: features (n, d) float32 or images (n, h, w, 3) uint8, class ids 0..C-1."""
    name: str
    inputs: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.inputs) != len(self.labels):
            raise UserError(f"domain '{self.name}' has {len(self.inputs)} items but "
                            f"{len(self.labels)} labels; give one label per item")

    @property
    def kind(self):
        return "features" if self.inputs.ndim == 2 else "images"

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class DomainPair:
    """Source and target domains with the retrieval splits (row indices into each domain)."""
    name: str
    source: DomainData
    target: DomainData
    num_classes: int
    target_query: np.ndarray
    target_database: np.ndarray   # also the unlabelled target training set
    source_train: np.ndarray      # labelled training set = source database
    source_validation: np.ndarray  # empty unless validation_fraction > 0

    def one_hot(self, labels):
        return np.eye(self.num_classes, dtype=np.float32)[labels]


def stratified_holdout(labels, fraction, seed):
    """Seeded per-class holdout: round(fraction * n_c) items of each class (at least one
    when the class has two or more); returns (held_out, rest) as sorted row indices."""
    rng = np.random.RandomState(seed)
    held = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        count = int(round(fraction * len(rows)))
        count = min(max(count, 1 if len(rows) > 1 else 0), len(rows) - 1 if len(rows) > 1 else 0)
        held.extend(rng.permutation(rows)[:count])
    held = np.sort(np.asarray(held, dtype=np.int64))
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return held, rest


def _loadmat(path, what):
    if not os.path.exists(path):
        raise UserError(f"{what} file {path} not found; pass --data pointing at the folder that holds it")
    try:
        return scipy.io.loadmat(path)
    except Exception as error:
        raise UserError(f"cannot read {path} as a MATLAB v5 file ({type(error).__name__}); "
                        f"give the original .mat file") from None


def _class_ids(raw, path):
    """Whole-number class ids >= 0 (0..C-1 or 1..C: the shift is decided per pair)."""
    return check_inputs(path, class_ids={"labels": raw}, first_class=0)["labels"]


def read_generic(path, name=None):
    """A .mat or .npz with features n x d (`features`, `fts` or `X`) and `labels` (n ids)."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    if not os.path.exists(path):
        raise UserError(f"domain file {path} not found; give a .mat or .npz with features and labels")
    if path.endswith(".npz"):
        arrays = dict(np.load(path))
    else:
        arrays = _loadmat(path, "domain")
    key = next((k for k in FEATURE_KEYS if k in arrays), None)
    if key is None or "labels" not in arrays:
        missing = "labels" if key is not None else "features (or fts / X)"
        raise UserError(f"{path} lacks field {missing}; a domain file holds features n x d and labels")
    features = np.asarray(arrays[key], dtype=np.float32)
    labels = np.asarray(arrays["labels"]).reshape(-1)
    if features.ndim != 2:
        raise UserError(f"{path}: {key} must be a 2-d matrix (items x dimensions), got shape {features.shape}")
    if features.shape[0] != labels.size and features.shape[1] == labels.size:
        features = features.T  # stored as columns
    check_inputs(path, features={key: features})
    return DomainData(name, np.ascontiguousarray(features), _class_ids(labels, path))


def read_office(feature_set, domain, root):
    folder = OFFICE_FEATURE_SETS[feature_set]
    # --data may name office-caltech10/ or its feature folder directly.
    base = root if os.path.exists(os.path.join(root, f"{domain}.mat")) else os.path.join(root, folder)
    path = os.path.join(base, f"{domain}.mat")
    mat = _loadmat(path, f"Office-Caltech10 {folder}")
    if "fts" not in mat or "labels" not in mat:
        raise UserError(f"{path} lacks field {'fts' if 'fts' not in mat else 'labels'}; "
                        f"give the original Office-Caltech10 file")
    features = mat["fts"].astype(np.float32)
    check_inputs(path, features={"fts": features})
    return DomainData(domain, features, _class_ids(mat["labels"], path))


def read_digits(domain, path):
    if os.path.isdir(path):
        path = os.path.join(path, "MNIST_vs_USPS.mat")
    mat = _loadmat(path, "MNIST_vs_USPS")
    x_key, y_key = DIGIT_DOMAINS[domain]
    if x_key not in mat or y_key not in mat:
        raise UserError(f"{path} lacks field {x_key if x_key not in mat else y_key}; give MNIST_vs_USPS.mat")
    # Images are stored as 256-d columns.
    features = np.ascontiguousarray(mat[x_key].T.astype(np.float32))
    check_inputs(path, features={x_key + " (columns)": features})
    return DomainData(domain, features, _class_ids(mat[y_key], path))


def read_image_folder(root, domain, image_size, class_names=None):
    """ROOT/DOMAIN/<class>/<image>: decoded with tf.image and resized to image_size x image_size."""
    import tensorflow as tf
    folder = os.path.join(root, domain)
    if not os.path.isdir(folder):
        raise UserError(f"image folder {folder} not found; the layout is ROOT/DOMAIN/CLASS/*.jpg")
    present = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    class_names = list(class_names or present)
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        raise UserError(f"{folder} has classes {unknown} that the source domain lacks; "
                        f"both domains need the same class folders")
    images, labels = [], []
    for cls, class_name in enumerate(class_names):
        class_dir = os.path.join(folder, class_name)
        if not os.path.isdir(class_dir):
            continue
        for file_name in sorted(os.listdir(class_dir)):
            if not file_name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = os.path.join(class_dir, file_name)
            try:
                image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            except tf.errors.OpError:
                raise UserError(f"cannot decode image {path}; remove it or replace it with a JPEG/PNG") from None
            image = tf.image.resize(image, (image_size, image_size), antialias=True)
            images.append(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy())
            labels.append(cls)
    if not images:
        raise UserError(f"no images found under {folder}; the layout is ROOT/DOMAIN/CLASS/*.jpg")
    return DomainData(domain, np.stack(images), np.asarray(labels, dtype=np.int64)), class_names


def _default_path(relative):
    for root in data_roots():
        candidate = os.path.join(root, relative)
        if os.path.exists(candidate):
            return candidate
    raise UserError(f"data for this domain pair not found under {data_roots()}; pass --data PATH "
                    f"(see README, section METAH)")


def parse_pair_name(name):
    """'office-googlenet:A->D' -> ('office-googlenet', 'amazon', 'dslr')."""
    family, _, domains = name.rpartition(":")
    if "->" not in domains:
        raise UserError(f"domain pair '{name}' is not of the form SOURCE->TARGET; known forms: "
                        f"{', '.join(FAMILIES)}")
    source, target = (part.strip() for part in domains.split("->", 1))
    if not family:
        if {source, target} != set(DIGIT_DOMAINS):
            raise UserError(f"unknown domain pair '{name}'; known forms: {', '.join(FAMILIES)}")
        return "digits", source, target
    if family in OFFICE_DOMAINS:
        source, target = (OFFICE_INITIALS.get(d.lower(), d.lower()) for d in (source, target))
        for domain in (source, target):
            if domain not in OFFICE_DOMAINS[family]:
                raise UserError(f"unknown domain '{domain}' for {family}; choose from "
                                f"{', '.join(OFFICE_DOMAINS[family])}")
    elif family not in ("folder", "images"):
        raise UserError(f"unknown domain family '{family}'; known forms: {', '.join(FAMILIES)}")
    if source == target:
        raise UserError(f"domain pair '{name}' has the same source and target; pick two domains")
    return family, source, target


def load_domains(name_or_paths, path="", image_size=64):
    """Returns (pair name, source DomainData, target DomainData)."""
    if isinstance(name_or_paths, (tuple, list)):
        source_file, target_file = name_or_paths
        source, target = read_generic(source_file), read_generic(target_file)
        return f"{source.name}->{target.name}", source, target
    family, source_name, target_name = parse_pair_name(name_or_paths)
    if family == "digits":
        root = path or _default_path("mnist-usps/MNIST_vs_USPS.mat")
        source, target = read_digits(source_name, root), read_digits(target_name, root)
    elif family in OFFICE_DOMAINS:
        root = path or _default_path("office-caltech10")
        source, target = (read_office(family, d, root) for d in (source_name, target_name))
    else:
        if not path:
            raise UserError(f"'{family}:' pairs read from a folder: pass --data ROOT")
        if family == "folder":
            source, target = (read_generic(_domain_file(path, d), d) for d in (source_name, target_name))
        else:
            source, classes = read_image_folder(path, source_name, image_size)
            target, _ = read_image_folder(path, target_name, image_size, classes)
    return name_or_paths, source, target


def _zero_based(source, target):
    """Ids 1..C (MATLAB files) become 0..C-1; the shift is decided on both domains together."""
    if min(source.labels.min(), target.labels.min()) == 1:
        source = dataclasses.replace(source, labels=source.labels - 1)
        target = dataclasses.replace(target, labels=target.labels - 1)
    return source, target


def _domain_file(root, domain):
    for suffix in (".mat", ".npz"):
        candidate = os.path.join(root, domain + suffix)
        if os.path.exists(candidate):
            return candidate
    raise UserError(f"no {domain}.mat or {domain}.npz in {root}; give --data the folder of domain files")


def load_domain_pair(name_or_paths=DEFAULT_PAIR, path="", seed=0, query_fraction=0.1,
                     validation_fraction=0.0, split_file="", image_size=64):
    """Loads a source/target pair and splits it (see the module docstring).

    `split_file` (.npz/.mat with 0-based `query`, `train`, `database` rows of the TARGET
    domain) replaces the seeded target split; `train` must equal `database` here.
    """
    name, source, target = load_domains(name_or_paths, path, image_size)
    source, target = _zero_based(source, target)
    if source.inputs.shape[1:] != target.inputs.shape[1:]:
        raise UserError(f"source {source.name} has inputs of shape {source.inputs.shape[1:]} but target "
                        f"{target.name} has {target.inputs.shape[1:]}; both need the same feature set")
    num_classes = int(max(source.labels.max(), target.labels.max())) + 1
    if not 0.0 < query_fraction < 1.0:
        raise UserError(f"query fraction {query_fraction} must lie strictly between 0 and 1")
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(f"validation fraction {validation_fraction} must lie in [0, 1)")
    if split_file:
        split = load_split(split_file, len(target))
        if not np.array_equal(np.sort(split.train), np.sort(split.database)):
            raise UserError(f"split file {split_file}: for a domain pair the target training set is "
                            f"the target database; give train equal to database")
        target_query, target_database = split.query, split.database
    else:
        target_query, target_database = stratified_holdout(target.labels, query_fraction, seed)
    if validation_fraction > 0:
        source_validation, source_train = stratified_holdout(source.labels, validation_fraction, seed + 1)
    else:
        source_validation, source_train = np.zeros(0, np.int64), np.arange(len(source))
    from utils.metrics import trivial_relevance_warning
    warning = trivial_relevance_warning(np.eye(num_classes)[target.labels[target_query]],
                                        np.eye(num_classes)[target.labels[target_database]], f"{name}'s target split")
    if warning:
        print(warning, flush=True)
    return DomainPair(name=name, source=source, target=target, num_classes=num_classes,
                      target_query=target_query, target_database=target_database,
                      source_train=source_train, source_validation=source_validation)
