"""The golden results of the authors' programs as the repository carries them: trimmed to the
arrays the tests read (KEEP) and stored exactly but compactly. Every array decodes to a bit-for-bit
copy of the full file's (build.py checks it when it writes the files, test_golden_files.py checks
it again whenever ../shared/golden is present). The full files and what they hold:
../shared/golden/README.md.

How an array may be stored (suffixes of the stored names):
- as it is (np.savez_compressed);
- `~planes`: a large float32 array as its four byte planes (the exponent bytes compress, the
  mantissa bytes do not; about 8 % smaller than the array itself);
- `~delta`: a variable after an update as float32(after - base) from the array named in `~base`
  (its value before the update), plus `~fix_at`/`~fix_ulps` for the few elements where
  base + delta rounds off `after`. A first Adam step moves nearly every element by the same
  step, so the delta compresses to a few bits per element;
- `~normal`: an initial weight the recorder drew with TensorFlow's seeded random_normal
  (graph seed, op seed, stddev), drawn again;
- `~images`: the one-epoch file's synthetic images, drawn again from their recipe (legacy NumPy
  RandomState, whose stream NumPy keeps fixed).
Arrays that are drawn again carry `~sha256`; a mismatch (another NumPy or TensorFlow drawing other
numbers) is an error, never a silently different input.
"""
import hashlib

import numpy as np

SUFFIXES = ("~planes", "~shape", "~delta", "~base", "~fix_at", "~fix_ulps", "~normal", "~images", "~sha256")

# The arrays the tests read, per file: exact names, and prefixes ending in "/".
KEEP = {
    "ssah-one-step.npz": (
        "config", "lr", "batch_index", "input/train_labels", "input/similarity", "input/batch_images_uint8",
        "input/mean_image", "input/batch_text", "buffer/", "init/", "after_lab/", "after_dis/", "after_img/",
        "after_txt/", "lab/", "dis/", "img/", "txt/"),
    "ssah-one-epoch.npz": (
        "config", "config_names", "input/images_uint8", "input/mean_image", "input/labels", "input/text",
        "split/train", "split/query", "split/database", "init/", "buffer/", "passes/lab_limit",
        "passes/dis_limit", "passes/img_limit", "passes/txt_limit", "step/kind", "step/inner_index",
        "step/pass_index", "step/lr", "step/rows", "step/loss_before", "monitor/net", "monitor/inner_index",
        "monitor/pass_index", "monitor/value", "stop_check/net", "stop_check/inner_index",
        "stop_check/pass_index", "stop_check/stopped", "stop_check/last", "stop_check/previous", "code/",
        "map", "map_names"),
    "acmr-three-steps.npz": ("init/", "step0/", "step1/", "step2/"),
}

# The one-epoch file's images (README: "per item the mean of fixed random colours of its labels
# plus Gaussian pixel noise"): RandomState(37), colours uniform in [20, 235), noise std 1.5,
# truncated to uint8, stored item x channel x row x column.
SYNTHETIC_IMAGES = {("ssah-one-epoch.npz", "input/images_uint8"): (37, 20.0, 235.0, 1.5)}
# The graph seed with which the one-epoch recorder drew the program's tf.random_normal weights
# (the file's `seeds` = numpy, graph); the op seeds are found by build.py.
NORMAL_GRAPH_SEED = {"ssah-one-epoch.npz": 2718}
NORMAL_STDDEV = 0.01  # the program's tf.random_normal(stddev=0.01)
PLANES_FROM = 65536  # float32 arrays with at least this many elements are stored as byte planes


def kept(name, key):
    return any(key == k or (k.endswith("/") and key.startswith(k)) for k in KEEP[name])


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def synthetic_images(labels, seed, low, high, noise_std):
    """The one-epoch file's images from its labels (items x classes)."""
    rng = np.random.RandomState(int(seed))
    colours = rng.uniform(low, high, (labels.shape[1], 3))
    labels = labels.astype(np.float64)
    mean = labels @ colours / labels.sum(axis=1, keepdims=True)
    pixels = mean[:, None, None, :] + rng.normal(0.0, noise_std, (len(labels), 224, 224, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def seeded_normal(shape, graph_seed, op_seed, stddev):
    """TensorFlow 1's tf.random_normal(shape, stddev=stddev) with these seeds, in float32. Drawn in
    a graph of its own: an op's random stream runs on over calls of the same kernel, and eager
    execution keeps kernels, so a second eager draw with the same seeds gives other numbers."""
    import tensorflow as tf
    with tf.Graph().as_default():
        draw = tf.raw_ops.RandomStandardNormal(shape=[int(n) for n in shape], dtype=tf.float32,
                                               seed=int(graph_seed), seed2=int(op_seed))
        with tf.compat.v1.Session() as session:
            return session.run(draw) * np.float32(stddev)


def planes(array):
    return np.ascontiguousarray(array, np.float32).view(np.uint8).reshape(-1, 4).T.copy()


def delta(after, base):
    """(delta, fix_at, fix_ulps) with which base + delta, corrected by fix_ulps at fix_at, is
    `after` bit for bit."""
    difference = (after - base).astype(np.float32)
    rebuilt = (base + difference).astype(np.float32)
    ulps = after.view(np.int32).astype(np.int64).ravel() - rebuilt.view(np.int32).astype(np.int64).ravel()
    fix_at = np.flatnonzero(ulps)
    return difference, fix_at, ulps[fix_at].astype(np.int64)


def decode(stored, label="golden file"):
    """The arrays of a trimmed file (a mapping of its stored names), decoded."""
    names = {key.split("~")[0] for key in stored}
    arrays = {}

    def get(key):
        if key in arrays:
            return arrays[key]
        if key in stored:
            value = stored[key]
        elif key + "~planes" in stored:
            value = stored[key + "~planes"].T.copy().view(np.float32).reshape(stored[key + "~shape"])
        elif key + "~delta" in stored:
            base = get(str(stored[key + "~base"]))
            value = (base + stored[key + "~delta"]).astype(np.float32)
            bits = value.view(np.int32).ravel()
            bits[stored[key + "~fix_at"]] += stored[key + "~fix_ulps"].astype(np.int32)
        elif key + "~normal" in stored:
            value = seeded_normal(stored[key + "~shape"], *stored[key + "~normal"])
        elif key + "~images" in stored:
            value = synthetic_images(get("input/labels"), *stored[key + "~images"])
        else:
            raise KeyError(f"{label}: {key} is stored in no known form")
        if key + "~sha256" in stored and sha256(value) != str(stored[key + "~sha256"]):
            raise AssertionError(f"{label}: {key} drawn again from its seed differs from the program's array "
                                 f"(this NumPy/TensorFlow draws other numbers); run the golden tests from the "
                                 f"full files (ADVHASH_SHARED) or rebuild with tests/golden/build.py")
        arrays[key] = value
        return value

    for key in sorted(names):
        get(key)
    return arrays


def load(path):
    with np.load(path) as stored:
        return decode({key: stored[key] for key in stored.files}, path)
