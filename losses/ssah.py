"""SSAH losses as pure functions of tensors: the training losses of the four steps and the
float64 monitoring losses of the program's early stop.

"mse" in the authors' program is half the SUM of squared differences; `half_sum_squares`
is that. Pairwise terms compare the current batch with a stored copy of all n training
items: Theta = 0.5 * stored @ batch^T, shape (n, batch), and `similarity` is the matching
(n, batch) slice of S (0.999 / 0 in the original).
"""
import tensorflow as tf


def half_sum_squares(a, b):
    """The program's "mse": 0.5 * sum((a - b)^2)."""
    return 0.5 * tf.reduce_sum(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)))


def pairwise_logits(stored, batch, dtype=tf.float32):
    """Theta = 0.5 * stored @ batch^T (n x batch)."""
    return 0.5 * tf.matmul(tf.cast(stored, dtype), tf.cast(batch, dtype), transpose_b=True)


def pairwise_squared(stored, batch, similarity):
    """The original's pairwise term: mse(S * Theta, log(1 + exp(Theta))).

    log(1 + exp(.)) is computed as a stable softplus (the program's literal form overflows
    to inf for Theta > ~88; below that the two agree to float32 rounding).
    """
    theta = pairwise_logits(stored, batch)
    return half_sum_squares(tf.cast(similarity, tf.float32) * theta, tf.nn.softplus(theta))


def pairwise_nll(stored, batch, similarity, dtype=tf.float32):
    """The paper's pairwise term: sum(log(1 + exp(Theta)) - S * Theta)."""
    theta = pairwise_logits(stored, batch, dtype)
    return tf.reduce_sum(tf.nn.softplus(theta) - tf.cast(similarity, dtype) * theta)


def quantisation_loss(hashes):
    """mse(sign(H), H), sign(H) held constant (the program feeds it as a placeholder)."""
    return half_sum_squares(tf.stop_gradient(tf.sign(hashes)), hashes)


def label_loss(labels, predicted):
    """mse(labels, predicted labels)."""
    return half_sum_squares(labels, predicted)


def adversarial_loss(logits, target):
    """Mean sigmoid cross-entropy of `logits` against the constant `target` (0 or 1).

    The program takes reduce_mean of sigmoid_cross_entropy_with_logits over the fed rows.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.fill(tf.shape(logits), tf.cast(target, tf.float32))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def discriminator_loss(logits_img, logits_txt, logits_lab_img, logits_lab_txt):
    """(CE(image, 0) + CE(text, 0) + CE(label via D_I', 1) + CE(label via D_T', 1)) / 4.

    Each CE is a mean over its rows (`adversarial_loss`); the sum of the four is divided by 4.
    """
    return (adversarial_loss(logits_img, 0.0) + adversarial_loss(logits_txt, 0.0)
            + adversarial_loss(logits_lab_img, 1.0) + adversarial_loss(logits_lab_txt, 1.0)) / 4.0


# The program computes its early-stop losses in NumPy from float64 copies of the stored outputs.
MONITORING_DTYPE = tf.float64
# Memory the monitoring losses' temporaries may take at once (their n x n pairs go in blocks).
MONITORING_BUDGET_BYTES = 512 * 2 ** 20
PAIR_BYTES = 56  # per pair of a block: about six float64 temporaries (logits, softplus, S, ...) and a bool
MIN_BLOCK_ROWS = 256  # fewer rows than this per block: the columns are split instead


def pair_blocks(num_items, budget_bytes=MONITORING_BUDGET_BYTES):
    """(rows, columns) of the blocks of an n x n sum whose temporaries fit `budget_bytes`:
    whole rows while at least MIN_BLOCK_ROWS of them fit, else MIN_BLOCK_ROWS rows of part of
    the columns (at least one pair per block)."""
    pairs = max(1, budget_bytes // PAIR_BYTES)
    rows = pairs // num_items
    if rows >= min(num_items, MIN_BLOCK_ROWS):
        return min(num_items, max(1, rows)), num_items
    rows = min(num_items, MIN_BLOCK_ROWS)
    return rows, max(1, min(num_items, pairs // rows))


def squared_error(a, b, budget_bytes=MONITORING_BUDGET_BYTES):
    """sum((a - b)^2) in float64, the FULL sum (the monitoring losses' NumPy code does not halve
    it); summed over row blocks whose float64 temporaries fit `budget_bytes`."""
    num_items, width = int(a.shape[0]), max(1, int(a.shape[-1]) if len(a.shape) > 1 else 1)
    rows = max(1, budget_bytes // (4 * 8 * width))  # two casts, the difference, its square
    total = tf.constant(0.0, MONITORING_DTYPE)
    for start in range(0, num_items, rows):
        total += tf.reduce_sum(tf.square(tf.cast(a[start:start + rows], MONITORING_DTYPE)
                                         - tf.cast(b[start:start + rows], MONITORING_DTYPE)))
    return total


def all_pairs_nll(first, second, labels, similarity_scale, budget_bytes=MONITORING_BUDGET_BYTES, rows_of=None):
    """sum(log(1 + exp(Theta)) - S * Theta) over ALL n x n pairs, Theta = 0.5 * first @ second^T,
    S = similarity_scale where two items share a label, else 0; in float64 (S too: 0.999 in
    float32 is 1.3e-8 off). Summed over blocks of pairs (`pair_blocks`), so that the memory it
    takes is `budget_bytes` whatever n (the program's n x n matrices would be 8 TB at n = 1M).
    rows_of: None, or the number of first rows whose pairs to sum (a part: benchmarks time one)."""
    num_items = int(labels.shape[0])
    block_rows, block_columns = pair_blocks(num_items, budget_bytes)
    total = tf.constant(0.0, MONITORING_DTYPE)
    last = num_items if rows_of is None else min(rows_of, num_items)
    for start in range(0, last, block_rows):
        rows = slice(start, min(start + block_rows, last))
        row_labels = tf.cast(labels[rows], MONITORING_DTYPE)
        for column in range(0, num_items, block_columns):
            columns = slice(column, min(column + block_columns, num_items))
            shares_label = tf.matmul(row_labels, tf.cast(labels[columns], MONITORING_DTYPE), transpose_b=True) > 0
            similarity = tf.cast(shares_label, MONITORING_DTYPE) * similarity_scale
            total += pairwise_nll(first[rows], second[columns], similarity, MONITORING_DTYPE)
    return total


def monitoring_loss(hashes, features, labels, predicted_labels, similarity_scale, alpha=1.0, gamma=1.0,
                    beta=1.0, budget_bytes=MONITORING_BUDGET_BYTES):
    """The LabNet early-stop loss over all n stored items (the program's calc_labnet_loss).

    alpha * sum((predicted - labels)^2) + gamma * NLL(H, H) + beta * NLL(F, F) with NLL the
    `all_pairs_nll` of the labels' similarity. Not the training loss; computed in float64,
    its temporaries within budget_bytes.
    """
    return (alpha * squared_error(predicted_labels, labels, budget_bytes)
            + gamma * all_pairs_nll(hashes, hashes, labels, similarity_scale, budget_bytes)
            + beta * all_pairs_nll(features, features, labels, similarity_scale, budget_bytes))


def modality_monitoring_loss(codes, first, second, label_hashes, predicted_labels, labels, similarity_scale,
                             alpha=1.0, beta=1.0, gamma=1.0, eta=1.0, budget_bytes=MONITORING_BUDGET_BYTES):
    """The ImgNet/TxtNet early-stop loss over all n stored items (the program's calc_loss).

    alpha * NLL(first, second) + beta * sum((B - first)^2 + (B - second)^2)
    + gamma * sum((H - first)^2 + (H - second)^2) + eta * sum((predicted - labels)^2),
    NLL the `all_pairs_nll` of the labels' similarity. The program calls it as (B=sign(F), F,
    H, H) for the image net and (B=sign(G), H, G, H) for the text net (H: stored label hashes),
    all weights 1. In float64, its temporaries within budget_bytes.
    """
    def squares(a, b):
        return squared_error(a, b, budget_bytes)
    return (alpha * all_pairs_nll(first, second, labels, similarity_scale, budget_bytes)
            + beta * (squares(codes, first) + squares(codes, second))
            + gamma * (squares(label_hashes, first) + squares(label_hashes, second))
            + eta * squares(predicted_labels, labels))
