"""Atomic file output: a reader never sees a half-written file.

Everything is written to a temporary file in the destination folder and then
renamed over the target (rename is atomic on POSIX within one file system).
"""
import contextlib
import json
import os
import tempfile

import numpy as np
import scipy.io

from utils.errors import UserError, WriteFailed, storage_cause


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as error:
        cause = storage_cause(error)
        if cause is None:
            raise
        raise WriteFailed(f"cannot write {path} ({cause}); the file is left as it was: free space or fix the "
                          f"permissions in {folder}, then run the command again") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")


def to_json(obj):
    """`obj` as compact JSON text (NumPy numbers and arrays as JSON numbers and lists)."""
    return json.dumps(obj, sort_keys=True, default=_json_default)


def load_json(path):
    """The JSON in `path`; a damaged file (cut short, overwritten, not text) is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise UserError(f"cannot read {path}: it is not valid JSON ({str(error).splitlines()[0]}); the file is "
                        f"damaged: restore it from a copy, or start a new run") from None


def open_hdf5(path, what="file"):
    """h5py.File(path, "r"); a truncated or damaged file is a one-line error naming it."""
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if not os.path.exists(path):
            raise UserError(f"{what} {path} not found; pass the right path") from None
        cause = str(error).split("(", 1)[-1].rstrip(")") if "(" in str(error) else str(error)
        raise UserError(f"cannot read {what} {path} ({cause}): the file is truncated or damaged; "
                        f"copy or prepare it again") from None


def save_mat(path, arrays):
    """Writes a MATLAB v5 .mat file (scipy) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            scipy.io.savemat(f, {k: np.asarray(v) for k, v in arrays.items()})


def save_npz(path, arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
