"""METAH / TAH: losses against NumPy, the one-tape update through gradient reversal,
presets, batching, and a short end-to-end run with resume."""
import dataclasses
import os

import keras
import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from losses import metah as L
from trainers import metah
from utils.errors import UserError

TOL = dict(rtol=1e-5, atol=1e-5)


def np_pairwise(h, labels, bits):
    h = h.astype(np.float64)
    d2 = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    z = (bits / 2.0) / (1.0 + d2)
    s = ((labels @ labels.T) > 0).astype(np.float64)
    loss = np.where(z > 15, z * (1 - s), np.log1p(np.exp(np.minimum(z, 15))) - s * z)
    return loss.mean()


def random_codes(n, bits, seed, spread=1.0):
    return np.tanh(spread * np.random.RandomState(seed).randn(n, bits)).astype(np.float32)


@pytest.mark.parametrize("bits, spread", [(16, 1.0), (64, 1.0), (64, 0.05)])
def test_pairwise_loss_matches_numpy_on_both_branches(bits, spread):
    codes = random_codes(12, bits, seed=bits, spread=spread)
    labels = np.eye(4)[np.random.RandomState(1).randint(0, 4, 12)]
    labels[3] = [1, 1, 0, 0]  # a multi-hot row: shares a label with classes 0 and 1
    z = (bits / 2.0) / (1.0 + ((codes[:, None] - codes[None]) ** 2).sum(-1))
    if bits == 64:
        assert (z > 15).any()  # i = j (z = 32) and near codes take the linear branch
    if spread == 0.05:
        assert (z[~np.eye(12, dtype=bool)] > 15).any()
    np.testing.assert_allclose(L.pairwise_t_loss(codes, labels, bits).numpy(), np_pairwise(codes, labels, bits), **TOL)


def test_pairwise_loss_gradient_is_finite_for_identical_codes():
    codes = tf.Variable(np.ones((4, 128), np.float32))
    with tf.GradientTape() as tape:
        loss = L.pairwise_t_loss(codes, np.eye(2)[[0, 0, 1, 1]], 128)
    assert np.all(np.isfinite(tape.gradient(loss, codes).numpy()))


def test_quantisation_classification_entropy_and_domain_losses_match_numpy():
    rng = np.random.RandomState(0)
    codes = random_codes(9, 16, seed=2)
    np.testing.assert_allclose(L.quantisation_loss(codes).numpy(),
                               np.mean(np.log(np.cosh(np.abs(codes.astype(np.float64)) - 1))), **TOL)
    big = np.array([[-40.0, 0.0, 3.0, 60.0]], np.float32)  # log cosh stays finite where cosh overflows
    np.testing.assert_allclose(L.log_cosh(big).numpy(), np.abs(big) + np.log1p(np.exp(-2 * np.abs(big))) - np.log(2),
                               **TOL)
    logits = rng.randn(9, 5).astype(np.float32) * 3
    labels = np.eye(5)[rng.randint(0, 5, 9)]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(L.classification_loss(logits, labels).numpy(),
                               -np.mean(np.sum(labels * np.log(p), 1)), **TOL)
    np.testing.assert_allclose(L.entropy_loss(logits).numpy(), -np.sum(p * np.log(p)) / 9, **TOL)
    source_logits, target_logits = rng.randn(6).astype(np.float32), rng.randn(4).astype(np.float32)

    def sigmoid(x):
        return 1 / (1 + np.exp(-x.astype(np.float64)))
    expected = -(np.sum(np.log(1 - sigmoid(source_logits))) + np.sum(np.log(sigmoid(target_logits)))) / 10
    np.testing.assert_allclose(L.domain_loss(source_logits, target_logits).numpy(), expected, **TOL)
    expected_accuracy = (np.sum(source_logits < 0) + np.sum(target_logits > 0)) / 10
    np.testing.assert_allclose(L.domain_accuracy(source_logits, target_logits).numpy(), expected_accuracy)


def small_model(**overrides):
    settings = dict(bits=8, hidden=(16,), trunk_dropout=0.0, discriminator_hidden=12, discriminator_dropout=0.0,
                    optimizer="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0)
    config = metah.Config(**{**settings, **overrides})
    keras.utils.set_random_seed(0)
    return metah.MetahModel(config, (5,), num_classes=3), config


def small_batch(seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(6, 5).astype(np.float32), np.eye(3, dtype=np.float32)[rng.randint(0, 3, 6)],
            rng.randn(6, 5).astype(np.float32) + 1.0)


@pytest.mark.slow
def test_one_tape_updates_network_and_discriminator_with_the_domain_gradient_reversed():
    """Only the domain term on: the network must move UP the domain loss by lr * lambda * w
    times its gradient, the discriminator DOWN by lr * w times its gradient."""
    model, config = small_model(pairwise_weight=0.0, quantisation_weight=0.0, alpha=0.0, beta=0.0,
                                domain_weight=0.8)
    lam = 0.37
    model.set_lambda(lam)
    xs, ys, xt = small_batch()
    hash_kernel = model.net.hash_layer.kernel
    disc_kernel = model.discriminator.body.layers[0].kernel
    before_hash, before_disc = hash_kernel.numpy().copy(), disc_kernel.numpy().copy()
    with tf.GradientTape() as tape:  # the same loss without the reversal layer
        codes, _ = model.net(np.concatenate([xs, xt]), training=True)
        logits = tf.squeeze(model.discriminator.body(codes, training=True), -1)
        plain = L.domain_loss(logits[:6], logits[6:])
    g_hash, g_disc = tape.gradient(plain, [hash_kernel, disc_kernel])
    terms = model.train_step(xs, ys, xt, tf.constant(1.0))
    np.testing.assert_allclose(float(terms["domain"]), float(plain), rtol=1e-6)
    lr, w = config.learning_rate, config.domain_weight
    np.testing.assert_allclose(hash_kernel.numpy() - before_hash, +lr * lam * w * g_hash.numpy(), atol=1e-6)
    np.testing.assert_allclose(disc_kernel.numpy() - before_disc, -lr * w * g_disc.numpy(), atol=1e-6)
    assert np.abs(g_hash.numpy()).max() > 1e-4 and np.abs(g_disc.numpy()).max() > 1e-4


def test_total_loss_weights_every_term_and_entropy_ramps_with_lambda():
    model, config = small_model(pairwise_weight=6.0, quantisation_weight=9.0, alpha=0.7, beta=0.3,
                                domain_weight=0.8)
    xs, ys, xt = small_batch(1)
    terms = model.loss_terms(xs, ys, xt, entropy_scale=0.5, training=False)
    expected = (6 * terms["pairwise"] + 9 * terms["quantisation"] + 0.7 * terms["classification"]
                + 0.3 * 0.5 * terms["entropy"] + 0.8 * terms["domain"])
    np.testing.assert_allclose(float(terms["total"]), float(expected), rtol=1e-6)
    codes, logits = model.net(np.concatenate([xs, xt]))
    np.testing.assert_allclose(float(terms["entropy"]), float(L.entropy_loss(logits[6:])), rtol=1e-6)
    np.testing.assert_allclose(float(terms["pairwise"]), np_pairwise(codes.numpy()[:6], ys, 8), rtol=1e-5)
    source_only, _ = small_model(**metah.PRESETS["source-only"])
    terms = source_only.loss_terms(xs, ys, xt, training=False)
    assert "domain" not in terms
    codes, _ = source_only.net(xs)
    np.testing.assert_allclose(float(terms["quantisation"]), float(L.quantisation_loss(codes)), rtol=1e-6)


def test_presets_set_the_ablation_weights_and_explicit_options_win():
    import argparse
    from train import build_config
    from utils.config import add_config_arguments

    def config_for(argv):
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, metah.Config)
        return build_config(metah.METHOD, parser.parse_args(argv))
    expected = {"source-only": (0.0, 0.0, 0.0), "tah": (0.8, 0.0, 0.0), "tah+sp": (0.8, 1.0, 0.0),
                "tah+me": (0.8, 0.0, 1.0), "metah": (0.8, 1.0, 1.0)}
    assert set(metah.PRESETS) == set(expected) | {"tuned"}  # tuned: metah plus a preset file (test_tune.py)
    for preset, weights in expected.items():
        config = config_for(["--preset", preset])
        assert (config.domain_weight, config.alpha, config.beta) == weights and config.preset == preset
        # TAH's program under every ablation: target codes unquantised, pairwise gradient weight 1.
        assert (config.quantise_target, config.pairwise_weight, config.quantisation_weight) == (False, 1.0, 9.0)
        assert not config.pairwise_gradient_accumulates
    assert config_for([]).preset == "metah" and config_for([]).beta == 1.0
    # The previous TAH base stays reachable by name.
    previous = config_for(["--preset", "tah", "--alpha", "0.5", "--quantise-target", "true", "--pairwise-weight", "6"])
    assert (previous.alpha, previous.beta, previous.quantise_target, previous.pairwise_weight) == (0.5, 0.0, True, 6.0)


def np_pairwise_gradient(h, labels, bits):
    """d(mean pairwise loss)/dh written out: each pair (i, j) reaches h_i through d_ij and d_ji."""
    h = h.astype(np.float64)
    n = len(h)
    d2 = ((h[:, None, :] - h[None, :, :]) ** 2).sum(-1)
    z = (bits / 2.0) / (1.0 + d2)
    s = ((labels @ labels.T) > 0).astype(np.float64)
    dl_dz = np.where(z > 15, 1 - s, 1 / (1 + np.exp(-z)) - s)
    coefficient = dl_dz * (-(bits / 2.0) / (1.0 + d2) ** 2) / n ** 2  # dL/dd_ij
    differences = h[:, None, :] - h[None, :, :]  # h_i - h_j
    return (2 * (coefficient[:, :, None] * differences).sum(1) + 2 * (coefficient.T[:, :, None] * differences).sum(1))


def test_pairwise_gradient_matches_numpy():
    codes = random_codes(7, 16, seed=5)
    labels = np.eye(3)[np.random.RandomState(2).randint(0, 3, 7)]
    np.testing.assert_allclose(L.pairwise_t_gradient(codes, labels, 16).numpy(),
                               np_pairwise_gradient(codes, labels, 16), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("accumulates", [True, False])
def test_pairwise_gradient_reaches_the_codes_as_a_running_sum_when_it_accumulates(accumulates):
    """Only the pairwise term on, plain SGD: the hash layer's bias moves by
    -lr * w * sum_i G_i * (1 - h_i^2) (tanh), where G is, per batch position, the sum of the
    pairwise gradients of all updates so far (TAH's uncleared buffer) or this update's alone."""
    weight, lr = 2.0, 0.1
    model, config = small_model(pairwise_weight=weight, quantisation_weight=0.0, alpha=0.0, beta=0.0,
                                domain_weight=0.0, batch_size=6, learning_rate=lr,
                                pairwise_gradient_accumulates=accumulates)
    bias = model.net.hash_layer.bias
    running = np.zeros((6, 8))
    for update in range(4):
        xs, ys, xt = small_batch(update)
        codes = model.net(xs, training=False)[0].numpy().astype(np.float64)
        gradient = np_pairwise_gradient(codes, ys, 8)
        running = running + gradient if accumulates else gradient
        before = bias.numpy().copy()
        model.train_step(xs, ys, xt, tf.constant(1.0))
        expected = -lr * weight * (running * (1 - codes ** 2)).sum(0)
        np.testing.assert_allclose(bias.numpy() - before, expected, rtol=1e-4, atol=1e-7)
        assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(model.pairwise_gradient_sum.numpy(), running if accumulates else 0.0,
                               rtol=1e-4, atol=1e-7)


def variable_values(named_objects):
    """{path: value} of every variable of the given Keras networks and optimisers (and tf.Variables)."""
    values = {}
    for obj in named_objects:
        for variable in getattr(obj, "variables", [obj]):
            path = getattr(variable, "path", variable.name)
            assert path not in values, path
            values[path] = np.array(variable.numpy())
    return values


@pytest.mark.slow
def test_checkpoint_holds_every_variable_of_the_networks_and_the_optimiser(tmp_path):
    def build():
        keras.backend.clear_session()  # the same variable paths in both builds
        return small_model(trunk_dropout=0.5, discriminator_dropout=0.5, momentum=0.9, batch_size=6,
                           pairwise_gradient_accumulates=True)[0]

    def state(model):
        return [model.net, model.discriminator, model.optimizer, model.pairwise_gradient_sum]
    trained = build()
    trained.set_lambda(0.3)
    for update in range(2):
        trained.train_step(*small_batch(update), tf.constant(1.0))
    saved = trained.checkpoint(tf.Variable(2, dtype=tf.int64)).save(str(tmp_path / "ckpt"))
    expected = variable_values(state(trained))
    assert any("seed_generator" in path for path in expected)  # dropout's random state is there
    fresh = build()
    for variable in [v for obj in state(fresh) for v in getattr(obj, "variables", [obj])]:
        variable.assign(variable.numpy() + 1)  # differs from the saved value everywhere
    fresh.checkpoint(tf.Variable(0, dtype=tf.int64)).restore(saved)
    restored = variable_values(state(fresh))
    assert set(restored) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(restored[path], value, err_msg=path)


def test_batches_cycle_through_seeded_permutations_and_depend_only_on_step():
    rows = np.arange(10, 17)
    drawn = np.concatenate([metah.batch_rows(rows, 3, step, seed=4) for step in range(7)])
    assert sorted(drawn[:7]) == list(rows) and sorted(drawn[7:14]) == list(rows)  # one epoch = every row once
    np.testing.assert_array_equal(metah.batch_rows(rows, 3, 5, seed=4), drawn[15:18])
    assert not np.array_equal(metah.batch_rows(rows, 7, 0, seed=5), drawn[:7])


def write_domain_files(folder, seed=0):
    """Two small 3-class domains; the target is the source shifted and rescaled."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(3, 10) * 3
    ys, yt = np.arange(60) % 3, np.arange(45) % 3
    xs = centres[ys] + rng.randn(60, 10)
    xt = 1.5 * centres[yt] + 2.0 + rng.randn(45, 10)
    np.savez(os.path.join(folder, "src.npz"), features=xs.astype(np.float32), labels=ys)
    np.savez(os.path.join(folder, "tgt.npz"), features=xt.astype(np.float32), labels=yt)


@pytest.mark.slow
def test_train_main_end_to_end_exports_codes_and_resume_continues_exactly(tmp_path, monkeypatch):
    import train
    from utils import io
    from utils.run import NonFiniteLoss
    write_domain_files(str(tmp_path))
    argv = ["--method", "metah", "--dataset", "folder:src->tgt", "--data", str(tmp_path), "--bits", "16",
            "--iterations", "24", "--batch-size", "16", "--hidden", "32", "--trunk-dropout", "0",
            "--discriminator-hidden", "32", "--discriminator-dropout", "0", "--runs-dir", str(tmp_path / "runs")]
    results = train.main(argv + ["--run-name", "whole"])
    run_dir = tmp_path / "runs" / "whole"
    codes = scipy.io.loadmat(run_dir / "codes.mat")
    assert codes["Q"].shape == (len(codes["query_L"]), 16) and set(np.unique(codes["Q"])) <= {-1, 1}
    assert codes["Dt"].shape[0] + codes["Q"].shape[0] == 45 and codes["Ds"].shape == (60, 16)
    assert codes["source_L"].shape == (60, 3) and np.all(codes["target_L"].sum(1) == 1)
    final = results["final"]
    for protocol in ("target->target", "target->source"):
        assert set(final[protocol]) >= {"map", "map_radius2", "precision_radius2"}
        assert 0.0 <= final[protocol]["map"] <= 1.0
    # 24 iterations, 4 per epoch (max(60, 41) / 16 rounded up): five evaluations before the final one.
    assert [e["iteration"] for e in results["epochs"]] == [4, 8, 12, 16, 20]
    assert io.load_json(run_dir / "results.json")["final"] == final
    assert os.listdir(run_dir / "tb")

    # Kill a second run at iteration 14 (its last checkpoint is at 12), then resume it.
    from tests.conftest import after_update

    def fail():
        raise NonFiniteLoss("simulated")
    after_update(monkeypatch, 14, fail)
    with pytest.raises(UserError, match="simulated"):
        train.main(argv + ["--run-name", "killed"])
    monkeypatch.undo()
    resumed = train.main(["--resume", str(tmp_path / "runs" / "killed")])
    np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / "runs" / "killed" / "codes.mat")["Dt"], codes["Dt"])
    assert resumed["final"] == final


@pytest.mark.slow
def test_the_loops_tf_data_updates_equal_one_by_one_train_steps(tmp_path):
    """The shared loop feeds batches through tf.data and runs several iterations per compiled
    call, setting lambda in the graph; by hand, the same iterations go one by one through
    MetahModel.train_step with batch_rows and set_lambda. Same codes and figures; the pairwise
    gradient buffer and dropout in use, entropy ramped, a learning-rate schedule."""
    from models.layers import dann_lambda
    from trainers.loop import TrainingLoop
    from utils.data.domains import load_domain_pair
    write_domain_files(str(tmp_path))
    config = metah.Config(dataset="folder:src->tgt", data=str(tmp_path), bits=16, iterations=10, batch_size=16,
                          hidden=(32,), discriminator_hidden=32, pairwise_gradient_accumulates=True,
                          lr_halve_every=4, log_every=3)
    pair = load_domain_pair(config.dataset, config.data, seed=0)
    inputs = metah.prepare_inputs(pair, config)
    models = []
    for _ in range(2):
        keras.backend.clear_session()
        keras.utils.set_random_seed(3)
        models.append(metah.MetahModel(config, inputs[0].shape[1:], pair.num_classes))
    results = TrainingLoop(metah.MetahTraining(config, pair, inputs, models[0])).run()
    by_hand, onehot = models[1], pair.one_hot(pair.source.labels)
    for it in range(config.iterations):
        lam = dann_lambda(it / config.iterations, config.lambda_gamma)
        by_hand.set_lambda(lam)
        s_rows = metah.batch_rows(pair.source_train, 16, it, config.seed * 2)
        t_rows = metah.batch_rows(pair.target_database, 16, it, config.seed * 2 + 1)
        by_hand.train_step(tf.constant(inputs[0][s_rows]), tf.constant(onehot[s_rows]),
                           tf.constant(inputs[1][t_rows]), tf.constant(lam, tf.float32))
    assert results["iterations"] == 10 and results["steps_per_epoch"] == 4
    for ours, theirs in zip(models[0].encode(inputs[1]), by_hand.encode(inputs[1])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert results["final"] == metah.evaluate(by_hand, pair, inputs)[0]


@pytest.mark.slow
def test_signal_mid_epoch_writes_a_checkpoint_and_the_resumed_run_equals_the_whole_one(tmp_path, monkeypatch):
    """Dropout on (its random state must be saved) and the pairwise gradient buffer in use: SIGTERM
    during update 7 of 12 (epochs of 4 updates) stops after a checkpoint at 7 (--log-every 1: the
    loop hears of every update); resuming gives the uninterrupted run's codes bit for bit."""
    import signal

    import train
    from tests.conftest import stop_by_signal
    write_domain_files(str(tmp_path))
    argv = ["--method", "metah", "--dataset", "folder:src->tgt", "--data", str(tmp_path), "--bits", "16",
            "--iterations", "12", "--batch-size", "16", "--hidden", "32", "--discriminator-hidden", "32",
            "--pairwise-gradient-accumulates", "true", "--log-every", "1", "--runs-dir", str(tmp_path / "runs")]
    whole = train.main(argv + ["--run-name", "whole", "--checkpoint-every", "3", "--keep-checkpoints", "3"])
    # Every 3 updates and at every epoch end (3, 4, 6, 8, 9, 12); --keep-checkpoints 3 keeps the last three.
    kept = tf.train.get_checkpoint_state(str(tmp_path / "runs" / "whole" / "checkpoints")).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in kept] == ["ckpt-8", "ckpt-9", "ckpt-12"]
    stop_by_signal(monkeypatch, argv + ["--run-name", "stopped"], signal.SIGTERM, 7)
    stopped = tmp_path / "runs" / "stopped"
    assert not (stopped / "codes.mat").exists()
    assert os.path.basename(tf.train.latest_checkpoint(str(stopped / "checkpoints"))) == "ckpt-7"
    resumed = train.main(["--resume", str(stopped)])
    for name in ("Q", "Dt", "Ds"):
        np.testing.assert_array_equal(scipy.io.loadmat(stopped / "codes.mat")[name],
                                      scipy.io.loadmat(tmp_path / "runs" / "whole" / "codes.mat")[name])
    assert resumed["final"] == whole["final"] and resumed["epochs"] == whole["epochs"]


@pytest.mark.slow
def test_real_office_pair_trains_above_chance():
    from tests.conftest import shared_path
    root = shared_path("data", "office-caltech10")
    config = metah.Config(dataset="office-googlenet:W->D", data=root, bits=16, iterations=60,
                          eval_every_epoch=False)
    keras.utils.set_random_seed(0)
    final = metah.fit(config)["final"]
    assert final["target->target"]["map"] > 0.5  # chance is about 0.1 with 10 balanced classes
    assert final["target->source"]["map"] > 0.5


def test_absent_data_names_the_data_option(tmp_path):
    with pytest.raises(UserError, match="--data"):
        metah.fit(metah.Config(dataset="mnist->usps", data=str(tmp_path / "missing.mat")))
    write_domain_files(str(tmp_path))
    with pytest.raises(UserError, match="--trunk mlp"):
        metah.fit(metah.Config(dataset="folder:src->tgt", data=str(tmp_path), trunk="cnn"))


@pytest.mark.slow
def test_image_folder_pair_trains_with_the_conv_trunk(tmp_path):
    from tests.test_domains import write_image_folder
    root = str(tmp_path)
    write_image_folder(root, "photo", {"cat": (4, (20, 24)), "dog": (4, (18, 18))}, seed=0)
    write_image_folder(root, "sketch", {"cat": (3, (10, 12)), "dog": (3, (30, 16))}, seed=1)
    config = metah.Config(dataset="images:photo->sketch", data=root, trunk="cnn", image_size=16, bits=8,
                          iterations=3, batch_size=4, discriminator_hidden=16, eval_every_epoch=False)
    keras.utils.set_random_seed(0)
    result = metah.fit(config)
    assert set(result["final"]["target->target"]) == {"map", "map_radius2", "precision_radius2"}
    with pytest.raises(UserError, match="--trunk cnn"):
        metah.fit(dataclasses.replace(config, trunk="mlp"))
