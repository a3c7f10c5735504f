"""TF1Adam against TensorFlow 1's own Adam (tf.compat.v1.train.AdamOptimizer, which runs the
ApplyAdam kernel and keeps beta1_power / beta2_power as float32 variables multiplied by beta after
every update): bit for bit, with one counter shared by the variables of several calls."""
import numpy as np
import tensorflow as tf

from utils.optim import TF1Adam, _power_table


def gradients(rng, shape):
    """Components from 1 down to 1e-12 (below Adam's epsilon, where rounding decides the step), some 0."""
    values = rng.randn(*shape) * 10.0 ** rng.uniform(-12, 0, shape)
    values[rng.rand(*shape) < 0.1] = 0.0
    return tf.constant(values.astype(np.float32))


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
