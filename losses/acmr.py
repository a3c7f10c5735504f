"""ACMR losses as pure functions (../shared/spec/acmr.md, "Losses").

Conventions: `emb_img`, `emb_txt` are the batch's embeddings (row i of each is pair i);
labels are one-hot / multi-hot rows, and "different labels" means sharing no label (for
single-label data: y_i != y_j). "half_sum_squares" is TF1's l2_loss, 0.5 * sum(x^2).
Modality targets as coded: image embeddings [0, 1], text embeddings [1, 0].
"""
import numpy as np
import tensorflow as tf

IMAGE_TARGET = (0.0, 1.0)
TEXT_TARGET = (1.0, 0.0)


def _f32(x):
    return tf.cast(x, tf.float32)


def half_sum_squares(x):
    """TF1's l2_loss: 0.5 * sum(x^2) over all entries."""
    return 0.5 * tf.reduce_sum(tf.square(_f32(x)))


def different_labels(labels_a, labels_b=None):
    """M_ij = 1 where items i and j share no label (one-hot or multi-hot rows)."""
    labels_b = labels_a if labels_b is None else labels_b
    shared = tf.matmul(_f32(labels_a), _f32(labels_b), transpose_b=True)
    return tf.cast(shared <= 0, tf.float32)


def label_loss(logits_img, logits_txt, labels):
    """Mean over the batch of CE(classifier(E_img), y) + CE(classifier(E_txt), y)."""
    labels = _f32(labels)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits_img)
                          + tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits_txt))


def frobenius_regulariser(matrices):
    """The paper's L_reg: the sum of the Frobenius norms ||W||_F (not squared) of the matrices."""
    return tf.add_n([tf.norm(_f32(w)) for w in matrices])


def similar_loss(emb_img, emb_txt):
    """simple_* programs: the Frobenius norm of E_img - E_txt over the batch's pairs."""
    return tf.sqrt(2.0 * half_sum_squares(_f32(emb_img) - _f32(emb_txt)))


def pseudo_distance(emb_img, emb_txt):
    """D_ij = sum(v_i) - v_i . w_j + sum(w_j), the simple_* programs' "distance map"."""
    emb_img, emb_txt = _f32(emb_img), _f32(emb_txt)
    return (tf.reduce_sum(emb_img, axis=1, keepdims=True) - tf.matmul(emb_img, emb_txt, transpose_b=True)
            + tf.reduce_sum(emb_txt, axis=1)[None, :])


def dissimilar_loss(emb_img, emb_txt, labels, margin=0.1):
    """mean(max(0, margin - D * M)) over all batch pairs (i, j), M = different labels."""
    masked = pseudo_distance(emb_img, emb_txt) * different_labels(labels)
    return tf.reduce_mean(tf.maximum(0.0, margin - masked))


def triplet_loss_coded(emb_img, emb_txt, emb_txt_negative, emb_img_negative, margin=0.1, alpha=5.0):
    """triplet_wiki as coded: hinges on BATCH SUMS, alpha on the positive term.

    max(0, margin + alpha * sum 0.5||E_v - E_t+||^2 - sum 0.5||E_v - E_t-||^2) plus the same
    with text anchors (positive: the paired image; negative: `emb_img_negative`)."""
    emb_img, emb_txt = _f32(emb_img), _f32(emb_txt)
    img_anchor = margin + alpha * half_sum_squares(emb_img - emb_txt) - half_sum_squares(emb_img - emb_txt_negative)
    txt_anchor = margin + alpha * half_sum_squares(emb_txt - emb_img) - half_sum_squares(emb_txt - emb_img_negative)
    return tf.maximum(0.0, img_anchor) + tf.maximum(0.0, txt_anchor)


def euclidean(a, b, epsilon=1e-12):
    """Row-wise ||a_i - b_i||_2; epsilon keeps the gradient finite at a zero distance."""
    return tf.sqrt(tf.reduce_sum(tf.square(_f32(a) - _f32(b)), axis=1) + epsilon)


def triplet_loss_paper(emb_img, emb_txt, emb_txt_negative, emb_img_negative, margin=0.1, negative_weight=1.0):
    """Paper Eq. 4-5, summed over the batch's triplets of both anchor modalities:
    l2(v, t+) + lambda * max(0, mu - l2(v, t-)) + l2(t, v+) + lambda * max(0, mu - l2(t, v-))."""
    img_anchor = euclidean(emb_img, emb_txt) + negative_weight * tf.maximum(0.0, margin - euclidean(emb_img, emb_txt_negative))
    txt_anchor = euclidean(emb_txt, emb_img) + negative_weight * tf.maximum(0.0, margin - euclidean(emb_txt, emb_img_negative))
    return tf.reduce_sum(img_anchor) + tf.reduce_sum(txt_anchor)


def _targets(logits, target):
    return tf.broadcast_to(tf.constant(target, tf.float32), tf.shape(logits))


def modality_loss(logits_img, logits_txt):
    """Mean over the batch of CE(D(E_img), [0, 1]) + CE(D(E_txt), [1, 0])."""
    logits_img, logits_txt = _f32(logits_img), _f32(logits_txt)
    return tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=_targets(logits_img, IMAGE_TARGET), logits=logits_img)
        + tf.nn.softmax_cross_entropy_with_logits(labels=_targets(logits_txt, TEXT_TARGET), logits=logits_txt))


def modality_accuracy(logits_img, logits_txt):
    """Share of the batch's 2n embeddings whose modality the classifier gets right."""
    right = tf.concat([tf.argmax(logits_img, axis=1) == int(np.argmax(IMAGE_TARGET)),
                       tf.argmax(logits_txt, axis=1) == int(np.argmax(TEXT_TARGET))], axis=0)
    return tf.reduce_mean(tf.cast(right, tf.float32))


def mine_negatives(features, labels, mask="multiply"):
    """Hardest negative of each batch row in the RAW input space (NumPy; returns row indices).

    Cosine similarity of the rows' features; pairs sharing a label (the diagonal included)
    are masked; the argmax per row (first on ties) is the negative.
    mask="multiply": as coded, similarities are multiplied by 0 where labels are shared, so a
    same-label item can still win when every other similarity is <= 0 (a batch of one class
    yields row 0); mask="exclude": such pairs get -inf; a row with no other-label item in the
    batch falls back to its most similar other row.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        different = labels[:, None] != labels[None, :]
    else:
        different = (labels.astype(np.float64) @ labels.T.astype(np.float64)) <= 0
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms > 0, norms, 1.0)  # a zero row has similarity 0 to all (as sklearn)
    similarity = unit @ unit.T
    if mask == "multiply":
        return np.argmax(similarity * different, axis=1)
    if mask == "exclude":
        masked = np.where(different, similarity, -np.inf)
        others = similarity.copy()
        np.fill_diagonal(others, -np.inf)
        return np.where(different.any(axis=1), np.argmax(masked, axis=1), np.argmax(others, axis=1))
    raise ValueError(f"unknown mask '{mask}'; choose multiply or exclude")


def _first_argmax(values):
    """Per row, the first column holding the row's maximum (NumPy's argmax rule on ties)."""
    best = tf.reduce_max(values, axis=1, keepdims=True)
    columns = tf.range(tf.shape(values)[1], dtype=tf.int32)
    return tf.reduce_min(tf.where(values == best, columns[None, :], tf.shape(values)[1]), axis=1)


def mine_negatives_tf(features, labels, mask="multiply"):
    """mine_negatives in TensorFlow (float64, inside a compiled step; returns int32 row
    indices): the same rule, so that batches need not visit the host to be mined.
    `labels` are one-hot / multi-hot rows; `mask` is a Python string."""
    features = tf.cast(features, tf.float64)
    labels = tf.cast(labels, tf.float64)
    different = tf.matmul(labels, labels, transpose_b=True) <= 0
    norms = tf.norm(features, axis=1, keepdims=True)
    unit = features / tf.where(norms > 0, norms, tf.ones_like(norms))  # a zero row has similarity 0 to all
    similarity = tf.matmul(unit, unit, transpose_b=True)
    if mask == "multiply":
        return _first_argmax(similarity * tf.cast(different, tf.float64))
    if mask == "exclude":
        minus_inf = tf.constant(-np.inf, tf.float64)
        masked = tf.where(different, similarity, minus_inf)
        others = tf.linalg.set_diag(similarity, tf.fill([tf.shape(similarity)[0]], minus_inf))
        return tf.where(tf.reduce_any(different, axis=1), _first_argmax(masked), _first_argmax(others))
    raise ValueError(f"unknown mask '{mask}'; choose multiply or exclude")
