"""Which networks each SSAH step moves, in the original and the paper variant, on a tiny config."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from losses import ssah as L
from trainers.ssah import PRESETS, Config, SsahModel

N, CLASSES, TEXT_DIM, IMAGE_DIM, BATCH = 24, 5, 60, 12, 8


def make_trainer(variant, **overrides):
    """A trainer of the variant (with the overrides) as built, and a batch of inputs.

    Building one and tracing its steps take ~0.5 s each, so the trainer of each setting is built
    once in this module and handed out again with every variable put back to its value as built
    (nets, optimizer slots and counters, buffers, codes, the batch RNG): in the state a fresh
    build has, its traced steps kept. One object per setting: a second call resets the first's."""
    key = (variant, tuple(sorted(overrides.items())))
    if key not in _BUILT:
        _BUILT[key] = _build_trainer(variant, **overrides)
    trainer, built_values, inputs = _BUILT[key]
    for variable, value in zip(_all_variables(trainer), built_values):
        variable.assign(value)
    return trainer, {name: value.copy() for name, value in inputs.items()}


_BUILT = {}  # (variant, overrides) -> (trainer, its variables' values as built, inputs)


def _build_trainer(variant, **overrides):
    from models.ssah import FeatureTrunk
    rng = np.random.RandomState(0)
    labels = (rng.rand(N, CLASSES) < 0.4).astype(np.float32)
    labels[np.arange(N), rng.randint(0, CLASSES, N)] = 1.0
    config = dataclasses.replace(Config(bits=8, embed_dim=16, hidden_dim=32, batch_size=BATCH),
                                 **{**PRESETS[variant], **overrides})
    tf.keras.utils.set_random_seed(0)
    trainer = SsahModel(config, labels, TEXT_DIM, FeatureTrunk(32))
    trainer.build((IMAGE_DIM,))
    inputs = {"rows": np.arange(BATCH), "labels": labels[:BATCH],
              "images": rng.randn(BATCH, IMAGE_DIM).astype(np.float32),
              "texts": (rng.rand(BATCH, TEXT_DIM) < 0.2).astype(np.float32)}
    return trainer, [np.array(v.numpy()) for v in _all_variables(trainer)], inputs


def _all_variables(trainer):
    """Every variable a step or a code can change or read: the nets', the optimizers' (slots
    and counters: build() made them all), the stored buffers and codes, the RNG's state."""
    found = [v for net in trainer.nets.values() for v in net.variables]
    found += [v for optimizer in {id(o): o for o in trainer.optimizers.values()}.values() for v in optimizer.variables]
    found += list(trainer.buffers.values()) + [trainer.unified_codes, trainer.rng.state]
    assert not trainer.loss_scales  # float32 here: none to reset
    return found


def snapshot(trainer):
    return {name: [v.numpy().copy() for v in net.trainable_variables] for name, net in trainer.nets.items()}


def moved(trainer, before):
    """Names of the nets whose variables changed (any element)."""
    after = snapshot(trainer)
    return {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}


def run_step(trainer, inputs, step, lr=1e-3):
    args = {"lab": (inputs["rows"], inputs["labels"]),
            "dis": (inputs["images"], inputs["texts"], inputs["labels"]),
            "img": (inputs["rows"], inputs["images"], inputs["labels"]),
            "txt": (inputs["rows"], inputs["texts"], inputs["labels"])}[step]
    return trainer.step(step, *args, learning_rate=lr)


ORIGINAL_MOVES = {"lab": {"lab"}, "dis": {"dis_img", "dis_txt", "dis_img_label", "dis_txt_label"},
                  "img": {"img", "dis_img"},   # the program's ImgNet step also trains D_I towards "label"
                  "txt": {"txt", "dis_txt"}}
PAPER_MOVES = {"lab": {"lab"}, "dis": {"dis_img", "dis_txt"}, "img": {"img"}, "txt": {"txt"}}
# The paper's discriminators are 4096 wide (test_paper_variant_nets_are_the_papers); which nets a
# step moves and whether a gradient flows do not depend on the width, so those tests use these.
NARROW = {"discriminator_hidden": (32, 32)}


@pytest.mark.slow
def test_original_variant_moves_what_the_program_moves():
    trainer, inputs = make_trainer("original")
    assert len(trainer.discriminator_names) == 4
    for step, expected in ORIGINAL_MOVES.items():  # the program's order
        before = snapshot(trainer)
        losses = run_step(trainer, inputs, step)
        assert all(np.isfinite(v) for v in losses.values())
        assert moved(trainer, before) == expected, step


@pytest.mark.slow
def test_original_adversarial_term_is_inert_for_the_generators():
    """delta only changes the discriminator, never ImgNet/TxtNet, in the original wiring."""
    results = {}
    for delta in (0.0, 5.0):
        trainer, inputs = make_trainer("original", delta=delta, generator_steps_move_discriminators=False)
        run_step(trainer, inputs, "img")
        run_step(trainer, inputs, "txt")
        results[delta] = snapshot(trainer)
    for net in ("img", "txt"):
        for a, b in zip(results[0.0][net], results[5.0][net]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_original_image_step_pushes_d_i_towards_label_on_stored_features():
    trainer, inputs = make_trainer("original")
    fed = trainer.buffers["feat_I"]
    before = float(tf.reduce_mean(trainer.nets["dis_img"](fed)))
    run_step(trainer, inputs, "img", lr=1e-2)
    after = float(tf.reduce_mean(trainer.nets["dis_img"](trainer.buffers["feat_I"])))
    assert after > before  # the logit of "label" rises: the opposite of D_I's own objective


@pytest.mark.slow
def test_paper_variant_generator_steps_leave_discriminators_alone():
    trainer, inputs = make_trainer("paper", **NARROW)
    assert sorted(trainer.discriminator_names) == ["dis_img", "dis_txt"]  # shared per modality pair
    for step, expected in PAPER_MOVES.items():
        before = snapshot(trainer)
        run_step(trainer, inputs, step)
        assert moved(trainer, before) == expected, step


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["img", "txt"])
def test_paper_variant_adversarial_gradient_reaches_the_generator(modality):
    """The same update with delta = 0 and delta > 0 differs: the discriminator's gradient flows."""
    results = {}
    for delta in (0.0, 5.0):
        trainer, inputs = make_trainer("paper", delta=delta, **NARROW)
        run_step(trainer, inputs, modality)
        results[delta] = snapshot(trainer)[modality]
    assert any(not np.array_equal(a, b) for a, b in zip(results[0.0], results[5.0]))
    # And directly: the adversarial term alone has a nonzero gradient w.r.t. the net's variables.
    trainer, inputs = make_trainer("paper", delta=0.0, **NARROW)  # as built again
    from losses.ssah import adversarial_loss
    x = inputs["images"] if modality == "img" else inputs["texts"]
    with tf.GradientTape() as tape:
        feature = trainer.nets[modality](trainer.image_preprocess(x) if modality == "img" else x)[0]
        adversarial = adversarial_loss(trainer.nets[f"dis_{modality}"](feature), 1.0)
    grads = tape.gradient(adversarial, trainer.nets[modality].trainable_variables)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None) > 0


@pytest.mark.slow
def test_shared_adam_counter_advances_on_every_generator_update():
    trainer, inputs = make_trainer("original")
    for step in ("lab", "dis", "img", "txt"):
        run_step(trainer, inputs, step)
    assert trainer.optimizers["lab"] is trainer.optimizers["img"] is trainer.optimizers["txt"]
    assert int(trainer.optimizers["lab"].iterations.numpy()) == 3
    assert int(trainer.optimizers["dis"].iterations.numpy()) == 1
    separate, inputs = make_trainer("original", shared_adam_counter=False)
    for step in ("lab", "img", "txt"):
        run_step(separate, inputs, step)
    assert [int(separate.optimizers[s].iterations.numpy()) for s in ("lab", "img", "txt")] == [1, 1, 1]


@pytest.mark.slow
def test_each_step_writes_its_batch_rows_before_the_update():
    trainer, inputs = make_trainer("original")
    for step, (net, names) in {"lab": ("lab", ("H", "feat_L", "pred_L")),
                               "img": ("img", ("F", "feat_I", "pred_I")),
                               "txt": ("txt", ("G", "feat_T", "pred_T"))}.items():
        x = {"lab": inputs["labels"], "img": trainer.image_preprocess(inputs["images"]),
             "txt": inputs["texts"]}[step]
        feature, hashes, predicted = (t.numpy() for t in trainer.nets[net](x))
        untouched = {name: trainer.buffers[name].numpy()[BATCH:].copy() for name in names}
        run_step(trainer, inputs, step)
        for name, expected in zip(names, (hashes, feature, predicted)):
            np.testing.assert_allclose(trainer.buffers[name].numpy()[:BATCH], expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(trainer.buffers[name].numpy()[BATCH:], untouched[name])


@pytest.mark.slow
def test_changing_the_learning_rate_does_not_retrace():
    trainer, inputs = make_trainer("original")
    for lr in (1e-2, 1e-3, 10 ** -3.5):
        run_step(trainer, inputs, "lab", lr=lr)
    assert trainer._compiled["lab"].experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_codes_of_any_batch_size_come_from_one_trace_per_modality():
    """hash_codes: sign of the tanh hash (0 counts as +1), the same rows whatever the batch size,
    from one traced function per modality (no retrace per batch or per call)."""
    trainer, _ = make_trainer("original")
    rng = np.random.RandomState(1)
    images, texts = rng.randn(11, IMAGE_DIM).astype(np.float32), (rng.rand(11, TEXT_DIM) < 0.2).astype(np.float32)
    for modality, items in (("img", images), ("txt", texts)):
        hashes = trainer.nets[modality](trainer.image_preprocess(items) if modality == "img" else items)[1].numpy()
        expected = np.where(hashes >= 0, 1.0, -1.0)
        for batch_size in (4, 11, 3, 64):
            np.testing.assert_array_equal(trainer.hash_codes(modality, items, batch_size), expected)
    traced = [fn.experimental_get_tracing_count() for key, fn in trainer._compiled.items() if key[0] == "codes"]
    assert traced == [1, 1]


@pytest.mark.slow
def test_monitoring_loss_reads_the_programs_buffers():
    """LabNet: (H, feat_L, pred_L); ImgNet: codes sign(F), pair (F, H); TxtNet: sign(G), pair (H, G)."""
    trainer, inputs = make_trainer("original")
    for step in ("lab", "img", "txt"):
        run_step(trainer, inputs, step)
    b = {name: variable.numpy().astype(np.float64) for name, variable in trainer.buffers.items()}
    labels = trainer.labels.numpy().astype(np.float64)
    similarity = 0.999 * (labels @ labels.T > 0)

    def nll(x, y):
        theta = 0.5 * x @ y.T
        return np.sum(np.logaddexp(0, theta) - similarity * theta)

    def squares(x, y):
        return np.sum((x - y) ** 2)
    budget = 7 * 5 * L.PAIR_BYTES  # blocks of a few columns: 35 pairs over n rows
    np.testing.assert_allclose(trainer.monitoring_loss("lab", budget_bytes=budget), squares(b["pred_L"], labels)
                               + nll(b["H"], b["H"]) + nll(b["feat_L"], b["feat_L"]), rtol=1e-9)
    for net, hashes, predicted, first, second in (("img", "F", "pred_I", "F", "H"), ("txt", "G", "pred_T", "H", "G")):
        codes = np.sign(b[hashes])
        expected = (nll(b[first], b[second]) + squares(codes, b[first]) + squares(codes, b[second])
                    + squares(b["H"], b[first]) + squares(b["H"], b[second]) + squares(b[predicted], labels))
        np.testing.assert_allclose(trainer.monitoring_loss(net, budget_bytes=budget), expected, rtol=1e-9)


@pytest.mark.slow
def test_paper_variant_nets_are_the_papers():
    """Discriminators E -> 4096 -> 4096 -> 1 with tanh; TxtNet's joint fusion over windows 1, 2, 3, 5, 10."""
    trainer, inputs = make_trainer("paper")
    dis = trainer.nets["dis_img"]
    assert [tuple(layer.kernel.shape) for layer in dis.hidden_layers + [dis.out]] == [(16, 4096), (4096, 4096),
                                                                                      (4096, 1)]
    features = np.random.default_rng(0).normal(0, 3, (4, 16)).astype(np.float32)
    first = dis.hidden_layers[0](features).numpy()
    np.testing.assert_allclose(first, np.tanh(features @ dis.hidden_layers[0].kernel.numpy()
                                              + dis.hidden_layers[0].bias.numpy()), rtol=1e-5, atol=1e-6)
    assert first.min() < 0  # tanh, not relu
    fusion = trainer.nets["txt"].fusion
    assert fusion.windows == (1, 2, 3, 5, 10) and fusion.fusion == "joint" and fusion.channels == 1
    assert tuple(trainer.nets["txt"].fc1.kernel.shape) == (TEXT_DIM, 32)
    original, _ = make_trainer("original")
    assert original.nets["txt"].fusion.windows == (50, 30, 15, 10, 5)
    assert original.nets["dis_img"].hidden_layers[0](features).numpy().min() >= 0  # relu


@pytest.mark.parametrize("overrides,message", [
    ({"step_order": ("lab", "img", "txt")}, "step_order"),
    ({"step_order": ("lab", "img", "img", "dis")}, "step_order"),
    ({"ms_windows": (0, 5)}, "ms_windows"),
    ({"ms_windows": (100,), "ms_fusion": "joint"}, "wider than the 60-d text"),
    ({"discriminator_activation": "sigmoid"}, "discriminator_activation"),
])
def test_bad_paper_settings_are_one_line_errors(overrides, message):
    from utils.errors import UserError
    with pytest.raises(UserError, match=message):
        make_trainer("original", **overrides)


@pytest.mark.parametrize("argv,expected", [
    (["--variant", "paper"], ["lab", "img", "txt", "dis"]),                     # the paper's order
    (["--step-order", "txt,dis,lab,img"], ["txt", "dis", "lab", "img"]),         # any order given
])
@pytest.mark.slow
def test_an_epoch_runs_the_steps_in_step_order(tmp_path, monkeypatch, argv, expected):
    import train
    from trainers import ssah
    calls = []

    def recording_step(self, name, *args, **kwargs):  # the updates themselves are tested above
        if not calls or calls[-1] != name:
            calls.append(name)
        return {"loss": 0.0}
    monkeypatch.setattr(ssah.SsahModel, "step", recording_step)
    train.main(["--method", "ssah", "--schedule", "tiny", "--epochs", "1", "--bits", "8", "--embed-dim", "16",
                "--hidden-dim", "32", "--discriminator-hidden", "16,16", "--runs-dir", str(tmp_path),
                "--run-name", "order"] + argv)
    assert calls == expected
