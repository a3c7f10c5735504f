"""Adam as TensorFlow 1 had it, with one step counter shared by every variable it updates.

TF1's `tf.train.AdamOptimizer` keeps per-variable moments m, v but ONE pair of
bias-correction powers per optimizer instance; an instance used by several
`minimize` calls (as SSAH uses one for LabNet, ImgNet and TxtNet) advances that
counter on every update of any of them. Keras 3's Adam keeps a counter per
instance too, but it is built for a fixed variable list; this class accepts any
variable, creates its slots on first sight (`build`), and takes the learning
rate per call, so one traced tf.function serves every learning rate.

Update (TF1 `_apply_dense`), with t the counter after this update's increment:
  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
  lr_t = lr sqrt(1 - b2^t) / (1 - b1^t);  var -= lr_t m / (sqrt(v) + eps)
"""
import tensorflow as tf


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

    def apply_gradients(self, grads_and_vars, learning_rate):
        """One update of the given variables; a None gradient leaves its variable (and slots) alone,
        as TF1's minimize does. The counter advances once per call."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        missing = [v for _, v in pairs if self._key(v) not in self._index]
        if missing:
            if tf.inside_function():
                raise RuntimeError("TF1Adam.build(variables) must be called before the traced step")
            self.build(missing)
        self.iterations.assign_add(1)
        step = tf.cast(self.iterations, tf.float32)
        learning_rate = tf.cast(learning_rate, tf.float32)
        lr_t = learning_rate * tf.sqrt(1.0 - tf.pow(self.beta_2, step)) / (1.0 - tf.pow(self.beta_1, step))
        for grad, variable in pairs:
            index = self._index[self._key(variable)]
            m, v = self.m[index], self.v[index]
            grad = tf.convert_to_tensor(grad)
            m.assign(self.beta_1 * m + (1.0 - self.beta_1) * grad)
            v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad))
            variable.assign_sub(lr_t * m / (tf.sqrt(v) + self.epsilon))
