"""Shared fixtures. Tests that need the real data skip when the shared data folder (beside the
repository, or $ADVHASH_SHARED) is absent."""
import os

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ADVHASH_SHARED", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts):
    """Path under the shared folder; skips the test with a clear message when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is missing (set ADVHASH_SHARED to the shared folder)")
    return path


GOLDEN = os.path.join(REPO_ROOT, "tests", "golden")


def load_golden(name):
    """The arrays of the authors' program's golden file `name` that the tests read: from the
    repository's trimmed copy (tests/golden/, exact), else from the full file in the shared folder."""
    from tests.golden import codec
    trimmed = os.path.join(GOLDEN, name)
    if os.path.exists(trimmed):
        return codec.load(trimmed)
    return dict(np.load(shared_path("golden", name)))


def after_update(monkeypatch, at_update, action):
    """Calls `action()` once, when the shared training loop hears of update `at_update`
    (counted from 1 over the process's training runs, as methods report them:
    TrainingLoop.updates_done)."""
    from trainers.loop import TrainingLoop
    real_done, calls = TrainingLoop.updates_done, {"n": 0}

    def counting_done(self, n=1, store_position=None):
        before, calls["n"] = calls["n"], calls["n"] + n
        if before < at_update <= calls["n"]:
            action()
        return real_done(self, n, store_position)
    monkeypatch.setattr(TrainingLoop, "updates_done", counting_done)


def stop_by_signal(monkeypatch, argv, signum, at_update):
    """Runs `train.py argv` in this process, sends itself `signum` during training update
    `at_update` and expects the clean stop (a checkpoint, then TrainingInterrupted naming the
    signal)."""
    import signal

    import train
    from trainers.loop import TrainingLoop
    from utils.run import TrainingInterrupted
    real_done = TrainingLoop.updates_done
    after_update(monkeypatch, at_update, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name):
        train.main(argv)
    monkeypatch.setattr(TrainingLoop, "updates_done", real_done)
