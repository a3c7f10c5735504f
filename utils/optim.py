"""Adam as TensorFlow 1 had it, with one step counter shared by every variable it updates.

TF1's `tf.train.AdamOptimizer` keeps per-variable moments m, v but ONE pair of
bias-correction powers per optimizer instance; an instance used by several
`minimize` calls (as SSAH uses one for LabNet, ImgNet and TxtNet) advances that
counter on every update of any of them. Keras 3's Adam keeps a counter per
instance too, but it is built for a fixed variable list; this class accepts any
variable, creates its slots on first sight (`build`), and takes the learning
rate per call, so one traced tf.function serves every learning rate.

Update (TF1's ApplyAdam kernel, in its float32 operation order), with t the counter
after this update's increment:
  m += (g - m) (1 - b1);  v += (g^2 - v) (1 - b2)
  lr_t = lr sqrt(1 - b2^t) / (1 - b1^t);  var -= (m lr_t) / (sqrt(v) + eps)
where b^t is the float32 running product b * b * ... (TF1's beta1_power, beta2_power
variables), here read from a table indexed by the counter, so that nothing but the
counter is state.

Under a tf.distribute strategy `apply_gradients` is called in each replica with the
already summed gradients and updates every device's copy (utils.distribute).
`DynamicLossScale` is the loss scaling of mixed-precision custom loops. `FusedAdam` (TF1's Adam)
and `FusedSGD` (Keras' SGD) are Keras optimizers whose per-variable update is one fused kernel.
"""
import functools

import numpy as np
import tensorflow as tf

from utils import distribute


@functools.lru_cache(maxsize=None)
def _power_table(beta, longest=1 << 20):
    """float32 beta^t for t = 0, 1, ... as TF1 forms it: a variable multiplied by beta after
    every update (its rounding differs from pow(beta, t) by up to ~1e-6 relative in 1 - beta^t
    at t ~ 100). The table ends where 1 - beta^t is 1 in float32 (the product has fallen below
    half an ulp of 1), after which any later power gives the same step size."""
    beta = np.float32(beta)
    powers, power = [np.float32(1.0)], np.float32(1.0)
    while np.float32(1.0) - power != np.float32(1.0) and len(powers) < longest:
        power = np.float32(power * beta)
        powers.append(power)
    return np.array(powers, np.float32)


def _beta_power(beta, step):
    """beta^step (step: an int64 tensor) as TF1's float32 power variable holds it."""
    table = _power_table(float(beta))
    inside = tf.minimum(step, len(table) - 1)
    return tf.where(step < len(table), tf.gather(table, inside),
                    tf.pow(tf.constant(beta, tf.float32), tf.cast(step, tf.float32)))


class TF1Adam(tf.Module):
    """TF1-style Adam: lazily created per-variable slots, one shared step counter."""

    def __init__(self, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="tf1_adam"):
        super().__init__(name=name)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        # Slots in creation order (checkpointed as lists); `_index` maps a variable to its slot.
        self.m, self.v = [], []
        self._index = {}

    @staticmethod
    def _key(variable):
        return id(variable)

    def build(self, variables):
        """Creates m and v for variables not seen before (call eagerly, before tracing)."""
        for variable in variables:
            if self._key(variable) in self._index:
                continue
            self._index[self._key(variable)] = len(self.m)
            self.m.append(tf.Variable(tf.zeros(variable.shape, variable.dtype), trainable=False, name="m"))
            self.v.append(tf.Variable(tf.zeros(variable.shape, variable.dtype), trainable=False, name="v"))

    def slots(self, variable):
        """(m, v) of a variable this optimizer has built slots for."""
        index = self._index[self._key(variable)]
        return self.m[index], self.v[index]

    def apply_gradients(self, grads_and_vars, learning_rate, apply_if=None):
        """One update of the given variables; a None gradient leaves its variable (and slots) alone,
        as TF1's minimize does. The counter advances once per call. `apply_if` (a scalar bool
        tensor, e.g. "the gradients are finite" under loss scaling) skips the whole update when false."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        missing = [v for _, v in pairs if self._key(v) not in self._index]
        if missing:
            if tf.inside_function():
                raise RuntimeError("TF1Adam.build(variables) must be called before the traced step")
            self.build(missing)
        learning_rate = tf.cast(learning_rate, tf.float32)
        if distribute.in_replica_context():  # every replica holds the same summed gradients
            variables = [v for _, v in pairs]

            def on_each_device(strategy, grads, learning_rate, *condition):
                extended = strategy.extended
                extended.update(distribute.tf_variable(self.iterations), self._advance, args=condition or (None,),
                                group=True)
                for grad, variable in zip(grads, variables):
                    update = functools.partial(self._apply_one, self._index[self._key(variable)])
                    extended.update(distribute.tf_variable(variable), update,
                                    args=(grad, learning_rate, *(condition or (None,))), group=True)
            tf.distribute.get_replica_context().merge_call(
                on_each_device, args=([g for g, _ in pairs], learning_rate) + (() if apply_if is None else (apply_if,)))
            return
        self._advance(self.iterations, apply_if)
        powers = self._beta_powers()  # once per update: every variable's step reads the same counter
        for grad, variable in pairs:
            self._apply_one(self._index[self._key(variable)], variable, grad, learning_rate, apply_if, powers)

    @staticmethod
    def _advance(iterations, apply_if):
        return iterations.assign_add(1 if apply_if is None else tf.cast(apply_if, tf.int64))

    def _beta_powers(self):
        """(beta_1^t, beta_2^t) of the counter t as it stands."""
        step = tf.convert_to_tensor(self.iterations)
        return _beta_power(self.beta_1, step), _beta_power(self.beta_2, step)

    def _apply_one(self, index, variable, grad, learning_rate, apply_if, powers=None):
        # TF1's ApplyAdam kernel, operation for operation in float32: the constants 1 - beta are
        # float32 differences (1 - float32(0.999) is 1.3e-5 below float32(0.001), which would
        # scale every step), and the moments move by (g - m) (1 - b1), not b1 m + (1 - b1) g.
        m, v = self.m[index], self.v[index]
        grad = tf.convert_to_tensor(grad)
        beta_1_power, beta_2_power = powers if powers is not None else self._beta_powers()
        if apply_if is None:  # the kernel itself: one op instead of ~10
            return tf.raw_ops.ResourceApplyAdam(
                var=_handle(variable), m=_handle(m), v=_handle(v), beta1_power=beta_1_power,
                beta2_power=beta_2_power, lr=learning_rate, beta1=tf.constant(self.beta_1, tf.float32),
                beta2=tf.constant(self.beta_2, tf.float32), epsilon=tf.constant(self.epsilon, tf.float32),
                grad=grad, use_locking=False)
        one = tf.constant(1.0, tf.float32)
        beta_1, beta_2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
        lr_t = learning_rate * tf.sqrt(one - beta_2_power) / (one - beta_1_power)
        new_m = m + (grad - m) * (one - beta_1)
        new_v = v + (tf.square(grad) - v) * (one - beta_2)
        m.assign(tf.where(apply_if, new_m, m))
        v.assign(tf.where(apply_if, new_v, v))
        return variable.assign_sub(tf.where(apply_if, (m * lr_t) / (tf.sqrt(v) + self.epsilon), tf.zeros_like(m)))


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (the fused kernels take handles)."""
    return _tf_variable(variable).handle


def _tf_variable(variable):
    import keras
    return variable.value if isinstance(variable, keras.Variable) else variable


def _keras_optimizers():
    import keras
    return keras.optimizers


class FusedAdam(_keras_optimizers().Adam):
    """TF1's AdamOptimizer as a Keras optimizer: each variable's update is ONE kernel,
    ResourceApplyAdam (TF1's ApplyAdam), instead of Keras' ~10 small ops per variable (in a tiny
    network those ops, not the maths, are most of an update's CPU time).

    The kernel forms 1 - beta in float32 and beta^t is TF1's float32 running product (see
    TF1Adam), so the updates equal tf.compat.v1.train.AdamOptimizer's bit for bit and differ from
    Keras' Adam (which rounds the float64 1 - beta and uses pow) by ~1e-5 relative in a step.
    Slots (m, v), iterations and the checkpoint structure are Keras' Adam's, so checkpoints of
    either restore into the other. amsgrad is not fused."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("FusedAdam does not fuse amsgrad")

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # beta^t once per update (every variable's kernel reads the same pair)
        step = tf.cast(tf.convert_to_tensor(self.iterations), tf.int64) + 1  # Keras counts after the update
        self._beta_powers = _beta_power(self.beta_1, step), _beta_power(self.beta_2, step)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        beta_1_power, beta_2_power = self._beta_powers
        return tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.cast(beta_1_power, dtype), beta2_power=tf.cast(beta_2_power, dtype),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False)


class FusedSGD(_keras_optimizers().SGD):
    """Keras' SGD whose per-variable update is ONE kernel: ResourceApplyKerasMomentum
    (accum = accum momentum - g lr; var += accum, or var += accum momentum - g lr with nesterov)
    or, without momentum, ResourceApplyGradientDescent (var -= g lr): Keras' formulas in Keras'
    float32 order, so the result equals Keras' SGD bit for bit. Weight decay is Keras' decoupled
    form (var -= (var wd) lr before the update), one ResourceApplyGradientDescent per variable with
    the learning rate (a schedule's value) formed once per update, not once per variable.
    Learning-rate schedules, slots and checkpoint structure are Keras'."""

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        learning_rate = self.learning_rate  # a schedule's value at this update's iteration

        def apply_all(distribution, variables):
            def decay(variable):
                if self._use_weight_decay(variable):
                    dtype = variable.dtype
                    delta = tf.convert_to_tensor(variable) * tf.cast(self.weight_decay, dtype)
                    tf.raw_ops.ResourceApplyGradientDescent(var=_handle(variable),
                                                            alpha=tf.cast(learning_rate, dtype), delta=delta)
            for variable in variables:
                distribution.extended.update(_tf_variable(variable), decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(apply_all, self._distribution_strategy, variables)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        learning_rate, gradient = tf.cast(learning_rate, dtype), tf.cast(gradient, dtype)
        if self.momentum == 0:
            return tf.raw_ops.ResourceApplyGradientDescent(var=_handle(variable), alpha=learning_rate, delta=gradient)
        accumulator = self.momentums[self._get_variable_index(variable)]
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable), accum=_handle(accumulator), lr=learning_rate, grad=gradient,
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)


def _assign(variable, value):
    return variable.assign(value)


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16 gradients in a custom loop (as Keras' LossScaleOptimizer).

    The gradient is taken of scale * loss, then divided by the scale; when any gradient is
    not finite the update is skipped and the scale halves; after `period` finite steps in a
    row it doubles. `unscale` returns (gradients, finite) and updates the scale."""

    def __init__(self, initial=2.0 ** 15, period=2000, name="loss_scale"):
        super().__init__(name=name)
        self.period = int(period)
        self.scale = tf.Variable(float(initial), trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def unscale(self, grads):
        """Gradients of scale * loss (summed over replicas) -> (gradients of loss, all finite)."""
        present = [g for g in grads if g is not None]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
        inverse = 1.0 / self.scale
        grads = [None if g is None else g * tf.cast(inverse, g.dtype) for g in grads]
        good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= self.period
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), tf.maximum(self.scale / 2.0, 1.0))
        distribute.synchronized_updates([(self.good_steps, _assign, (tf.where(grow, tf.zeros_like(good), good),)),
                                         (self.scale, _assign, (scale,))])
        return grads, finite


def scaled_gradients(tape, loss, variables, loss_scale=None):
    """(gradients of loss, finite): without a DynamicLossScale tape.gradient and None (always
    apply); with one, the gradient of scale * loss unscaled and whether all of it is finite."""
    if loss_scale is None:
        return tape.gradient(loss, variables), None
    return loss_scale.unscale(tape.gradient(loss, variables, output_gradients=loss_scale.scale))


def apply_if_finite(finite, apply):
    """apply() (an optimizer's update) now, or only where `finite` (scaled_gradients') is true."""
    if finite is None:
        apply()
        return

    def applied():
        apply()
        return tf.constant(True)
    tf.cond(finite, applied, lambda: tf.constant(False))
