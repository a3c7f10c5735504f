"""METAH / TAH networks: the hashing network and the domain discriminator.

HashingNetwork: trunk -> K-bit tanh hash layer -> linear classifier (K -> classes),
the classifier being METAH's semantic-preservation module (its softmax also feeds
the min-entropy loss). DomainDiscriminator: gradient reversal -> K -> 1024 relu
dropout 0.5 -> 1024 relu dropout 0.5 -> 1 logit, as in TAH.
"""
import keras
import tensorflow as tf

from models.layers import GradientReversal

TRUNKS = ("mlp", "cnn", "cnnf")


def feature_trunk(hidden=(1024,), dropout=0.0, name="trunk"):
    """MLP on pre-extracted features: d -> hidden... (relu, dropout)."""
    layers = []
    for width in hidden:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers, name=name)


def image_trunk(dropout=0.0, name="trunk"):
    """A small convolutional trunk for uint8 images (scaled to [0, 1]); a stand-in for a
    pretrained backbone when training from image folders."""
    layers = [keras.layers.Rescaling(1.0 / 255.0)]
    for filters in (32, 64, 128):
        layers += [keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
                   keras.layers.MaxPooling2D()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(512, activation="relu")]
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers, name=name)


class CnnfTrunk(keras.Model):
    """The project's CNN-F (models/cnnf.py) to fc7 on 224 x 224 uint8 images, TAH's AlexNet-to-fc7
    role; pretrained weights and mean image from imagenet-vgg-f.mat when a path is given."""

    def __init__(self, weights_path="", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        from models import cnnf
        self.cnn = cnnf.cnnf_from_file(weights_path) if weights_path else cnnf.CNNF()
        self.dropout = keras.layers.Dropout(dropout) if dropout > 0 else None

    def call(self, images, training=False):
        features = self.cnn(self.cnn.prepare(images), training=training)
        return self.dropout(features, training=training) if self.dropout is not None else features


class HashingNetwork(keras.Model):
    """Returns (codes in (-1, 1)^K, class logits)."""

    def __init__(self, bits, num_classes, trunk="mlp", hidden=(1024,), dropout=0.0, trunk_weights="", **kwargs):
        super().__init__(**kwargs)
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}; choose one of {TRUNKS}")
        if trunk == "mlp":
            self.trunk = feature_trunk(hidden, dropout)
        elif trunk == "cnn":
            self.trunk = image_trunk(dropout)
        else:
            self.trunk = CnnfTrunk(trunk_weights, dropout)
        self.hash_layer = keras.layers.Dense(bits, activation="tanh", name="hash")
        self.classifier = keras.layers.Dense(num_classes, name="semantic_classifier")

    def call(self, inputs, training=False):
        codes = self.hash_layer(self.trunk(inputs, training=training))
        return codes, self.classifier(codes)


class DomainDiscriminator(keras.Model):
    """Gradient reversal, then an MLP that says source (logit < 0) or target (logit > 0)."""

    def __init__(self, hidden=1024, dropout=0.5, **kwargs):
        super().__init__(**kwargs)
        self.reversal = GradientReversal(0.0)
        self.body = keras.Sequential([
            keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(dropout),
            keras.layers.Dense(hidden, activation="relu"), keras.layers.Dropout(dropout),
            keras.layers.Dense(1)], name="discriminator_body")

    def set_lambda(self, value):
        self.reversal.set_lambda(value)

    def call(self, codes, training=False):
        return tf.squeeze(self.body(self.reversal(codes), training=training), axis=-1)
