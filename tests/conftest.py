"""Shared fixtures. Tests that need the real data skip when the shared data folder (beside the
repository, or $ADVHASH_SHARED) is absent."""
import os

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # test processes share the cores: each TensorFlow (and each train.py it starts) takes its share
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ADVHASH_SHARED", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts):
    """Path under the shared folder; skips the test with a clear message when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is missing (set ADVHASH_SHARED to the shared folder)")
    return path


OWN_FOLDERS = ("data", "runs")  # the repository's own data and runs, which belong to the user


@pytest.fixture(scope="session")
def stand_in_repository(tmp_path_factory):
    """A temporary folder in the repository's place for the data lookup: its data/ is empty and
    its sibling shared/ is the shared folder (when there is one)."""
    parent = tmp_path_factory.mktemp("checkout")
    os.makedirs(parent / "repository" / "data")
    if os.path.isdir(SHARED):
        os.symlink(os.path.abspath(SHARED), parent / "shared")
    return str(parent / "repository")


@pytest.fixture(autouse=True)
def data_outside_the_repository(stand_in_repository, monkeypatch):
    """No test reads or writes the repository's own data/ (a user's prepared data/coco.h5 would
    change what the tests see): datasets are looked up in $ADVHASH_DATA when a test sets it, an
    empty temporary data folder, and the shared folder."""
    import utils.data
    monkeypatch.setattr(utils.data, "REPO_ROOT", stand_in_repository)
    monkeypatch.delenv("ADVHASH_DATA", raising=False)


def pytest_sessionstart(session):
    session.config.own_folders_before = {name: _listing(name) for name in OWN_FOLDERS}


def pytest_sessionfinish(session, exitstatus):
    """Fails the run when a test wrote into the repository's data/ or runs/."""
    before = getattr(session.config, "own_folders_before", None)
    written = [name for name in OWN_FOLDERS if before is not None and _listing(name) != before[name]]
    if written:
        print(f"\nerror: tests wrote into the repository's own {' and '.join(f'{n}/' for n in written)}; "
              f"give them a temporary folder (tmp_path) and an explicit --runs-dir / --data / $ADVHASH_DATA")
        session.exitstatus = 1


def _listing(name):
    folder = os.path.join(REPO_ROOT, name)
    if not os.path.isdir(folder):
        return None
    return sorted((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(folder))


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


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Small runs that tests of several files only read, each trained once per session (per
    xdist worker) on first use: trained_runs.get(NAME) / .copy(NAME, tmp_path) (tests/trained_runs.py)."""
    from tests.trained_runs import TrainedRuns
    return TrainedRuns(tmp_path_factory)
