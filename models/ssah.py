"""SSAH networks (Li et al., CVPR 2018) as the authors' TensorFlow 1 program builds them.

Every network returns (feature, hash, label_pred):
feature is the E-wide semantic feature F, hash the K-wide tanh code H, label_pred the
c-wide sigmoid label prediction. Layers are plain Dense layers (kernel [in, out]); the
program's convolution layout ([1, c, 1, 4096] etc.) is mapped in models/original_layout.py.
"""
import keras
import numpy as np
import tensorflow as tf

# TensorFlow's local_response_normalization settings used everywhere in the program.
LRN_SETTINGS = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
TEXT_WINDOWS = (50, 30, 15, 10, 5)  # the program's creation order of the multi-scale branches


def new_layer_initializer():
    """normal(0, 1) * 0.01, the program's initialiser of every new weight AND bias.

    A fresh instance per variable: a Keras 3 initializer fixes its seed when constructed
    (drawn from Python's `random`, which utils.run.set_seed seeds), so a shared instance
    would give every variable of one shape the same values.
    """
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def dense(units, activation=None, name=None):
    """A Dense layer initialised as the program's new layers (weights and biases)."""
    return keras.layers.Dense(int(units), activation=activation, name=name,
                              kernel_initializer=new_layer_initializer(),
                              bias_initializer=new_layer_initializer())


def local_response_normalization(x):
    """TF LRN over the last (channel) axis of a [batch, C] tensor.

    The program applies tf.nn.local_response_normalization to a [batch, 1, 1, C] map:
    x / (bias + alpha * sum of x^2 over channels c-r..c+r)^beta. That CPU kernel contracts
    with a C x C band matrix (0.15 s for 128 x 4096 on 2 cores, most of a LabNet step);
    summing 2r+1 shifted squares gives the same values (to float32 rounding) ~15x faster.
    """
    values = tf.cast(x, tf.float32)  # float32 also under mixed precision
    radius, channels = LRN_SETTINGS["depth_radius"], values.shape[-1]
    padded = tf.pad(tf.square(values), [[0, 0], [radius, radius]])
    window_sum = tf.add_n([padded[:, shift:shift + channels] for shift in range(2 * radius + 1)])
    scale = tf.pow(LRN_SETTINGS["bias"] + LRN_SETTINGS["alpha"] * window_sum, -LRN_SETTINGS["beta"])
    return tf.cast(values * scale, x.dtype)


class LRN(keras.layers.Layer):
    """local_response_normalization as a layer (no variables)."""

    def call(self, x):
        return local_response_normalization(x)


class LabNet(keras.Model):
    """Label network: c -> hidden [act] -> LRN -> E [relu] = feature; heads K [tanh], c [sigmoid].

    hidden_activation applies to both hidden layers (c -> 4096 and -> E, so the feature F^l
    too): "relu" is the program; "sigmoid" is the paper's one activation for LabNet's fully
    connected stack. The heads keep tanh (the hash must approach +-1) and sigmoid.
    """

    def __init__(self, num_classes, bits, embed_dim=512, hidden_dim=4096, hidden_activation="relu", **kwargs):
        super().__init__(**kwargs)
        if hidden_activation not in ("relu", "sigmoid"):
            raise ValueError(f"hidden_activation must be 'relu' or 'sigmoid', got {hidden_activation!r}")
        self.num_classes, self.bits, self.embed_dim = int(num_classes), int(bits), int(embed_dim)
        self.fc1 = dense(hidden_dim, hidden_activation, name="fc1")
        self.lrn = LRN(name="lrn")
        self.fc2 = dense(embed_dim, hidden_activation, name="fc2")
        self.hash_head = dense(bits, "tanh", name="hash")
        self.label_head = dense(num_classes, "sigmoid", name="label")

    def call(self, labels, training=False):
        feature = self.fc2(self.lrn(self.fc1(labels)))
        return feature, self.hash_head(feature), self.label_head(feature)


def legacy_bilinear_matrix(in_size, out_size):
    """[in_size, out_size] matrix M with resized = signal @ M: TF1 bilinear resize.

    align_corners=False and half_pixel_centers=False: source x = dst x * in / out,
    linear interpolation between floor(source) and floor(source) + 1 clamped to the end.
    """
    matrix = np.zeros((in_size, out_size), dtype=np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = dst * scale
        low = int(np.floor(src))
        high = min(low + 1, in_size - 1)
        frac = src - low
        matrix[low, dst] += 1.0 - frac
        matrix[high, dst] += frac
    return matrix.astype(np.float32)


class MultiScaleFusion(keras.layers.Layer):
    """The MS block of TxtNet: [batch, d] -> [batch, d, channels].

    Each window w averages the vector over non-overlapping windows (VALID, stride = w, the
    trailing d mod w entries dropped) and resizes the averages bilinearly back to d (TF1
    legacy mapping). `fusion` says what combines them:

    - "per_window" (the program): each window's averages times its own learned scalar (a
      1x1 convolution, one channel in and out, no bias), relu, then resized. Channels: the
      raw vector, then the windows ascending (5, 10, 15, 30, 50); the scalars are created
      in the program's order (50, 30, 15, 10, 5), as `self.scales` lists them.
    - "joint" (the paper: five average poolings and one 1x1 convolution that turns the sparse
      bag of words into one denser vector): the resized averages, windows ascending, are the
      channels of ONE 1x1 convolution (`fusion_kernel[i]` weighs the i-th smallest window;
      one bias) with relu, giving one channel. Window 1 is the raw vector itself, so no raw channel is added.

    A window wider than d cannot pool (VALID gives zero length; TF1 would fail): it is
    dropped, so e.g. Wikipedia's 10-d text keeps the program's windows 10 and 5 (3 channels);
    a joint fusion with no window left is an error. `self.windows` holds the kept windows in
    the order given, `self.dropped_windows` the others.
    """

    FUSIONS = ("per_window", "joint")

    def __init__(self, windows=TEXT_WINDOWS, fusion="per_window", **kwargs):
        super().__init__(**kwargs)
        if fusion not in self.FUSIONS:
            raise ValueError(f"fusion must be one of {self.FUSIONS}, got {fusion!r}")
        self.requested_windows = tuple(int(w) for w in windows)
        if not self.requested_windows or min(self.requested_windows) < 1:
            raise ValueError(f"windows must be positive widths, got {windows!r}")
        if len(set(self.requested_windows)) != len(self.requested_windows):
            raise ValueError(f"windows must differ from each other, got {windows!r}")
        self.fusion = fusion

    def build(self, input_shape):
        length = int(input_shape[-1])
        self.length = length
        self.windows = tuple(w for w in self.requested_windows if w <= length)
        self.dropped_windows = tuple(w for w in self.requested_windows if w > length)
        if self.fusion == "joint" and not self.windows:
            raise ValueError(f"every MS window {self.requested_windows} is wider than the {length}-d text: "
                             "give at least one window <= the text dimension")
        self.scales = {}
        if self.fusion == "per_window":
            for window in self.windows:
                self.scales[window] = self.add_weight(shape=(), initializer=new_layer_initializer(),
                                                      name=f"scale_w{window}")
        else:
            self.fusion_kernel = self.add_weight(shape=(len(self.windows),), initializer=new_layer_initializer(),
                                                 name="fusion_kernel")
            self.fusion_bias = self.add_weight(shape=(), initializer=new_layer_initializer(), name="fusion_bias")
        # kept as NumPy: a graph tensor made here would be out of scope in later traces
        self.resize = {w: legacy_bilinear_matrix(length // w, length) for w in self.windows}

    @property
    def channels(self):
        return 1 if self.fusion == "joint" else 1 + len(self.windows)

    def pooled(self, x, window):
        pooled_len = self.length // window
        return tf.reduce_mean(tf.reshape(x[:, :pooled_len * window], [-1, pooled_len, window]), axis=-1)

    def branch(self, x, window):
        return tf.matmul(tf.nn.relu(self.pooled(x, window) * self.scales[window]), self.resize[window])

    def call(self, x):
        if self.fusion == "joint":
            scales = tf.stack([tf.matmul(self.pooled(x, w), self.resize[w]) for w in sorted(self.windows)], axis=-1)
            return tf.nn.relu(tf.tensordot(scales, self.fusion_kernel, axes=[[2], [0]]) + self.fusion_bias)[..., None]
        branches = [self.branch(x, w) for w in sorted(self.windows)]
        return tf.stack([x] + branches, axis=-1)


class TxtNet(keras.Model):
    """Text network: MS fusion -> (d * channels) -> 4096 [relu] -> LRN -> E [relu] = feature,
    LRN, heads K [tanh], c [sigmoid].

    The first dense layer reads the row-major flattening of the (d, channels) MS output,
    i.e. the program's VALID [1, d, 6, 4096] convolution. With d smaller than some window
    (e.g. Wikipedia's 10-d LDA text) those branches are dropped (see MultiScaleFusion) and
    the first dense layer sees fewer channels: d * (1 + kept windows) inputs. With the joint
    fusion (the paper's) the MS output is one channel: d inputs.
    """

    def __init__(self, text_dim, num_classes, bits, embed_dim=512, hidden_dim=4096,
                 windows=TEXT_WINDOWS, fusion="per_window", **kwargs):
        super().__init__(**kwargs)
        self.text_dim, self.num_classes = int(text_dim), int(num_classes)
        self.bits, self.embed_dim = int(bits), int(embed_dim)
        self.fusion = MultiScaleFusion(windows, fusion, name="ms")
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc1 = dense(hidden_dim, "relu", name="fc1")
        self.lrn1 = LRN(name="lrn1")
        self.fc2 = dense(embed_dim, "relu", name="fc2")
        self.lrn2 = LRN(name="lrn2")
        self.hash_head = dense(bits, "tanh", name="hash")
        self.label_head = dense(num_classes, "sigmoid", name="label")

    def call(self, texts, training=False):
        fused = self.flatten(self.fusion(texts))
        feature = self.fc2(self.lrn1(self.fc1(fused)))
        normalised = self.lrn2(feature)
        return feature, self.hash_head(normalised), self.label_head(normalised)


class FeatureTrunk(keras.Model):
    """Trunk for pre-extracted image features: d -> out_dim [relu] (stands in for fc7)."""

    def __init__(self, out_dim=4096, **kwargs):
        super().__init__(**kwargs)
        self.fc = dense(out_dim, "relu", name="fc")

    def call(self, features, training=False):
        return self.fc(features)


class ImgNet(keras.Model):
    """Image network: trunk (-> fc7, 4096) -> fc8 E [relu] = feature; heads K [tanh], c [sigmoid].

    `trunk` is a CNNF (models/cnnf.py), a VGG19 trunk (models/vgg19.py) or a FeatureTrunk.
    """

    def __init__(self, trunk, num_classes, bits, embed_dim=512, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.bits, self.embed_dim = int(num_classes), int(bits), int(embed_dim)
        self.trunk = trunk
        self.fc8 = dense(embed_dim, "relu", name="fc8")
        self.hash_head = dense(bits, "tanh", name="hash")
        self.label_head = dense(num_classes, "sigmoid", name="label")

    def call(self, images, training=False):
        feature = self.fc8(self.trunk(images, training=training))
        return feature, self.hash_head(feature), self.label_head(feature)


class Discriminator(keras.Model):
    """E -> 512 [act] -> dropout -> 256 [act] -> dropout -> 1 logit.

    The program: relu, and keep probability 1.0 everywhere, i.e. dropout_rate 0.0. The
    paper: hidden (4096, 4096) with tanh.
    """

    ACTIVATIONS = ("relu", "tanh")

    def __init__(self, hidden=(512, 256), dropout_rate=0.0, activation="relu", **kwargs):
        super().__init__(**kwargs)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        self.hidden_layers = [dense(units, activation, name=f"fc{i + 1}") for i, units in enumerate(hidden)]
        self.dropouts = [keras.layers.Dropout(dropout_rate, name=f"dropout{i + 1}") for i in range(len(hidden))]
        self.out = dense(1, None, name="out")

    def call(self, features, training=False):
        x = features
        for layer, dropout in zip(self.hidden_layers, self.dropouts):
            x = dropout(layer(x), training=training)
        return self.out(x)
