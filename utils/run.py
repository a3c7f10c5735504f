"""One run folder per training run: config, TensorBoard, checkpoints, results.

Layout of RUN_DIR:
  config.json     the full config and the method's name (written at creation)
  lock            held while a process trains in the folder: {"pid", "host", "started"}
  train.log       one line per progress update and epoch, and what the run printed
  tb/             TensorBoard event files
  checkpoints/    ckpt-N.index/.data-* and the `checkpoint` state file, as tf.train.CheckpointManager
                  writes them (CheckpointWriter); checkpoints/best/ the best epoch's
  codes.mat       exported codes or embeddings (fields per method, see utils.exports)
  results.json    final and per-epoch figures

Guarantees: a run deletes only files it created itself (`Run.discard`); one process at a
time trains in a folder (`lock`, a stale lock of a dead process on this host is taken over);
a corrupt newest checkpoint falls back to the newest readable one.
"""
import contextlib
import dataclasses
import datetime
import math
import os
import random
import signal
import sys
import threading
import time

import numpy as np

from utils import io
from utils.config import config_from_dict
from utils.errors import UserError, WriteFailed, storage_cause


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; training stops and keeps the last good checkpoint."""


def check_finite(losses, step_name):
    """Raises NonFiniteLoss naming the step and the term if any loss is not finite."""
    for name, value in losses.items():
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss '{name}' became {value} in the {step_name} step; "
                                f"the last good checkpoint is kept: lower the learning rate or resume from it")


class TrainingInterrupted(UserError):
    """A SIGINT/SIGTERM stopped training after a checkpoint was written."""
    exit_code = 130


class CheckpointCadence:
    """When a training loop writes a checkpoint between epoch ends, and whether it must stop.

    Use it as a context manager around the loop: SIGINT and SIGTERM then only set a flag (a
    second signal interrupts at once), so the loop can finish the update it is in, write a
    checkpoint and stop cleanly. After each update the loop asks `due(steps_done)`; when true it
    writes a checkpoint and calls `saved()`, which raises TrainingInterrupted if a stop was
    asked for. `every_steps` > 0 saves every that many updates; 0 saves once `every_seconds`
    of work have passed since the last save (long epochs lose at most that much)."""

    def __init__(self, run_dir, every_steps=0, every_seconds=600.0, clock=time.monotonic):
        if every_steps < 0:
            raise UserError(f"--checkpoint-every must be 0 or more (got {every_steps})")
        self.run_dir = os.fspath(run_dir)
        self.every_steps = int(every_steps)
        self.every_seconds = float(every_seconds)
        self.clock = clock
        self.last_save = clock()
        self.stop_signal = None
        self._previous = {}

    def __enter__(self):
        self.last_save = self.clock()
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request_stop)
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _request_stop(self, signum, frame):
        if self.stop_signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name

    @property
    def stop_requested(self):
        return self.stop_signal is not None

    def due(self, steps_done):
        if self.stop_requested:
            return True
        if self.every_steps:
            return steps_done % self.every_steps == 0
        return self.clock() - self.last_save >= self.every_seconds

    def saved(self):
        """Call after writing a checkpoint; stops training if a signal asked for it."""
        self.last_save = self.clock()
        if self.stop_requested:
            raise TrainingInterrupted(f"stopped by {self.stop_signal} after writing a checkpoint; "
                                      f"continue with: python train.py --resume {self.run_dir}")


def set_seed(seed, deterministic=True):
    """Seeds Python, NumPy and TensorFlow; with deterministic=True ops are deterministic on CPU."""
    import tensorflow as tf
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


LOCK_NAME = "lock"


def is_lock_file(name):
    """The lock, or another process's lock being written (`lock.PID.tmp`): a competitor's
    half-made lock must not make a fresh folder look used."""
    return name == LOCK_NAME or (name.startswith(LOCK_NAME + ".") and name.endswith(".tmp"))


def check_run_name(name):
    """A run name is one plain folder name: no '.', '..' or path separators."""
    bad = name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name
    if bad or name != name.strip():
        raise UserError(f"--run-name {name!r} is not a plain folder name; give a name such as "
                        f"ssah-coco-32b (no '.', '..', slashes or surrounding spaces)")


class RunLock:
    """An exclusive lock on a run folder: RUN_DIR/lock, created atomically (a hard link of a
    finished temporary file, so the lock is never seen half written) and holding the PID and
    host of its owner. A lock whose PID is not alive on this host is stale and taken over."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def acquire(self):
        import json
        import socket
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": datetime.datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):
            tmp = f"{self.path}.{owner['pid']}.tmp"
            with open(tmp, "w") as f:
                json.dump(owner, f)
            try:
                os.link(tmp, self.path)
                self.held = True
                return
            except FileExistsError:
                holder = self._holder()
                if holder == "released":  # its owner finished meanwhile: try again
                    continue
                if not self._is_stale(holder, owner["host"]):
                    where = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
                    raise UserError(f"run folder {os.path.dirname(self.path)} is in use by {where} "
                                    f"(lock file {self.path}); wait for it to finish, or pick another "
                                    f"--run-name") from None
                why = (f"process {holder['pid']} on {holder.get('host')} is gone" if isinstance(holder, dict)
                       and isinstance(holder.get("pid"), int) else "it is empty or names no process")
                print(f"taking over the stale lock {self.path}: {why}", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        raise UserError(f"could not lock {os.path.dirname(self.path)}: another process keeps taking it; "
                        f"retry when it has finished")

    def _holder(self):
        import json
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return "released"
        except (OSError, ValueError):
            return None

    @staticmethod
    def _is_stale(holder, host):
        """A lock is stale when it is empty or unreadable (a crash between creating and writing
        it: a live owner's lock is complete, as it is linked from a finished file), names no
        process, or names a process of this host that is gone. Another host's cannot be checked."""
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            return True
        if holder.get("host") != host:
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, owned by another user
        return False

    def release(self):
        if self.held:
            self.held = False
            if os.path.exists(self.path):
                os.remove(self.path)


def _missing_folders(path):
    """The folders os.makedirs(path) would make, innermost first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _folder_error(path, error):
    if storage_cause(error):
        return WriteFailed(f"cannot write the run folder {path}: {storage_cause(error)}; free space or fix the "
                           f"permissions there (nothing in it was changed), or choose another --runs-dir")
    return UserError(f"cannot write the run folder {path}: {error.strerror or error}; "
                     f"choose a writable --runs-dir")


class Run:
    """A run folder with its TensorBoard writer and checkpoint helper.

    Training code uses: `checkpoint_manager(checkpoint)`, `restore_latest(checkpoint)` (on
    resume), `save_checkpoint(manager, number, score=None)` (instead of manager.save: with
    `score`, the epoch's mAP, the best-scoring checkpoint is also kept in checkpoints/best/ when
    --keep-checkpoints includes 'best'), `log_scalars`, `export_codes`, `save_results`, and
    `progress(...)` below for progress lines (also written to RUN_DIR/train.log)."""

    def __init__(self, run_dir, method, config, created=False):
        self.dir = os.fspath(run_dir)
        self.method = method
        self.config = config
        self.created_folder = created  # this process made RUN_DIR, so it may remove it
        self.created_runs_dirs = []    # ... and the folders above it that it made, innermost first
        self.created = set()           # entries of RUN_DIR this process created
        self.lock = RunLock(self.dir)
        self.checkpoint_source = self.dir  # where restore_latest reads (a WorkerRun: the chief's folder)
        self._writer = None
        self._own_event_files = set()  # event files this process's writer holds (never rewritten)
        self._scalar_write = None  # the compiled write of log_scalars

    @property
    def writer(self):
        """The TensorBoard writer, opened on first use (a run that only reports writes no events file)."""
        if self._writer is None:
            import tensorflow as tf
            self._note_created("tb")
            before = set(os.listdir(self.path("tb"))) if os.path.isdir(self.path("tb")) else set()
            try:
                self._writer = tf.summary.create_file_writer(self.path("tb"))
            except tf.errors.OpError as error:
                if storage_cause(error) is None:
                    raise
                for name in set(os.listdir(self.path("tb"))) - before:  # the empty file it could not fill
                    if os.path.getsize(self.path("tb", name)) == 0:
                        os.remove(self.path("tb", name))
                raise WriteFailed(f"cannot write TensorBoard's events in {self.path('tb')} ({storage_cause(error)}): "
                                  f"free space or fix the permissions there, then run the command again") from None
            self._own_event_files |= set(os.listdir(self.path("tb"))) - before
        return self._writer

    def _note_created(self, name):
        if not os.path.exists(self.path(name)):
            self.created.add(name)

    @classmethod
    def create(cls, method, config):
        if config.run_name:
            check_run_name(config.run_name)
        name = config.run_name or "{}-{}-{}b-{}".format(
            method, config.dataset, config.bits, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        check_run_name(name)  # a dataset name like mnist->usps is fine; a slash is not
        run_dir = os.path.join(config.runs_dir, name)
        try:
            made_runs_dirs = _missing_folders(config.runs_dir)
            os.makedirs(config.runs_dir, exist_ok=True)
            try:
                os.mkdir(run_dir)
                created = True
            except FileExistsError:
                created = False
            run = cls(run_dir, method, config, created=created)
            run.created_runs_dirs = made_runs_dirs
            run.lock.acquire()
        except OSError as error:
            raise _folder_error(run_dir, error) from None
        try:
            if os.path.exists(run.path("config.json")):
                raise UserError(f"run folder {run_dir} already holds a run; pick another --run-name "
                                f"or continue it with --resume {run_dir}")
            others = sorted(name for name in os.listdir(run_dir) if not is_lock_file(name))
            if others:
                raise UserError(f"{run_dir} exists and holds other files ({', '.join(others[:3])}); "
                                f"pick another --run-name")
            run._note_created("config.json")
            io.save_json(run.path("config.json"), {"method": method, "config": dataclasses.asdict(config)})
        except OSError as error:
            run.discard()
            raise _folder_error(run_dir, error) from None
        except UserError:
            run.close()
            run.discard()  # removes no file it found; the folders only if it made them and they are empty
            raise
        return run

    @classmethod
    def open(cls, run_dir, config_classes):
        """Reopens a run folder for training (locks it); `config_classes` maps method name ->
        its Config class."""
        run = cls(run_dir, *saved_config(run_dir, config_classes))
        try:
            run.lock.acquire()
        except OSError as error:
            raise _folder_error(run_dir, error) from None
        return run

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def close(self):
        """Flushes TensorBoard and releases the lock."""
        global _active_log
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
            self._scalar_write = None
        if _active_log == self.path("train.log"):
            _active_log = None
        self.lock.release()

    def discard(self):
        """After a failed start: removes what this run created (never a file it found) and the
        folder itself when this run made it and it is left empty."""
        import shutil
        self.close()
        for name in self.created:
            target = self.path(name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.exists(target):
                os.remove(target)
        for folder in ([self.dir] if self.created_folder else []) + self.created_runs_dirs:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)

    def set_config(self, config):
        """Replaces the saved config (used to extend a run's length on resume)."""
        self.config = config
        io.save_json(self.path("config.json"), {"method": self.method, "config": dataclasses.asdict(config)})

    # ------------------------------------------------------------------ log file

    def start_log(self):
        """Makes RUN_DIR/train.log the destination of `progress` lines and `log` messages."""
        global _active_log
        self._note_created("train.log")
        _active_log = self.path("train.log")

    def log(self, message):
        try:
            _append_log(self.path("train.log"), message)
        except OSError:  # a full disk: the message still reaches the terminal; this must not hide it
            pass

    # ------------------------------------------------------------------ TensorBoard

    def log_config(self, step=0):
        """The run's resolved settings as TensorBoard text (tab Text: `config`, and `ties`, the tie
        rule of every mAP) and as HParams (tab HParams: runs compared by setting)."""
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams
        settings = {"method": self.method, **dataclasses.asdict(self.config)}
        rows = "\n".join(f"| {name} | {value} |" for name, value in settings.items() if name != "method")
        with self.writer.as_default(step=int(step)):
            tf.summary.text("config", f"method: {self.method}\n\n| setting | value |\n|---|---|\n{rows}")
            tf.summary.text("ties", str(getattr(self.config, "ties", "")))
            hparams.hparams(hparam_values(settings), trial_id=os.path.basename(os.path.normpath(self.dir)))

    def log_scalars(self, step, scalars, prefix=""):
        """float32 scalars at `step`, in one compiled call (traced once per writer: tags and
        values are inputs of any length): an eager tf.summary.scalar per tag costs ~0.2 ms of
        CPU, more than a tiny network's update, and a function traced per number of tags makes
        TensorFlow warn of retracing. The events are tf.summary.scalar's (the scalar plugin's
        metadata)."""
        import tensorflow as tf
        if self._scalar_write is None:
            from tensorboard.plugins.scalar import metadata as scalar_plugin
            writer = self.writer
            plugin_metadata = scalar_plugin.create_summary_metadata(display_name=None, description=None)

            def write_all(step, tags, values):
                def write_one(i):
                    tf.summary.write(tags[i], values[i], metadata=plugin_metadata)
                    return i + 1
                with writer.as_default(step=step):
                    tf.while_loop(lambda i: i < tf.size(tags), write_one, [tf.constant(0)])
            signature = [tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.string),
                         tf.TensorSpec([None], tf.float32)]
            self._scalar_write = tf.function(write_all, input_signature=signature, autograph=False)
        self._scalar_write(tf.constant(int(step), tf.int64), tf.constant([prefix + name for name in scalars], tf.string),
                           tf.constant([float(v) for v in scalars.values()], tf.float32))

    def log_image(self, step, name, png_bytes):
        import tensorflow as tf
        image = tf.io.decode_png(png_bytes, channels=4)[tf.newaxis]
        with self.writer.as_default(step=int(step)):
            tf.summary.image(name, image)

    def flush(self):
        if self._writer is not None:
            self._writer.flush()

    # ------------------------------------------------------------------ checkpoints

    def keep_policy(self):
        """(number of last checkpoints kept, whether the best is kept) from --keep-checkpoints."""
        return keep_policy(getattr(self.config, "keep_checkpoints", "last,best"))

    def checkpoint_manager(self, checkpoint, max_to_keep=None):
        """A CheckpointWriter in RUN_DIR/checkpoints keeping --keep-checkpoints' last ones."""
        self._note_created("checkpoints")
        keep_last, _ = self.keep_policy()
        return CheckpointWriter(checkpoint, self.path("checkpoints"), max_to_keep=max_to_keep or keep_last)

    def has_checkpoints(self):
        return bool(checkpoint_candidates(self.checkpoint_source))

    def save_checkpoint(self, manager, number, score=None):
        """Writes checkpoint `number` with `manager`; with `score` (higher is better, e.g. the
        epoch's mean mAP) and 'best' in --keep-checkpoints, a checkpoint that beats every earlier
        score is also written to checkpoints/best/ (its score in checkpoints/best/score.json).
        Returns the path written."""
        try:
            path = manager.save(checkpoint_number=number)
            _, keep_best = self.keep_policy()
            if score is not None and keep_best and math.isfinite(float(score)):
                best = self.best_checkpoint()
                if best is None or float(score) > best[1]:
                    best_dir = self.path("checkpoints", "best")
                    best_path = manager.beside(best_dir, max_to_keep=1).save(checkpoint_number=number)
                    io.save_json(os.path.join(best_dir, "score.json"),
                                 {"score": float(score), "checkpoint": os.path.basename(best_path)})
        except WriteFailed as error:
            raise WriteFailed(f"{error}; then continue with: python train.py --resume {self.dir}") from None
        return path

    def best_checkpoint(self):
        """(path, score) of checkpoints/best/, or None."""
        import tensorflow as tf
        best_dir = self.path("checkpoints", "best")
        path = tf.train.latest_checkpoint(best_dir) if os.path.isdir(best_dir) else None
        score_path = os.path.join(best_dir, "score.json")
        if path is None or not os.path.exists(score_path):
            return None
        return path, float(io.load_json(score_path)["score"])

    def restore_latest(self, checkpoint):
        """Restores the newest readable checkpoint, if any (saying so when a newer one is
        corrupt); returns its path or None. TensorBoard events logged after that checkpoint was
        written (the lost part of an interrupted epoch) are dropped, so that resuming does not
        log those steps twice."""
        restored = restore_latest(self.checkpoint_source, checkpoint)
        if restored:
            drop_events_after(self.path("tb"), os.path.getmtime(restored + ".index"), keep_files=self._own_event_files)
        return restored

    def export_codes(self, arrays):
        self._note_created("codes.mat")
        io.save_mat(self.path("codes.mat"), arrays)

    def save_results(self, results):
        self._note_created("results.json")
        io.save_json(self.path("results.json"), results)


class WorkerRun(Run):
    """A non-chief worker's side of a multiworker run. tf.distribute has every worker run the
    same saves (checkpoints, summaries) as the chief; this worker writes them to a temporary
    folder of its own, removed when it closes, so the chief alone writes the run folder (also
    when all workers share it on one filesystem). Resuming, it reads the chief's checkpoints
    and its config.json and results.json, and writes nothing there."""

    def __init__(self, method, config, task_index, chief_dir=""):
        import shutil
        import tempfile
        folder = tempfile.mkdtemp(prefix=f"advhash-worker{task_index}-")
        super().__init__(folder, method, config, created=True)
        self.chief_dir = os.fspath(chief_dir)
        if chief_dir:
            self.checkpoint_source = self.chief_dir
            for name in ("config.json", "results.json"):
                if os.path.exists(os.path.join(chief_dir, name)):
                    shutil.copyfile(os.path.join(chief_dir, name), self.path(name))
        else:
            io.save_json(self.path("config.json"), {"method": method, "config": dataclasses.asdict(config)})

    def close(self):
        import shutil
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self):
        self.close()


def hparam_values(settings):
    """Settings as HParams values: numbers, strings and booleans as they are, anything else
    (tuples, None) as its text."""
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value)
            for name, value in settings.items()}


def keep_policy(text):
    """'last' -> (1, False), 'last,best' -> (1, True), 'N' -> (N, False)."""
    text = str(text).strip().lower()
    if text.isdigit() and int(text) > 0:
        return int(text), False
    parts = {part.strip() for part in text.split(",") if part.strip()}
    if parts in ({"last"}, {"last", "best"}):
        return 1, "best" in parts
    raise UserError(f"--keep-checkpoints {text!r} is not understood; give 'last', 'last,best' or a "
                    f"number of last checkpoints")


def drop_events_after(tb_dir, wall_time, keep_files=()):
    """Rewrites the TensorBoard event files in `tb_dir` without the training events written
    after `wall_time` (seconds since the epoch): the lost part of an interrupted run, which the
    resumed run logs again. Files in `keep_files` (those a live writer of this process holds)
    are never touched, and eval.py's plots (images) are not training events: they stay.
    A file cut short by a kill keeps its complete records."""
    if not os.path.isdir(tb_dir):
        return
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    dropped_total = 0
    for name in sorted(os.listdir(tb_dir)):
        path = os.path.join(tb_dir, name)
        if "tfevents" not in name or not os.path.isfile(path) or name in keep_files:
            continue
        kept, dropped, cut = [], 0, False
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                if event.wall_time > wall_time and _is_training_event(event):
                    dropped += 1
                else:
                    kept.append(record.numpy())
        except tf.errors.DataLossError:  # a last record cut short by a kill
            cut = True
        if dropped or cut:
            dropped_total += dropped
            with io.atomic_path(path) as tmp:
                with tf.io.TFRecordWriter(tmp) as writer:
                    for record in kept:
                        writer.write(record)
    if dropped_total:
        print(f"TensorBoard: dropped {dropped_total} events logged after the restored checkpoint", flush=True)


def _is_training_event(event):
    """A summary a training run logs; images are eval.py's plots (Run.log_image), not training's."""
    return event.HasField("summary") and not any(value.metadata.plugin_data.plugin_name == "images"
                                                 for value in event.summary.value)


def saved_config(run_dir, config_classes):
    """(method, Config) of a run folder from RUN_DIR/config.json; `config_classes` maps
    method name -> its Config class. Opens no TensorBoard writer (for read-only uses)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{run_dir} is not a run folder (no config.json); "
                        f"give the folder that train.py printed")
    saved = io.load_json(path)
    method = saved.get("method")
    if method not in config_classes:
        raise UserError(f"{path} names method {method!r}, expected {' or '.join(sorted(config_classes))}; "
                        f"give a run folder of that method")
    return method, config_from_dict(config_classes[method], saved["config"])


class CheckpointWriter:
    """Saves a tf.train.Checkpoint as tf.train.CheckpointManager does (DIRECTORY/ckpt-N.index
    and .data-*, the `checkpoint` state file with relative paths, only the last `max_to_keep`
    kept; save_counter counted), through one compiled write. TensorFlow's eager save walks and
    serialises the whole object graph at every save (~25 ms for ACMR's networks and optimisers,
    a third of a Wikipedia epoch); the compiled write does it once, when traced, and is traced
    again only when the objects reachable from the checkpoint change (e.g. an optimiser's slots
    made after the last save), so no variable is ever left out."""

    def __init__(self, checkpoint, directory, max_to_keep=1, _shared=None):
        import tensorflow as tf
        self.checkpoint = checkpoint
        self.directory = os.fspath(directory)
        self.max_to_keep = int(max_to_keep)
        checkpoint.save_counter  # made now (lazily it would be made inside the traced write)
        self._compiled = _shared if _shared is not None else {"write": None, "reachable": None,
                                                              "view": tf.train.TrackableView(checkpoint)}

    def beside(self, directory, max_to_keep=1):
        """A writer of the same checkpoint into another folder, sharing the compiled write."""
        return CheckpointWriter(self.checkpoint, directory, max_to_keep, _shared=self._compiled)

    def _write(self):
        import tensorflow as tf
        compiled = self._compiled
        reachable = [id(obj) for obj in compiled["view"].descendants()]
        if compiled["write"] is None or reachable != compiled["reachable"]:
            checkpoint = self.checkpoint
            compiled["write"] = tf.function(lambda prefix: checkpoint.write(prefix), autograph=False)
            compiled["reachable"] = reachable
        return compiled["write"]

    def kept(self):
        """Prefixes of the checkpoints in the folder, oldest first (from the files themselves)."""
        return [prefix for number, prefix in _numbered_checkpoints(self.directory)]

    def save(self, checkpoint_number):
        """Writes DIRECTORY/ckpt-N (TensorFlow writes temporary files and renames them), reads
        it back, then writes the state file naming it, and only then removes the checkpoints
        beyond max_to_keep: the last good checkpoint is never deleted before a newer one is
        written and verified. A failed write (disk full, no permission, unreadable result)
        removes its partial files, leaves the state file and the older checkpoints as they were
        and raises WriteFailed. Returns the prefix written."""
        import tensorflow as tf
        os.makedirs(self.directory, exist_ok=True)
        prefix = os.path.join(self.directory, f"ckpt-{int(checkpoint_number)}")
        previous = [p for p in self.kept() if p != prefix]
        found = set(_checkpoint_files(prefix))
        self.checkpoint.save_counter.assign_add(1)
        try:
            self._write()(tf.constant(prefix))  # a tensor: a Python string would be traced anew per prefix
            verify_checkpoint(prefix)
            kept = previous + [prefix]
            dropped, kept = kept[:-self.max_to_keep], kept[-self.max_to_keep:]
            names = [os.path.basename(p) for p in kept]
            state = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
            with io.atomic_path(os.path.join(self.directory, "checkpoint")) as tmp:
                with open(tmp, "w") as f:
                    f.write("\n".join(state) + "\n")
        except (tf.errors.OpError, OSError, UnreadableCheckpoint) as error:
            self.checkpoint.save_counter.assign_add(-1)
            for path in _checkpoint_files(prefix):
                if path not in found:
                    _remove(path)
            latest = f"the latest checkpoint is still {previous[-1]}" if previous else "there is no checkpoint yet"
            raise WriteFailed(f"cannot write the checkpoint {prefix} ({error_cause(error)}); its partial files "
                              f"are removed and {latest}: free space or fix the permissions in "
                              f"{self.directory}") from None
        for old in dropped:
            for path in _checkpoint_files(old):
                _remove(path)
        return prefix


def _checkpoint_files(prefix):
    """The files of checkpoint `prefix` (.index, .data-*) and TensorFlow's temporary ones (PREFIX_temp*)."""
    import glob
    return glob.glob(glob.escape(prefix) + ".*") + glob.glob(glob.escape(prefix) + "_temp*")


def _remove(path):
    import shutil
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def verify_checkpoint(prefix):
    """Reads every tensor of checkpoint `prefix` back (TensorFlow checks each one's checksum);
    raises TensorFlow's error when one is missing, cut short or damaged."""
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # TensorFlow raises several types (OpError, IndexError, ...)
        raise UnreadableCheckpoint(f"{prefix} does not read back: {error_cause(error)}") from None


class UnreadableCheckpoint(Exception):
    """A checkpoint whose files are missing, cut short or damaged."""


def error_cause(error):
    """The cause of an OSError or a TensorFlow error in a few words (its first line, without
    TensorFlow's hints)."""
    known = storage_cause(error)
    if known:
        return known
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = (getattr(error, "message", None) or str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 200 else first[:200] + "..."


def _numbered_checkpoints(folder):
    """(number, prefix) of the ckpt-N checkpoints in `folder` (their .index files), by number."""
    import glob
    import re
    numbered = []
    for index in glob.glob(os.path.join(glob.escape(folder), "*.index")):
        match = re.search(r"-(\d+)\.index$", index)
        numbered.append((int(match.group(1)) if match else -1, index[:-len(".index")]))
    return sorted(numbered)


def checkpoint_candidates(run_dir):
    """Checkpoint prefixes in RUN_DIR/checkpoints, newest (highest number) first, then
    checkpoints/best/'s. Found from the files themselves, so a damaged `checkpoint` state file
    does not hide them."""
    found = []
    for folder in (os.path.join(run_dir, "checkpoints"), os.path.join(run_dir, "checkpoints", "best")):
        found += [prefix for _, prefix in reversed(_numbered_checkpoints(folder))]
    return found


def readable_checkpoint(run_dir):
    """The checkpoint restore_latest would restore: the newest whose every tensor reads, or None."""
    for path in checkpoint_candidates(run_dir):
        try:
            verify_checkpoint(path)
        except Exception:  # TensorFlow raises several types for corrupt or missing files
            continue
        return path
    return None


def restore_latest(run_dir, checkpoint):
    """Restores RUN_DIR/checkpoints' newest readable checkpoint into `checkpoint`, if any;
    returns its path or None. A corrupt or truncated newer one is skipped with a message; none
    readable is a one-line error."""
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            verify_checkpoint(path)  # every tensor readable: a partial restore would mix two checkpoints
            checkpoint.restore(path).expect_partial()
        except Exception as error:  # TensorFlow raises several types for corrupt, missing or mismatched files
            problems.append((path, error_cause(error)))
            continue
        if problems:
            unreadable = ", ".join(os.path.basename(p) for p, _ in problems)
            print(f"cannot read checkpoint {problems[0][0]} ({problems[0][1]}); restored the older "
                  f"{path} (unreadable: {unreadable})", flush=True)
        return path
    raise UserError(f"no readable checkpoint in {os.path.join(run_dir, 'checkpoints')} (newest: "
                    f"{problems[0][0]}: {problems[0][1]}); the checkpoints are corrupt or from a different model shape: "
                    f"start a new run")


def restore_trained(run_dir, checkpoint):
    """restore_latest for using a trained run (encoding new items): no checkpoint is an error."""
    if restore_latest(run_dir, checkpoint) is None:
        raise UserError(f"{run_dir} has no checkpoint yet; train it first (train.py --resume {run_dir})")


def item_rows(inputs, item_shape, what):
    """`inputs` as rows of items shaped `item_shape` (a single item gets a leading axis); a
    one-line error naming `what` when they are shaped otherwise or hold a non-finite value."""
    inputs = np.asarray(inputs)
    item_shape = tuple(item_shape)
    if inputs.ndim == len(item_shape):
        inputs = inputs[None]
    if tuple(inputs.shape[1:]) != item_shape:
        raise UserError(f"{what} of shape {tuple(inputs.shape[1:])} per item, but the run was trained on "
                        f"{item_shape}; give {what} shaped like the run's data")
    from utils.data.validate import check_finite
    check_finite(inputs, what)  # a NaN would otherwise give an all -1 code without a word
    return inputs


_active_log = None  # RUN_DIR/train.log of the run in progress (Run.start_log)


# ----------------------------------------------------------------------------- finished runs

def finished_length(run, length_field):
    """For a finished run, {length_field: the configured length, "trained": the length trained
    (they differ when the configured value means "the program's default")}; else None."""
    if not os.path.exists(run.path("results.json")):
        return None
    results = io.load_json(run.path("results.json"))
    if "final" not in results:
        return None
    completed = results.get("completed") or _completed_before_marker(run, results, length_field)
    return completed if completed and length_field in completed else None


def _completed_before_marker(run, results, length_field):
    """The length a run finished before train.py marked completion was for, read from the
    figures each method writes at its end (SSAH: the final epoch; ACMR: its settings; METAH:
    its iteration count)."""
    length = getattr(run.config, length_field)
    trained = {"ssah": results["final"].get("epoch"), "acmr": results.get("settings", {}).get("epochs"),
               "metah": results.get("iterations")}.get(run.method)
    if trained is not None and length in (trained, 0):  # ACMR's 0: the program's length
        return {length_field: length, "trained": trained}
    return None


def mark_completed(run, length_field, length):
    """Records in results.json the length its final figures are for (how --resume tells a finished run)."""
    path = run.path("results.json")
    if os.path.exists(path):
        results = io.load_json(path)
        if "final" in results:
            trained = results.get("settings", {}).get(length_field) or length
            results["completed"] = {length_field: length, "trained": trained}
            run.save_results(results)


def _append_log(path, message):
    with open(path, "a") as f:
        f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}\n")


class _Tee:
    """A stdout that also appends each complete line to a log file."""

    def __init__(self, stream, path):
        self.stream, self.logs_to, self.pending = stream, path, ""

    def write(self, text):
        self.stream.write(text)
        self.pending += text
        if "\n" in self.pending:
            lines, self.pending = self.pending.rsplit("\n", 1)
            for line in lines.split("\n"):
                _append_log(self.logs_to, line)
        return len(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_stdout(path):
    """What the run prints goes to RUN_DIR/train.log too."""
    original = sys.stdout
    sys.stdout = _Tee(original, path)
    try:
        yield
    finally:
        sys.stdout = original


SHORT_LOOP = 100  # progress totals up to this get a plain line per step


class _Progress:
    """tqdm on a terminal; otherwise (and always into the run's train.log) one plain line per
    tenth of the total (per step of a short loop) and at the end, and the lines given to
    `note`, so a log shows progress without carriage returns."""

    def __init__(self, iterable, total, desc, initial=0, line_per_step=True, **kwargs):
        from tqdm.auto import tqdm
        self.iterable = iterable
        self.line_per_step = line_per_step  # False: per tenth even in a short loop (a bar over updates)
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc = desc or "progress"
        self.count = initial
        self.start = time.monotonic()
        self.plain = not sys.stdout.isatty()
        self.last_tenth = self._tenth()
        self.bar = tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                        disable=None if not self.plain else True, **kwargs)
        self.postfix = ""

    def _tenth(self):
        """The bucket a plain line is printed per: a tenth of the total, or each step of a
        short loop (an ACMR epoch bar: one line per epoch)."""
        if self.line_per_step and self.total and self.total <= SHORT_LOOP:
            return self.count
        return int(10 * self.count / self.total) if self.total else 0

    def _line(self, force=False):
        tenth = self._tenth()
        if tenth == self.last_tenth and not force:
            return
        self.last_tenth = tenth
        total = f"/{self.total}" if self.total else ""
        self._plain_line(f"{self.desc}: {self.count}{total} ({time.monotonic() - self.start:.0f} s){self.postfix}")

    def note(self, text):
        """A plain line about where the work is (e.g. one per training pass), in the same places
        as the progress lines: stdout when it is not a terminal, and the run's train.log."""
        self._plain_line(f"{self.desc}: {text}")

    def _plain_line(self, line):
        if self.plain:
            print(line, flush=True)
        if _active_log and not (self.plain and getattr(sys.stdout, "logs_to", None) == _active_log):
            _append_log(_active_log, line)  # (a plain line printed into train.py's tee is logged already)

    def __iter__(self):
        for item in self.bar:
            yield item
            self.count += 1
            self._line()
        self._line(force=self.total is None)

    def update(self, n=1):
        self.bar.update(n)
        self.count += n
        self._line()

    def set_postfix(self, **values):
        self.bar.set_postfix(**values)
        self.postfix = " " + ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def progress(iterable=None, total=None, desc=None, **kwargs):
    """A progress bar: tqdm on a terminal; when stdout is not a terminal, a plain line per tenth
    of the total (per step of a loop of up to SHORT_LOOP steps unless line_per_step=False);
    every such line also goes to the active run's train.log."""
    return _Progress(iterable, total, desc, **kwargs)
