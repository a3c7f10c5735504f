"""Config-to-CLI, atomic writes, run folders and the non-finite-loss guard."""
import argparse
import dataclasses
import os

import numpy as np
import pytest

from utils import io
from utils.config import CommonConfig, add_config_arguments, config_from_args, config_from_dict
from utils.errors import UserError
from utils.run import NonFiniteLoss, Run, check_finite


@dataclasses.dataclass
class ToyConfig(CommonConfig):
    variant: str = dataclasses.field(default="original", metadata={"choices": ("original", "paper")})
    rate: float = 0.5
    quirk: bool = True
    passes: tuple[int, ...] = dataclasses.field(default=(10, 5), metadata={"help": "passes per inner index"})


def parse(argv, base=None):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig)
    return config_from_args(ToyConfig, parser.parse_args(argv), base=base)


def test_every_field_becomes_an_option_and_unset_options_keep_the_base():
    config = parse(["--rate", "0.25", "--quirk", "false", "--passes", "3,2,1", "--bits", "64"])
    assert (config.rate, config.quirk, config.passes, config.bits) == (0.25, False, (3, 2, 1), 64)
    base = ToyConfig(rate=9.0, quirk=False)
    assert parse(["--bits", "16"], base=base).rate == 9.0
    assert parse(["--quirk", "true"], base=base).quirk is True
    with pytest.raises(SystemExit):
        parse(["--variant", "neither"])


def test_saved_config_round_trips_and_rejects_unknown_settings():
    config = ToyConfig(passes=(4, 4))
    restored = config_from_dict(ToyConfig, io_round_trip(dataclasses.asdict(config)))
    assert restored == config
    with pytest.raises(UserError, match="unknown settings"):
        config_from_dict(ToyConfig, {"not_a_setting": 1})


def io_round_trip(obj, folder="/tmp"):
    path = os.path.join(folder, f"advhash-roundtrip-{os.getpid()}.json")
    io.save_json(path, obj)
    try:
        return io.load_json(path)
    finally:
        os.remove(path)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.json"
    io.save_json(path, {"a": 1})
    with pytest.raises(TypeError):
        io.save_json(path, {"a": object()})
    assert io.load_json(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left behind


def test_save_mat_and_npz(tmp_path):
    import scipy.io
    io.save_mat(tmp_path / "c.mat", {"Qi": np.ones((2, 3)), "query_L": np.eye(2)})
    assert scipy.io.loadmat(tmp_path / "c.mat")["Qi"].shape == (2, 3)
    io.save_npz(tmp_path / "c.npz", {"x": np.arange(3)})
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["x"], np.arange(3))


def test_run_folder_create_reopen_and_refuse_overwrite(tmp_path):
    config = ToyConfig(runs_dir=str(tmp_path), run_name="r1", bits=16)
    run = Run.create("toy", config)
    run.log_scalars(0, {"loss": 1.0}, prefix="lab/")
    run.flush()
    assert os.listdir(run.path("tb"))
    run.close()
    reopened = Run.open(run.dir, {"toy": ToyConfig})
    assert reopened.config == config and reopened.method == "toy"
    reopened.close()
    with pytest.raises(UserError, match="already holds a run"):
        Run.create("toy", config)
    with pytest.raises(UserError, match="not a run folder"):
        Run.open(str(tmp_path / "nothing"), {"toy": ToyConfig})


def test_corrupt_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, capsys):
    import tensorflow as tf
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r", keep_checkpoints="3"))
    variable = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = run.checkpoint_manager(checkpoint)
    run.save_checkpoint(manager, 1)
    variable.assign([3.0, 4.0])
    newest = run.save_checkpoint(manager, 2)
    variable.assign([5.0, 6.0])
    assert run.restore_latest(checkpoint) == newest
    np.testing.assert_array_equal(variable.numpy(), [3.0, 4.0])

    def corrupt(prefix):
        for name in os.listdir(run.path("checkpoints")):
            if name.startswith(os.path.basename(prefix) + ".data-"):
                with open(run.path("checkpoints", name), "r+b") as f:
                    f.truncate(3)  # a write cut short
    corrupt(newest)
    restored = run.restore_latest(checkpoint)
    assert restored.endswith("ckpt-1")
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    assert f"cannot read checkpoint {newest}" in capsys.readouterr().out
    corrupt(restored)
    with pytest.raises(UserError, match="no readable checkpoint"):
        run.restore_latest(checkpoint)


def test_keeps_the_last_and_the_best_checkpoint(tmp_path):
    import tensorflow as tf
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))  # default: last,best
    variable = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = run.checkpoint_manager(checkpoint)
    for epoch, score in enumerate([0.1, 0.3, 0.2], start=1):
        variable.assign(float(epoch))
        run.save_checkpoint(manager, epoch, score=score)
    kept = sorted(n for n in os.listdir(run.path("checkpoints")) if n.endswith(".index"))
    assert kept == ["ckpt-3.index"]
    best_path, best_score = run.best_checkpoint()
    assert best_path.endswith(os.path.join("best", "ckpt-2")) and best_score == 0.3
    tf.train.Checkpoint(v=variable).restore(best_path)
    assert float(variable.numpy()) == 2.0
    from utils.run import keep_policy
    assert keep_policy("last") == (1, False) and keep_policy("4") == (4, False)
    with pytest.raises(UserError, match="keep-checkpoints"):
        keep_policy("some")


def test_checkpoint_writer_saves_what_tensorflow_reads_and_keeps_up_with_new_variables(tmp_path):
    import shutil

    import tensorflow as tf
    from utils.run import CheckpointWriter
    holder = tf.Module()
    holder.weights = [tf.Variable([1.0, 2.0])]
    checkpoint = tf.train.Checkpoint(holder=holder, step=tf.Variable(0, dtype=tf.int64))
    writer = CheckpointWriter(checkpoint, tmp_path / "a" / "checkpoints", max_to_keep=2)
    writer.save(checkpoint_number=1)
    holder.weights.append(tf.Variable(7.0))  # made after the first (compiled) save, e.g. an optimiser's slot
    holder.weights[0].assign([3.0, 4.0])
    checkpoint.step.assign(5)
    writer.save(checkpoint_number=5)
    writer.save(checkpoint_number=6)
    assert [os.path.basename(p) for p in writer.kept()] == ["ckpt-5", "ckpt-6"]
    assert not [n for n in os.listdir(tmp_path / "a" / "checkpoints") if n.startswith("ckpt-1.")]
    shutil.move(str(tmp_path / "a"), str(tmp_path / "moved"))  # the state file's paths are relative
    latest = tf.train.latest_checkpoint(str(tmp_path / "moved" / "checkpoints"))
    assert latest == str(tmp_path / "moved" / "checkpoints" / "ckpt-6")
    fresh = tf.Module()
    fresh.weights = [tf.Variable([0.0, 0.0]), tf.Variable(0.0)]
    restored = tf.train.Checkpoint(holder=fresh, step=tf.Variable(0, dtype=tf.int64))
    restored.restore(latest).assert_consumed()
    assert [w.numpy().tolist() for w in fresh.weights] == [[3.0, 4.0], 7.0]
    assert int(restored.step.numpy()) == 5 and int(restored.save_counter.numpy()) == 3


def test_resume_drops_tensorboard_events_logged_after_the_checkpoint(tmp_path):
    import time

    import tensorflow as tf
    config = ToyConfig(runs_dir=str(tmp_path), run_name="r")
    run = Run.create("toy", config)
    variable = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = run.checkpoint_manager(checkpoint)
    for step in (1, 2, 3):
        run.log_scalars(step, {"loss": step}, prefix="lab/")
    run.log_scalars(1, {"map": 0.5}, prefix="mAP/")  # another step axis: kept, it was logged before
    run.flush()
    time.sleep(0.05)
    run.save_checkpoint(manager, 1)
    time.sleep(0.05)
    for step in (4, 5):  # the half-finished epoch that a kill loses
        run.log_scalars(step, {"loss": step}, prefix="lab/")
    run.close()

    resumed = Run.open(run.dir, {"toy": ToyConfig})
    assert resumed.restore_latest(checkpoint) is not None
    resumed.log_scalars(4, {"loss": 40}, prefix="lab/")  # the resumed run logs step 4 again
    resumed.close()
    logged = []
    for name in sorted(os.listdir(run.path("tb"))):
        for event in tf.compat.v1.train.summary_iterator(run.path("tb", name)):
            for value in event.summary.value:
                logged.append((value.tag, event.step, float(tf.make_ndarray(value.tensor))))
    assert sorted(logged) == [("lab/loss", 1, 1.0), ("lab/loss", 2, 2.0), ("lab/loss", 3, 3.0),
                              ("lab/loss", 4, 40.0), ("mAP/map", 1, 0.5)]


def test_scalars_of_any_number_of_tags_are_written_by_one_traced_function(tmp_path):
    """Each read of the loop logs another set of tags (a step's loss terms, the learning rate,
    the mAP of each direction): one traced write takes them all, so TensorFlow never warns of
    retracing, and every tag's value lands at its step."""
    import tensorflow as tf
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))
    sets = [{"a": 1.0}, {"a": 2.0, "b": 3.0, "c": 4.0}, {f"t{i}": float(i) for i in range(7)}, {"b": 5.0}]
    for step, scalars in enumerate(sets):
        run.log_scalars(step, scalars, prefix="x/")
    assert run._scalar_write.experimental_get_tracing_count() == 1
    run.close()
    logged = sorted((value.tag, event.step, float(tf.make_ndarray(value.tensor)))
                    for name in os.listdir(run.path("tb"))
                    for event in tf.compat.v1.train.summary_iterator(run.path("tb", name))
                    for value in event.summary.value)
    assert logged == sorted(("x/" + tag, step, value) for step, scalars in enumerate(sets)
                            for tag, value in scalars.items())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(folder, results) of a finished 2-epoch ACMR run on synthetic data with --ties argsort and
    --validation-size 100 (its best checkpoint chosen on validation items), trained once for the
    tests that read it; a test that resumes or edits it works on a copy (`copy_of_finished_run`)."""
    import train
    runs = tmp_path_factory.mktemp("runs")
    results = train.main(["--method", "acmr", "--dataset", "synthetic", "--epochs", "2", "--ties", "argsort",
                          "--validation-size", "100", "--runs-dir", str(runs), "--run-name", "r"])
    return runs / "r", results


def copy_of_finished_run(finished_run, folder):
    import shutil
    shutil.copytree(finished_run[0], folder)  # file times kept; the checkpoint state file's paths are relative
    return folder


@pytest.mark.slow
def test_tensorboard_holds_the_config_and_the_tie_rule_of_a_run(finished_run):
    import tensorflow as tf

    run_dir, _ = finished_run
    texts, scalar_tags = {}, set()
    for name in os.listdir(run_dir / "tb"):
        for event in tf.compat.v1.train.summary_iterator(str(run_dir / "tb" / name)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    texts[value.tag] = tf.make_ndarray(value.tensor).item().decode()
                else:
                    scalar_tags.add(value.tag)
    assert texts["ties"] == "argsort"
    assert "| ties | argsort |" in texts["config"] and "method: acmr" in texts["config"]
    assert any(tag.startswith("mAP/") for tag in scalar_tags)


def test_run_name_must_be_a_plain_folder_name_and_failed_starts_delete_only_their_own(tmp_path):
    import train
    runs = tmp_path / "runs"
    (runs / "earlier").mkdir(parents=True)
    (runs / "earlier" / "config.json").write_text("{}")
    (runs / "important").mkdir()
    (runs / "important" / "thesis.tex").write_text("years of work")
    for name in (".", "..", "a/b", "../x"):
        with pytest.raises(UserError, match="plain folder name"):
            train.main(["--method", "acmr", "--runs-dir", str(runs), "--run-name", name])
    with pytest.raises(UserError, match="holds other files"):
        train.main(["--runs-dir", str(runs), "--run-name", "important", "--dataset", "wiki",
                    "--data", str(tmp_path / "absent.mat")])  # would fail after the run folder is made
    assert (runs / "important" / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(runs / "important")) == ["thesis.tex"]
    (runs / "empty").mkdir()  # a folder the user made for the run: used, and kept after a failed start
    with pytest.raises(UserError, match="positive"):
        train.main(["--runs-dir", str(runs), "--run-name", "empty", "--bits", "0"])
    with pytest.raises(UserError, match="positive"):
        train.main(["--runs-dir", str(runs), "--run-name", "fresh", "--bits", "0"])
    assert sorted(os.listdir(runs)) == ["earlier", "empty", "important"]
    assert os.listdir(runs / "empty") == [] and os.listdir(runs / "earlier") == ["config.json"]


def test_unwritable_runs_dir_and_weights_without_a_trunk_are_one_line_errors(tmp_path):
    import train
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="choose a writable --runs-dir"):
        train.main(["--method", "acmr", "--runs-dir", str(tmp_path / "a-file" / "runs")])
    for extra in (["--backbone", "features"], []):  # synthetic data are feature vectors
        with pytest.raises(UserError, match="--weights w.mat .*no trunk"):
            train.main(["--weights", "w.mat", "--runs-dir", str(tmp_path / "runs")] + extra)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_second_process_on_the_same_run_folder_is_refused_and_a_dead_owner_is_stale(tmp_path, capsys):
    import json
    import socket
    import subprocess
    import sys

    config = ToyConfig(runs_dir=str(tmp_path), run_name="r")
    first = Run.create("toy", config)
    with pytest.raises(UserError, match=rf"in use by process {os.getpid()} on {socket.gethostname()}"):
        Run.open(first.dir, {"toy": ToyConfig})
    with pytest.raises(UserError, match="in use"):  # the same name at once: refused, nothing touched
        Run.create("toy", config)
    assert sorted(os.listdir(first.dir)) == ["config.json", "lock"]
    first.close()
    assert sorted(os.listdir(first.dir)) == ["config.json"]

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(os.path.join(first.dir, "lock"), "w") as f:  # left behind by a kill -9
        json.dump({"pid": int(dead.stdout), "host": socket.gethostname()}, f)
    reopened = Run.open(first.dir, {"toy": ToyConfig})
    assert "stale lock" in capsys.readouterr().out
    assert json.load(open(reopened.lock.path))["pid"] == os.getpid()
    reopened.close()
    with open(os.path.join(first.dir, "lock"), "w") as f:  # another host's: cannot be checked, so it holds
        json.dump({"pid": 1, "host": "elsewhere"}, f)
    with pytest.raises(UserError, match="in use by process 1 on elsewhere"):
        Run.open(first.dir, {"toy": ToyConfig})


def test_non_finite_loss_names_the_step_and_term():
    check_finite({"pair": 1.0, "quant": 0.0}, "ImgNet")
    with pytest.raises(NonFiniteLoss, match="'quant' became nan in the TxtNet step"):
        check_finite({"pair": 1.0, "quant": float("nan")}, "TxtNet")


def test_train_cli_rejects_unknown_dataset_in_one_line():
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "train.py", "--method", "nosuch"], cwd=root,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nosuch'" in result.stderr


@pytest.mark.parametrize("method", ["ssah", "acmr", "metah"])
def test_bad_dataset_leaves_no_empty_run_folder(tmp_path, method):
    import train
    with pytest.raises(UserError, match="nosuch"):
        train.main(["--method", method, "--dataset", "nosuch", "--runs-dir", str(tmp_path)])
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="nosuch"):  # nor the runs folders it made
        train.main(["--method", method, "--dataset", "nosuch", "--runs-dir", str(tmp_path / "new" / "runs")])
    assert os.listdir(tmp_path) == []


def test_checkpoint_cadence_by_steps_time_and_signal():
    import signal

    from utils.run import CheckpointCadence, TrainingInterrupted
    now = [0.0]
    by_time = CheckpointCadence("runs/x", every_steps=0, every_seconds=600, clock=lambda: now[0])
    with by_time:
        assert not by_time.due(1)
        now[0] = 599.0
        assert not by_time.due(2)
        now[0] = 600.0
        assert by_time.due(3)
        by_time.saved()
        assert not by_time.due(4)
    by_steps = CheckpointCadence("runs/x", every_steps=3)
    assert [s for s in range(1, 10) if by_steps.due(s)] == [3, 6, 9]

    before = signal.getsignal(signal.SIGINT)
    with CheckpointCadence("runs/x", every_steps=100) as cadence:
        os.kill(os.getpid(), signal.SIGINT)  # handled: sets the flag, no KeyboardInterrupt
        assert cadence.stop_requested and cadence.due(1)
        with pytest.raises(TrainingInterrupted, match=r"SIGINT.*--resume runs/x"):
            cadence.saved()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_resume_never_rewrites_a_finished_run_and_only_extends_its_length(finished_run, tmp_path, capsys):
    import json

    import train
    results = finished_run[1]  # the best is chosen on validation items
    run_dir = copy_of_finished_run(finished_run, tmp_path / "runs" / "r")

    def snapshot():
        return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in run_dir.rglob("*") if p.is_file()}
    before = snapshot()
    log = (run_dir / "train.log").read_text()
    assert "run folder:" in log and "acmr original synthetic: 2/2" in log  # a plain line per progress step
    kept = [n for n in os.listdir(run_dir / "checkpoints") if n.endswith(".index")]
    assert len(kept) == 1  # the last one; the best one is in checkpoints/best
    assert len([n for n in os.listdir(run_dir / "checkpoints" / "best") if n.endswith(".index")]) == 1

    again = train.main(["--resume", str(run_dir)])
    assert again["final"] == results["final"]
    assert f"--resume {run_dir} --epochs N (N > 2)" in capsys.readouterr().out
    with pytest.raises(UserError, match="--bits, --batch-size differ .* only --epochs may grow"):
        train.main(["--resume", str(run_dir), "--bits", "16", "--batch-size", "8"])
    with pytest.raises(UserError, match="shorter than the run.s 2; a run can only be extended"):
        train.main(["--resume", str(run_dir), "--epochs", "1"])
    with pytest.raises(UserError, match="is a acmr run"):
        train.main(["--resume", str(run_dir), "--method", "ssah"])
    assert snapshot() == before  # not one byte rewritten, no file added

    extended = train.main(["--resume", str(run_dir), "--epochs", "3"])
    assert [e["epoch"] for e in extended["epochs"]] == [1, 2, 3]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["completed"] == {"epochs": 3, "trained": 3}
    assert json.loads((run_dir / "config.json").read_text())["config"]["epochs"] == 3
    assert "acmr original synthetic: 3/3" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_metah_resume_extends_its_iterations(tmp_path, capsys):
    import train
    from tests.test_metah import write_domain_files
    write_domain_files(str(tmp_path))
    argv = ["--method", "metah", "--dataset", "folder:src->tgt", "--data", str(tmp_path), "--bits", "8",
            "--iterations", "8", "--batch-size", "16", "--hidden", "16", "--discriminator-hidden", "16",
            "--runs-dir", str(tmp_path / "runs"), "--run-name", "m"]
    train.main(argv)
    run_dir = str(tmp_path / "runs" / "m")
    train.main(["--resume", run_dir])
    assert f"--resume {run_dir} --iterations N (N > 8)" in capsys.readouterr().out
    with pytest.raises(UserError, match="--split-sizes is for image-text"):
        train.main(argv[:-1] + ["m2", "--split-sizes", "2,2"])
    assert os.listdir(tmp_path / "runs") == ["m"]
    extended = train.main(["--resume", run_dir, "--iterations", "12"])
    assert extended["iterations"] == 12
    assert f"resumed from {run_dir}/checkpoints/ckpt-8" in capsys.readouterr().out


def test_a_damaged_checkpoint_state_file_does_not_hide_the_checkpoints(tmp_path):
    import tensorflow as tf
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))
    variable = tf.Variable(7.0)
    checkpoint = tf.train.Checkpoint(v=variable)
    run.save_checkpoint(run.checkpoint_manager(checkpoint), 12)
    (tmp_path / "r" / "checkpoints" / "checkpoint").write_text("\x00 not a state file")
    variable.assign(0.0)
    assert run.restore_latest(checkpoint).endswith("ckpt-12") and float(variable.numpy()) == 7.0


def test_a_competitors_lock_being_written_does_not_make_a_fresh_folder_look_used(tmp_path):
    # The window two processes starting one run can meet: the other has made the folder and is
    # writing its lock (lock.PID.tmp) when this one takes the lock and looks for other files.
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "lock.999999.tmp").write_text('{"pid": 999999}')
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="same"))
    assert os.path.exists(run.path("config.json")) and run.lock.held
    run.close()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "lock.tmp.notes").write_text("a user's file")
    with pytest.raises(UserError, match="holds other files"):
        Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="other"))


@pytest.mark.slow
def test_two_processes_starting_the_same_run_one_trains_the_other_gets_one_line(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "train.py", "--method", "acmr", "--dataset", "synthetic", "--epochs", "1",
               "--runs-dir", str(tmp_path), "--run-name", "same"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = [subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outcomes = sorted((p.returncode, err, out) for p, (out, err) in [(p, p.communicate()) for p in processes])
    (won, _, printed), (lost, message, _) = outcomes
    assert (won, lost) == (0, 2) and "Traceback" not in message
    assert "acmr original synthetic: 1/1 (" in printed  # stdout is a pipe: a plain progress line
    assert message.strip().splitlines()[-1].startswith("error: run folder")
    assert "in use by process" in message or "already holds a run" in message
    assert os.listdir(tmp_path) == ["same"] and not os.path.exists(tmp_path / "same" / "lock")


@pytest.mark.slow
def test_a_run_finished_before_completion_was_marked_is_not_rewritten(finished_run, tmp_path, capsys):
    import json

    import train
    copy_of_finished_run(finished_run, tmp_path / "old")
    results_path = tmp_path / "old" / "results.json"
    saved = json.loads(results_path.read_text())
    del saved["completed"]  # as written before train.py recorded it
    results_path.write_text(json.dumps(saved))
    before = results_path.read_bytes(), (tmp_path / "old" / "codes.mat").read_bytes()
    train.main(["--resume", str(tmp_path / "old")])
    assert "is finished (2 epochs)" in capsys.readouterr().out
    assert (results_path.read_bytes(), (tmp_path / "old" / "codes.mat").read_bytes()) == before


def test_split_sizes_are_checked_against_the_data_and_the_dataset(tmp_path):
    from utils.data import load_dataset
    data = load_dataset("synthetic", split_sizes=(50, 300))
    assert (len(data.split.query), len(data.split.train), len(data.split.database)) == (50, 300, 1950)
    with pytest.raises(UserError, match=r"only 2000; pass smaller sizes, e.g. --split-sizes 250,1000"):
        load_dataset("synthetic", split_sizes=(1500, 1000))
    with pytest.raises(UserError, match="two positive numbers"):
        load_dataset("synthetic", split_sizes=(5,))
    with pytest.raises(UserError, match="--split-file gives one"):
        load_dataset("synthetic", split_file=str(tmp_path / "s.npz"), split_sizes=(5, 5))


def test_a_bar_over_updates_prints_a_line_per_tenth_even_when_short(capsys):
    from utils.run import progress
    for line_per_step, lines in ((True, 50), (False, 10)):
        bar = progress(total=50, desc="bar", line_per_step=line_per_step)  # stdout is captured: plain lines
        for _ in range(50):
            bar.update(1)
        bar.close()
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bar: ")]
        assert len(printed) == lines and printed[-1].startswith("bar: 50/50")
