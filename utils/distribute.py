"""Several devices (tf.distribute), mixed precision (float16 or bfloat16) and XLA for the custom training loops.

A trainer's step function is written for ONE replica's part of the global batch and
calls these helpers, which are the plain operations when no strategy runs it:
- `all_reduce_sum(gradients)`: each replica's loss is its share of the global batch's
  loss, so the summed gradient is the one-replica gradient of the global batch. A SUM
  over batch rows computed on the replica's rows is its share as it is; a MEAN over the
  batch rows, or a term that does not depend on the batch, contributes `replica_share`
  of it (1 / replicas: the global batch splits evenly);
- `all_gather(values)`: the global batch of per-replica tensors (replica order = batch order);
- `synchronized_updates([(variable, fn, args), ...])`: fn(copy, *args) on every device's copy
  of each mirrored variable, e.g. writing the global batch's rows into stored buffers.
`replicated_step` turns such a function into one tf.function that splits the global
batch over the replicas (`split_batch`), runs it on each and sums the returned losses.
"""
import contextlib
import json
import os

from utils.errors import UserError

STRATEGIES = ("none", "mirrored", "multiworker")


def make_strategy(name):
    """None for "none" (the default strategy), else the tf.distribute strategy.

    multiworker reads the cluster from TF_CONFIG; create it before any other TensorFlow
    work in the process (TensorFlow's rule for collective ops)."""
    import tensorflow as tf
    if name == "none":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        config = os.environ.get("TF_CONFIG", "")
        if config:
            try:
                cluster = json.loads(config)["cluster"]
            except (ValueError, KeyError, TypeError):
                raise UserError("TF_CONFIG is not JSON with a 'cluster' entry; set it as "
                                "tf.distribute.MultiWorkerMirroredStrategy documents") from None
            if not cluster.get("worker") and not cluster.get("chief"):
                raise UserError("TF_CONFIG lists no workers; give cluster.worker host:port entries")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")


def scope(strategy):
    """strategy.scope(), or nothing for the default strategy (None)."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def in_replica_context():
    """True inside strategy.run of a real (non-default) strategy."""
    import tensorflow as tf
    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


def num_replicas():
    import tensorflow as tf
    return tf.distribute.get_strategy().num_replicas_in_sync


def _collective():
    """Inside strategy.run with several replicas (one replica: nothing to exchange; TensorFlow's
    collectives also fail there for a single-worker multiworker strategy)."""
    return in_replica_context() and num_replicas() > 1


def _on_this_device(value):
    """A copy made in the replica's device scope: collectives read their destination from the
    tensor's device, which a step input (placeholder) of a multiworker strategy lacks."""
    import tensorflow as tf
    return tf.identity(value)


def all_reduce_sum(values):
    """Sum over replicas of a list of tensors (None entries stay None)."""
    import tensorflow as tf
    if not _collective():
        return values
    present = [i for i, v in enumerate(values) if v is not None]
    summed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, [_on_this_device(values[i]) for i in present])
    out = list(values)
    for i, value in zip(present, summed):
        out[i] = value
    return out


def all_gather(values):
    """For a list of per-replica tensors: each with the rows of every replica concatenated in
    replica order (= the global batch). One collective for the whole list."""
    import tensorflow as tf
    if not _collective():
        return values
    return tf.distribute.get_replica_context().all_gather([_on_this_device(v) for v in values], axis=0)


def replica_share(term):
    """This replica's share of a mean over the (evenly split) global batch computed on its rows,
    or of a term every replica computes whole: term / replicas."""
    if not _collective():
        return term
    return term / float(num_replicas())


def tf_variable(variable):
    """The tf.Variable (mirrored under a strategy) behind a Keras 3 variable."""
    import keras
    return variable.value if isinstance(variable, keras.Variable) else variable


def synchronized_updates(updates):
    """[(variable, fn, args), ...]: fn(copy, *args) on every device's copy of each variable, in
    one cross-replica merge; args must be equal on all replicas."""
    if not in_replica_context():
        for variable, fn, args in updates:
            fn(variable, *args)
        return
    import tensorflow as tf
    targets = [(tf_variable(variable), fn) for variable, fn, _ in updates]

    def on_each_device(strategy, all_args):
        for (target, fn), args in zip(targets, all_args):
            strategy.extended.update(target, fn, args=tuple(args), group=True)
    tf.distribute.get_replica_context().merge_call(on_each_device, args=([list(args) for _, _, args in updates],))


def split_batch(strategy, arrays):
    """Per-replica values: replica r gets rows [r B/R, (r+1) B/R) of each array (B = rows)."""
    import tensorflow as tf
    replicas = strategy.num_replicas_in_sync
    rows = int(arrays[0].shape[0])
    if rows % replicas:
        raise UserError(f"the global batch of {rows} does not split evenly over {replicas} replicas; "
                        f"choose a batch size that is a multiple of {replicas}")
    share = rows // replicas
    devices = strategy.extended.worker_devices

    def value_fn(context):
        first = context.replica_id_in_sync_group * share
        with tf.device(devices[context.replica_id_in_sync_group % len(devices)]):
            return tuple(tf.identity(array[first:first + share]) for array in arrays)
    return strategy.experimental_distribute_values_from_function(value_fn)


def replicated_step(strategy, fn, jit=False):
    """A callable(global batch arrays..., shared scalar) running `fn` as one compiled step.

    fn(*per_replica_batch, shared) -> dict of loss tensors (each replica's share); the
    result is the dict summed over replicas. Without a strategy: fn itself, compiled
    (with XLA when jit)."""
    import tensorflow as tf
    options = dict(reduce_retracing=True, autograph=False)  # steps have no tensor-dependent Python flow
    if strategy is None:
        return tf.function(fn, jit_compile=True if jit else None, **options)
    if jit:
        raise UserError("--jit compiles a step on one device; with --strategy mirrored/multiworker the step "
                        "merges across devices, which XLA cannot compile: drop --jit or use --strategy none")

    def run_on_replicas(batch, shared):
        outputs = strategy.run(fn, args=(*batch, shared))
        return {key: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in outputs.items()}
    compiled = tf.function(run_on_replicas, **options)

    def step(*args):
        *batch, shared = args
        return compiled(split_batch(strategy, batch), shared)
    return step


# Keras dtype policies --precision offers: float32 computes and stores in float32 (the programs');
# the mixed ones compute in 16 bits and keep float32 variables (and the trainers keep float32
# buffers and losses). float16's 5-bit exponent needs loss scaling; bfloat16 has float32's range.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    return precision


def needs_loss_scaling(precision):
    """float16 gradients underflow without loss scaling; bfloat16 ones do not."""
    return check_precision(precision) == "mixed_float16"


@contextlib.contextmanager
def dtype_policy(precision):
    """Keras' dtype policy `precision` (one of PRECISIONS) while networks are built: layers made
    inside compute in its dtype and keep float32 variables."""
    import keras
    if check_precision(precision) == "float32":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32(values):
    """A tensor (or a tuple, list or dict of them) in float32: network outputs under a mixed policy
    are 16-bit, and every loss is computed in float32. A float32 tensor passes through unchanged."""
    import tensorflow as tf
    return tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), values)
