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
    reopened = Run.open(run.dir, {"toy": ToyConfig})
    assert reopened.config == config and reopened.method == "toy"
    with pytest.raises(UserError, match="already holds a run"):
        Run.create("toy", config)
    with pytest.raises(UserError, match="not a run folder"):
        Run.open(str(tmp_path / "nothing"), {"toy": ToyConfig})


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    import tensorflow as tf
    run = Run.create("toy", ToyConfig(runs_dir=str(tmp_path), run_name="r"))
    variable = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=variable)
    manager = run.checkpoint_manager(checkpoint)
    manager.save()
    variable.assign([5.0, 6.0])
    assert run.restore_latest(checkpoint) is not None
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    for name in os.listdir(run.path("checkpoints")):
        if ".data-" in name:
            with open(run.path("checkpoints", name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        run.restore_latest(checkpoint)


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
