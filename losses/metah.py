"""METAH / TAH losses as pure functions of tensors (no model, no state).

Formulas (TAH's, as its authors' program computes them, plus METAH's min-entropy term):
  pairwise (TAH, source items):  z_ij = (K/2) / (1 + ||h_i - h_j||^2),
                                 l_ij = log(1 + e^z_ij) - s_ij z_ij, or z_ij (1 - s_ij) when z_ij > 15,
                                 mean over all pairs of the batch including i = j
  quantisation:                  mean of log cosh(|h| - 1)
  semantic preservation:         softmax cross-entropy on source labels
  min-entropy:                   -(1/n_t) sum_i sum_c p_ic log p_ic over target items
  domain:                        sigmoid cross-entropy, source = 0, target = 1
"""
import math

import tensorflow as tf

LINEAR_ABOVE = 15.0  # TAH switches to the linear form of log(1 + e^z) - s z above this z


def similarity_matrix(labels_a, labels_b=None):
    """s_ij = 1 when items i and j share a label (one-hot or multi-hot rows)."""
    labels_b = labels_a if labels_b is None else labels_b
    shared = tf.matmul(tf.cast(labels_a, tf.float32), tf.cast(labels_b, tf.float32), transpose_b=True)
    return tf.cast(shared > 0, tf.float32)


def squared_distances(codes):
    """||h_i - h_j||^2 for every pair of rows, clipped at 0 against round-off."""
    norms = tf.reduce_sum(tf.square(codes), axis=1)
    gram = tf.matmul(codes, codes, transpose_b=True)
    return tf.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)


def pairwise_t_loss(codes, labels, bits=None):
    """TAH's t-distribution pairwise likelihood loss on the (source) codes of one batch."""
    codes = tf.convert_to_tensor(codes, tf.float32)
    bits = codes.shape[-1] if bits is None else bits
    z = (bits / 2.0) / (1.0 + squared_distances(codes))
    s = similarity_matrix(labels)
    # log(1 + e^z) is evaluated only where it is used (z <= 15), so it never overflows.
    small_z = tf.minimum(z, LINEAR_ABOVE)
    loss = tf.where(z > LINEAR_ABOVE, z * (1.0 - s), tf.math.softplus(small_z) - s * small_z)
    return tf.reduce_mean(loss)


def pairwise_t_gradient(codes, labels, bits=None):
    """The gradient of pairwise_t_loss with respect to the codes (taken as constants)."""
    codes = tf.stop_gradient(tf.convert_to_tensor(codes, tf.float32))
    with tf.GradientTape() as tape:
        tape.watch(codes)
        loss = pairwise_t_loss(codes, labels, bits)
    return tape.gradient(loss, codes)


def log_cosh(x):
    """log cosh(x) = |x| + log(1 + e^(-2|x|)) - log 2, stable for any x."""
    ax = tf.abs(x)
    return ax + tf.math.softplus(-2.0 * ax) - math.log(2.0)


def quantisation_loss(codes):
    """Mean log cosh(|h| - 1): pulls every continuous code towards +-1."""
    return tf.reduce_mean(log_cosh(tf.abs(codes) - 1.0))


def classification_loss(logits, labels):
    """Semantic preservation: mean softmax cross-entropy on one-hot source labels."""
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.float32), logits=logits))


def entropy_loss(logits):
    """Min-entropy: mean over items of -sum_c p_c log p_c, p = softmax(logits)."""
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1))


def domain_loss(source_logits, target_logits):
    """Discriminator loss: sigmoid cross-entropy, source = 0 and target = 1, mean over all items."""
    logits = tf.concat([tf.reshape(source_logits, [-1]), tf.reshape(target_logits, [-1])], axis=0)
    targets = tf.concat([tf.zeros_like(tf.reshape(source_logits, [-1])),
                         tf.ones_like(tf.reshape(target_logits, [-1]))], axis=0)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits))


def domain_accuracy(source_logits, target_logits):
    """Fraction of items the discriminator puts on the right side of 0."""
    right = tf.concat([tf.reshape(source_logits, [-1]) < 0, tf.reshape(target_logits, [-1]) > 0], axis=0)
    return tf.reduce_mean(tf.cast(right, tf.float32))
