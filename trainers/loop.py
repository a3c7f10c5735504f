"""The training loop every method shares.

A method trains in UNITS (an epoch, or for METAH an epoch's worth of iterations). The loop
owns what is the same for all of them: resuming from the latest checkpoint, and after each unit
the cadence evaluate -> log -> checkpoint (the last ones, and the best by VALIDATION mAP; the
history records inside it) -> results -> export, so nothing refers to an unwritten checkpoint;
the NaN guard; the progress bar; TensorBoard's loss, learning-rate and mAP tags. The method supplies only its updates (`train_unit`) and its evaluation (`evaluate`).

Losses never cross to the host per update: each compiled step adds its loss terms to a
`LossMeter` (sums in device variables), and the loop reads the meters once per `log_every`
updates, at checkpoints and at unit ends; the NaN guard checks what it reads (a NaN anywhere
in an interval makes its sum NaN). Every value the loop needs to continue exactly (units and
updates done, the meters' sums, the number of history records) is in the checkpoint.

A method subclasses `Method`, whose members' docstrings state the contract.
"""
import dataclasses
import time

import numpy as np


# TensorBoard tags: loss/STEP/TERM, lr/STEP, mAP/DIRECTION, discriminator/accuracy, codes/...; x axis: updates.
LOSS_TAG = "loss/{step}/{term}"
LR_TAG = "lr/{step}"
MAP_TAG = "mAP/{direction}"
DISCRIMINATOR_ACCURACY_TAG = "discriminator/accuracy"
# The fewest distinct codes and the most constant bits among the evaluated code sets (collapse).
CODES_DISTINCT_TAG = "codes/distinct"
CODES_CONSTANT_BITS_TAG = "codes/constant_bits"


@dataclasses.dataclass
class Evaluation:
    """What a method's evaluation gives the loop.

    figures: JSON figures (recorded in the unit's history record and as results' "final");
    maps: {direction: mAP} logged as mAP/DIRECTION; validation: the VALIDATION mAP that chooses
    the best checkpoint (None: no validation part, only the last checkpoints are kept);
    scalars: other TensorBoard tags; exports: arrays for codes.mat (None: nothing exported now);
    codes: {name: binary codes} of the query and database items, whose collapse the loop
    watches (None: real-valued outputs)."""
    figures: dict
    maps: dict = dataclasses.field(default_factory=dict)
    validation: float = None
    scalars: dict = dataclasses.field(default_factory=dict)
    exports: dict = None
    codes: dict = None


class LossMeter:
    """Loss terms of one kind of update, summed on the device.

    `terms` maps each term's name (the key of the step's loss dict and of the unit's mean losses)
    to its TensorBoard tag (e.g. "emb" -> "loss/projector/emb"). `add(values)` goes inside the
    compiled step; the host reads `interval_means()` / `unit_means()` (means since the last read
    of that kind) a few times per unit. Sums are float64, as a Python sum of the per-update floats."""

    def __init__(self, name, terms):
        import tensorflow as tf
        self.name = name
        self.terms = dict(terms)
        width = len(self.terms) + 1  # + the number of updates summed
        self.interval = tf.Variable(tf.zeros(width, tf.float64), trainable=False, name=f"{name}_interval_sums")
        self.unit = tf.Variable(tf.zeros(width, tf.float64), trainable=False, name=f"{name}_unit_sums")

    def add(self, values):
        """Inside a compiled step: adds this update's terms (missing ones count 0)."""
        import tensorflow as tf
        row = tf.stack([tf.cast(values[t], tf.float64) if t in values else tf.constant(0.0, tf.float64)
                        for t in self.terms] + [tf.constant(1.0, tf.float64)])
        self.interval.assign_add(row)
        self.unit.assign_add(row)

    def _means(self, variable, reset):
        sums = variable.numpy()
        if reset:
            variable.assign(np.zeros_like(sums))
        count = sums[-1]
        if count == 0:
            return {}
        return {term: float(total / count) for term, total in zip(self.terms, sums[:-1])}

    def interval_means(self):
        return self._means(self.interval, reset=True)

    def unit_means(self, reset=True):
        return self._means(self.unit, reset=reset)

    def checkpoint_objects(self):
        return {f"meter_{self.name}_interval": self.interval, f"meter_{self.name}_unit": self.unit}


def inline_batches(dataset):
    """`dataset` read in the calling thread: no prefetch thread (tf.data injects one by default),
    so a compiled step that takes its next batch does not wait on another thread each time,
    which costs more than the tiny pipelines of the methods on a busy CPU."""
    import tensorflow as tf
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False
    options.autotune.enabled = False
    return dataset.with_options(options)


class Method:
    """The contract a method fulfils (subclassing is optional; every member is read by name).

    name: for messages and the progress bar; units: the number of units to train;
    log_every: updates per TensorBoard loss read; meters: its LossMeters."""
    name = "method"
    units = 0
    log_every = 1
    meters = ()
    validation_hint = "give --validation-size N to keep it too"  # when an evaluation has no validation figure
    # The progress bar: "updates" (one bar over the run's updates), "units" (one over the units,
    # a plain line per unit in logs) or "unit_updates" (one bar per unit over its updates).
    progress = "updates"

    def unit_updates(self, unit):
        """Updates in unit `unit` (0-based), or None when not known ahead (early stop)."""
        return None

    def checkpoint_objects(self):
        """{name: trackable}: networks, optimisers and any position variables of the method."""
        raise NotImplementedError

    def after_restore(self, units_done, unit_updates_done):
        """Called after a checkpoint was restored (e.g. to read position variables)."""

    def train_unit(self, unit, first_update, loop):
        """Trains unit `unit` from its update `first_update` on (0 unless resuming mid-unit),
        calling loop.updates_done(n, store_position) after each update or group of updates.
        Returns the unit's own record fields (JSON), e.g. {"epoch": unit + 1}."""
        raise NotImplementedError

    def eval_due(self, units_done):
        return True

    def evaluate(self, units_done, final):
        """An Evaluation after `units_done` units; final=True after the last one (with exports)."""
        raise NotImplementedError

    def unit_record(self, trained, losses, evaluation):
        """The history record of a unit, or None for none: by default its own fields, the mean
        losses of the unit and, when evaluated, the figures under "map"."""
        record = {**trained, "losses": losses}
        if evaluation is not None:
            record["map"] = evaluation.figures
        return record

    def interval_scalars(self):
        """Extra TensorBoard scalars at each log read: lr/STEP, a schedule's value, ..."""
        return {}

    def results_extra(self):
        """Fields added to results.json beside final, epochs, seconds and iterations."""
        return {}


class TrainingLoop:
    """Runs a Method: `TrainingLoop(method, run, resume).run()` returns the results dict
    {"final", "epochs" (the history records), "seconds" (training only), "iterations" (updates),
    **method.results_extra()}; logs, checkpoints and exports only when `run` is given."""

    def __init__(self, method, run=None, resume=False, checkpoint_every=0, desc=None):
        import tensorflow as tf
        self.method, self.run_folder, self.resume = method, run, resume
        self.checkpoint_every = checkpoint_every
        self.desc = desc or method.name
        self.units_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="units_done")
        self.updates_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
        self.unit_updates_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="unit_updates_done")
        self.records_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="history_records")
        # The history records as JSON: results.json is written after the checkpoint, so a kill
        # between the two must not lose the records the checkpoint counts.
        self.history_var = tf.Variable("", dtype=tf.string, trainable=False, name="history_json")
        self.updates = 0
        self.unit_updates_done = 0
        self.history = []
        self.manager = self.cadence = self.bar = None
        self._store_position = None
        self._said_no_validation = False
        self._records_written = None  # history records in results.json as this process last wrote it

    # ---------------------------------------------------------------- checkpoint contents
    def checkpoint(self):
        import tensorflow as tf
        objects = dict(self.method.checkpoint_objects())
        for meter in self.method.meters:
            objects.update(meter.checkpoint_objects())
        return tf.train.Checkpoint(loop_units_done=self.units_done, loop_updates=self.updates_var,
                                   loop_unit_updates_done=self.unit_updates_var,
                                   loop_history_records=self.records_var, loop_history=self.history_var,
                                   **objects)

    def _restore(self):
        import json
        import os

        from utils import io
        checkpoint = self.checkpoint()
        self.manager = self.run_folder.checkpoint_manager(checkpoint)
        if not self.resume:
            return
        restored = self.run_folder.restore_latest(checkpoint)
        if not restored:
            print("no checkpoint yet: starting from scratch", flush=True)
            return
        self.updates, self.unit_updates_done = int(self.updates_var.numpy()), int(self.unit_updates_var.numpy())
        inside = f", {self.unit_updates_done} updates into unit {int(self.units_done.numpy()) + 1}" \
            if self.unit_updates_done else ""
        print(f"resumed from {restored} ({int(self.units_done.numpy())} units done{inside})", flush=True)
        records = int(self.records_var.numpy())
        saved = self.history_var.numpy().decode()
        if saved:
            saved = json.loads(saved)
        else:  # a checkpoint of an older version: its records are in results.json
            path = self.run_folder.path("results.json")
            saved = io.load_json(path).get("epochs", []) if os.path.exists(path) else []
        # Records written after the restored checkpoint (a kill between the two writes) are dropped.
        self.history = list(saved[:records])
        self._records_written = None
        self.method.after_restore(int(self.units_done.numpy()), self.unit_updates_done)

    # ---------------------------------------------------------------- called by the method
    def updates_done(self, n=1, store_position=None):
        """After `n` more updates of the current unit. Reads the meters at each log interval
        (and logs them); when a mid-unit checkpoint is due, calls `store_position()` (the
        method puts its position into its checkpointed variables) and writes one."""
        before, self.updates = self.updates, self.updates + n
        self.unit_updates_done += n
        if self.bar is not None and self.method.progress != "units":
            self.bar.update(n)
        log_every = max(1, int(self.method.log_every))
        if self.updates // log_every > before // log_every:
            self.log_interval()
        if self.cadence is not None and self.cadence.due(self.updates) and not self._unit_complete():
            if store_position is not None:
                store_position()
            self._save(score=None)
            self.cadence.saved()  # stops here (one line, exit code 130) after SIGINT/SIGTERM

    def chunk_size(self, limit):
        """How many updates a method may run in one call before reporting them: at most
        `limit` (e.g. the rest of the unit), and never past the next log read or the next
        checkpoint due by count (--checkpoint-every). A signal is honoured at the next report."""
        log_every = max(1, int(self.method.log_every))
        count = min(int(limit), log_every - self.updates % log_every)
        every = self.cadence.every_steps if self.cadence is not None else 0
        if every:
            count = min(count, every - self.updates % every)
        return max(1, count)

    def note(self, text):
        """A plain progress line (stdout when not a terminal, and the run's train.log)."""
        if self.bar is not None and hasattr(self.bar, "note"):
            self.bar.note(text)

    # ---------------------------------------------------------------- internals
    def _unit_complete(self):
        expected = self.method.unit_updates(self._unit)
        return expected is not None and self.unit_updates_done >= expected

    def check_finite(self, values):
        """The NaN guard on means read from the meters (a NaN or inf anywhere in their sums)."""
        from utils.run import check_finite
        check_finite(values, f"{self.method.name} training (updates up to {self.updates})")

    def log_interval(self):
        """Reads every meter's interval means: NaN guard, then TensorBoard."""
        scalars = {}
        for meter in self.method.meters:
            means = meter.interval_means()
            self.check_finite(means)
            scalars.update({meter.terms[term]: value for term, value in means.items()})
        if self.run_folder is not None:
            self.run_folder.log_scalars(self.updates, {**scalars, **self.method.interval_scalars()})

    def _check_unit_sums(self):
        for meter in self.method.meters:
            self.check_finite(meter.unit_means(reset=False))

    def _save(self, score):
        if self.run_folder is None:
            return
        from utils import io
        self._check_unit_sums()  # never checkpoint a non-finite state
        self.updates_var.assign(self.updates)
        self.unit_updates_var.assign(self.unit_updates_done)
        self.records_var.assign(len(self.history))
        self.history_var.assign(io.to_json(self.history))
        self.run_folder.save_checkpoint(self.manager, self.updates, score=score)
        # Then results.json: it never counts a record that no checkpoint holds.
        if len(self.history) != self._records_written:
            self.run_folder.save_results({"epochs": self.history, **self.method.results_extra()})
            self._records_written = len(self.history)

    def _keep_score(self, evaluation):
        if evaluation is None:
            return None
        if evaluation.validation is None and not self._said_no_validation and self.run_folder is not None:
            _, keep_best = self.run_folder.keep_policy()
            if keep_best:
                print(f"no validation part: only the last checkpoint is kept (the best is chosen by validation "
                      f"mAP, never by query mAP; {self.method.validation_hint})", flush=True)
            self._said_no_validation = True
        return evaluation.validation

    def _log_evaluation(self, evaluation, diversity=None):
        if self.run_folder is None:
            return
        scalars = {MAP_TAG.format(direction=d): v for d, v in evaluation.maps.items()}
        if diversity:
            scalars[CODES_DISTINCT_TAG] = min(d["distinct"] for d in diversity.values())
            scalars[CODES_CONSTANT_BITS_TAG] = max(d["constant_bits"] for d in diversity.values())
        self.run_folder.log_scalars(self.updates, {**scalars, **evaluation.scalars})

    def _code_diversity(self, evaluation, when, said=None):
        """{name: metrics.code_diversity} of the evaluation's codes (None without codes), with
        the warning line when they have collapsed (stdout, so train.log too) unless it is the
        same as `said` (the last evaluation's)."""
        from utils.metrics import code_diversity, collapse_warning
        if evaluation.codes is None:
            return None
        diversity = {name: code_diversity(codes, name) for name, codes in evaluation.codes.items()}
        warning = collapse_warning(diversity, when)
        if warning and diversity != said:
            print(warning, flush=True)
        return diversity

    def _progress(self, unit, total_units):
        from utils.run import progress
        if self.method.progress == "unit_updates":  # bars over updates: a plain line per tenth, not per update
            return progress(total=self.method.unit_updates(unit), initial=self.unit_updates_done,
                            desc=f"{self.desc} epoch {unit + 1}/{total_units}", line_per_step=False)
        if self.method.progress == "units":
            return progress(total=total_units, initial=unit, desc=self.desc)
        totals = [self.method.unit_updates(u) for u in range(total_units)]
        total = sum(totals) if None not in totals else None
        return progress(total=total, initial=self.updates, desc=self.desc, line_per_step=False)

    # ---------------------------------------------------------------- the loop
    def run(self):
        import contextlib
        from utils.run import CheckpointCadence
        method = self.method
        if self.run_folder is not None:
            self._restore()
            self.cadence = CheckpointCadence(self.run_folder.dir, self.checkpoint_every)
        start_unit, units = int(self.units_done.numpy()), method.units
        evaluation = diversity = None
        start_time = time.perf_counter()
        per_unit = method.progress == "unit_updates"
        self.bar = None if per_unit else self._progress(start_unit, units)
        with self.cadence or contextlib.nullcontext():
            for unit in range(start_unit, units):
                self._unit = unit
                bar_of_unit = self._progress(unit, units) if per_unit else None
                if bar_of_unit is not None:
                    self.bar = bar_of_unit
                first = self.unit_updates_done
                trained = method.train_unit(unit, first, self)
                losses = {}
                for meter in method.meters:
                    means = meter.unit_means()
                    self.check_finite(means)
                    losses.update(means)
                self.unit_updates_done = 0
                self.units_done.assign(unit + 1)
                evaluation = method.evaluate(unit + 1, final=False) if method.eval_due(unit + 1) else None
                diversity = None
                if evaluation is not None:
                    diversity = self._code_diversity(evaluation, f" after unit {unit + 1} of {units}")
                    self._log_evaluation(evaluation, diversity)
                    if self.bar is not None and evaluation.maps:
                        self.bar.set_postfix(**{d: f"{v:.3f}" for d, v in evaluation.maps.items()})
                record = method.unit_record(trained, losses, evaluation)
                if record is not None:
                    if diversity:
                        record["codes"] = diversity
                    self.history.append(record)
                if bar_of_unit is not None:
                    bar_of_unit.close()
                elif method.progress == "units":
                    self.bar.update(1)
                if self.run_folder is not None:
                    self._save(score=self._keep_score(evaluation))  # the checkpoint, then results.json
                    if evaluation is not None and evaluation.exports is not None:
                        self.run_folder.export_codes(evaluation.exports)  # codes of a checkpointed state only
                    if unit + 1 < units:
                        self.cadence.saved()
        if self.bar is not None:
            self.bar.close()
        seconds = time.perf_counter() - start_time
        final = method.evaluate(units, final=True)
        again = final is evaluation  # the last unit's evaluation (logged and warned about already)
        diversity = diversity if again else self._code_diversity(final, " at the end", said=diversity)
        results = {"final": final.figures, "epochs": self.history, "seconds": seconds, "iterations": self.updates,
                   **method.results_extra()}
        if diversity:
            results["codes"] = diversity
        if self.run_folder is not None:
            if not again:
                self._log_evaluation(final, diversity)
            if final.exports is not None:
                self.run_folder.export_codes(final.exports)
            self.run_folder.save_results(results)
            self.run_folder.flush()
        return results

