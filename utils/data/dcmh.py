"""The DCMH-family file layout (MIRFLICKR-25K, NUS-WIDE, MS-COCO).

Either one MATLAB v7.3 (HDF5) file holding `images` (or `IAll`), `YAll` and
`LAll`, or a folder with three MATLAB v5 files whose names contain `iall`,
`yall` and `lall`. MATLAB stores arrays column-major, so h5py sees every array
with its axes reversed; we reverse them back. The image side is either uint8
images (n x 224 x 224 x 3, read lazily from HDF5) or pre-extracted features
(n x d float).
"""
import glob
import os

import h5py
import numpy as np
import scipy.io

from utils.errors import UserError

IMAGE_KEYS = ("images", "IAll")


class HDF5Images:
    """Row access to an HDF5 image array without loading it: `images[rows]`.

    The file stores the MATLAB array (n, h, w, 3) column-major, i.e. as
    (3, w, h, n) to h5py; a row read is a slice on the last axis, transposed.
    """

    def __init__(self, path, key):
        self.path, self.key = path, key
        self._file = None
        with h5py.File(path, "r") as f:
            stored = f[key].shape
        self.shape = tuple(reversed(stored))
        self.ndim = len(self.shape)
        self.dtype = np.uint8

    def __len__(self):
        return self.shape[0]

    def _dataset(self):
        if self._file is None:  # opened on first use, so the object can cross process forks
            self._file = h5py.File(self.path, "r")
        return self._file[self.key]

    def __getitem__(self, rows):
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        order = np.argsort(rows)  # each row read once, in file order
        unique, inverse = np.unique(rows[order], return_inverse=True)
        dataset = self._dataset()
        # One hyperslab per row: h5py's fancy selection on the last axis is ~40x slower
        # (128 rows of a file chunked per image: 7.3 s fancy, 0.17 s row by row).
        block = np.empty((len(unique),) + self.shape[1:], self.dtype)
        for i, row in enumerate(unique):
            block[i] = dataset[..., int(row)].T  # (h, w, 3)
        out = np.empty((len(rows),) + block.shape[1:], block.dtype)
        out[order] = block[inverse]
        return out

    def __getstate__(self):
        return {"path": self.path, "key": self.key, "_file": None, "shape": self.shape,
                "ndim": self.ndim, "dtype": self.dtype}


def _matrix_from_hdf5(f, key, path):
    if key not in f:
        raise UserError(f"{path} has no '{key}' array (found {sorted(f.keys())}); "
                        f"a DCMH-format file holds images/IAll, YAll and LAll")
    return np.asarray(f[key][()]).T


def read_dcmh_hdf5(path):
    with h5py.File(path, "r") as f:
        image_key = next((k for k in IMAGE_KEYS if k in f), None)
        if image_key is None:
            raise UserError(f"{path} has no 'images' or 'IAll' array (found {sorted(f.keys())}); "
                            f"a DCMH-format file holds images, YAll and LAll")
        texts = _matrix_from_hdf5(f, "YAll", path).astype(np.float32)
        labels = _matrix_from_hdf5(f, "LAll", path).astype(np.float32)
        image_ndim = f[image_key].ndim
        mean_image = np.asarray(f["mean_image"][()]).T.astype(np.float32) if "mean_image" in f else None
    if image_ndim == 2:
        with h5py.File(path, "r") as f:
            images = _matrix_from_hdf5(f, image_key, path).astype(np.float32)
    else:
        images = HDF5Images(path, image_key)
    return images, texts, labels, mean_image


def _read_v5_field(path, name):
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # v7.3 file: HDF5 inside
        with h5py.File(path, "r") as f:
            return _matrix_from_hdf5(f, name, path)
    except Exception as error:
        raise UserError(f"cannot read {path} as a MATLAB file ({error}); replace the file") from None
    if name not in mat:
        fields = sorted(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path} has no '{name}' array (found {fields}); rename the field or give the right file")
    return mat[name]


def read_dcmh_folder(folder):
    found = {}
    for part in ("iall", "yall", "lall"):
        matches = sorted(p for p in glob.glob(os.path.join(folder, "*.mat"))
                         if part in os.path.basename(p).lower())
        if not matches:
            raise UserError(f"no *{part}*.mat file in {folder}; the folder needs IAll, YAll "
                            f"and LAll .mat files (or pass the single .h5/.mat file)")
        found[part] = matches[0]
    texts = _read_v5_field(found["yall"], "YAll").astype(np.float32)
    labels = _read_v5_field(found["lall"], "LAll").astype(np.float32)
    images = _read_v5_field(found["iall"], "IAll")
    images = images.astype(np.float32) if images.ndim == 2 else images
    return images, texts, labels, None


def read_dcmh(path):
    """Returns (images, texts, labels, mean_image or None) from a file or a folder."""
    if not os.path.exists(path):
        raise UserError(f"dataset path {path} does not exist; pass --data with the DCMH-format "
                        f".h5/.mat file or the folder of IAll/YAll/LAll .mat files")
    if os.path.isdir(path):
        images, texts, labels, mean_image = read_dcmh_folder(path)
    elif h5py.is_hdf5(path):
        images, texts, labels, mean_image = read_dcmh_hdf5(path)
    else:
        raise UserError(f"{path} is not an HDF5 (MATLAB v7.3) file; for MATLAB v5 files pass "
                        f"the folder that holds the IAll/YAll/LAll files")
    if not len(images) == len(texts) == len(labels):
        raise UserError(f"{path}: images ({len(images)}), YAll ({len(texts)}) and LAll ({len(labels)}) "
                        f"have different numbers of rows; the files belong to different datasets")
    return images, texts, labels, mean_image
