"""Self-contained encoders: a trained network rebuilt as a functional Keras model of built-in
layers and keras.ops only, with its preprocessing and (for hashing) the sign baked in.

Such a model saves to a .keras file that `keras.saving.load_model` opens in a program that
has none of this repository's code, and exports to a TensorFlow SavedModel. Each builder
copies the trained weights into fresh built-in layers; a network's own layer classes (our
subclasses) would need our code to load.

Constants that are data (mean images, feature statistics, resize matrices) live in layer
weights (Normalization, bias-free Dense), not in the model's JSON config.
"""
import dataclasses

import keras
import numpy as np
from keras import ops

from utils.errors import UserError


@dataclasses.dataclass
class Encoder:
    """One exported model and what export.py's manifest says about it (each method's
    `encoders(run_dir)` returns them by name)."""
    model: object
    input: dict       # name, shape (without the batch axis), dtype, meaning
    output: dict      # name, shape, meaning
    preprocessing: list


def codes_output(bits):
    return {"name": "codes", "shape": [bits], "dtype": "float32",
            "meaning": "+-1 hash codes: sign of the tanh hash layer, 0 counts as +1"}


def check_baked_preprocessing(preprocess, reference, probe, what):
    """The baked preprocessing (a keras.ops graph) must give what the trainer computes (`reference`)
    on `probe` rows: this catches a trainer whose preprocessing changed and its export did not."""
    inputs = keras.Input(probe.shape[1:], dtype=str(probe.dtype))
    baked = np.asarray(keras.Model(inputs, preprocess(inputs, Namer()))(probe))
    if not np.allclose(baked, np.asarray(reference, np.float32), rtol=1e-5, atol=1e-6):
        raise ValueError(f"the exported {what} preprocessing differs from the trainer's; export.py must follow "
                         f"the trainer's preprocessing")


class Namer:
    """Unique layer names inside one model: prefix_1, prefix_2, ... (keras.ops name their own
    operations pad, pad_1, ...: layer prefixes must differ from those)"""

    def __init__(self):
        self.counts = {}

    def __call__(self, prefix):
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


def copy_layer(layer, x, name):
    """A fresh built-in layer with `layer`'s configuration (in float32) and trained weights, applied to x."""
    config = dict(layer.get_config(), name=name, dtype="float32")
    fresh = type(layer).from_config(config)
    fresh.build(tuple(x.shape))
    fresh.set_weights([np.asarray(w, np.float32) if np.asarray(w).dtype.kind == "f" else np.asarray(w)
                       for w in layer.get_weights()])
    return fresh(x)


def fixed_dense(x, kernel, name, bias=None):
    """x @ kernel (+ bias) by a frozen Dense layer: a constant matrix stored as weights."""
    kernel = np.asarray(kernel, np.float32)
    layer = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None, name=name, trainable=False,
                               dtype="float32")
    layer.build(tuple(x.shape))
    layer.set_weights([kernel] + ([np.asarray(bias, np.float32).reshape(-1)] if bias is not None else []))
    return layer(x)


def standardize(x, mean, std, name, axis=-1):
    """(x - mean) / std as a Normalization layer (variance std^2; sqrt gives std back exactly
    in float32, checked here). `axis`: the axes the statistics vary along."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if np.any(std < keras.config.epsilon()):
        raise UserError(f"a standard deviation below {keras.config.epsilon()} cannot be baked into a "
                        f"Normalization layer (it clamps there); this run's statistics cannot be exported")
    variance = std * std
    if not np.array_equal(np.sqrt(variance), std):
        raise ValueError("sqrt(std^2) != std in float32: the baked standardisation would not be exact")
    layer = keras.layers.Normalization(axis=axis, name=name, dtype="float32")
    layer.build(tuple(x.shape))
    layer.set_weights([np.broadcast_to(mean, layer.adapt_mean.shape), np.broadcast_to(variance, layer.adapt_mean.shape),
                       np.asarray(0, np.int64)])
    layer.finalize_state()
    return layer(x)


def sign_codes(x):
    """+-1 codes (float32) from tanh outputs; 0 counts as +1, as the trainers' codes."""
    return ops.where(ops.greater_equal(x, 0.0), 1.0, -1.0)


def local_response_normalization(x, depth_radius, bias, alpha, beta):
    """x / (bias + alpha * sum of x^2 over channels c-r..c+r)^beta over the last axis (TF's LRN)."""
    channels = x.shape[-1]
    pad = [[0, 0]] * (len(x.shape) - 1) + [[depth_radius, depth_radius]]
    padded = ops.pad(ops.square(x), pad)
    window = padded[..., 0:channels]
    for shift in range(1, 2 * depth_radius + 1):
        window = ops.add(window, padded[..., shift:shift + channels])
    return ops.multiply(x, ops.power(ops.add(bias, ops.multiply(alpha, window)), -beta))


# --------------------------------------------------------------------------- image trunks

def conv_trunk(x, trunk, names):
    """A models.cnnf.ConvTrunk (CNN-F, VGG19) on its prepared input: the same layer chain from
    built-in layers -> (batch, last conv width)."""
    convs = iter(trunk.convs)
    for spec in trunk.geometry:
        top, bottom, left, right = spec.pad
        if spec.kind == "conv":
            conv = next(convs)
            if any(spec.pad):
                x = keras.layers.ZeroPadding2D(((top, bottom), (left, right)), name=names("zero_pad"))(x)
            kernel = conv.kernel.numpy()
            layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], strides=spec.stride, padding="valid",
                                        name=names(spec.name or "conv"), dtype="float32")
            layer.build(tuple(x.shape))
            layer.set_weights([kernel.astype(np.float32), conv.bias.numpy().astype(np.float32)])
            x = layer(x)
        elif spec.kind == "relu":
            x = ops.relu(x)
        elif spec.kind == "lrn":
            x = local_response_normalization(x, **spec.lrn)
        elif spec.kind == "pool":
            if any(spec.pad):
                value = float("-inf") if spec.pooling == "max" else 0.0
                x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)
            pool = keras.layers.MaxPooling2D if spec.pooling == "max" else keras.layers.AveragePooling2D
            x = pool(spec.size, spec.stride, padding="valid", name=names("pool"))(x)
    return keras.layers.Flatten(name=names("flatten"))(x)


def conv_trunk_prepare(x, trunk, names, fallback_mean=None):
    """ConvTrunk.prepare baked in: uint8 RGB -> float32, channel order, minus the mean image
    (the trunk's, or `fallback_mean`: an image or per-channel mean in the network's order)."""
    x = ops.cast(x, "float32")
    if trunk.bgr_input:
        x = ops.flip(x, axis=-1)
    mean = trunk.mean_image if trunk.mean_image is not None else fallback_mean
    if mean is None:
        return x
    mean = np.asarray(mean, np.float32)
    axis = (1, 2, 3) if mean.ndim == 3 else -1
    return standardize(x, mean, np.ones_like(mean), names("mean_image"), axis=axis)


def sequential_trunk(x, trunk, names):
    """A keras.Sequential of built-in layers (METAH's mlp and cnn trunks), Dropout left out (inference)."""
    for layer in trunk.layers:
        if not isinstance(layer, keras.layers.Dropout):
            x = copy_layer(layer, x, names(type(layer).__name__.lower()))
    return x


# --------------------------------------------------------------------------- SSAH

def ssah_lrn(x):
    from models.ssah import LRN_SETTINGS
    return local_response_normalization(x, **LRN_SETTINGS)


def ssah_image_model(img_net, preprocess, input_shape, input_dtype):
    """SSAH's ImgNet: raw input -> preprocessing -> trunk -> fc8 relu -> tanh hash -> +-1 codes.

    preprocess(x, names): the baked preprocessing (see export.py); img_net.trunk is a ConvTrunk
    or a FeatureTrunk."""
    names = Namer()
    inputs = keras.Input(input_shape, dtype=input_dtype, name="images")
    x = preprocess(inputs, names)
    trunk = img_net.trunk
    if hasattr(trunk, "geometry"):
        x = conv_trunk(x, trunk, names)
    else:
        x = copy_layer(trunk.fc, x, names("trunk_fc"))
    feature = copy_layer(img_net.fc8, x, names("fc8"))
    hashes = copy_layer(img_net.hash_head, feature, names("hash"))
    return keras.Model(inputs, sign_codes(hashes), name="ssah_image_encoder")


def multi_scale_fusion(x, fusion, names):
    """TxtNet's MS block (models.ssah.MultiScaleFusion) from keras.ops and frozen Dense layers."""
    def pooled(window):
        length = fusion.length // window
        return ops.mean(ops.reshape(x[:, :length * window], (-1, length, window)), axis=-1)

    def resized(values, window):
        return fixed_dense(values, fusion.resize[window], names(f"resize_w{window}"))

    if fusion.fusion == "joint":
        scales = ops.stack([resized(pooled(w), w) for w in sorted(fusion.windows)], axis=-1)
        joint = fixed_dense(scales, fusion.fusion_kernel.numpy().reshape(-1, 1), names("fusion"),
                            bias=fusion.fusion_bias.numpy())
        return ops.relu(joint)  # (batch, d, 1)
    branches = [resized(ops.relu(ops.multiply(pooled(w), float(fusion.scales[w].numpy()))), w)
                for w in sorted(fusion.windows)]
    return ops.stack([x] + branches, axis=-1)


def ssah_text_layers(x, txt_net, names):
    fused = keras.layers.Flatten(name=names("flatten"))(multi_scale_fusion(x, txt_net.fusion, names))
    feature = copy_layer(txt_net.fc2, ssah_lrn(copy_layer(txt_net.fc1, fused, names("fc1"))), names("fc2"))
    return sign_codes(copy_layer(txt_net.hash_head, ssah_lrn(feature), names("hash")))


def ssah_text_model(txt_net, preprocess=None):
    """SSAH's TxtNet: tag vectors (float32, items x d) -> [preprocess(x, names)] -> +-1 codes."""
    names = Namer()
    inputs = keras.Input((txt_net.text_dim,), dtype="float32", name="tag_vectors")
    x = preprocess(inputs, names) if preprocess is not None else inputs
    return keras.Model(inputs, ssah_text_layers(x, txt_net, names), name="ssah_text_encoder")


def tag_lookup(words, vocabulary, name):
    """(items x tags) strings, padded with "" -> (items x len(vocabulary)) float32 multi-hot rows;
    words outside the vocabulary (and the padding) count for nothing."""
    if "" in vocabulary or len(set(vocabulary)) != len(vocabulary):
        raise UserError("the dataset's vocabulary holds an empty or a repeated word; it cannot be baked "
                        "into a tag lookup: prepare the dataset again")
    lookup = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1, output_mode="multi_hot",
                                       name=name)
    hot = lookup(words)[:, 1:]  # column 0 counts the words outside the vocabulary
    return ops.cast(hot, "float32")


def ssah_tag_words_model(txt_net, vocabulary, preprocess=None):
    """SSAH's TxtNet behind the dataset's vocabulary: tag words (strings, items x tags, padded
    with "") -> +-1 codes."""
    if len(vocabulary) != txt_net.text_dim:
        raise UserError(f"the vocabulary has {len(vocabulary)} words but the text net reads "
                        f"{txt_net.text_dim}-d tag vectors: the vocabulary file is not the run's")
    names = Namer()
    inputs = keras.Input((None,), dtype="string", name="tag_words")
    vectors = tag_lookup(inputs, vocabulary, names("vocabulary"))
    if preprocess is not None:
        vectors = preprocess(vectors, names)
    return keras.Model(inputs, ssah_text_layers(vectors, txt_net, names), name="ssah_tag_words_encoder")


# --------------------------------------------------------------------------- ACMR and METAH

def acmr_projector_model(projector, input_dim, modality):
    """An ACMR projector: feature rows (float32) -> common-space embeddings (tanh after every layer)."""
    names = Namer()
    inputs = keras.Input((input_dim,), dtype="float32", name=f"{modality}_features")
    x = inputs
    if projector.standardize is not None:  # --image-norm / --text-norm standardize: the training statistics
        x = ops.divide(ops.subtract(x, projector.standardize[0].numpy()), projector.standardize[1].numpy())
    for layer in projector.dense_layers:
        x = ops.tanh(copy_layer(layer, x, names("dense")))
    return keras.Model(inputs, x, name=f"acmr_{modality}_encoder")


def metah_model(net, input_shape, input_dtype, preprocess):
    """METAH's hashing network: raw rows or images -> preprocessing -> trunk -> tanh hash -> +-1 codes."""
    from models.metah import CnnfTrunk
    names = Namer()
    inputs = keras.Input(input_shape, dtype=input_dtype, name="inputs")
    x = preprocess(inputs, names)
    if isinstance(net.trunk, CnnfTrunk):
        x = conv_trunk(conv_trunk_prepare(x, net.trunk.cnn, names), net.trunk.cnn, names)
    else:
        x = sequential_trunk(x, net.trunk, names)
    hashes = copy_layer(net.hash_layer, x, names("hash"))
    return keras.Model(inputs, sign_codes(hashes), name="metah_encoder")
