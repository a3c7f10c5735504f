"""GradientReversal (models/layers.py) and the DANN schedule; and, at trainer level, whether
the reversed modality gradient reaches ACMR's projectors (paper variant) or not (original)."""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from models.layers import GradientReversal, dann_lambda
from trainers import acmr


def reversal_gradient(layer, x, upstream, **call_kwargs):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call_kwargs)
        objective = tf.reduce_sum(y * upstream)  # d objective / d y = upstream
    return y, tape.gradient(objective, x)


def test_forward_is_the_identity():
    x = np.random.RandomState(0).normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_array_equal(GradientReversal(0.7)(x).numpy(), x)


@pytest.mark.parametrize("lam", [0.0, 0.05, 1.0, 3.5])
def test_backward_is_minus_lambda_times_upstream(lam):
    rng = np.random.RandomState(1)
    x, upstream = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    y, grad = reversal_gradient(GradientReversal(lam), x, upstream)
    np.testing.assert_array_equal(y.numpy(), x)
    np.testing.assert_allclose(grad.numpy(), -np.float32(lam) * upstream, rtol=1e-7, atol=0)


def test_per_call_override_and_set_lambda_change_the_scale_without_retracing():
    rng = np.random.RandomState(2)
    x, upstream = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    layer = GradientReversal(1.0)
    _, grad = reversal_gradient(layer, x, upstream, lambda_=0.25)
    np.testing.assert_allclose(grad.numpy(), -0.25 * upstream, rtol=1e-7)
    assert float(layer.lambda_.numpy()) == 1.0  # the override leaves the stored lambda alone

    traces = []

    @tf.function
    def gradient_of(x):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            objective = tf.reduce_sum(layer(x) * upstream)
        return tape.gradient(objective, x)

    for lam in (0.5, 2.0, 0.0):
        layer.set_lambda(lam)
        np.testing.assert_allclose(gradient_of(tf.constant(x)).numpy(), -lam * upstream, rtol=1e-7, atol=0)
    assert len(traces) == 1


def test_dann_lambda_schedule_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_lambda(0.1, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.1)) - 1)
    values = [dann_lambda(e / 50) for e in range(50)]
    assert all(a < b for a, b in zip(values, values[1:]))
    config = dataclasses.replace(acmr.Config(), **acmr.PRESETS["original"])
    assert acmr.lambda_for_epoch(config, 10, 50) == pytest.approx(dann_lambda(0.2))
    assert acmr.lambda_for_epoch(dataclasses.replace(config, **acmr.PRESETS["paper"]), 10, 50) == 0.05


# ----------------------------------------------------------------------------- trainer level

def batch(seed=0, n=16, image_dim=12, text_dim=5, classes=4):
    rng = np.random.RandomState(seed)
    img = rng.rand(n, image_dim).astype(np.float32)
    txt = rng.rand(n, text_dim).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[np.arange(n) % classes]
    from losses.acmr import mine_negatives
    return img, txt, labels, mine_negatives(img, labels), mine_negatives(txt, labels)


def variant_config(variant, **overrides):
    return dataclasses.replace(acmr.Config(), **{**acmr.PRESETS[variant], "architecture": "coded", **overrides})


def projector_changes(variant, lambdas=(1.0, 0.0), **overrides):
    """How much one step from a fixed start moves the projectors' weights, for each lambda: one
    model (its update traced once; lambda is a variable), every variable of its networks and
    optimisers put back to its starting value before each step."""
    config = variant_config(variant, projector_steps=1, shared_forward_pass=True, **overrides)
    tf.keras.utils.set_random_seed(3)
    model = acmr.AcmrModel(config, 12, 5, 4)
    assert model.loss_scale is None  # float32: nothing else holds state
    nets = model.nets
    state = [v for net in (nets.image_projector, nets.text_projector, nets.label_classifier, nets.modality_classifier,
                           model.projector_optimizer, model.modality_optimizer) for v in net.variables]
    start = [np.array(v.numpy()) for v in state]
    img, txt, labels, img_neg, txt_neg = batch()
    changes = []
    for lam in lambdas:
        for variable, value in zip(state, start):
            variable.assign(value)
        model.set_lambda(lam)
        before = [v.numpy().copy() for v in model.nets.projector_variables]
        model.update(img, txt, labels, img_neg, txt_neg, update_modality=True)
        changes.append([v.numpy() - b for v, b in zip(model.nets.projector_variables, before)])
    return changes


def modality_gradient_on_projectors(variant, lam):
    config = variant_config(variant)
    tf.keras.utils.set_random_seed(4)
    model = acmr.AcmrModel(config, 12, 5, 4)
    model.set_lambda(lam)
    img, txt, labels, img_neg, txt_neg = batch(1)
    with tf.GradientTape() as tape:
        terms, _ = model.loss_terms(tf.constant(img), tf.constant(txt), tf.constant(labels),
                                    tf.constant(img_neg), tf.constant(txt_neg))
    via_loss = [tf.zeros_like(v) if g is None else g for g, v in zip(
        tape.gradient(terms["modality"], model.nets.projector_variables), model.nets.projector_variables)]
    # The same term's plain (unreversed) gradient, from an untouched forward pass.
    with tf.GradientTape() as plain_tape:
        emb_img = model.nets.image_projector(img)
        emb_txt = model.nets.text_projector(txt)
        from losses.acmr import modality_loss
        plain = modality_loss(model.nets.modality_classifier(emb_img, reverse=False),
                              model.nets.modality_classifier(emb_txt, reverse=False))
    unreversed = plain_tape.gradient(plain, model.nets.projector_variables)
    return via_loss, unreversed


def test_paper_variant_projectors_receive_the_reversed_modality_gradient():
    via_loss, unreversed = modality_gradient_on_projectors("paper", lam=0.3)
    assert max(float(np.abs(u.numpy()).max()) for u in unreversed) > 1e-4
    for got, plain in zip(via_loss, unreversed):
        np.testing.assert_allclose(got.numpy(), -0.3 * plain.numpy(), rtol=1e-5, atol=1e-8)


def test_original_variant_modality_loss_never_reaches_the_projectors():
    via_loss, unreversed = modality_gradient_on_projectors("original", lam=0.3)
    assert max(float(np.abs(u.numpy()).max()) for u in unreversed) > 1e-4
    for got in via_loss:
        np.testing.assert_array_equal(got.numpy(), 0.0)


@pytest.mark.slow
def test_one_step_with_and_without_the_modality_loss_moves_the_projectors_differently_in_the_paper_variant():
    # "Without it": lambda = 0 makes the reversed gradient exactly zero; "with it": lambda = 1.
    paper_with, paper_without, paper_again = projector_changes("paper", lambdas=(1.0, 0.0, 1.0))
    # the reset is complete: the step with lambda = 1 again moves the projectors exactly as the first
    for a, b in zip(paper_again, paper_with):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in zip(paper_with, paper_without)) > 1e-5
    # The same pair in the original variant: identical to the last bit (the path is inert).
    original_with, original_without = projector_changes("original")
    for a, b in zip(original_with, original_without):
        np.testing.assert_array_equal(a, b)
    # And the original variant with the quirk switched off behaves like the paper's.
    switched_with, switched_without = projector_changes("original", adversarial_in_projector_loss=True)
    assert max(float(np.abs(a - b).max()) for a, b in zip(switched_with, switched_without)) > 1e-5
