"""SSAH's epochs as the program runs them: per net the inner indices of the schedule, each up
to its passes with the program's early stop, and checkpoints inside an epoch."""
import collections

import numpy as np
import tensorflow as tf

from trainers.loop import LOSS_TAG, LR_TAG, inline_batches
from trainers.ssah.config import EARLY_STOP, SCHEDULES, STEP_NAMES, learning_rate
from utils import distribute
from utils.data import LazyRows, pipeline
from utils.errors import UserError
from utils.run import check_finite


StopCheck = collections.namedtuple("StopCheck", "pass_index previous last stopped")


# Up to this many training items a batch is the first `batch` of a fresh permutation, drawn as
# the program draws it (argsort of n uniform numbers: about 1 ms at this n); every SSAH figure and
# recorded search so far used that stream. Beyond it the draw grows with the batch, not with n.
PERMUTATION_DRAW_MAX_ITEMS = 16384


def draw_batches(rng, num_items, batches, batch, permutation_up_to=PERMUTATION_DRAW_MAX_ITEMS):
    """(batches, batch) int64: each row an independent uniform draw of `batch` distinct items of
    range(num_items) in random order, as the program's first `batch` of a fresh permutation.

    Up to `permutation_up_to` items, exactly that: one permutation per batch, in turn (the
    generator's state advances as for the same calls made one by one). Beyond it, in time and
    memory that grow with batches * batch, not with num_items: the first `batch` distinct values
    of a row of i.i.d. uniform integers (repeats skipped), columns added (`batch` at a time) until
    every row has enough. Graph-friendly (tf.function); rng: a tf.random.Generator."""
    if num_items <= permutation_up_to:
        rows = tf.TensorArray(tf.int32, size=batches)
        for b in tf.range(batches):
            rows = rows.write(b, tf.argsort(rng.uniform([num_items]))[:batch])
        return tf.cast(rows.stack(), tf.int64)

    def more():  # int64: the bias of a range that is no power of two is below num_items / 2**64
        return rng.uniform([batches, batch], 0, num_items, dtype=tf.int64)

    def firsts(draws):
        """Where each row's value occurs for the first time (a stable sort keeps the earliest first)."""
        order = tf.argsort(draws, axis=1, stable=True)
        ordered = tf.gather(draws, order, batch_dims=1)
        new = tf.concat([tf.ones([batches, 1], tf.bool), ordered[:, 1:] != ordered[:, :-1]], axis=1)
        return tf.gather(new, tf.argsort(order, axis=1), batch_dims=1)

    def short(draws):
        return tf.reduce_any(tf.reduce_sum(tf.cast(firsts(draws), tf.int32), axis=1) < batch)

    draws = tf.concat([more(), more()], axis=1)
    draws, = tf.while_loop(short, lambda draws: (tf.concat([draws, more()], axis=1),), (draws,),
                           shape_invariants=(tf.TensorShape([batches, None]),))
    first = firsts(draws)
    keep = first & (tf.cumsum(tf.cast(first, tf.int32), axis=1) <= batch)
    return tf.reshape(tf.boolean_mask(draws, keep), [batches, batch])


def inner_loop(passes, run_pass, monitor, rule, records, first_pass=0):
    """The passes of one inner index of one net, with the program's early stop.

    run_pass(k) runs pass k; monitor(k) gives the net's monitoring loss after it; rule: an
    EarlyStopRule, or None (no early stop); records: the net's list of recorded monitoring
    losses, which runs on across inner indices (appended to here). first_pass: resume there.
    Returns (passes run, counted from 0, [StopCheck of every check made])."""
    checks = []
    for k in range(first_pass, passes):
        run_pass(k)
        if rule is None:
            continue
        if k % rule.record_every == 0:
            records.append(float(monitor(k)))
        if k >= rule.check_from and len(records) >= 2:
            stopped = records[-1] - records[-2] >= 0
            checks.append(StopCheck(k, records[-2], records[-1], stopped))
            if stopped:
                return k + 1, checks
    return passes, checks


SUMMARY_KEYS = ("loss", "accuracy")  # what a pass reports: its mean loss (and discriminator accuracy)


class EpochLoop:
    """SSAH's epochs as the program runs them: per net, the inner indices of the schedule, each
    up to its passes with the program's early stop; a pass is n // batch updates, each on a
    fresh random batch (`batch` distinct training items, drawn as the first `batch` of a random
    permutation would be: `draw_batches`).

    batch_order: None draws every batch from trainer.rng; else an iterable of row arrays
    (indices into the training items, `batch` each), one per update in the order the loop
    runs them (discriminator updates included), e.g. the batches the authors' program drew.
    run: the run folder for TensorBoard (None: no logging). keep_record: list every update,
    monitoring loss and stop check in `self.record`.

    Checkpoints inside an epoch: run_epoch(epoch, loop) tells the shared TrainingLoop of every
    update; when a checkpoint is due, the loop first has this one store its position (net, inner
    index, pass, updates done in the pass, the rows drawn for the pass, the recorded monitoring
    losses; the pass's running loss sums live in `pass_sums` anyway) in its variables
    (`checkpoint_objects`). After restoring such a checkpoint (and trainer.rng with it),
    `resume_from_variables` makes the next run_epoch continue at that update, so the rest of
    the run is the same as without the interruption."""

    def __init__(self, trainer, config, parts, schedule=None, batch_order=None, run=None, keep_record=False):
        self.trainer, self.config, self.run = trainer, config, run
        self.images, self.texts, self.labels = parts
        self.schedule = schedule or SCHEDULES[config.schedule]
        self.batch = trainer.batch_size
        self.updates_per_pass = max(1, trainer.num_items // self.batch)
        # This worker's rows of each global batch: the only ones it reads (all of them on one worker)
        self.worker_rows = distribute.worker_rows(trainer.strategy, self.batch)
        self.batch_order = None if batch_order is None else iter(batch_order)
        self.loop = None  # the shared TrainingLoop of a run (mid-epoch checkpoints, log reads), set by run_epoch
        self.counters = dict.fromkeys(STEP_NAMES, 0)   # updates per step (TensorBoard's x axis)
        self.record = {"updates": [], "monitors": [], "stop_checks": []} if keep_record else None
        self._resume = None
        self._compiled_draws = None  # _draws as a tf.function, made at the first pass that draws
        self._endless = {}  # step -> its endless iterator of feature batches (see _batches)
        self._device_values = {}  # source name -> its values on the device (see _on_device)
        # position: mid-epoch flag, step (index in the epoch's order), inner index, pass, updates done in it
        self.position = tf.Variable(np.zeros(5, np.int64), trainable=False, name="loop_position")
        self.pass_rows = tf.Variable(np.zeros((self.updates_per_pass, self.batch), np.int64), trainable=False,
                                     name="pass_rows")
        self.monitor_records = tf.Variable(np.full(2, np.nan), trainable=False, name="monitor_records")
        self.pass_sums = tf.Variable(np.zeros(len(SUMMARY_KEYS)), trainable=False, name="pass_sums")
        self.step_summaries = tf.Variable(np.full((len(STEP_NAMES), len(SUMMARY_KEYS)), np.nan), trainable=False,
                                          name="step_summaries")
        self.iterations = tf.Variable(np.zeros(len(STEP_NAMES), np.int64), trainable=False, name="iterations")
        for step in STEP_NAMES:
            trainer.accumulators[step].append(self._add_pass_sums)

    def checkpoint_objects(self):
        return {"loop_position": self.position, "pass_rows": self.pass_rows, "monitor_records": self.monitor_records,
                "pass_sums": self.pass_sums, "step_summaries": self.step_summaries, "iterations": self.iterations}

    def resume_from_variables(self):
        """After a restore: the update counters continue, and a checkpoint written inside an
        epoch makes the next run_epoch continue at its position."""
        self.counters = dict(zip(STEP_NAMES, (int(v) for v in self.iterations.numpy())))
        mid_epoch, step, inner, k, done = (int(v) for v in self.position.numpy())
        if not mid_epoch:
            self._resume = None
            return
        summaries = {name: {key: float(v) for key, v in zip(SUMMARY_KEYS, row) if not np.isnan(v)}
                     for name, row in zip(STEP_NAMES, self.step_summaries.numpy())}
        self._resume = {"step": step, "inner": inner, "pass": k, "done": done,
                        "records": [float(v) for v in self.monitor_records.numpy() if not np.isnan(v)],
                        "summaries": {name: s for name, s in summaries.items() if s}}

    @property
    def total_updates(self):
        return sum(self.counters.values())

    # ----------------------------------------------------------------- batches
    def _draw_pass(self):
        """Fills pass_rows with the rows of each of a pass's batches (updates_per_pass x batch)."""
        if self.batch_order is None:
            if self._compiled_draws is None:
                self._compiled_draws = tf.function(self._draws)
            self._compiled_draws()
            return
        draws = [np.asarray(next(self.batch_order, ())) for _ in range(self.updates_per_pass)]
        for rows in draws:
            if rows.shape != (self.batch,):
                raise UserError(f"the given batch order ran out or holds a batch of shape {rows.shape}; "
                                f"give one row array of {self.batch} training-item indices per update")
        self.pass_rows.assign(np.stack(draws).astype(np.int64))

    def _draws(self):
        """The pass's batches, each an independent uniform draw of `batch` distinct items
        (`draw_batches` from trainer.rng), into pass_rows; compiled as one call per pass."""
        n, batches = self.trainer.num_items, self.updates_per_pass
        self.pass_rows.assign(draw_batches(self.trainer.rng, n, batches, self.batch))

    def _on_device(self, name):
        """Feature and label matrices (or row subsets of one: utils.data.LazyRows) are put on
        the device once and gathered there; image arrays (in memory or lazy HDF5) are read on
        the host batch by batch (a copy of every image would double the memory they take)."""
        source = getattr(self, name)
        matrix = source.source if isinstance(source, LazyRows) else source
        return isinstance(matrix, np.ndarray) and matrix.ndim == 2

    def _reader(self, name):
        """rows -> the values of source `name` (images, texts, labels) at those rows. A row subset
        of a matrix is gathered from the whole matrix on the device through its rows (no copy of
        the subset is made; on a CPU the device matrix is the host array itself: device_matrix)."""
        source = getattr(self, name)
        if not self._on_device(name):
            return pipeline.host_reads(source)
        if name not in self._device_values:
            if isinstance(source, LazyRows):
                self._device_values[name] = (pipeline.device_matrix(source.source),
                                             tf.constant(np.asarray(source.rows, np.int64)))
            else:
                self._device_values[name] = (pipeline.device_matrix(source), None)
        values, subset = self._device_values[name]
        if subset is None:
            return lambda rows: tf.gather(values, rows)
        return lambda rows: tf.gather(values, tf.gather(subset, rows))

    def _batches(self, step, first=0):
        """An iterator (tf.data) of (rows, inputs of the step...) of the current pass's batches
        first, first + 1, ... (the rows read from pass_rows as each batch is made): of each
        global batch, this worker's rows only (`worker_rows`; HDF5 images are read for those).

        Inputs all on the device: one endless iterator per step, made once (making one costs
        ~5 ms, more than a pass of updates of tiny networks) and read in the calling thread;
        every pass reads exactly its batches from it (a pass resumed inside reads the rest from
        one of its own). With images: an iterator per pass that reads the next batches in a
        background thread while an update runs (one at a time: HDF5 reads hold a global lock,
        and a parallel map over the rows variable makes TensorFlow log a spurious error)."""
        wanted = {"lab": ("labels",), "img": ("images", "labels"), "txt": ("texts", "labels"),
                  "dis": ("images", "texts", "labels")}[step]
        on_device = all(self._on_device(name) for name in wanted)
        endless = on_device and not first
        if endless and step in self._endless:
            return self._endless[step]
        reads = [self._reader(name) for name in wanted]

        first_row, stop_row = self.worker_rows

        def batch(b):
            rows = self.pass_rows[b][first_row:stop_row]
            return (rows,) + tuple(read(rows) for read in reads)
        if endless:
            batches = inline_batches(tf.data.Dataset.range(self.updates_per_pass).repeat().map(batch))
            self._endless[step] = iter(batches)
            return self._endless[step]
        batches = inline_batches(tf.data.Dataset.range(first, self.updates_per_pass).map(batch))
        return iter(batches if on_device else batches.prefetch(2))

    # ----------------------------------------------------------------- one pass, one epoch
    def _pass(self, where, lr, k):
        """Pass k: draws all its batches first (the same RNG sequence as one by one: nothing
        else draws in between), then updates; returns the pass's mean loss (and accuracy).
        Losses are summed on the device (pass_sums) and read at the pass's end."""
        step = where["step_name"]
        resume, self._resume_pass = self._resume_pass, None
        if resume is not None:  # restored: pass_rows, and pass_sums with the sums of its first `done` updates
            done = resume["done"]
        else:
            self._draw_pass()
            done = 0
            self.pass_sums.assign(np.zeros(len(SUMMARY_KEYS)))
        batches = self._batches(step, done)
        for b in range(done, self.updates_per_pass):
            rows, *inputs = next(batches)
            losses = self.trainer.step(step, *([] if step == "dis" else [rows]), *inputs, learning_rate=lr)
            self.counters[step] += 1
            if self.record is not None:  # a test's record: reads every update's loss
                self.record["updates"].append({"step": step, "inner": where["inner"], "pass": k, "batch": b,
                                               "rows": rows.numpy(), "lr": lr, "loss": float(losses["loss"])})
            if self.loop is not None:  # log reads, and a checkpoint when one is due (position first)
                self.loop.updates_done(1, lambda done=b + 1: self._store_position(where, k, done))
        means = self._check_pass_sums(step) / self.updates_per_pass
        self._summaries[step] = {"loss": float(means[0])}
        if step == "dis":
            self._summaries[step]["accuracy"] = float(means[1])
        if self.loop is not None:  # one plain line per pass in logs
            self.loop.note(f"{STEP_NAMES[step]} lr index {where['inner']} pass {k + 1}: "
                           + ", ".join(f"{key} {value:.4f}" for key, value in self._summaries[step].items()))
        return self._summaries[step]

    def _add_pass_sums(self, losses):
        """Inside the compiled step: this update's loss (and accuracy) added to the pass's sums."""
        self.pass_sums.assign_add(tf.stack([tf.cast(losses[key], tf.float64) if key in losses
                                            else tf.constant(0.0, tf.float64) for key in SUMMARY_KEYS]))

    def _check_pass_sums(self, step):
        """The pass's sums so far, read from the device: the NaN guard (a non-finite loss of any
        update makes its sum non-finite)."""
        sums = self.pass_sums.numpy()
        check_finite(dict(zip(SUMMARY_KEYS, sums)), STEP_NAMES[step])
        return sums

    def _store_position(self, where, k, done):
        """Before a checkpoint inside an epoch: where the epoch stands (pass_rows holds the
        pass's rows already) and the NaN guard."""
        self._check_pass_sums(where["step_name"])  # never checkpoint a non-finite state
        self.position.assign([1, where["step"], where["inner"], k, done])
        records = ([np.nan, np.nan] + self._records)[-2:]
        self.monitor_records.assign(records)
        self.step_summaries.assign([[self._summaries.get(name, {}).get(key, np.nan) for key in SUMMARY_KEYS]
                                    for name in STEP_NAMES])
        self.iterations.assign([self.counters[name] for name in STEP_NAMES])

    def _monitor(self, step, inner, k):
        value = self.trainer.monitoring_loss(step)
        check_finite({"monitoring": value}, STEP_NAMES[step] + " monitoring")
        if self.run is not None:
            self.run.log_scalars(self.total_updates, {LOSS_TAG.format(step=step, term="monitoring"): value})
        if self.record is not None:
            self.record["monitors"].append({"step": step, "inner": inner, "pass": k, "value": value})
        return value

    def run_epoch(self, epoch, loop=None):
        """One epoch (or the rest of it after resume_from_variables); returns per step the
        mean loss (discriminators: and accuracy) of its last pass. loop: the shared TrainingLoop
        that hears of every update (None: no checkpoints, no logs)."""
        self.loop = loop
        resume, self._resume = self._resume, None
        self._summaries = dict(resume["summaries"]) if resume else {}
        self._resume_pass = None
        position = -1
        for step in self.config.step_order:
            position += 1
            if resume and position < resume["step"]:
                continue
            resuming_step = resume is not None and position == resume["step"]
            self._records = list(resume["records"]) if resuming_step else []
            rule = EARLY_STOP.get(step) if self.config.early_stop else None
            for inner, passes in enumerate(self.schedule[step]):
                if resuming_step and inner < resume["inner"]:
                    continue
                first_pass = 0
                lr = learning_rate(self.config, step, epoch + inner)
                if resuming_step and inner == resume["inner"]:
                    first_pass = resume["pass"]
                    self._resume_pass = resume
                elif self.run is not None:  # at the first update it applies to
                    self.run.log_scalars(self.total_updates + 1, {LR_TAG.format(step=step): lr})
                where = {"step": position, "step_name": step, "inner": inner}

                def run_pass(k, where=where, lr=lr):
                    return self._pass(where, lr, k)

                def monitor(k, step=step, inner=inner):
                    return self._monitor(step, inner, k)

                _, checks = inner_loop(passes, run_pass, monitor, rule, self._records, first_pass)
                self._records = self._records[-2:]
                if self.record is not None:
                    self.record["stop_checks"] += [{"step": step, "inner": inner, **check._asdict()}
                                                   for check in checks]
            if resuming_step:
                resume = None  # the steps after it run whole
        return dict(self._summaries)

    def end_epoch(self):
        """Position and counters for the checkpoint written at the end of an epoch."""
        self.position.assign(np.zeros(5, np.int64))
        self.iterations.assign([self.counters[name] for name in STEP_NAMES])
