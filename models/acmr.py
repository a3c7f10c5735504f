"""ACMR's networks as the authors' program builds them: two feature projectors into a common
space, a label classifier shared by both modalities, and a modality classifier behind a
gradient reversal layer.

Every layer is dense with Glorot-uniform weights and zero biases (Keras' defaults, as
tf-slim's). Projectors apply tanh after EVERY layer, the last included; the classifiers are
linear (no nonlinearity between the modality classifier's layers, as coded).
"""
import keras
import tensorflow as tf

from models.layers import GradientReversal
from utils.errors import UserError

# Hidden + output widths after the input. "coded": the authors' programs (per dataset);
# "paper": the sizes the paper states. Modality classifier: hidden widths before the 2 logits.
ARCHITECTURES = {
    "coded-wiki": {"image": (512, 100, 40), "text": (40, 100, 40), "modality": (20, 10)},
    "coded-nuswide10k": {"image": (4096, 1000, 40), "text": (1000, 300, 40), "modality": (20, 10)},
    "paper": {"image": (2000, 200), "text": (500, 200), "modality": (50,)},
}


def layer_sizes(architecture, dataset):
    """The (image, text, modality) widths of an architecture name ("coded" picks by dataset)."""
    if architecture == "coded":
        architecture = "coded-nuswide10k" if dataset == "nuswide10k" else "coded-wiki"
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown ACMR architecture '{architecture}'; choose coded or paper")
    sizes = ARCHITECTURES[architecture]
    return sizes["image"], sizes["text"], sizes["modality"]


class FeatureProjector(keras.Model):
    """Dense layers, tanh after each (the last included): input features -> common space.
    `standardize` = (mean, std) per input dimension (fixed constants, e.g. the training rows'):
    inputs become (x - mean) / std before the first layer; None (the program): used as they are."""

    def __init__(self, widths, prefix, standardize=None, **kwargs):
        super().__init__(**kwargs)
        if not widths or min(widths) < 1:
            raise UserError(f"projector widths must be positive integers, got {tuple(widths)}")
        self.dense_layers = [keras.layers.Dense(int(w), name=f"{prefix}_fc_{i}") for i, w in enumerate(widths)]
        self.standardize = None if standardize is None else tuple(
            tf.constant(value, tf.float32) for value in standardize)

    def call(self, x):
        if self.standardize is not None:  # in float32 (x arrives in the layer's compute dtype)
            x = tf.cast((tf.cast(x, tf.float32) - self.standardize[0]) / self.standardize[1], x.dtype)
        for layer in self.dense_layers:
            x = tf.tanh(layer(x))
        return x


class LabelClassifier(keras.Model):
    """One linear layer common space -> class logits, shared by both modalities."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(int(num_classes), name="lc_fc_0")

    def call(self, x):
        return self.dense(x)


class ModalityClassifier(keras.Model):
    """Gradient reversal, then linear layers down to 2 logits (index 1 = image, 0 = text).

    `lambda_` of the reversal is set per epoch by the trainer (`set_lambda`)."""

    def __init__(self, hidden=(20, 10), lambda_=0.0, **kwargs):
        super().__init__(**kwargs)
        self.reversal = GradientReversal(lambda_)
        widths = tuple(int(w) for w in hidden) + (2,)
        self.dense_layers = [keras.layers.Dense(w, name=f"dc_fc_{i}") for i, w in enumerate(widths)]

    def set_lambda(self, value):
        self.reversal.set_lambda(value)

    def call(self, x, reverse=True):
        # reverse=False: the embeddings are already cut off from the projectors (stop_gradient).
        if reverse:
            x = self.reversal(x)
        for layer in self.dense_layers:
            x = layer(x)
        return x


class AcmrNetworks:
    """The four networks, built (variables created) for the given input widths."""

    def __init__(self, image_dim, text_dim, num_classes, image_widths, text_widths, modality_hidden,
                 image_standardize=None, text_standardize=None):
        if image_widths[-1] != text_widths[-1]:
            raise UserError(f"image and text projectors must end at the same width (the common space); "
                            f"got {image_widths[-1]} and {text_widths[-1]}")
        self.image_projector = FeatureProjector(image_widths, "vf", image_standardize, name="image_projector")
        self.text_projector = FeatureProjector(text_widths, "le", text_standardize, name="text_projector")
        self.label_classifier = LabelClassifier(num_classes, name="label_classifier")
        self.modality_classifier = ModalityClassifier(modality_hidden, name="modality_classifier")
        emb = self.image_projector(tf.zeros((1, int(image_dim))))
        self.text_projector(tf.zeros((1, int(text_dim))))
        self.label_classifier(emb)
        self.modality_classifier(emb)

    @property
    def projector_variables(self):
        return self.image_projector.trainable_variables + self.text_projector.trainable_variables

    def slim_layers(self):
        """{slim scope name (vf_fc_0, le_fc_1, lc_fc_0, dc_fc_2, ...): Dense layer}."""
        layers = {}
        for net in (self.image_projector, self.text_projector, self.modality_classifier):
            layers.update({layer.name: layer for layer in net.dense_layers})
        layers["lc_fc_0"] = self.label_classifier.dense
        return layers

    def load_slim_variables(self, arrays):
        """Assigns arrays named like the authors' checkpoint ("vf_fc_0/weights", ".../biases";
        weights [in, out] as Keras kernels). Every variable must be given."""
        layers = self.slim_layers()
        expected = {f"{scope}/{kind}" for scope in layers for kind in ("weights", "biases")}
        unknown, missing = sorted(set(arrays) - expected), sorted(expected - set(arrays))
        if unknown or missing:
            raise UserError(f"slim variables do not match the networks: unknown {unknown[:4]}, missing "
                            f"{missing[:4]}; strip prefixes like 'init/' and build the networks with the "
                            f"program's layer sizes")
        for scope, layer in layers.items():
            for kind, variable in (("weights", layer.kernel), ("biases", layer.bias)):
                value = arrays[f"{scope}/{kind}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise UserError(f"{scope}/{kind} has shape {tuple(value.shape)}, the network's is "
                                    f"{tuple(variable.shape)}: check the input widths and layer sizes")
                variable.assign(value)

    def slim_variables(self):
        """{"vf_fc_0/weights": ndarray, ...}: the inverse of load_slim_variables."""
        out = {}
        for scope, layer in self.slim_layers().items():
            out[f"{scope}/weights"] = layer.kernel.numpy()
            out[f"{scope}/biases"] = layer.bias.numpy()
        return out
