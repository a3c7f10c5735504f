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
`replicated_step` turns such a function into one tf.function that splits this worker's rows
of the global batch (`worker_rows`: a worker reads only those) over its replicas
(`split_batch`), runs it on each and sums the returned losses.
"""
import contextlib
import json
import os

from utils.errors import UserError

STRATEGIES = ("none", "mirrored", "multiworker")

STRATEGY_HELP = ("none (one device), mirrored (all local GPUs) or multiworker (the hosts of TF_CONFIG): each "
                 "replica takes its part of the global batch and the losses and updates are those of the "
                 "global batch")

_started = {}  # strategy name -> the strategy this process made (one per name: see make_strategy)


def start(name):
    """The run's strategy, made now: train.py (a new run and --resume) calls this right after
    reading its options, before any other TensorFlow work (a TensorBoard writer, seeding,
    building a model), because a multiworker strategy must configure its collective ops at
    program startup; later make_strategy(name) calls return the same one. (eval.py, export.py
    and encoding new items rebuild models on one device: they make no strategy.)"""
    return make_strategy(name)


def make_strategy(name):
    """None for "none" (the default strategy), else the tf.distribute strategy, made once per
    process and name (a second MultiWorkerMirroredStrategy could not configure its collectives).

    multiworker reads the cluster from TF_CONFIG; create it before any other TensorFlow
    work in the process (TensorFlow's rule for collective ops): see `start`."""
    if name == "none":
        return None
    if name not in _started:
        _started[name] = _new_strategy(name)
    return _started[name]


def _new_strategy(name):
    import tensorflow as tf
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


def cluster_task():
    """(task type, index, workers) of this process from TF_CONFIG, read without TensorFlow:
    ("worker", 0, 1) when TF_CONFIG is unset (one process). Workers counts the chief too."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return "worker", 0, 1
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        return str(task.get("type", "worker")), int(task.get("index", 0)), max(1, workers)
    except (ValueError, AttributeError, TypeError):
        raise UserError("TF_CONFIG is not JSON with 'cluster' and 'task' entries; set it as "
                        "tf.distribute.MultiWorkerMirroredStrategy documents") from None


def is_chief(strategy_name):
    """Whether this process writes the run folder: always without a multiworker strategy;
    with one, the task of type "chief", or worker 0 when the cluster names no chief (the
    convention of tf.distribute). The other workers write to a temporary folder of their own."""
    if strategy_name != "multiworker":
        return True
    task_type, index, _ = cluster_task()
    if task_type == "chief":
        return True
    has_chief = bool(json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {}).get("chief"))
    return task_type == "worker" and index == 0 and not has_chief


def worker_rows(strategy, global_rows):
    """(first, stop): this worker's rows of a global batch of `global_rows` rows, the rows of
    its local replicas (replica r of R takes rows [r B/R, (r+1) B/R); a worker's replicas are
    consecutive). The whole batch without a strategy or on one worker. Each worker reads only
    these rows of its inputs (images from HDF5 included) and passes them to `replicated_step`."""
    if strategy is None:
        return 0, int(global_rows)
    replicas = strategy.num_replicas_in_sync
    if global_rows % replicas:
        raise UserError(f"the global batch of {global_rows} does not split evenly over {replicas} replicas; "
                        f"choose a batch size that is a multiple of {replicas}")
    local = len(strategy.extended.worker_devices)
    share = global_rows // replicas * local
    worker = _worker_index(strategy)
    return worker * share, (worker + 1) * share


def _worker_index(strategy):
    """This worker's position in the replica order: replica ids run worker by worker (tf.distribute's
    id_in_cluster: the chief first); 0 for a one-worker strategy."""
    return int(getattr(strategy.extended, "_id_in_cluster", 0) or 0)


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


def replica_rows(global_rows):
    """(first, count) of this replica's rows of a global batch of `global_rows` rows (replica r of
    R takes rows [r B/R, (r+1) B/R)); None outside a strategy with several replicas."""
    import tensorflow as tf
    if not _collective():
        return None
    count = global_rows // num_replicas()
    return tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, count.dtype) * count, count


def whole_batch(own, first):
    """The global batch's rows of a per-row output whose rows [first, first + len) this replica
    computed (`own`): the other replicas' rows gathered as constants, its own rows as they are,
    so that a loss of the whole batch (mined pairs, batch sums) differentiates only through this
    replica's rows and the replicas' gradients sum to the one-replica gradient of the loss."""
    import tensorflow as tf
    if not _collective():
        return own
    gathered = tf.stop_gradient(all_gather([own])[0])
    rows = tf.shape(own)[0]
    return tf.concat([gathered[:first], own, gathered[first + rows:]], axis=0)


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
    """Per-replica values from this worker's rows of the global batch (`worker_rows`; on one
    worker the whole batch): its local replica l of L gets rows [l B/L, (l+1) B/L) of each array."""
    import tensorflow as tf
    devices = strategy.extended.worker_devices
    rows = int(arrays[0].shape[0])
    if rows % len(devices):
        raise UserError(f"the global batch of {rows * strategy.num_replicas_in_sync // len(devices)} does not "
                        f"split evenly over {strategy.num_replicas_in_sync} replicas; choose a batch size "
                        f"that is a multiple of {strategy.num_replicas_in_sync}")
    share = rows // len(devices)

    def value_fn(context):
        local = context.replica_id_in_sync_group % len(devices)
        first = local * share
        with tf.device(devices[local]):
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
