"""The DCMH-family file layout (MIRFLICKR-25K, NUS-WIDE, MS-COCO).

Either one MATLAB v7.3 (HDF5) file holding `images` (or `IAll`), `YAll` and
`LAll`, or a folder with three MATLAB files whose names contain `iall`, `yall`
and `lall`. MATLAB stores arrays column-major, so h5py sees every array with its
axes reversed; we read them in MATLAB's axis order. `YAll` (N x d) and `LAll`
(N x c) hold the items on MATLAB's first axis. The image side is either uint8
images or pre-extracted features (N x d float). Images come in two layouts,
told apart by which axis has the N items of `LAll`:
  224 x 224 x 3 x N  the authors' files (items on MATLAB's LAST axis; h5py shows
                     N x 3 x 224 x 224, which the SSAH program transposes with
                     (0, 3, 2, 1) to N x 224 x 224 x 3); `prepare.py` writes this
  N x 224 x 224 x 3  items first, as earlier versions of this port wrote them
When both axes have N items (224 images of 224 x 224), the authors' layout wins
unless its channel axis (third) is not of size 1 or 3.
Either way an item reads as height x width x 3 uint8.
"""
import glob
import os

import h5py
import numpy as np
import scipy.io

from utils import io
from utils.data.pipeline import aligned_array
from utils.data.validate import check_inputs
from utils.errors import UserError

IMAGE_KEYS = ("images", "IAll")


def items_on_last_axis(matlab_shape, num_items, what):
    """True when the items lie on the LAST MATLAB axis of an image or feature array
    (images h x w x 3 x N, features d x N), False when on the first (N x h x w x 3, N x d)."""
    matlab_shape = tuple(matlab_shape)
    first, last = matlab_shape[0] == num_items, matlab_shape[-1] == num_items
    if not (first or last):
        raise UserError(f"{what} has shape {' x '.join(map(str, matlab_shape))} (MATLAB order) but LAll has "
                        f"{num_items} rows: no axis holds the items, so the arrays have different numbers "
                        f"of rows; give images 224 x 224 x 3 x N (or N x 224 x 224 x 3) of this dataset")
    if first and last:  # N equals another dimension
        if len(matlab_shape) == 2:
            return False  # features: N x d, as YAll
        return matlab_shape[-2] in (1, 3)  # the authors' h x w x 3 x N unless that axis is no channel axis
    return last


# How an image array can be stored in an HDF5 file (h5py create_dataset arguments by kind)
STORAGE_KINDS = ("contiguous", "chunked per image", "chunked", "compressed")


def write_images(f, key, images, items_first_in_file=True, storage="chunked per image", items_per_chunk=16):
    """Writes N x h x w x 3 uint8 `images` to the open h5py file `f` as MATLAB v7.3 stores them
    (axes reversed): items_first_in_file, h5py (N, 3, w, h) = MATLAB h x w x 3 x N (the authors'
    layout), else h5py (3, w, h, N); storage one of STORAGE_KINDS: "chunked" holds
    items_per_chunk items a chunk, "compressed" gzip with h5py's own chunk shape."""
    stored = np.ascontiguousarray(images.transpose(0, 3, 2, 1) if items_first_in_file else images.T)
    item_axis = 0 if items_first_in_file else 3

    def chunk(items):
        shape = list(stored.shape)
        shape[item_axis] = min(items, shape[item_axis])
        return tuple(shape)
    options = {"contiguous": {}, "chunked per image": {"chunks": chunk(1)},
               "chunked": {"chunks": chunk(items_per_chunk)},
               "compressed": {"chunks": True, "compression": "gzip", "compression_opts": 1}}
    if storage not in options:
        raise UserError(f"unknown image storage {storage!r}; choose one of {', '.join(STORAGE_KINDS)}")
    return f.create_dataset(key, data=stored, **options[storage])


class HDF5Images:
    """Row access to an HDF5 image array without loading it: `images[rows]`, each row
    height x width x 3.

    In the authors' layout (MATLAB h x w x 3 x N) h5py sees (N, 3, w, h) and a row is the
    slab `dataset[row]`, transposed; in the items-first layout (MATLAB N x h x w x 3) h5py
    sees (3, w, h, N) and a row is `dataset[..., row]`, transposed. `num_items` (the rows of
    LAll) decides which; without it, it is read from the file's LAll.
    """

    def __init__(self, path, key, num_items=None):
        self.path, self.key = path, key
        self._file = None
        with io.open_hdf5(path, "image file") as f:
            stored = f[key].shape
            if num_items is None:
                if "LAll" not in f:
                    raise UserError(f"{path} has no 'LAll' array to tell the number of items of '{key}'")
                num_items = f["LAll"].shape[-1]
        matlab_shape = tuple(reversed(stored))
        self.items_first_in_file = items_on_last_axis(matlab_shape, num_items, f"{path}: {key}")
        item_shape = matlab_shape[:-1] if self.items_first_in_file else matlab_shape[1:]
        self.shape = (num_items,) + tuple(item_shape)
        self.ndim = len(self.shape)
        self.dtype = np.uint8

    def __len__(self):
        return self.shape[0]

    def _dataset(self):
        if self._file is None:  # opened on first use, so the object can cross process forks
            self._file = io.open_hdf5(self.path, "image file")
        return self._file[self.key]

    @property
    def read_plan(self):
        """How rows are read, chosen by the file's storage (h5py's view of the array):
        "selection"  contiguous: one h5py selection of all the rows (128 single-row reads of a
                     contiguous items-last array take 4.0 s, one selection 0.2 s);
        "rows"       chunked one item per chunk (compressed or not): one hyperslab per row (h5py's
                     fancy selection on the items axis is ~40x slower there: 7.3 s vs 0.17 s);
        "spans"      chunked several items per chunk (compressed or not): per chunk of items that
                     holds wanted rows, ONE read of the span from its first to its last wanted row
                     (row by row would read, and decompress, a chunk once per row)."""
        dataset = self._dataset()
        if dataset.chunks is None:
            return "selection"
        return "rows" if dataset.chunks[self._item_axis] == 1 else "spans"

    @property
    def _item_axis(self):
        return 0 if self.items_first_in_file else len(self.shape) - 1

    def _read_sorted(self, dataset, unique):
        """The rows `unique` (sorted, distinct) in h5py's axis order, items on _item_axis."""
        plan = self.read_plan

        def take(index):
            return dataset[index] if self.items_first_in_file else dataset[..., index]
        if plan == "selection":
            return take(unique.tolist())
        if plan == "rows":
            return np.stack([take(int(row)) for row in unique], axis=self._item_axis)
        per_chunk = dataset.chunks[self._item_axis]
        groups = np.split(unique, np.flatnonzero(np.diff(unique // per_chunk)) + 1)
        parts = [np.take(take(slice(int(group[0]), int(group[-1]) + 1)), group - group[0], axis=self._item_axis)
                 for group in groups]
        return np.concatenate(parts, axis=self._item_axis)

    def __getitem__(self, rows):
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        order = np.argsort(rows)  # each row read once, in file order
        unique, inverse = np.unique(rows[order], return_inverse=True)
        if not len(unique):
            return np.empty((0,) + self.shape[1:], self.dtype)
        values = self._read_sorted(self._dataset(), unique)
        # h5py's axes are MATLAB's reversed: (k, 3, w, h) or (3, w, h, k) -> (k, h, w, 3)
        block = values.transpose((0, 3, 2, 1) if self.items_first_in_file else (3, 2, 1, 0))
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        out[order] = block[inverse]
        return out

    def __getstate__(self):
        return {"path": self.path, "key": self.key, "_file": None, "shape": self.shape,
                "ndim": self.ndim, "dtype": self.dtype, "items_first_in_file": self.items_first_in_file}


def _matrix_from_hdf5(f, key, path):
    if key not in f:
        raise UserError(f"{path} has no '{key}' array (found {sorted(f.keys())}); "
                        f"a DCMH-format file holds images/IAll, YAll and LAll")
    return np.asarray(f[key][()]).T


def _image_side(matlab_array, num_items, what):
    """Images (N, h, w, 3) or float32 features (N, d) from an in-memory MATLAB-order array."""
    if matlab_array.ndim not in (2, 4):
        raise UserError(f"{what} has {matlab_array.ndim} axes; give features N x d or images "
                        f"224 x 224 x 3 x N")
    if items_on_last_axis(matlab_array.shape, num_items, what):
        matlab_array = np.moveaxis(matlab_array, -1, 0)
    return aligned_array(matlab_array, np.float32) if matlab_array.ndim == 2 else matlab_array


def read_dcmh_hdf5(path):
    with io.open_hdf5(path, "dataset file") as f:
        image_key = next((k for k in IMAGE_KEYS if k in f), None)
        if image_key is None:
            raise UserError(f"{path} has no 'images' or 'IAll' array (found {sorted(f.keys())}); "
                            f"a DCMH-format file holds images, YAll and LAll")
        texts = aligned_array(_matrix_from_hdf5(f, "YAll", path), np.float32)  # shared with the device
        labels = _matrix_from_hdf5(f, "LAll", path).astype(np.float32)
        image_ndim = f[image_key].ndim
        mean_image = np.asarray(f["mean_image"][()]).T.astype(np.float32) if "mean_image" in f else None
        if image_ndim == 2:
            images = _image_side(_matrix_from_hdf5(f, image_key, path), len(labels), f"{path}: {image_key}")
    if image_ndim == 4:
        images = HDF5Images(path, image_key, len(labels))
    elif image_ndim != 2:
        raise UserError(f"{path}: {image_key} has {image_ndim} axes; give features N x d or images "
                        f"224 x 224 x 3 x N")
    _check(path, path, path, texts, labels, images, image_key)
    return images, texts, labels, mean_image


def _check(text_file, label_file, image_file, texts, labels, images, image_key):
    """Load-time checks of the arrays (in their files' names) before anything trains on them."""
    if len(texts) != len(labels):
        raise UserError(f"YAll ({len(texts)} rows, {text_file}) and LAll ({len(labels)} rows, {label_file}) "
                        f"have different numbers of rows; the files belong to different datasets")
    check_inputs(label_file, multi_hot={"LAll": labels})
    check_inputs(text_file, features={"YAll": texts})
    if isinstance(images, np.ndarray):
        check_inputs(image_file, features={image_key: images})


def _read_v5_field(path, name):
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:  # v7.3 file: HDF5 inside
        with io.open_hdf5(path, "MATLAB file") as f:
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
    texts = aligned_array(_read_v5_field(found["yall"], "YAll"), np.float32)
    labels = _read_v5_field(found["lall"], "LAll").astype(np.float32)
    lazy = False
    if h5py.is_hdf5(found["iall"]):  # v7.3: images are read lazily, as from the single file
        with io.open_hdf5(found["iall"], "image file") as f:
            lazy = "IAll" in f and f["IAll"].ndim == 4
    if lazy:
        images = HDF5Images(found["iall"], "IAll", len(labels))
    else:
        images = _image_side(_read_v5_field(found["iall"], "IAll"), len(labels), f"{found['iall']}: IAll")
    _check(found["yall"], found["lall"], found["iall"], texts, labels, images, "IAll")
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
