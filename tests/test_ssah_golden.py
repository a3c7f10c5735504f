"""The original variant reproduces one update of each SSAH step of the authors' program.

The golden file ssah-one-step.npz (tests/golden, read by tests.conftest.load_golden) holds the program's initial
weights, buffers and inputs, and every loss, head output and changed variable after
one update of LabNet, the discriminators, ImgNet and TxtNet, in that order.
"""
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import load_golden

RTOL = 1e-4  # float32 tolerance, relative to each array's largest magnitude


@pytest.fixture(scope="module")
def golden():
    return load_golden("ssah-one-step.npz")


def _close(actual, expected, scale=None):
    scale = np.abs(expected).max() if scale is None else scale
    return np.abs(np.asarray(actual) - expected) <= RTOL * scale + 1e-7


def _assert_variable(name, before, after, expected):
    """Every element within tolerance, except where the program's own update is visibly below a
    full Adam step. A first Adam update (fresh moments) moves every element by exactly +-one
    step unless |gradient| is comparable to eps = 1e-8; there float32 rounding of the
    gradient decides the step, so we only require the error to stay within one step (and
    such elements to be rare)."""
    update = expected - before
    full_step = np.abs(update).max()
    ok = _close(after, expected)
    eps_dominated = np.abs(update) < 0.99 * full_step
    bad = ~ok & ~eps_dominated
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} values differ, max error " \
                          f"{np.abs(after - expected)[bad].max():.3g} (scale {np.abs(expected).max():.3g})"
    loose = ~ok & eps_dominated
    assert loose.sum() <= max(3, loose.size // 10000), f"{name}: {loose.sum()} near-zero-gradient values differ"
    assert np.all(np.abs(after - expected)[loose] <= 1.01 * full_step), name


def test_one_update_of_each_step_matches_the_program(golden):
    from models.cnnf import CNNF, GOLDEN_WIDTHS
    from models.original_layout import load_original_ssah_variables, original_ssah_variables
    from trainers.ssah import PRESETS, Config, SsahModel
    from losses.ssah import discriminator_loss

    n, bits, embed, classes, text_dim, batch = (int(v) for v in golden["config"])
    config = Config(bits=bits, embed_dim=embed, batch_size=batch, **PRESETS["original"])
    mean = tf.constant(golden["input/mean_image"])
    trainer = SsahModel(config, golden["input/train_labels"], text_dim, CNNF(widths=GOLDEN_WIDTHS),
                          image_preprocess=lambda x: tf.cast(x, tf.float32) - mean)
    trainer.build((224, 224, 3))
    init = {k[len("init/"):]: v for k, v in golden.items() if k.startswith("init/")}
    assigned = load_original_ssah_variables(trainer.nets, init)
    assert sorted(assigned) == sorted(init)  # every program variable has exactly one home
    for name in ("F", "G", "H", "feat_I", "feat_T", "feat_L"):
        trainer.buffers[name].assign(golden["buffer/" + name])

    rows = golden["batch_index"]
    labels = golden["input/train_labels"][rows]
    images, texts = golden["input/batch_images_uint8"], golden["input/batch_text"]
    lr_lab, lr_dis, lr_img, lr_txt = golden["lr"]
    np.testing.assert_array_equal(trainer.similarity(tf.constant(labels)).numpy(), golden["input/similarity"])

    before = original_ssah_variables(trainer.nets)
    buffers_before = {k: v.numpy().copy() for k, v in trainer.buffers.items()}

    def check_step(step, losses, head_inputs=None, net=None):
        nonlocal before
        np.testing.assert_allclose(losses["loss"], golden[f"{step}/loss"], rtol=RTOL)
        after = original_ssah_variables(trainer.nets)
        expected = {k[len(f"after_{step}/"):]: v for k, v in golden.items() if k.startswith(f"after_{step}/")}
        changed = {k for k in after if not np.array_equal(after[k], before[k])}
        assert changed == set(expected), f"{step} step changed {sorted(changed ^ set(expected))} unexpectedly"
        for name, value in expected.items():
            _assert_variable(f"{step}:{name}", before[name], after[name], value)
        if net is not None:
            feature, hashes, predicted = (t.numpy() for t in trainer.nets[net](head_inputs))
            for key, value in (("hash", hashes), ("feat", feature), ("label", predicted)):
                assert _close(value, golden[f"{step}/{key}_after"]).all(), f"{step} {key} head after the update"
        before = after

    losses = trainer.step("lab", rows, labels, learning_rate=lr_lab)
    check_step("lab", losses, tf.constant(labels), "lab")
    # The LabNet step wrote its batch rows of H and feat_L (values before its update).
    assert not np.array_equal(trainer.buffers["H"].numpy()[rows], buffers_before["H"][rows])
    others = np.setdiff1d(np.arange(n), rows)
    np.testing.assert_array_equal(trainer.buffers["H"].numpy()[others], buffers_before["H"][others])

    losses = trainer.step("dis", images, texts, labels, learning_rate=lr_dis)
    check_step("dis", losses)
    features = (trainer.nets["img"](tf.cast(images, tf.float32) - mean)[0], trainer.nets["txt"](texts)[0],
                trainer.nets["lab"](labels)[0])
    loss_after = discriminator_loss(*trainer.discriminator_logits(*features))
    np.testing.assert_allclose(float(loss_after), golden["dis/loss_after"], rtol=RTOL)

    losses = trainer.step("img", rows, images, labels, learning_rate=lr_img)
    check_step("img", losses, tf.cast(images, tf.float32) - mean, "img")
    assert trainer.optimizers["img"] is trainer.optimizers["lab"]
    assert int(trainer.optimizers["img"].iterations.numpy()) == 2  # the shared counter

    losses = trainer.step("txt", rows, texts, labels, learning_rate=lr_txt)
    check_step("txt", losses, tf.constant(texts), "txt")
    assert int(trainer.optimizers["txt"].iterations.numpy()) == 3
    assert int(trainer.optimizers["dis"].iterations.numpy()) == 1
