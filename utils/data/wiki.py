"""Wikipedia image-text benchmark, `wikiData.mat` (128-d SIFT, 10-d LDA, 10 classes)."""
import os

import numpy as np
import scipy.io

from utils.data.validate import check_inputs
from utils.errors import UserError

WIKI_FIELDS = ("I_tr", "I_te", "T_tr", "T_te", "L_tr", "L_te")


def read_wiki_mat(path):
    """Returns train and test (images, texts, class ids 0..9) from wikiData.mat."""
    if not os.path.exists(path):
        raise UserError(f"Wikipedia file {path} not found; pass --data PATH/wikiData.mat")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:
        raise UserError(f"cannot read {path} as a MATLAB file ({error}); give the wikiData.mat file") from None
    missing = [name for name in WIKI_FIELDS if name not in mat]
    if missing:
        raise UserError(f"{path} lacks fields {missing}; a wikiData.mat has {list(WIKI_FIELDS)}")
    parts = {}
    for part in ("tr", "te"):
        images = mat["I_" + part].astype(np.float32)
        texts = mat["T_" + part].astype(np.float32)
        ids = check_inputs(path, features={"I_" + part: images, "T_" + part: texts},
                           class_ids={"L_" + part: mat["L_" + part]})
        classes = ids["L_" + part] - 1  # the file stores 1..10
        if not len(images) == len(texts) == len(classes):
            raise UserError(f"{path}: I_{part}, T_{part} and L_{part} have different numbers of rows")
        parts[part] = (images, texts, classes)
    return parts["tr"], parts["te"]


def one_hot(classes, num_classes=None):
    num_classes = int(classes.max()) + 1 if num_classes is None else num_classes
    return np.eye(num_classes, dtype=np.float32)[classes]
