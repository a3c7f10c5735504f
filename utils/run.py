"""One run folder per training run: config, TensorBoard, checkpoints, results.

Layout of RUN_DIR:
  config.json     the full config and the method's name (written at creation)
  tb/             TensorBoard event files
  checkpoints/    tf.train.CheckpointManager output
  codes.mat       exported codes or embeddings (fields per method, see utils.exports)
  results.json    final and per-epoch figures
"""
import dataclasses
import datetime
import math
import os
import random
import signal
import threading
import time

import numpy as np

from utils import io
from utils.config import config_from_dict
from utils.errors import UserError


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


class Run:
    """A run folder with its TensorBoard writer and checkpoint helper."""

    def __init__(self, run_dir, method, config):
        import tensorflow as tf
        self.dir = os.fspath(run_dir)
        self.method = method
        self.config = config
        self.writer = tf.summary.create_file_writer(os.path.join(self.dir, "tb"))

    @classmethod
    def create(cls, method, config):
        name = config.run_name or "{}-{}-{}b-{}".format(
            method, config.dataset, config.bits, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        run_dir = os.path.join(config.runs_dir, name)
        if os.path.exists(os.path.join(run_dir, "config.json")):
            raise UserError(f"run folder {run_dir} already holds a run; pick another --run-name "
                            f"or continue it with --resume {run_dir}")
        os.makedirs(run_dir, exist_ok=True)
        io.save_json(os.path.join(run_dir, "config.json"),
                     {"method": method, "config": dataclasses.asdict(config)})
        return cls(run_dir, method, config)

    @classmethod
    def open(cls, run_dir, config_classes):
        """Reopens a run folder; `config_classes` maps method name -> its Config class."""
        return cls(run_dir, *saved_config(run_dir, config_classes))

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def log_scalars(self, step, scalars, prefix=""):
        import tensorflow as tf
        with self.writer.as_default(step=int(step)):
            for name, value in scalars.items():
                tf.summary.scalar(prefix + name, float(value))

    def log_image(self, step, name, png_bytes):
        import tensorflow as tf
        image = tf.io.decode_png(png_bytes, channels=4)[tf.newaxis]
        with self.writer.as_default(step=int(step)):
            tf.summary.image(name, image)

    def flush(self):
        self.writer.flush()

    def checkpoint_manager(self, checkpoint, max_to_keep=3):
        """A CheckpointManager in RUN_DIR/checkpoints; TensorFlow writes and renames atomically."""
        import tensorflow as tf
        return tf.train.CheckpointManager(checkpoint, self.path("checkpoints"), max_to_keep=max_to_keep)

    def restore_latest(self, checkpoint):
        """Restores the newest checkpoint, if any; returns its path or None."""
        return restore_latest(self.dir, checkpoint)

    def export_codes(self, arrays):
        io.save_mat(self.path("codes.mat"), arrays)

    def save_results(self, results):
        io.save_json(self.path("results.json"), results)


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


def restore_latest(run_dir, checkpoint):
    """Restores RUN_DIR/checkpoints' newest checkpoint into `checkpoint`, if any; returns its path or None."""
    import tensorflow as tf
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if latest is None:
        return None
    try:
        checkpoint.restore(latest).expect_partial()
    except Exception as error:  # TensorFlow raises several types for corrupt or mismatched files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot restore {latest}: {first_line}; the checkpoint "
                        f"is corrupt or from a different model shape: start a new run") from None
    return latest


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


def progress(iterable=None, total=None, desc=None, **kwargs):
    """A tqdm progress bar that stays quiet when output is not a terminal (CI logs)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=None, **kwargs)
