"""Layers shared by several methods."""
import math

import keras
import tensorflow as tf


def dann_lambda(progress, gamma=10.0):
    """The DANN schedule 2 / (1 + exp(-gamma p)) - 1 for training progress p in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


@tf.custom_gradient
def reverse_gradient(x, scale):
    """Identity forward; the gradient is multiplied by -scale backward (scale gets none)."""
    def grad(upstream):
        return -scale * upstream, tf.zeros_like(scale)
    return tf.identity(x), grad


class GradientReversal(keras.layers.Layer):
    """Gradient reversal layer (Ganin & Lempitsky, 2015).

    `lambda_` is a non-trainable variable so a schedule can change it between
    steps without retracing a tf.function; `call(x, lambda_=...)` overrides it.
    """

    def __init__(self, lambda_=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lambda_ = tf.Variable(float(lambda_), trainable=False, dtype=tf.float32, name="grl_lambda")

    def set_lambda(self, value):
        self.lambda_.assign(float(value))

    def call(self, x, lambda_=None):
        scale = self.lambda_ if lambda_ is None else tf.cast(lambda_, tf.float32)
        return reverse_gradient(x, tf.cast(scale, x.dtype))
