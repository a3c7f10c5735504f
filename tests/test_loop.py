"""The shared training loop (trainers/loop.py) with a toy method whose every number is known:
loss sums on the device read once per log interval, the NaN guard at those reads, keep-best by
validation mAP only, chunks of updates that stop at log reads and count-based checkpoints."""
import os

import numpy as np
import pytest
import tensorflow as tf

from trainers.loop import Evaluation, LossMeter, Method, TrainingLoop
from utils.config import CommonConfig
from utils.run import NonFiniteLoss, Run


class Toy(Method):
    """Units of `per_unit` updates; update i (from 1) adds values[i - 1] to a variable and its meter.
    Evaluations give query mAP `maps[unit]` and validation mAP `validations[unit]`."""

    name = "toy"

    def __init__(self, values, per_unit, log_every, maps=None, validations=None):
        self.values = tf.constant(np.asarray(values, np.float32))
        self.units, self.per_unit, self.log_every = len(values) // per_unit, per_unit, log_every
        self.maps, self.validations = maps, validations
        self.total = tf.Variable(0.0)
        self.meters = [LossMeter("toy", {"value": "loss/toy/value"})]
        self.calls = []
        self.step = tf.function(self._updates)

    def _updates(self, first, count):
        for i in tf.range(count):
            value = self.values[first + i]
            self.total.assign_add(value)
            self.meters[0].add({"value": value})

    def unit_updates(self, unit):
        return self.per_unit

    def checkpoint_objects(self):
        return {"total": self.total}

    def train_unit(self, unit, first, loop):
        stop = (unit + 1) * self.per_unit
        while loop.updates < stop:
            count = loop.chunk_size(stop - loop.updates)
            self.calls.append(count)
            self.step(tf.constant(loop.updates), tf.constant(count))
            loop.updates_done(count)
        return {"unit": unit + 1}

    def evaluate(self, units_done, final):
        index = units_done - 1
        validation = None if self.validations is None else self.validations[index]
        return Evaluation({"map": self.maps[index]}, maps={"a->b": self.maps[index]}, validation=validation)


def toy_run(tmp_path, name, **config):
    return Run.create("toy", CommonConfig(runs_dir=str(tmp_path), run_name=name, **config))


def test_losses_are_read_once_per_log_interval_and_unit_means_are_exact(tmp_path, monkeypatch):
    values = np.arange(1, 13, dtype=np.float64) / 8  # exact in float32
    toy = Toy(values, per_unit=6, log_every=4, maps=[0.1, 0.2])
    reads = []
    real_means = LossMeter._means
    monkeypatch.setattr(LossMeter, "_means", lambda self, v, reset: reads.append(v.name) or real_means(self, v, reset))
    run = toy_run(tmp_path, "toy")
    logged = {}
    monkeypatch.setattr(run, "log_scalars", lambda step, scalars, prefix="": logged.setdefault(step, {}).update(scalars))
    results = TrainingLoop(toy, run).run()
    run.close()
    # Chunks end at log reads (4, 8, 12) and unit ends (6, 12): one compiled call per chunk.
    assert toy.calls == [4, 2, 2, 4]
    assert sum("interval" in name for name in reads) == 3  # one interval read per log_every updates
    assert logged[4]["loss/toy/value"] == pytest.approx(values[:4].mean())
    assert logged[8]["loss/toy/value"] == pytest.approx(values[4:8].mean())
    assert [r["losses"]["value"] for r in results["epochs"]] == [values[:6].mean(), values[6:].mean()]
    assert logged[6]["mAP/a->b"] == 0.1 and logged[12]["mAP/a->b"] == 0.2  # x axis: updates
    assert results["iterations"] == 12 and float(toy.total.numpy()) == values.sum()


def test_a_nan_stops_at_the_next_read_and_no_checkpoint_holds_it(tmp_path):
    values = np.ones(12)
    values[6] = np.nan  # update 7, in the second unit
    run = toy_run(tmp_path, "nan", checkpoint_every=0)
    with pytest.raises(NonFiniteLoss, match=r"'value' became nan in the toy training \(updates up to 8\)"):
        TrainingLoop(Toy(values, per_unit=4, log_every=2, maps=[0.1] * 3), run).run()
    run.close()
    assert os.path.basename(tf.train.latest_checkpoint(run.path("checkpoints"))) == "ckpt-4"


def test_the_best_checkpoint_follows_validation_map_never_the_query_map(tmp_path, capsys):
    run = toy_run(tmp_path, "best")
    # Query mAP peaks at unit 3, validation mAP at unit 2: the kept best is unit 2's (update 8).
    TrainingLoop(Toy(np.ones(16), per_unit=4, log_every=4, maps=[0.1, 0.2, 0.9, 0.3],
                     validations=[0.3, 0.6, 0.5, 0.4]), run).run()
    run.close()
    path, score = run.best_checkpoint()
    assert os.path.basename(path) == "ckpt-8" and score == 0.6
    assert "no validation part" not in capsys.readouterr().out

    run = toy_run(tmp_path, "no-validation")
    TrainingLoop(Toy(np.ones(16), per_unit=4, log_every=4, maps=[0.1, 0.2, 0.9, 0.3]), run).run()
    run.close()
    assert run.best_checkpoint() is None
    assert capsys.readouterr().out.count("no validation part: only the last checkpoint is kept") == 1


def test_chunks_stop_at_count_based_checkpoints_and_a_resumed_run_continues_the_sums(tmp_path):
    values = np.arange(12, dtype=np.float64)
    toy = Toy(values, per_unit=6, log_every=5)
    toy.maps = [0.1, 0.2]
    run = toy_run(tmp_path, "every", checkpoint_every=4, keep_checkpoints="10")
    TrainingLoop(toy, run, checkpoint_every=4).run()
    run.close()
    assert toy.calls == [4, 1, 1, 2, 2, 2]  # ends at 4, 5 (log), 6 (unit), 8, 10 (log), 12
    kept = tf.train.get_checkpoint_state(run.path("checkpoints")).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in kept] == ["ckpt-4", "ckpt-6", "ckpt-8", "ckpt-12"]
    # Restore the mid-unit checkpoint at 8 and finish: the second unit's mean covers all its updates.
    os.remove(run.path("checkpoints", "checkpoint"))
    for name in os.listdir(run.path("checkpoints")):
        if name.startswith("ckpt-12"):
            os.remove(run.path("checkpoints", name))
    again = Toy(values, per_unit=6, log_every=5, maps=[0.1, 0.2])
    resumed_run = Run.open(run.dir, {"toy": CommonConfig})
    results = TrainingLoop(again, resumed_run, resume=True, checkpoint_every=4).run()
    resumed_run.close()
    assert again.calls == [2, 2]  # updates 9-10 (log at 10), 11-12
    assert results["epochs"][-1]["losses"]["value"] == values[6:].mean()
    assert float(again.total.numpy()) == values.sum()
