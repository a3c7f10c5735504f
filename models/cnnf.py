"""CNN-F (MatConvNet "imagenet-vgg-f") up to fc7, with the MatConvNet file reader.

The geometry (per-layer padding [top, bottom, left, right], strides, LRN settings, max
pools with their own padding) comes from the .mat file when one is given; without one the
known imagenet-vgg-f values are used and the weights are random (He normal from the
Keras/Python seed; conv1 scaled by 0.01 because its input is raw pixels minus the mean).
fc6 and fc7 are VALID convolutions, as in the file; the output is fc7 after relu, flattened
to (batch, fc7 width).

Two layouts of imagenet-vgg-f.mat exist: the old one (MatConvNet < beta17: conv layers
with `filters`/`biases`, LRN type "normalize", mean image under top-level `normalization`)
and the new one (`weights` = {filters, biases}, type "lrn", mean under
`meta.normalization`). The authors' program reads only the old one (users of the new file
hit KeyError: 'normalization'); `load_cnnf` reads both.
"""
import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from utils.errors import UserError

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
DEFAULT_WIDTHS = (64, 256, 256, 256, 256, 4096, 4096)
# The reduced trunk (conv1 8, conv2-5 16, fc6 64, fc7 4096) of the recorded run of the authors'
# SSAH program that the one-step tests replay: small enough to run on a CPU in seconds.
GOLDEN_WIDTHS = (8, 16, 16, 16, 16, 64, 4096)
IMAGE_SIZE = 224
VGG_F_LRN = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)


@dataclasses.dataclass
class LayerSpec:
    """One MatConvNet layer we run: kind "conv", "relu", "lrn" or "pool".

    index is the layer's position in the file (the program names conv variables w{index}).
    kernel [h, w, in, out] and bias [out] are None for a random init.
    """
    kind: str
    index: int
    name: str = ""
    size: tuple = (1, 1)          # conv kernel or pool window (h, w)
    width: int = 0                # conv output channels
    stride: tuple = (1, 1)
    pad: tuple = (0, 0, 0, 0)     # top, bottom, left, right
    lrn: dict = None
    pooling: str = "max"           # pool: max or avg (MatConvNet's "method")
    kernel: np.ndarray = None
    bias: np.ndarray = None


def vgg_f_geometry(widths=DEFAULT_WIDTHS):
    """The imagenet-vgg-f layers 0..18 (conv1 .. relu7) with the given conv widths, no weights."""
    if len(widths) != 7:
        raise UserError(f"CNN-F needs 7 channel widths (conv1-5, fc6, fc7), got {len(widths)}: {widths}")
    conv = lambda i, n, k, w, s, p: LayerSpec("conv", i, n, (k, k), int(w), (s, s), p)
    relu = lambda i: LayerSpec("relu", i)
    lrn = lambda i: LayerSpec("lrn", i, lrn=dict(VGG_F_LRN))
    pool = lambda i: LayerSpec("pool", i, size=(3, 3), stride=(2, 2), pad=(0, 1, 0, 1))
    w = widths
    return [conv(0, "conv1", 11, w[0], 4, (0, 0, 0, 0)), relu(1), lrn(2), pool(3),
            conv(4, "conv2", 5, w[1], 1, (2, 2, 2, 2)), relu(5), lrn(6), pool(7),
            conv(8, "conv3", 3, w[2], 1, (1, 1, 1, 1)), relu(9),
            conv(10, "conv4", 3, w[3], 1, (1, 1, 1, 1)), relu(11),
            conv(12, "conv5", 3, w[4], 1, (1, 1, 1, 1)), relu(13), pool(14),
            conv(15, "fc6", 6, w[5], 1, (0, 0, 0, 0)), relu(16),
            conv(17, "fc7", 1, w[6], 1, (0, 0, 0, 0)), relu(18)]


class MatConvNetConv(keras.layers.Layer):
    """Explicit [top, bottom, left, right] zero padding, then a VALID strided convolution + bias."""

    def __init__(self, spec, **kwargs):
        super().__init__(name=spec.name, **kwargs)
        self.spec = spec

    def build(self, input_shape):
        kh, kw = self.spec.size
        fan_in_scale = 2e-4 if self.spec.index == 0 else 2.0  # He normal; conv1 sees raw pixels
        self.kernel = self.add_weight(shape=(kh, kw, int(input_shape[-1]), self.spec.width), name="kernel",
                                      initializer=keras.initializers.VarianceScaling(fan_in_scale, "fan_in",
                                                                                     "truncated_normal"))
        self.bias = self.add_weight(shape=(self.spec.width,), name="bias", initializer="zeros")

    def call(self, x):
        top, bottom, left, right = self.spec.pad
        if any(self.spec.pad):
            x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        if tuple(x.shape[1:3]) == tuple(self.kernel.shape[:2]):
            # fc6/fc7: the kernel covers the whole input, one output position. As a product of the
            # row-major flattenings the forward pass is the same to the bit, and its gradients are
            # TensorFlow's matmul gradients: its CPU kernels for the convolution's gradients run such
            # a layer tens of times slower than its forward pass (benchmarks/ssah_step_speed.py).
            flat = tf.matmul(tf.reshape(x, [-1, int(np.prod(self.kernel.shape[:3]))]),
                             tf.reshape(self.kernel, [-1, self.spec.width]))
            return tf.reshape(flat, [-1, 1, 1, self.spec.width]) + self.bias
        return tf.nn.conv2d(x, self.kernel, strides=[1, *self.spec.stride, 1], padding="VALID") + self.bias


def _pool(x, spec):
    top, bottom, left, right = spec.pad
    if any(spec.pad):
        # MatConvNet pads max pools with -inf; here the input follows a relu (>= 0), where 0 is the same.
        value = float("-inf") if spec.pooling == "max" else 0.0
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)
    pool = tf.nn.max_pool2d if spec.pooling == "max" else tf.nn.avg_pool2d
    return pool(x, ksize=[1, *spec.size, 1], strides=[1, *spec.stride, 1], padding="VALID")


class ConvTrunk(keras.Model):
    """A MatConvNet-style chain of conv/relu/lrn/pool layers -> (batch, last conv width).

    geometry: a list of LayerSpec; weights held in it (from a file) are assigned when the
    model is built. `convs` lists the conv layers; each `.spec.index` is its MatConvNet
    layer index. mean_image (224 x 224 x 3, in the network's channel order) and bgr_input
    define `prepare`, which turns uint8 RGB images into the network's input.
    """

    def __init__(self, geometry, mean_image=None, bgr_input=False, **kwargs):
        super().__init__(**kwargs)
        self.geometry = list(geometry)
        self.convs = [MatConvNetConv(spec) for spec in self.geometry if spec.kind == "conv"]
        self.mean_image = None if mean_image is None else np.asarray(mean_image, np.float32)
        self.bgr_input = bool(bgr_input)
        self._pending_weights = any(spec.kernel is not None for spec in self.geometry)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = conv.spec.width
        if self._pending_weights:
            for conv in self.convs:
                if tuple(conv.kernel.shape) != tuple(conv.spec.kernel.shape):
                    raise UserError(f"layer {conv.spec.name}: file kernel {conv.spec.kernel.shape} does not fit "
                                    f"{tuple(conv.kernel.shape)}; the weight file's layers are inconsistent")
                conv.kernel.assign(conv.spec.kernel)
                conv.bias.assign(conv.spec.bias)
            self._pending_weights = False
        self.built = True

    def call(self, images, training=False):
        x = tf.cast(images, tf.float32)
        convs = iter(self.convs)
        for spec in self.geometry:
            if spec.kind == "conv":
                x = next(convs)(x)
            elif spec.kind == "relu":
                x = tf.nn.relu(x)
            elif spec.kind == "lrn":
                # in float32 under mixed precision: squares of activations overflow float16
                x = tf.cast(tf.nn.local_response_normalization(tf.cast(x, tf.float32), **spec.lrn), x.dtype)
            elif spec.kind == "pool":
                x = _pool(x, spec)
        return tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])

    def prepare(self, images):
        """The network input from (batch, h, w, 3) RGB images: float32, channel order, minus the mean."""
        x = tf.cast(images, tf.float32)
        if self.bgr_input:
            x = x[..., ::-1]
        return x if self.mean_image is None else x - self.mean_image


class CNNF(ConvTrunk):
    """CNN-F trunk: (batch, 224, 224, 3) float image minus mean -> (batch, fc7 width) after relu.

    Without `geometry` (from `load_cnnf`) the imagenet-vgg-f layout with `widths` and a
    random init; `GOLDEN_WIDTHS` is the reduced trunk of the recorded program run.
    """

    def __init__(self, geometry=None, widths=DEFAULT_WIDTHS, mean_image=None, **kwargs):
        super().__init__(geometry if geometry is not None else vgg_f_geometry(widths), mean_image, **kwargs)


# --------------------------------------------------------------------------- .mat reading

def _unwrap(value):
    """Strips MATLAB's 1x1 cell/struct wrappers."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    return value


def _field(struct, name, default=None):
    if hasattr(struct, "_fieldnames"):
        return _unwrap(getattr(struct, name)) if name in struct._fieldnames else default
    return default


def _text(value):
    value = _unwrap(value)
    if isinstance(value, np.ndarray):
        return "".join(str(v) for v in value.ravel())
    return str(value)


def _ints(value, count, what):
    values = np.asarray(_unwrap(value), dtype=np.float64).ravel()
    if values.size == 1:
        values = np.repeat(values, count)
    if values.size != count:
        raise UserError(f"{what}: expected 1 or {count} values, got {values.size}; "
                        "the .mat file is not a MatConvNet simplenn network")
    return tuple(int(v) for v in values)


def _conv_weights(layer, where):
    weights = _field(layer, "weights")
    if weights is not None:
        weights = np.asarray(weights, dtype=object).ravel()
        if weights.size != 2:
            raise UserError(f"{where}: `weights` should hold {{filters, biases}}, got {weights.size} arrays")
        filters, biases = weights[0], weights[1]
    else:
        filters, biases = _field(layer, "filters"), _field(layer, "biases")
        if filters is None or biases is None:
            raise UserError(f"{where}: a conv layer has neither `weights` nor `filters`/`biases`; "
                            "use a MatConvNet simplenn .mat file")
    filters = np.asarray(filters, dtype=np.float32)
    filters = filters.reshape(filters.shape + (1,) * (4 - filters.ndim))  # MATLAB drops trailing 1s
    return filters, np.asarray(biases, dtype=np.float32).ravel()


def read_matconvnet_layers(path, stop_after_convs=None, lrn_types=("lrn", "normalize")):
    """Reads a MatConvNet simplenn .mat: (list of LayerSpec, the top-level mat dict).

    Stops after the relu that follows the `stop_after_convs`-th conv layer (all layers when None).
    Dropout layers are skipped (identity at test time).
    """
    import scipy.io
    if not os.path.isfile(path):
        raise UserError(f"MatConvNet weight file not found: {path}; download it from the MatConvNet model zoo "
                        "(vlfeat.org/matconvnet/pretrained) and pass its path")
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)
    except (ValueError, NotImplementedError, OSError) as error:
        raise UserError(f"cannot read {path} as a MATLAB .mat file ({error}); pass a MatConvNet simplenn .mat")
    if "layers" not in mat:
        raise UserError(f"{path} has no `layers` variable; it is not a MatConvNet simplenn network file")
    specs, convs, stopped_at = [], 0, ""
    for index, raw in enumerate(np.asarray(mat["layers"], dtype=object).ravel()):
        layer = _unwrap(raw)
        kind = _text(_field(layer, "type", ""))
        name = _text(_field(layer, "name", f"layer{index}"))
        where = f"{path}: layer {index} ({name})"
        if kind == "conv":
            kernel, bias = _conv_weights(layer, where)
            specs.append(LayerSpec("conv", index, name, kernel.shape[:2], kernel.shape[3],
                                   _ints(_field(layer, "stride", 1), 2, where + " stride"),
                                   _ints(_field(layer, "pad", 0), 4, where + " pad"), kernel=kernel, bias=bias))
            convs += 1
        elif kind == "relu":
            specs.append(LayerSpec("relu", index, name))
            if stop_after_convs is not None and convs == stop_after_convs:
                break
        elif kind in lrn_types:
            size, kappa, alpha, beta = (float(v) for v in np.asarray(_field(layer, "param"), np.float64).ravel())
            specs.append(LayerSpec("lrn", index, name, lrn=dict(depth_radius=int((size - 1) // 2), bias=kappa,
                                                                alpha=alpha, beta=beta)))
        elif kind == "pool":
            specs.append(LayerSpec("pool", index, name, _ints(_field(layer, "pool"), 2, where + " pool"), 0,
                                   _ints(_field(layer, "stride", 1), 2, where + " stride"),
                                   _ints(_field(layer, "pad", 0), 4, where + " pad"),
                                   pooling=_text(_field(layer, "method", "max"))))
        elif kind == "dropout":
            continue
        else:  # softmax, or a type the trunk cannot run: the readable part ends here
            stopped_at = f"; reading stopped at layer {index} ({name}, type {kind!r})"
            break
    if stop_after_convs is not None and convs < stop_after_convs:
        raise UserError(f"{path} has {convs} conv layers before its end, the trunk needs {stop_after_convs}"
                        f"{stopped_at}; wrong network file?")
    return specs, mat


def _mean_image(mat, path, image_size=IMAGE_SIZE):
    """averageImage from `normalization` (old layout) or `meta.normalization` (new layout)."""
    normalization = _unwrap(mat["normalization"]) if "normalization" in mat else None
    if normalization is None and "meta" in mat:
        normalization = _field(_unwrap(mat["meta"]), "normalization")
    average = _field(normalization, "averageImage") if normalization is not None else None
    if average is None:
        raise UserError(f"{path} has no mean image (neither normalization.averageImage nor "
                        "meta.normalization.averageImage); use the MatConvNet imagenet-vgg-f.mat file")
    average = np.asarray(average, dtype=np.float32)
    if average.size == 3:  # a per-channel mean: broadcast to the image
        return np.broadcast_to(average.reshape(1, 1, 3), (image_size, image_size, 3)).copy()
    if average.shape != (image_size, image_size, 3):
        raise UserError(f"{path}: mean image has shape {average.shape}, "
                        f"expected ({image_size}, {image_size}, 3) or 3 values")
    return average


@dataclasses.dataclass
class CnnfFile:
    """What `load_cnnf` returns: the trunk's layers with weights, and the 224x224x3 mean image."""
    geometry: list
    mean_image: np.ndarray

    def __iter__(self):  # so that `geometry, mean = load_cnnf(path)` works
        return iter((self.geometry, self.mean_image))


def load_cnnf(path):
    """Reads imagenet-vgg-f.mat (old or new MatConvNet layout) up to fc7's relu."""
    geometry, mat = read_matconvnet_layers(path, stop_after_convs=len(CONV_NAMES))
    for spec, name in zip([s for s in geometry if s.kind == "conv"], CONV_NAMES):
        spec.name = name
    return CnnfFile(geometry, _mean_image(mat, path))


def cnnf_from_file(path):
    """A built CNNF with the file's weights and mean image."""
    loaded = load_cnnf(path)
    model = CNNF(geometry=loaded.geometry, mean_image=loaded.mean_image)
    model.build((None, IMAGE_SIZE, IMAGE_SIZE, 3))
    return model
