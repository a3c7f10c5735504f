"""utils.separability (a fresh linear classifier's held-out accuracy) and ACMR's modality
diagnostics, which measure the modality game without changing training."""
import dataclasses

import numpy as np
import pytest

from utils.separability import linear_separability


def test_tiny_but_separable_sets_score_one_and_identical_sets_score_chance():
    rng = np.random.RandomState(0)
    # Embeddings as small as ACMR's on the shallow Wikipedia features (|e| ~ 0.03), the two
    # sets apart along one low-variance direction only: the scale must not matter.
    a = rng.normal(scale=0.03, size=(600, 40))
    b = rng.normal(scale=0.03, size=(600, 40))
    a[:, 7] = rng.normal(0.002, 0.0005, size=600)
    b[:, 7] = rng.normal(-0.002, 0.0005, size=600)
    separable = linear_separability(a[:400], b[:400], a[400:], b[400:])
    assert separable["test"] > 0.99 and separable["train"] > 0.99
    same = linear_separability(rng.normal(size=(400, 40)), rng.normal(size=(400, 40)),
                               rng.normal(size=(300, 40)), rng.normal(size=(300, 40)))
    assert abs(same["test"] - 0.5) < 0.07
    # Unequal set sizes: balanced accuracy, so predicting the larger set everywhere gives 0.5.
    lopsided = linear_separability(rng.normal(size=(500, 3)), rng.normal(size=(50, 3)))
    assert lopsided["test"] == lopsided["train"] and lopsided["train"] < 0.75


@pytest.mark.slow
def test_acmr_modality_diagnostics_are_recorded_and_leave_training_unchanged(tmp_path):
    from tests.test_acmr import write_wiki_pickles
    from trainers import acmr
    from utils.data import load_dataset
    write_wiki_pickles(str(tmp_path), n_train=64, n_test=40, seed=2)
    data = load_dataset("wiki-pickle", str(tmp_path))
    base = dataclasses.replace(acmr.Config(), **{**acmr.PRESETS["paper"], "architecture": "coded"}, variant="paper",
                               dataset="wiki-pickle", data=str(tmp_path), batch_size=32,
                               epochs=3, eval_every=3, seed=1)

    def fit(**overrides):
        import keras
        keras.utils.set_random_seed(1)
        return acmr.fit(dataclasses.replace(base, **overrides), data=data)

    plain, measured = fit(), fit(separability_every=2)
    assert measured["final"] == plain["final"]  # the probe trains nothing in the model
    assert [("modality" in r) for r in measured["epochs"]] == [False, True, True]  # every 2nd and the last
    assert not any("modality" in r for r in plain["epochs"])
    for record in measured["epochs"]:
        batches = record["modality_accuracy_batches"]
        assert len(batches) == 64 // 32
        assert np.mean(batches) == pytest.approx(record["losses"]["modality_accuracy"])
    figures = measured["epochs"][-1]["modality"]
    assert set(figures) == {"live_test", "separability", "separability_train"}
    assert all(0.0 <= v <= 1.0 for v in figures.values())
