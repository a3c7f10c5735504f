"""Shared fixtures. Tests that need the real data skip when ../shared is absent."""
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ADVHASH_SHARED", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts):
    """Path under the shared folder; skips the test with a clear message when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is missing (set ADVHASH_SHARED to the shared folder)")
    return path


def stop_by_signal(monkeypatch, argv, signum, at_update):
    """Runs `train.py argv` in this process, sends itself `signum` during training update
    `at_update` (counted by the NaN check every update makes) and expects the clean stop
    (a checkpoint, then TrainingInterrupted naming the signal)."""
    import signal

    import train
    import utils.run
    from utils.run import TrainingInterrupted
    real_check, calls = utils.run.check_finite, {"n": 0}

    def signalling_check(values, step_name):
        calls["n"] += 1
        if calls["n"] == at_update:
            os.kill(os.getpid(), signum)
        return real_check(values, step_name)
    monkeypatch.setattr(utils.run, "check_finite", signalling_check)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name):
        train.main(argv)
    monkeypatch.setattr(utils.run, "check_finite", real_check)
