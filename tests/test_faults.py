"""What happens when things go wrong (issue 24): TensorBoard after a resume, failed writes,
unreadable inputs, stale locks, corrupt checkpoints, unfinished or trivial evaluations and
collapsed codes. Each case is one small run or one call, on tiny data."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import after_update
from tests.test_acmr import write_wiki_pickles
from utils import io
from utils.errors import UserError


class Killed(BaseException):
    """Stands for a kill in the middle of training (not an Exception: nothing may catch it)."""


def acmr_argv(tmp_path, name, *extra):
    return ["--method", "acmr", "--dataset", "wiki-pickle", "--data", str(tmp_path), "--batch-size", "16",
            "--log-every", "1", "--runs-dir", str(tmp_path / "runs"), "--run-name", name, *extra]


def scalar_steps(run_dir):
    """{tag: [(step, value)]} of every scalar in RUN_DIR/tb, in file order."""
    from tensorflow.core.util import event_pb2
    found = {}
    folder = os.path.join(run_dir, "tb")
    for name in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return found


def assert_same_scalars(run_dir, reference_dir):
    """Every scalar tag of the reference run at every one of its steps exactly once, with its value."""
    logged, reference = scalar_steps(run_dir), scalar_steps(reference_dir)
    assert sorted(logged) == sorted(reference)
    for tag, entries in reference.items():
        assert sorted(step for step, _ in logged[tag]) == sorted(step for step, _ in entries), tag
        np.testing.assert_allclose(sorted(logged[tag]), sorted(entries), rtol=1e-5, err_msg=tag)


def test_tensorboard_after_a_resume_holds_every_step_once(tmp_path, monkeypatch):
    import train
    write_wiki_pickles(str(tmp_path), n_train=64, n_test=40)
    train.main(acmr_argv(tmp_path, "reference", "--epochs", "2"))
    reference = str(tmp_path / "runs" / "reference")

    # Killed in epoch 2 (updates 5-8) after the count checkpoint at update 5 and the logged update 6.
    after_update(monkeypatch, 7, lambda: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        train.main(acmr_argv(tmp_path, "killed", "--epochs", "2", "--checkpoint-every", "5"))
    monkeypatch.undo()
    killed = str(tmp_path / "runs" / "killed")
    assert 6 in [step for step, _ in scalar_steps(killed)["loss/projector/total"]]  # the part the resume redoes
    train.main(["--resume", killed])
    assert_same_scalars(killed, reference)

    train.main(acmr_argv(tmp_path, "extended", "--epochs", "1"))
    extended = str(tmp_path / "runs" / "extended")
    train.main(["--resume", extended, "--epochs", "2"])
    assert_same_scalars(extended, reference)
