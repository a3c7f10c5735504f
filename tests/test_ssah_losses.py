"""SSAH losses against NumPy versions of the spec's formulas, and against the golden run."""
import numpy as np
import pytest
import tensorflow as tf

from losses import ssah as L
from tests.conftest import load_golden

RNG = np.random.default_rng(0)
N, BATCH, WIDTH = 12, 5, 7


def softplus(x):
    return np.log1p(np.exp(x))


def sigmoid_ce(logits, target):
    return np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))


@pytest.fixture
def pair_inputs():
    stored = RNG.normal(size=(N, WIDTH))
    batch = RNG.normal(size=(BATCH, WIDTH))
    similarity = 0.999 * (RNG.random((N, BATCH)) < 0.4)
    return stored, batch, similarity


def close(tensor, value):
    np.testing.assert_allclose(float(tensor), value, rtol=1e-5)


def test_half_sum_squares_is_the_programs_mse():
    a, b = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    close(L.half_sum_squares(a, b), 0.5 * np.sum((a - b) ** 2))
    close(L.label_loss(a, b), 0.5 * np.sum((a - b) ** 2))


def test_pairwise_squared_and_nll(pair_inputs):
    stored, batch, similarity = pair_inputs
    theta = 0.5 * stored @ batch.T
    close(L.pairwise_squared(stored, batch, similarity), 0.5 * np.sum((similarity * theta - softplus(theta)) ** 2))
    close(L.pairwise_nll(stored, batch, similarity), np.sum(softplus(theta) - similarity * theta))


def test_pairwise_terms_stay_finite_where_the_literal_log_exp_overflows():
    stored = np.full((3, 4), 10.0, np.float32)  # Theta = 200: exp overflows float32
    similarity = np.ones((3, 3), np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.log(1 + np.exp(np.float32(200.0))))
    close(L.pairwise_squared(stored, stored, similarity), 0.5 * 9 * (200.0 - 200.0) ** 2 + 0.0)
    half = 0.5 * similarity  # S = 0.5: each pair contributes softplus(200) - 100 = 100
    close(L.pairwise_nll(stored, stored, half), 9 * 100.0)


def test_quantisation_loss_value_and_constant_sign_gradient():
    hashes = tf.constant(RNG.uniform(-1, 1, (6, 8)), tf.float32)
    close(L.quantisation_loss(hashes), 0.5 * np.sum((np.sign(hashes.numpy()) - hashes.numpy()) ** 2))
    with tf.GradientTape() as tape:
        tape.watch(hashes)
        loss = L.quantisation_loss(hashes)
    np.testing.assert_allclose(tape.gradient(loss, hashes).numpy(), hashes.numpy() - np.sign(hashes.numpy()), rtol=1e-6)


def test_adversarial_and_discriminator_losses_are_means_of_sigmoid_ce():
    logits = [RNG.normal(0, 2, (n, 1)) for n in (9, 9, 4, 4)]
    for target in (0.0, 1.0):
        close(L.adversarial_loss(logits[0], target), np.mean(sigmoid_ce(logits[0], target)))
    expected = (np.mean(sigmoid_ce(logits[0], 0)) + np.mean(sigmoid_ce(logits[1], 0))
                + np.mean(sigmoid_ce(logits[2], 1)) + np.mean(sigmoid_ce(logits[3], 1))) / 4
    close(L.discriminator_loss(*logits), expected)


# whole; blocks of 5 columns (not dividing N); a budget smaller than one pair (one column a block)
BUDGETS = (L.PAIR_BYTES * 10 ** 6, L.PAIR_BYTES * 5 * N, 1)


def test_monitoring_losses():
    hashes, features = RNG.uniform(-1, 1, (N, 4)), RNG.normal(size=(N, WIDTH))
    labels = (RNG.random((N, 3)) < 0.5).astype(float)
    predicted = RNG.random((N, 3))
    similarity = 0.999 * (labels @ labels.T > 0)

    def nll(x, y):
        theta = 0.5 * x @ y.T
        return np.sum(softplus(theta) - similarity * theta)
    for budget in BUDGETS:
        close(L.monitoring_loss(hashes, features, labels, predicted, 0.999, budget_bytes=budget),
              np.sum((predicted - labels) ** 2) + nll(hashes, hashes) + nll(features, features))
    close(L.monitoring_loss(hashes, features, labels, predicted, 0.999, alpha=2, gamma=3, beta=0.5,
                            budget_bytes=BUDGETS[1]),
          2 * np.sum((predicted - labels) ** 2) + 3 * nll(hashes, hashes) + 0.5 * nll(features, features))
    image_hashes = RNG.uniform(-1, 1, (N, 4))
    codes = np.sign(image_hashes)
    expected = (nll(image_hashes, hashes) + np.sum((codes - image_hashes) ** 2 + (codes - hashes) ** 2)
                + np.sum((hashes - image_hashes) ** 2) + np.sum((predicted - labels) ** 2))
    for budget in BUDGETS:
        close(L.modality_monitoring_loss(codes, image_hashes, hashes, hashes, predicted, labels, 0.999,
                                         budget_bytes=budget),
              expected)


def test_monitoring_pair_blocks_fit_the_budget():
    """Whole rows while MIN_BLOCK_ROWS of them fit, else MIN_BLOCK_ROWS rows of part of the
    columns; a block's temporaries within the budget at every n up to 10**7."""
    budget = L.MONITORING_BUDGET_BYTES
    assert L.pair_blocks(10_000) == (budget // L.PAIR_BYTES // 10_000, 10_000)
    assert L.pair_blocks(10 ** 6) == (L.MIN_BLOCK_ROWS, budget // L.PAIR_BYTES // L.MIN_BLOCK_ROWS)
    assert L.pair_blocks(N, BUDGETS[1]) == (N, 5) and L.pair_blocks(N, 1) == (N, 1)
    for n in (1, 100, 10 ** 4, 10 ** 5, 10 ** 6, 10 ** 7):
        rows, columns = L.pair_blocks(n)
        assert 1 <= rows <= n and 1 <= columns <= n and rows * columns * L.PAIR_BYTES <= budget


def test_monitoring_loss_in_blocks_is_the_whole_matrix_value():
    """n = 1,500: the loss in blocks of the default budget's shape forced small (a 1 MB budget:
    MIN_BLOCK_ROWS rows of 73 columns, 126 blocks) equals the one-block n x n sum (126 MB) to
    float64 rounding, as the row-chunked sum it replaces did."""
    n = 1500
    hashes, features = RNG.uniform(-1, 1, (n, 16)), RNG.normal(size=(n, 32))
    labels, predicted = (RNG.random((n, 5)) < 0.3).astype(float), RNG.random((n, 5))
    whole = L.monitoring_loss(hashes, features, labels, predicted, 0.999, budget_bytes=L.PAIR_BYTES * n * n)
    assert L.pair_blocks(n, 2 ** 20) == (L.MIN_BLOCK_ROWS, 2 ** 20 // L.PAIR_BYTES // L.MIN_BLOCK_ROWS)
    blocked = L.monitoring_loss(hashes, features, labels, predicted, 0.999, budget_bytes=2 ** 20)
    np.testing.assert_allclose(float(blocked), float(whole), rtol=1e-12)


# ----------------------------------------------------------------------------- golden run

@pytest.fixture(scope="module")
def golden():
    """Nets with the golden initial weights, and the golden arrays."""
    from models.cnnf import CNNF, GOLDEN_WIDTHS
    from models.original_layout import DISCRIMINATOR_SCOPES, load_original_ssah_variables
    from models.ssah import Discriminator, ImgNet, LabNet, TxtNet
    z = load_golden("ssah-one-step.npz")
    n, bits, embed, classes, d, _ = (int(v) for v in z["config"])
    nets = dict(lab=LabNet(classes, bits, embed), txt=TxtNet(d, classes, bits, embed),
                img=ImgNet(CNNF(widths=GOLDEN_WIDTHS), classes, bits, embed))
    nets.update({key: Discriminator() for key in DISCRIMINATOR_SCOPES})
    images = z["input/batch_images_uint8"].astype(np.float32) - z["input/mean_image"]
    nets["lab"](z["input/train_labels"][:1]), nets["txt"](z["input/batch_text"][:1]), nets["img"](images[:1])
    for key in DISCRIMINATOR_SCOPES:
        nets[key](np.zeros((1, embed), np.float32))
    load_original_ssah_variables(nets, {k[5:]: v for k, v in z.items() if k.startswith("init/")})

    def load_after(step):
        prefix = f"after_{step}/"
        load_original_ssah_variables(nets, {k[len(prefix):]: v for k, v in z.items() if k.startswith(prefix)},
                                     strict=False)
    return z, nets, images, load_after


def test_golden_losses_before_each_step(golden):
    """Each step's loss from the golden initial weights and buffers, as the golden README feeds them.

    The image/text totals include the adversarial term; they match only with a MEAN
    cross-entropy and delta = 1 (a sum would add ~88 resp. ~22 to them).
    """
    z, nets, images, load_after = golden
    batch = z["batch_index"]
    labels, texts, similarity = z["input/train_labels"][batch], z["input/batch_text"], z["input/similarity"]
    feat_l, hash_l, pred_l = nets["lab"](labels)
    stored_h, stored_feat_l = z["buffer/H"].copy(), z["buffer/feat_L"].copy()
    stored_h[batch], stored_feat_l[batch] = hash_l, feat_l
    lab_loss = (L.pairwise_squared(stored_feat_l, feat_l, similarity) + L.pairwise_squared(stored_h, hash_l, similarity)
                + L.quantisation_loss(hash_l) + L.label_loss(labels, pred_l))
    np.testing.assert_allclose(float(lab_loss), float(z["lab/loss"]), rtol=1e-5)

    feat_i, hash_i, pred_i = nets["img"](images)  # ImgNet/TxtNet are unchanged until their own steps
    feat_t, hash_t, pred_t = nets["txt"](texts)
    load_after("lab")
    feat_l_after, _, _ = nets["lab"](labels)
    dis = lambda: L.discriminator_loss(nets["dis_img"](feat_i), nets["dis_txt"](feat_t),
                                       nets["dis_img_label"](feat_l_after), nets["dis_txt_label"](feat_l_after))
    np.testing.assert_allclose(float(dis()), float(z["dis/loss"]), rtol=1e-5)
    load_after("dis")
    np.testing.assert_allclose(float(dis()), float(z["dis/loss_after"]), rtol=1e-5)

    stored_feat_i = z["buffer/feat_I"].copy()
    stored_feat_i[batch] = feat_i
    img_loss = (L.pairwise_squared(stored_feat_l, feat_i, similarity) + L.pairwise_squared(stored_h, hash_i, similarity)
                + L.quantisation_loss(hash_i) + L.label_loss(labels, pred_i)
                + L.adversarial_loss(nets["dis_img"](stored_feat_i), 1.0))
    np.testing.assert_allclose(float(img_loss), float(z["img/loss"]), rtol=1e-6)
    txt_loss = (L.pairwise_squared(stored_feat_l, feat_t, similarity) + L.pairwise_squared(stored_h, hash_t, similarity)
                + L.quantisation_loss(hash_t) + L.label_loss(labels, pred_t)
                + L.adversarial_loss(nets["dis_txt"](feat_t), 1.0))
    np.testing.assert_allclose(float(txt_loss), float(z["txt/loss"]), rtol=1e-6)
    summed = txt_loss - L.adversarial_loss(nets["dis_txt"](feat_t), 1.0) + tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones((len(batch), 1)), logits=nets["dis_txt"](feat_t)))
    assert abs(float(summed) - float(z["txt/loss"])) > 1.0
