"""The original variant against the authors' triplet_wiki program (its golden files, recorded by
running it and read by conftest.load_golden): three training iterations on the real shallow
Wikipedia features, float32 tolerance."""
import dataclasses

import keras
import numpy as np
import pytest

from losses.acmr import mine_negatives
from tests.conftest import load_golden
from trainers import acmr
from utils.optim import FusedAdam

LOSSES = {"label": "label_loss", "triplet": "triplet_loss", "emb": "emb_loss", "modality": "domain_class_loss"}


@pytest.fixture(scope="module")
def golden():
    return load_golden("acmr-three-steps.npz")


def original_model(golden, adam_kernel="keras"):
    config = dataclasses.replace(acmr.Config(), **acmr.PRESETS["original"], adam_kernel=adam_kernel)
    image_dim, text_dim = golden["step0/input/img"].shape[1], golden["step0/input/txt"].shape[1]
    model = acmr.AcmrModel(config, image_dim, text_dim, golden["init/lc_fc_0/weights"].shape[1])
    model.nets.load_slim_variables({k[len("init/"):]: v for k, v in golden.items() if k.startswith("init/")})
    return model


def step_inputs(golden, step):
    get = lambda name: golden[f"step{step}/input/{name}"]  # noqa: E731
    labels = np.eye(golden["init/lc_fc_0/weights"].shape[1], dtype=np.float32)[get("labels") - 1]
    return get("img"), get("txt"), labels, get("img_negative_index"), get("txt_negative_index"), float(get("lambda"))


def test_our_mining_finds_the_programs_negatives(golden):
    for step in range(3):
        img, txt, labels, img_negative, txt_negative, _ = step_inputs(golden, step)
        np.testing.assert_array_equal(mine_negatives(img, labels, "multiply"), img_negative)
        np.testing.assert_array_equal(mine_negatives(txt, labels, "multiply"), txt_negative)
        # Class ids give the same negatives as one-hot rows.
        np.testing.assert_array_equal(mine_negatives(img, golden[f"step{step}/input/labels"]), img_negative)


@pytest.mark.parametrize("adam_kernel", ["keras", "tf1"])
def test_three_iterations_reproduce_losses_variables_and_embeddings(golden, adam_kernel):
    model = original_model(golden, adam_kernel)
    expected_optimizer = FusedAdam if adam_kernel == "tf1" else keras.optimizers.Adam
    assert type(model.projector_optimizer) is expected_optimizer and type(model.modality_optimizer) is expected_optimizer
    initial = model.nets.slim_variables()
    for step in range(3):
        img, txt, labels, img_negative, txt_negative, lam = step_inputs(golden, step)
        model.set_lambda(lam)
        terms = model.update(img, txt, labels, img_negative, txt_negative, update_modality=True)
        for ours, theirs in LOSSES.items():
            np.testing.assert_allclose(float(terms[ours]), golden[f"step{step}/before/{theirs}"], rtol=2e-6,
                                       err_msg=f"step {step} {theirs}")
        after = model.nets.slim_variables()
        changed = {k[len(f"step{step}/after/"):] for k in golden if k.startswith(f"step{step}/after/")
                   and not k.endswith(("emb_img", "emb_txt"))}
        # The program moves the projectors and the modality classifier, never the label classifier.
        assert changed == set(after) - {"lc_fc_0/weights", "lc_fc_0/biases"}
        for name in ("lc_fc_0/weights", "lc_fc_0/biases"):
            np.testing.assert_array_equal(after[name], initial[name])
        for name in changed:
            reference = golden[f"step{step}/after/{name}"]
            np.testing.assert_allclose(after[name], reference, rtol=1e-5, atol=1e-7, err_msg=f"step {step} {name}")
            # The update itself (about 1e-4 per step), not only the weights, to 0.1 % of its size.
            ours_delta, ref_delta = after[name] - initial[name], reference - initial[name]
            assert np.abs(ours_delta - ref_delta).max() <= 1e-3 * np.abs(ref_delta).max(), f"step {step} {name}"
        emb_img, emb_txt = model.embed(img, txt)
        np.testing.assert_allclose(emb_img, golden[f"step{step}/after/emb_img"], atol=1e-6)
        np.testing.assert_allclose(emb_txt, golden[f"step{step}/after/emb_txt"], atol=1e-6)


def test_adams_beta_1_is_visible_by_the_third_step(golden):
    """The check above can fail on beta_1: with Keras' default 0.9 the third step differs."""
    config = dataclasses.replace(acmr.Config(), **acmr.PRESETS["original"], beta_1=0.9)
    model = acmr.AcmrModel(config, 128, 10, 10)
    model.nets.load_slim_variables({k[len("init/"):]: v for k, v in golden.items() if k.startswith("init/")})
    initial = model.nets.slim_variables()
    for step in range(3):
        img, txt, labels, img_negative, txt_negative, _ = step_inputs(golden, step)
        model.update(img, txt, labels, img_negative, txt_negative, update_modality=True)
    after = model.nets.slim_variables()["vf_fc_2/weights"]
    ours_delta = after - initial["vf_fc_2/weights"]
    ref_delta = golden["step2/after/vf_fc_2/weights"] - initial["vf_fc_2/weights"]
    assert np.abs(ours_delta - ref_delta).max() > 1e-2 * np.abs(ref_delta).max()
