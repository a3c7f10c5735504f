"""--precision (issue 22, item 4): mixed_bfloat16 and mixed_float16 for SSAH, ACMR and METAH.

Under a mixed policy the networks compute in 16 bits while variables, SSAH's stored buffers and
every loss stay float32; float16 adds dynamic loss scaling, bfloat16 (float32's exponent range)
needs none. Tolerances are the measured worst relative differences to float32 (tiny models,
a few updates, relative to max(|loss|, 1)) with about 4x headroom.
"""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import acmr as acmr_losses
from tests.test_full_scale import STEPS, run_steps, tiny_data, tiny_trainer
from tests.test_metah import small_batch, small_model
from trainers import acmr
from trainers.ssah import Config as SsahConfig
from utils.config import config_from_dict
from utils.errors import UserError


def worst_relative_difference(reference, other):
    assert [sorted(a) for a in reference] == [sorted(b) for b in other]
    return max(abs(b[k] - a[k]) / max(abs(a[k]), 1.0) for a, b in zip(reference, other) for k in a)


def test_ssah_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_state():
    reference = run_steps(tiny_trainer(), STEPS, rounds=2)
    trainer = tiny_trainer(precision="mixed_bfloat16")
    mixed = run_steps(trainer, STEPS, rounds=2)
    # every term of the four steps, two rounds: measured 1.1e-3
    assert worst_relative_difference(reference, mixed) < 5e-3
    labels, images, texts = tiny_data()
    rows = np.arange(8)
    for step, args in (("lab", (rows, labels[rows])), ("dis", (images[rows], texts[rows], labels[rows])),
                       ("img", (rows, images[rows], labels[rows])), ("txt", (rows, texts[rows], labels[rows]))):
        assert all(value.dtype == tf.float32 for value in trainer.step(step, *args, learning_rate=0.0).values())
    x = {"lab": tf.ones([2, 5]), "txt": tf.ones([2, 60]), "img": tf.ones([2, 12])}
    for net in ("lab", "txt", "img"):  # the networks' own outputs: computed in bfloat16
        assert all(out.dtype == tf.bfloat16 for out in trainer.nets[net](x[net])), net
    assert trainer.nets["txt"].fc1.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for net in trainer.nets.values() for v in net.variables)
    assert all(b.dtype == tf.float32 for b in trainer.buffers.values())
    assert trainer.loss_scales == {} and not any(k.startswith("loss_scale") for k in trainer.checkpoint_objects())


def acmr_updates(precision, updates=3):
    keras.utils.set_random_seed(2)
    model = acmr.AcmrModel(dataclasses.replace(acmr.Config(), precision=precision), 12, 5, 4)
    rng = np.random.RandomState(0)
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3]]
    losses = []
    for _ in range(updates):
        img, txt = rng.rand(8, 12).astype(np.float32), rng.rand(8, 5).astype(np.float32)
        negatives = acmr_losses.mine_negatives(img, labels), acmr_losses.mine_negatives(txt, labels)
        losses.append({k: float(v) for k, v in model.update(img, txt, labels, *negatives, True).items()})
    return model, losses


def test_acmr_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_losses():
    _, reference = acmr_updates("float32")
    model, mixed = acmr_updates("mixed_bfloat16")
    assert model.nets.image_projector(tf.ones([1, 12])).dtype == tf.bfloat16
    assert model.embed(np.ones([2, 12], np.float32), np.ones([2, 5], np.float32))[0].dtype == np.float32
    assert all(v.dtype == "float32" for v in model.projector_variables + model.modality_variables)
    assert model.loss_scale is None
    # the coded triplet sums squared differences of near-equal embeddings: measured 1.4e-2
    assert worst_relative_difference(reference, mixed) < 5e-2


def metah_updates(precision, updates=3):
    model, _ = small_model(precision=precision, domain_weight=0.8)
    losses = []
    for seed in range(updates):
        terms = model.train_step(*small_batch(seed), tf.constant(1.0))
        assert all(value.dtype == tf.float32 for value in terms.values())
        losses.append({k: float(v) for k, v in terms.items()})
    return model, losses


def test_metah_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_losses():
    _, reference = metah_updates("float32")
    model, mixed = metah_updates("mixed_bfloat16")
    codes, logits = model.net(tf.ones([2, 5]))
    assert codes.dtype == tf.bfloat16 and logits.dtype == tf.bfloat16
    assert model.encode(np.ones([2, 5], np.float32))[0].dtype == np.float32
    assert all(v.dtype == "float32" for v in model.variables) and model.loss_scale is None
    assert worst_relative_difference(reference, mixed) < 1e-2  # measured 2.4e-3


def test_acmr_mixed_float16_skips_an_overflowing_update_and_halves_the_scale():
    """ACMR's label weight 100 overflows float16 at the starting scale 2^15: the first update must
    be skipped (weights and Adam's counter unchanged) and the scale halved, then updates resume."""
    keras.utils.set_random_seed(2)
    model = acmr.AcmrModel(dataclasses.replace(acmr.Config(), precision="mixed_float16"), 12, 5, 4)
    assert model.nets.image_projector.dense_layers[0].compute_dtype == "float16"
    assert model.checkpoint_objects()["loss_scale"] is model.loss_scale
    rng = np.random.RandomState(0)
    img, txt = rng.rand(8, 12).astype(np.float32), rng.rand(8, 5).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3]]
    negatives = acmr_losses.mine_negatives(img, labels), acmr_losses.mine_negatives(txt, labels)
    kernel = model.nets.image_projector.dense_layers[0].kernel
    applied = []
    for _ in range(8):
        before, scale = kernel.numpy().copy(), float(model.loss_scale.scale.numpy())
        model.update(img, txt, labels, *negatives, True)
        moved = not np.array_equal(kernel.numpy(), before)
        assert moved == (float(model.loss_scale.scale.numpy()) == scale)  # skipped exactly when halved
        applied.append(moved)
    assert not applied[0] and applied[-1]
    assert int(model.projector_optimizer.iterations.numpy()) == sum(applied)


def test_metah_mixed_float16_scales_the_loss_and_stays_close():
    _, reference = metah_updates("float32")
    model, mixed = metah_updates("mixed_float16")
    assert model.checkpoint_objects()["loss_scale"] is model.loss_scale
    assert worst_relative_difference(reference, mixed) < 1e-2  # measured 2.2e-4


def test_precision_is_checked_and_the_old_option_names_the_new_one():
    import train
    with pytest.raises(UserError, match="--precision mixed_float16"):
        train.main(["--method", "ssah", "--mixed-precision", "true"])
    with pytest.raises(UserError, match="unknown precision 'bfloat16'"):
        SsahConfig(precision="bfloat16")
    # a run saved before --precision still loads (and resumes) with its meaning
    saved = dataclasses.asdict(SsahConfig())
    del saved["precision"]
    assert config_from_dict(SsahConfig, {**saved, "mixed_precision": True}).precision == "mixed_float16"
    assert config_from_dict(SsahConfig, {**saved, "mixed_precision": False}).precision == "float32"
