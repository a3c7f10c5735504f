"""TF1Adam against TensorFlow 1's own Adam (tf.compat.v1.train.AdamOptimizer, which runs the
ApplyAdam kernel and keeps beta1_power / beta2_power as float32 variables multiplied by beta after
every update): bit for bit, with one counter shared by the variables of several calls. The fused
Keras optimizers against TF1's Adam and Keras' SGD (bit for bit), Keras checkpoints, and their op count."""
import numpy as np
import pytest
import tensorflow as tf

from utils.optim import FusedAdam, FusedSGD, TF1Adam, _power_table


def gradients(rng, shape):
    """Components from 1 down to 1e-12 (below Adam's epsilon, where rounding decides the step), some 0."""
    values = rng.randn(*shape) * 10.0 ** rng.uniform(-12, 0, shape)
    values[rng.rand(*shape) < 0.1] = 0.0
    return tf.constant(values.astype(np.float32))


@pytest.mark.slow
def test_tf1adam_equals_tensorflow1_adam_bit_for_bit_with_a_shared_counter():
    rng = np.random.RandomState(0)
    starts = [rng.randn(300).astype(np.float32) * 0.01, rng.randn(7, 5).astype(np.float32) * 0.01]
    ours, theirs = [tf.Variable(s) for s in starts], [tf.Variable(s) for s in starts]
    reference = tf.compat.v1.train.AdamOptimizer(learning_rate=1.0, beta1=0.9, beta2=0.999, epsilon=1e-8)
    optimizer = TF1Adam()
    optimizer.build(ours)
    learning_rate = tf.Variable(0.0)

    @tf.function
    def step(which, grad):  # traced once per variable, as the trainer's compiled steps
        optimizer.apply_gradients([(grad, ours[which])], learning_rate)

    # 220 updates: past t = 166, where float32 0.9^t ends the table (1 - 0.9^t rounds to 1)
    for t in range(220):
        which = int(rng.rand() < 0.4)
        grad = gradients(rng, starts[which].shape)
        rate = np.float32(10.0 ** -rng.uniform(2, 5))
        learning_rate.assign(rate)
        reference._lr = float(rate)
        reference.apply_gradients([(grad, theirs[which])])
        step(which, grad)
        for mine, expected in zip(ours, theirs):
            np.testing.assert_array_equal(mine.numpy(), expected.numpy(), err_msg=f"update {t + 1}")
    assert int(optimizer.iterations.numpy()) == 220
    beta1_power, beta2_power = (p.numpy() for p in reference._get_beta_accumulators())
    # TF1's accumulators hold the powers of the next update; beta1's has run past the table's end
    assert beta2_power == _power_table(0.999)[221] and np.float32(1) - beta1_power == 1


def test_power_table_ends_where_one_minus_the_power_is_one():
    for beta in (0.9, 0.999):
        table = _power_table(beta)
        assert table[1] == np.float32(beta) and np.all(np.diff(table) < 0)
        assert np.float32(1) - table[-1] == 1 and np.float32(1) - table[-2] < 1


def run_updates(optimizer, starts, rng, updates=40):
    """Compiled updates of fresh variables from `starts` with one optimizer; the values after each."""
    variables = [tf.Variable(s) for s in starts]
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply_gradients(zip(grads, variables))

    history = []
    for _ in range(updates):
        step([gradients(rng, s.shape) for s in starts])
        history.append([v.numpy() for v in variables])
    return history, optimizer


def assert_same_updates(ours, theirs, seed=0, updates=40):
    rng = np.random.RandomState(seed)
    starts = [rng.randn(300).astype(np.float32) * 0.01, rng.randn(7, 5).astype(np.float32) * 0.01]
    mine, ours = run_updates(ours, starts, np.random.RandomState(seed + 1), updates)
    expected, theirs = run_updates(theirs, starts, np.random.RandomState(seed + 1), updates)
    for t, (a, b) in enumerate(zip(mine, expected)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y, err_msg=f"update {t + 1}")
    assert int(ours.iterations.numpy()) == int(theirs.iterations.numpy()) == updates
    return ours, theirs


def test_fused_adam_equals_tensorflow1_adam_bit_for_bit_and_keeps_keras_slots():
    import keras
    rng = np.random.RandomState(3)
    start = rng.randn(50).astype(np.float32) * 0.01
    ours, theirs = tf.Variable(start), tf.Variable(start)
    optimizer = FusedAdam(1e-3, beta_1=0.5, beta_2=0.999, epsilon=1e-8, name="adam")
    optimizer.build([ours])
    reference = tf.compat.v1.train.AdamOptimizer(learning_rate=1e-3, beta1=0.5, beta2=0.999, epsilon=1e-8)
    step = tf.function(lambda grad: optimizer.apply_gradients([(grad, ours)]))
    for t in range(60):  # past t = 25, where float32 0.5^t leaves 1 - 0.5^t == 1 (the table's end)
        grad = gradients(rng, start.shape)
        reference.apply_gradients([(grad, theirs)])
        step(grad)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=f"update {t + 1}")
    np.testing.assert_array_equal(optimizer._momentums[0].numpy(), reference.get_slot(theirs, "m").numpy())
    np.testing.assert_array_equal(optimizer._velocities[0].numpy(), reference.get_slot(theirs, "v").numpy())
    keras_adam = keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.999)
    keras_adam.build([tf.Variable(start)])
    assert [v.path for v in optimizer.variables] == [v.path for v in keras_adam.variables]


@pytest.mark.slow
def test_fused_sgd_equals_keras_sgd_bit_for_bit_with_momentum_decay_and_schedule():
    import keras

    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(0.03, 10, 0.5, staircase=True)
    for kwargs in ({"momentum": 0.9, "weight_decay": 5e-4}, {"momentum": 0.9, "nesterov": True},
                   {"momentum": 0.0, "weight_decay": 1e-3}):
        assert_same_updates(FusedSGD(schedule(), **kwargs), keras.optimizers.SGD(schedule(), **kwargs))


def test_fused_optimizers_restore_keras_checkpoints(tmp_path):
    import keras
    rng = np.random.RandomState(5)
    starts = [rng.randn(20).astype(np.float32)]
    for keras_kind, fused in ((lambda: keras.optimizers.Adam(1e-2), lambda: FusedAdam(1e-2)),
                              (lambda: keras.optimizers.SGD(1e-2, momentum=0.9), lambda: FusedSGD(1e-2, momentum=0.9))):
        _, saved = run_updates(keras_kind(), starts, rng, updates=3)
        path = tf.train.Checkpoint(optimizer=saved).write(str(tmp_path / type(saved).__name__))
        restored = fused()
        restored.build([tf.Variable(starts[0])])
        tf.train.Checkpoint(optimizer=restored).read(path).assert_consumed()
        assert len(restored.variables) == len(saved.variables)
        for a, b in zip(restored.variables, saved.variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_fused_optimizers_run_one_kernel_per_variable():
    import collections
    shapes = [(30, 20), (20,), (20, 4), (4,)]
    variables = [tf.Variable(tf.zeros(s)) for s in shapes]
    specs = [tf.TensorSpec(s) for s in shapes]
    for optimizer, kernels in ((FusedAdam(1e-3), {"ResourceApplyAdam": 4}),
                               (FusedSGD(0.03, momentum=0.9, weight_decay=5e-4),
                                {"ResourceApplyKerasMomentum": 4, "ResourceApplyGradientDescent": 4})):
        optimizer.build(variables)
        graph = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables))).get_concrete_function(
            specs).graph
        ops = collections.Counter(op.type for op in graph.get_operations())
        assert {kind: ops[kind] for kind in kernels} == kernels
        assert ops["Sqrt"] == 0 and ops["AssignAddVariableOp"] <= 1  # only the iteration counter
