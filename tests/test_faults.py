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


@pytest.fixture(scope="module")
def one_epoch_acmr_run(tmp_path_factory):
    """The folder of a finished 1-epoch ACMR run (4 updates) on wiki pickles of 64 + 40 items, its
    data beside it: trained once; the tests that extend it work on copies."""
    import train
    folder = tmp_path_factory.mktemp("acmr-one-epoch")
    write_wiki_pickles(str(folder), n_train=64, n_test=40)
    train.main(acmr_argv(folder, "one", "--epochs", "1"))
    return folder / "runs" / "one"


def copy_run(run_dir, folder):
    import shutil
    shutil.copytree(run_dir, folder)  # the checkpoint state file's paths are relative
    return folder


@pytest.mark.slow
def test_tensorboard_after_a_resume_holds_every_step_once(tmp_path, monkeypatch, one_epoch_acmr_run):
    import train
    write_wiki_pickles(str(tmp_path), n_train=64, n_test=40)  # the same data as the 1-epoch run's
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

    extended = str(copy_run(one_epoch_acmr_run, tmp_path / "runs" / "extended"))  # a 1-epoch run, extended
    train.main(["--resume", extended, "--epochs", "2"])
    assert_same_scalars(extended, reference)


@pytest.mark.slow
def test_a_resume_keeps_eval_plots_and_never_rewrites_its_own_event_file(tmp_path):
    import time

    from tensorflow.core.util import event_pb2

    from tests.test_infra import ToyConfig
    from utils.run import Run
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    run.log_scalars(1, {"loss": 1.0}, prefix="lab/")
    run.save_checkpoint(run.checkpoint_manager(checkpoint), 1)
    time.sleep(0.05)
    run.log_scalars(2, {"loss": 2.0}, prefix="lab/")  # lost by the kill: the resume logs it again
    run.close()
    plots = Run(run.dir, "toy", run.config)  # eval.py's plots, logged after the checkpoint
    plots.log_image(0, "eval/pr_curve", tf.io.encode_png(tf.zeros([4, 4, 4], tf.uint8)).numpy())
    plots.close()
    resumed = Run.open(run.dir, {"toy": ToyConfig})
    resumed.log_config()  # the resumed process's writer is open before the restore (train.py's order)
    assert resumed.restore_latest(checkpoint) is not None
    resumed.log_scalars(2, {"loss": 20.0}, prefix="lab/")
    resumed.close()
    tags = []
    for name in sorted(os.listdir(run.path("tb"))):
        for record in tf.data.TFRecordDataset(run.path("tb", name)):
            event = event_pb2.Event.FromString(record.numpy())
            tags += [(value.tag, event.step) for value in event.summary.value]
    assert sorted(t for t in tags if t[0] == "lab/loss") == [("lab/loss", 1), ("lab/loss", 2)]
    assert ("eval/pr_curve", 0) in tags and ("config", 0) in tags  # the plot kept; the resumed header too
    assert scalar_steps(run.dir)["lab/loss"][-1] == (2, 20.0)


def fail_checkpoint_write(monkeypatch, at_write, partial=True):
    """The `at_write`-th checkpoint write (from 1) fails as a full disk does, after leaving
    partial files as TensorFlow does; returns {"time": when it failed}."""
    from utils.run import CheckpointWriter
    real_write, calls, failed = CheckpointWriter._write, {"n": 0}, {}

    def write(self):
        compiled = real_write(self)

        def writing(prefix):
            calls["n"] += 1
            if calls["n"] != at_write:
                return compiled(prefix)
            prefix = prefix.numpy().decode()
            if partial:
                os.makedirs(prefix + "_temp")
                with open(os.path.join(prefix + "_temp", "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
                    f.write(b"\0" * 100)
            failed["time"] = os.stat(os.path.dirname(prefix)).st_mtime
            raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}_temp/part-00000-of-00001.data-00000-of-00001;"
                                                   f" No space left on device\n\tIf you want to see a list of ...")
        return writing
    monkeypatch.setattr(CheckpointWriter, "_write", write)
    return failed


def ssah_argv(runs_dir, name, *extra):
    return ["--method", "ssah", "--schedule", "tiny", "--bits", "8", "--embed-dim", "16", "--hidden-dim", "32",
            "--discriminator-hidden", "16,16", "--runs-dir", str(runs_dir), "--run-name", name, *extra]


@pytest.mark.slow
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_writes_nothing_after_it(tmp_path, monkeypatch, capsys):
    """A failed FIRST checkpoint write leaves no results and the run resumable; resumed, a failed
    later write (epoch 2's) keeps the previous checkpoint (epoch 1's) and writes nothing after it;
    resumed again, the run ends. (One run through both failures: each train.main costs seconds.)"""
    import train
    from utils.errors import WriteFailed
    fail_checkpoint_write(monkeypatch, at_write=1)
    with pytest.raises(WriteFailed, match="there is no checkpoint yet"):
        train.main(ssah_argv(tmp_path, "r", "--epochs", "2"))
    run_dir = tmp_path / "r"
    assert os.listdir(run_dir / "checkpoints") == []
    assert not (run_dir / "codes.mat").exists() and not (run_dir / "results.json").exists()
    assert "error: cannot write the checkpoint" in (run_dir / "train.log").read_text()
    monkeypatch.undo()

    failed = fail_checkpoint_write(monkeypatch, at_write=2)  # the resumed run's epoch 2's
    with pytest.raises(WriteFailed) as caught:
        train.main(["--resume", str(run_dir)])  # no checkpoint: it trains from the start
    message = str(caught.value)
    assert "\n" not in message and str(run_dir / "checkpoints" / "ckpt-56") in message
    assert "No space left on device" in message and f"still {run_dir / 'checkpoints' / 'ckpt-28'}" in message
    assert f"--resume {run_dir}" in message and caught.value.exit_code == 74
    left = sorted(os.listdir(run_dir / "checkpoints"))
    assert left[0] == "checkpoint" and "ckpt-28.index" in left and all(n.startswith("ckpt-28.") for n in left[1:])
    assert 'model_checkpoint_path: "ckpt-28"' in (run_dir / "checkpoints" / "checkpoint").read_text()
    assert [r["epoch"] for r in io.load_json(run_dir / "results.json")["epochs"]] == [1]
    assert os.stat(run_dir / "codes.mat").st_mtime <= failed["time"]  # epoch 2's codes never exported
    monkeypatch.undo()
    capsys.readouterr()
    results = train.main(["--resume", str(run_dir)])
    assert "resumed from" in capsys.readouterr().out and results["final"]["epoch"] == 2


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (needs root and mount; skipped where not permitted)."""
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or 'not permitted'}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def fill(disk, leave_bytes):
    """Fills `disk` up to `leave_bytes` free with one file; returns its path."""
    stat = os.statvfs(disk)
    filler = os.path.join(disk, "filler")
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
    return filler


@pytest.mark.slow
def test_a_full_disk_ends_train_eval_and_resume_in_one_line_and_loses_nothing(small_disk, capsys, one_epoch_acmr_run):
    import eval as eval_cli
    import train
    from utils.errors import WriteFailed
    run_dir = copy_run(one_epoch_acmr_run, small_disk / "r")  # a finished 1-epoch run on the small disk
    filler = fill(small_disk, 200_000)  # less than a checkpoint
    with pytest.raises(WriteFailed, match=r"cannot write the checkpoint .*ckpt-8 \(No space left on device\)"):
        train.main(["--resume", str(run_dir), "--epochs", "2"])
    left = sorted(os.listdir(run_dir / "checkpoints"))
    assert all(name.startswith(("ckpt-4.", "checkpoint", "best")) for name in left), left  # no ckpt-8_temp
    assert 'model_checkpoint_path: "ckpt-4"' in (run_dir / "checkpoints" / "checkpoint").read_text()
    fill(small_disk, 0)
    with pytest.raises(WriteFailed, match=rf"cannot write {run_dir}.report.* \(No space left on device\)"):
        eval_cli.main([str(run_dir)])
    with pytest.raises(WriteFailed, match="No space left on device"):
        train.main(["--resume", str(run_dir), "--epochs", "2"])
    os.remove(filler)
    capsys.readouterr()
    assert train.main(["--resume", str(run_dir), "--epochs", "2"])["epochs"][-1]["epoch"] == 2
    assert "resumed from" in capsys.readouterr().out


def test_a_truncated_prepared_file_is_one_line_naming_it_and_leaves_no_run_folder(tmp_path):
    import train
    from tests.test_data import small_dcmh_arrays, write_dcmh_hdf5
    rng = np.random.RandomState(1)
    _, texts, labels = small_dcmh_arrays(40)
    path = tmp_path / "flickr.h5"
    write_dcmh_hdf5(str(path), rng.rand(40, 5).astype(np.float32), texts, labels)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match=rf"cannot read dataset file {path} \(truncated file.*copy or prepare it again"):
        train.main(["--method", "ssah", "--dataset", "flickr", "--data", str(path), "--split-sizes", "5,20",
                    "--backbone", "features", "--runs-dir", str(tmp_path / "runs"), "--run-name", "r"])
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_a_damaged_config_json_is_one_line_for_resume_and_eval(tmp_path):
    import eval as eval_cli
    import train
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"method": "ssah", "config": {"bits": 1')  # cut short
    for command in (lambda: train.main(["--resume", str(run_dir)]), lambda: eval_cli.main([str(run_dir)])):
        with pytest.raises(UserError, match=rf"cannot read {run_dir / 'config.json'}: it is not valid JSON"):
            command()


@pytest.mark.slow
def test_a_run_killed_in_its_last_epoch_is_evaluated_as_unfinished_and_resumes_past_missing_data(
        tmp_path, monkeypatch, capsys):
    import glob

    import eval as eval_cli
    import train
    after_update(monkeypatch, 50, lambda: (_ for _ in ()).throw(Killed()))  # in epoch 2 (updates 29-56)
    with pytest.raises(Killed):
        train.main(ssah_argv(tmp_path, "r", "--epochs", "2", "--checkpoint-every", "14", "--keep-checkpoints", "2"))
    monkeypatch.undo()
    capsys.readouterr()
    eval_cli.main([str(tmp_path / "r"), "--no-tensorboard"])
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'r'} is unfinished: its codes are from epoch 1 of 2" in out
    assert io.load_json(tmp_path / "r" / "report" / "report.json")["unfinished"] == {"done": 1, "of": 2,
                                                                                      "unit": "epoch"}
    folder = tmp_path / "r" / "checkpoints"
    assert sorted(n for n in os.listdir(folder) if n.endswith(".index")) == ["ckpt-28.index", "ckpt-42.index"]
    for path in glob.glob(str(folder / "ckpt-42.data-*")):
        os.remove(path)
    capsys.readouterr()
    results = train.main(["--resume", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert f"cannot read checkpoint {folder / 'ckpt-42'}" in out and f"restored the older {folder / 'ckpt-28'}" in out
    assert results["final"]["epoch"] == 2
    for path in glob.glob(str(folder / "*.data-*")):
        os.remove(path)
    (tmp_path / "r" / "results.json").unlink()  # an unfinished run again, with no checkpoint data at all
    with pytest.raises(UserError, match="no readable checkpoint in"):
        train.main(["--resume", str(tmp_path / "r")])


@pytest.mark.parametrize("content", ["", "{not json", '{"host": "%s"}', '{"pid": %d, "host": "%s"}'])
def test_an_empty_unreadable_or_dead_lock_is_stale_and_taken_over(tmp_path, capsys, content):
    import json
    import socket
    import subprocess
    import sys

    from tests.test_infra import ToyConfig
    from utils.run import Run
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))
    run.close()
    if "%d" in content:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        content = content % (int(dead.stdout), socket.gethostname())
    elif "%s" in content:
        content = content % socket.gethostname()
    with open(run.lock.path, "w") as f:
        f.write(content)  # a crash between creating and writing the lock, a damaged one, a dead owner
    reopened = Run.open(run.dir, {"toy": ToyConfig})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"taking over the stale lock {run.lock.path}" in out
    assert json.load(open(reopened.lock.path))["pid"] == os.getpid()
    reopened.close()


@pytest.mark.slow
def test_a_checkpoint_that_does_not_read_back_keeps_the_older_one(tmp_path, monkeypatch):
    import glob

    from tests.test_infra import ToyConfig
    from utils.errors import WriteFailed
    from utils.run import CheckpointWriter, Run
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r", keep_checkpoints="last"))
    variable = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = run.checkpoint_manager(checkpoint)
    first = run.save_checkpoint(manager, 1)
    real_write = CheckpointWriter._write

    def write_then_damage(self):
        compiled = real_write(self)

        def writing(prefix):
            compiled(prefix)
            for path in glob.glob(prefix.numpy().decode() + ".data-*"):
                with open(path, "r+b") as f:
                    f.truncate(2)  # written without an error, but cut short (the disk lied)
        return writing
    monkeypatch.setattr(CheckpointWriter, "_write", write_then_damage)
    with pytest.raises(WriteFailed, match=rf"ckpt-2 .*still {first}"):
        run.save_checkpoint(manager, 2)
    monkeypatch.undo()
    left = sorted(os.listdir(run.path("checkpoints")))
    assert left[0] == "checkpoint" and "ckpt-1.index" in left and all(n.startswith("ckpt-1.") for n in left[1:])
    variable.assign([0.0, 0.0])
    assert run.restore_latest(checkpoint) == first
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    assert int(checkpoint.save_counter.numpy()) == 1  # the failed write is not counted
    run.close()


def test_epochs_0_is_an_error_and_leaves_no_run_folder(tmp_path):
    import train
    with pytest.raises(UserError, match="--epochs 0 trains nothing"):
        train.main(ssah_argv(tmp_path, "r", "--epochs", "0"))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_labels_of_one_class_warn_that_every_map_is_trivially_1(tmp_path, capsys):
    import pickle

    from utils.data import load_dataset
    from utils.metrics import trivially_relevant
    write_wiki_pickles(str(tmp_path), n_train=20, n_test=10)
    data = load_dataset("wiki-pickle", str(tmp_path))
    assert "trivially 1" not in capsys.readouterr().out
    for part in ("train", "test"):
        with open(tmp_path / f"{part}_labels.pkl", "wb") as f:
            pickle.dump([3] * (20 if part == "train" else 10), f, protocol=2)
    load_dataset("wiki-pickle", str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "every mAP is trivially 1" in out
    # every query relevant to every item without one shared class (multi-hot labels)
    assert trivially_relevant([[1, 1, 0], [1, 0, 1]], [[1, 0, 0], [1, 1, 1]])
    assert not trivially_relevant([[1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]])
    assert not trivially_relevant(data.labels[data.split.query], data.labels[data.split.database])


def test_code_diversity_counts_distinct_codes_and_constant_bits():
    from utils.metrics import code_diversity, collapse_warning
    rng = np.random.RandomState(0)
    varied = np.where(rng.rand(200, 16) > 0.5, 1, -1)
    assert code_diversity(varied) == {"items": 200, "bits": 16, "distinct": 200, "constant_bits": 0,
                                      "collapsed": False}
    one_code = np.tile(varied[:1], (200, 1))
    assert code_diversity(one_code)["distinct"] == 1 and code_diversity(one_code)["constant_bits"] == 16
    half_constant = varied.copy()
    half_constant[:, :9] = 1  # 9 of 16 bits the same everywhere, the codes still distinct
    stats = code_diversity((half_constant > 0).astype(np.uint8))  # {0, 1} codes too
    assert stats["constant_bits"] == 9 and stats["distinct"] > 100 and stats["collapsed"]
    few = varied[rng.randint(0, 3, size=200)]  # 3 distinct codes of 200: 1.5%
    assert code_diversity(few)["distinct"] == 3 and code_diversity(few)["collapsed"]
    assert not code_diversity(varied[rng.randint(0, 5, size=200)])["collapsed"]  # 2.5%
    line = collapse_warning({"Qi": code_diversity(one_code), "Dt": code_diversity(varied)}, " after unit 1 of 2")
    assert line.startswith("warning: the codes have collapsed after unit 1 of 2: Qi 1 distinct of 200 (16 of 16")
    assert "Dt" not in line and collapse_warning({"Dt": code_diversity(varied)}) is None


@pytest.mark.slow
def test_collapsed_codes_are_said_in_train_log_tensorboard_and_results(tmp_path):
    from tests.test_loop import Toy, toy_run
    from trainers.loop import Evaluation, TrainingLoop
    from utils.run import tee_stdout

    class CollapsingToy(Toy):
        def evaluate(self, units_done, final):
            evaluation = super().evaluate(units_done, final)
            codes = np.where(np.random.RandomState(units_done).rand(100, 8) > 0.5, 1, -1)
            if units_done == 2:
                codes[:] = 1  # collapsed after the second unit
            return Evaluation(evaluation.figures, maps=evaluation.maps, codes={"Q": codes, "D": codes})

    run = toy_run(tmp_path, "r")
    run.start_log()
    with tee_stdout(run.path("train.log")):
        results = TrainingLoop(CollapsingToy([1.0] * 4, per_unit=2, log_every=2, maps=[0.1, 0.2]), run).run()
    run.close()
    log = (tmp_path / "r" / "train.log").read_text()
    assert log.count("warning: the codes have collapsed") == 1
    assert "after unit 2 of 2: Q 1 distinct of 100 (8 of 8 bits constant)" in log
    assert [r["codes"]["Q"]["collapsed"] for r in results["epochs"]] == [False, True]
    assert results["codes"]["D"] == {"items": 100, "bits": 8, "distinct": 1, "constant_bits": 8, "collapsed": True}
    assert io.load_json(tmp_path / "r" / "results.json")["codes"]["Q"]["distinct"] == 1
    logged = scalar_steps(str(tmp_path / "r"))
    assert [value for _, value in logged["codes/distinct"]][-1] == 1.0
    assert [value for _, value in logged["codes/constant_bits"]] == [0.0, 8.0, 8.0]  # units 1, 2, the final
