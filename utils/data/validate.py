"""Checks of loaded arrays, shared by every loader, so that wrong inputs stop at load time
with one line naming the file, the array and the first bad row (not as a NaN loss, an
mAP of 0 or a silently shifted class after training).

    check_inputs(path, features={"YAll": texts}, multi_hot={"LAll": labels})
    check_inputs(path, features={"I_tr": images}, class_ids={"L_tr": ids})
"""
import warnings

import numpy as np

from utils.errors import UserError


def first_bad_row(bad_rows):
    """Index of the first True in a per-row mask, or None."""
    bad = np.flatnonzero(bad_rows)
    return int(bad[0]) if bad.size else None


def check_finite(array, what):
    """Every value of a float array must be finite; `what` names the array (and its file)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return
    rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
    block = max(1, 2**24 // max(1, rows.shape[1]))  # rows per pass: a bounded temporary mask
    for start in range(0, len(rows), block):
        row = first_bad_row(~np.isfinite(rows[start:start + block]).all(axis=1))
        if row is not None:
            row += start
            value = rows[row][~np.isfinite(rows[row])][0]
            raise UserError(f"{what}: row {row} (0-based) holds {value}; every value must be finite: "
                            f"fix or drop that item")


def check_multi_hot(labels, what):
    """Labels must be 0/1 with at least one label somewhere; rows without a label are allowed
    (they are relevant to nothing) but counted in a warning."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserError(f"{what}: labels must be an items x classes 0/1 matrix, got shape {labels.shape}")
    check_finite(labels, what)
    row = first_bad_row(((labels != 0) & (labels != 1)).any(axis=1))
    if row is not None:
        value = labels[row][(labels[row] != 0) & (labels[row] != 1)][0]
        raise UserError(f"{what}: row {row} (0-based) holds {value}; labels must be a 0/1 matrix "
                        f"(one column per class)")
    empty = ~labels.any(axis=1)
    if len(labels) and empty.all():
        raise UserError(f"{what}: no item has a label (all {len(labels)} rows are zero); every "
                        f"retrieval would score mAP 0: give the label matrix of this dataset")
    if empty.any():
        warnings.warn(f"{what}: {int(empty.sum())} of {len(labels)} items have no label (first: row "
                      f"{first_bad_row(empty)}); they are relevant to no query", stacklevel=3)


def check_class_ids(ids, what, first=1, num_classes=None):
    """Single-label class ids, stored `first`..`first + C - 1` (the MATLAB files use 1..C)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        raise UserError(f"{what}: no labels; give one class id per item")
    numeric = np.issubdtype(ids.dtype, np.number) and not np.issubdtype(ids.dtype, np.complexfloating)
    if not numeric:
        raise UserError(f"{what}: class ids must be numbers, got dtype {ids.dtype}")
    check_finite(ids.reshape(-1, 1), what)
    row = first_bad_row(ids != np.round(ids))
    if row is not None:
        raise UserError(f"{what}: row {row} (0-based) holds {ids[row]}; class ids must be whole numbers")
    last = None if num_classes is None else first + num_classes - 1
    row = first_bad_row((ids < first) | ((ids > last) if last is not None else False))
    if row is not None:
        wanted = f"{first}..{last}" if last is not None else "1..C" if first == 1 else f"{first} or more"
        hint = " (the labels look 0-based)" if first == 1 and ids.min() == 0 and (last is None or ids.max() < last) \
            else ""
        raise UserError(f"{what}: row {row} (0-based) holds class {ids[row]}{hint}; the file must store "
                        f"class ids {wanted}")
    return ids.astype(np.int64)


def check_inputs(where, features=None, multi_hot=None, class_ids=None, first_class=1, num_classes=None):
    """The one load-time check of a data file: `features` {name: array} must be finite,
    `multi_hot` {name: labels} 0/1 with some label, `class_ids` {name: ids} whole numbers in
    first_class..first_class + num_classes - 1. Returns the class ids as int64 arrays."""
    for name, array in (features or {}).items():
        check_finite(array, f"{where}: {name}")
    for name, labels in (multi_hot or {}).items():
        check_multi_hot(labels, f"{where}: {name}")
    return {name: check_class_ids(ids, f"{where}: {name}", first_class, num_classes)
            for name, ids in (class_ids or {}).items()}
