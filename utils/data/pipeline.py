"""Batches streamed from an image source through tf.data, so memory does not grow with n.

A source is anything with `source[rows] -> array` and a dtype: the lazy HDF5
image array (`utils.data.dcmh.HDF5Images`), a row subset of one
(`utils.data.LazyRows`, from `CrossModalData.part`), or an in-memory array of
images or features. Only the rows of the batches in flight are read:
at most `parallel_reads + prefetch` batches at a time.

    for images, rows in image_batches(data.images, data.split.train, 128, mean_image):
        ...  # images: float32 (batch, 224, 224, 3) = pixels - mean; rows: int64 (batch,)

Images are converted to float32 and the mean image (224 x 224 x 3, or one value
per channel) is subtracted, as the original program feeds its network. Feature
arrays (n x d) go through the same path without a mean (`feature_batches`).
"""
import numpy as np

from utils.errors import UserError


def batch_rows(rows, batch_size, shuffle_seed=None):
    """The row indices of each batch, in order or shuffled by a seeded permutation.

    The permutation is NumPy's RandomState(seed), so a seed gives the same order on every
    machine; for a new order each epoch pass e.g. seed + epoch. The last batch may be short."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    rows = np.asarray(rows, np.int64).reshape(-1)
    if shuffle_seed is not None:
        rows = rows[np.random.RandomState(shuffle_seed).permutation(len(rows))]
    return [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]


DEVICE_ALIGNMENT = 64  # bytes: TensorFlow's CPU kernels need a buffer aligned to this to use it in place


def aligned_array(values, dtype):
    """`values` as a new C-contiguous array of `dtype` whose buffer is DEVICE_ALIGNMENT-aligned
    (one copy, as astype makes), so that `device_matrix` can share it instead of copying it."""
    values = np.asarray(values)
    dtype = np.dtype(dtype)
    size = int(np.prod(values.shape)) * dtype.itemsize
    raw = np.empty(size + DEVICE_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % DEVICE_ALIGNMENT
    out = raw[offset:offset + size].view(dtype).reshape(values.shape)
    out[...] = values
    return out


def device_matrix(values):
    """A host matrix as a tensor on the default device. On a machine without GPUs the tensor
    shares the array's memory when it can (DLPack; a C-contiguous, aligned, writable array, as
    `aligned_array` makes): the matrix is then held once, not once more as a copy."""
    import tensorflow as tf

    shareable = (isinstance(values, np.ndarray) and values.flags.c_contiguous and values.flags.writeable
                 and values.ctypes.data % DEVICE_ALIGNMENT == 0 and not tf.config.list_logical_devices("GPU"))
    if shareable:
        try:
            return tf.experimental.dlpack.from_dlpack(values.__dlpack__())
        except (BufferError, TypeError, ValueError):  # a dtype or layout DLPack does not take: copy
            pass
    return tf.constant(values)


def host_reads(source):
    """rows (an int64 tensor) -> source[rows] as a tensor of the source's dtype, read on the host
    (tf.numpy_function): only the rows asked for are read, the source is never copied whole."""
    import tensorflow as tf

    item_shape = tuple(source.shape[1:])
    source_dtype = tf.as_dtype(np.dtype(source.dtype))

    def read(rows):
        values = np.asarray(source[rows])
        if values.shape[1:] != item_shape:
            raise UserError(f"the source returned rows of shape {values.shape[1:]}, expected {item_shape}")
        return values.astype(source.dtype, copy=False)

    def read_op(rows):
        values = tf.numpy_function(read, [rows], source_dtype, stateful=False)
        values.set_shape((None,) + item_shape)
        return values
    return read_op


def image_batches(source, rows, batch_size, mean_image=None, shuffle_seed=None,
                  parallel_reads=4, prefetch=2):
    """tf.data.Dataset of (float32 batch of source rows minus mean_image, int64 row indices).

    Batches come in order (deterministic) even though up to `parallel_reads` are read at once."""
    import tensorflow as tf

    batches = batch_rows(rows, batch_size, shuffle_seed)
    item_shape = tuple(source.shape[1:])
    if mean_image is not None:
        mean_image = np.asarray(mean_image, np.float32)
        try:
            np.broadcast_shapes(mean_image.shape, item_shape)
        except ValueError:
            raise UserError(f"mean image of shape {mean_image.shape} does not fit items of shape "
                            f"{item_shape}; give a {item_shape} or per-channel mean") from None
    ordered = tf.constant(np.concatenate(batches) if batches else np.zeros(0, np.int64))
    read = host_reads(source)

    def read_batch(index):
        batch = ordered[index * batch_size:(index + 1) * batch_size]  # the last one may be short
        return read(batch), batch

    mean = None if mean_image is None else tf.constant(mean_image)

    def to_float(values, batch):
        values = tf.cast(values, tf.float32)
        return (values if mean is None else values - mean), batch

    dataset = tf.data.Dataset.range(len(batches))
    dataset = dataset.map(read_batch, num_parallel_calls=max(1, parallel_reads), deterministic=True)
    dataset = dataset.map(to_float)  # sequential: float32 batches (4x the bytes) are not multiplied
    return dataset.prefetch(prefetch)


def feature_batches(features, rows, batch_size, shuffle_seed=None, parallel_reads=2, prefetch=2):
    """The same stream for a feature array (n x d, in memory or lazy): float32 rows, no mean."""
    return image_batches(features, rows, batch_size, None, shuffle_seed, parallel_reads, prefetch)
