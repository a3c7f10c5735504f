"""Several workers (issue 22): `python train.py --strategy multiworker` as two processes of one
cluster on 127.0.0.1, sharing one run folder as workers on a shared filesystem do; and which
rows of each global batch a worker reads."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io

from tests.conftest import shared_path

pytestmark = pytest.mark.slow  # each test trains through train.py processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_SECONDS = 600  # a bound for a busy machine (about 30 s each on an idle one); a failed worker stops both

SSAH_TINY = ["--method", "ssah", "--dataset", "synthetic", "--split-sizes", "20,40", "--schedule", "tiny",
             "--bits", "8", "--embed-dim", "16", "--hidden-dim", "32", "--batch-size", "8",
             "--eval-batch-size", "16", "--epochs", "1"]
WIKI = shared_path("data", "wikipedia", "wikiData.mat")
ACMR_TINY = ["--method", "acmr", "--dataset", "wiki", "--data", WIKI, "--epochs", "1", "--batch-size", "128",
             "--adam-kernel", "tf1"]
RUN_FILES = {"checkpoints", "codes.mat", "config.json", "results.json", "tb", "train.log"}


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def run_two_workers(argv, temp_dir, log_dir):
    """Runs `python train.py ARGV --strategy multiworker` as workers 0 and 1 of a cluster on
    127.0.0.1; returns their (exit status, stdout, stderr), read from files in `log_dir`. TMPDIR
    is `temp_dir`, so what the non-chief worker writes for itself can be looked for afterwards."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "2",
               "TMPDIR": str(temp_dir)}
        outputs = [open(os.path.join(log_dir, f"worker{index}.{name}"), "w+") for name in ("out", "err")]
        workers.append((subprocess.Popen([sys.executable, "train.py", *argv, "--strategy", "multiworker"],
                                         cwd=ROOT, env=env, stdout=outputs[0], stderr=outputs[1]), outputs))
    deadline = time.monotonic() + WORKER_SECONDS
    try:
        while any(worker.poll() is None for worker, _ in workers) and time.monotonic() < deadline:
            if any(worker.poll() not in (None, 0) for worker, _ in workers):
                break  # one failed: the other would wait for it in a collective
            time.sleep(0.5)
    finally:
        for worker, _ in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    finished = []
    for worker, outputs in workers:
        texts = []
        for output in outputs:
            output.seek(0)
            texts.append(output.read())
            output.close()
        finished.append((worker.returncode, *texts))
    return finished


def check_two_workers_equal_one_process(tmp_path, argv, compare):
    """Both workers exit 0; the chief alone writes the shared run folder and the other worker
    leaves nothing behind; the exported codes are those of one process at the same global batch."""
    import train
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    runs = tmp_path / "runs"
    finished = run_two_workers(argv + ["--runs-dir", str(runs), "--run-name", "shared"], temp_dir, tmp_path)
    for index, (status, stdout, stderr) in enumerate(finished):
        assert status == 0, f"worker {index}: {stderr[-3000:]}"
    assert f"run folder: {runs / 'shared'}" in finished[0][1]
    assert "the chief writes the run folder" in finished[1][1] and "run folder: " + str(runs) not in finished[1][1]
    assert os.listdir(runs) == ["shared"] and RUN_FILES <= set(os.listdir(runs / "shared"))
    assert not os.path.exists(runs / "shared" / "lock")
    assert os.listdir(temp_dir) == []  # the non-chief worker's own folder is removed
    train.main(argv + ["--runs-dir", str(runs), "--run-name", "one"])
    compare(scipy.io.loadmat(runs / "shared" / "codes.mat"), scipy.io.loadmat(runs / "one" / "codes.mat"))
    return finished


def same_codes(workers, one):
    for field in ("Qi", "Qt", "Di", "Dt", "B"):
        np.testing.assert_array_equal(workers[field], one[field])


def test_ssah_two_workers_train_and_resume_as_one_process(tmp_path):
    import train
    finished = check_two_workers_equal_one_process(tmp_path, SSAH_TINY, same_codes)
    # both workers trained the same model: the same final figures
    finals = [stdout[stdout.index("final figures"):] for _, stdout, _ in finished]
    assert finals[0] == finals[1]
    # extended with --resume: worker 1 restores the chief's checkpoint (its own folder was removed)
    runs = tmp_path / "runs"
    shared, one = runs / "shared", runs / "one"
    finished = run_two_workers(["--resume", str(shared), "--epochs", "2"], tmp_path / "tmp", tmp_path)
    for index, (status, stdout, stderr) in enumerate(finished):
        assert status == 0, f"worker {index}: {stderr[-3000:]}"
        assert f"resumed from {shared / 'checkpoints'}" in stdout
    assert os.listdir(tmp_path / "tmp") == [] and not os.path.exists(shared / "lock")
    train.main(["--resume", str(one), "--epochs", "2"])
    same_codes(scipy.io.loadmat(shared / "codes.mat"), scipy.io.loadmat(one / "codes.mat"))
    assert [epoch["epoch"] for epoch in json.load(open(shared / "results.json"))["epochs"]] == [1, 2]


@pytest.mark.skipif(not os.path.exists(WIKI), reason="needs ../shared/data/wikipedia/wikiData.mat")
def test_acmr_two_workers_train_as_one_process(tmp_path):
    def close_embeddings(workers, one):  # float embeddings: summed in another order across workers
        for field in ("Qi", "Qt", "Di", "Dt"):
            np.testing.assert_allclose(workers[field], one[field], rtol=1e-4, atol=1e-5)
    check_two_workers_equal_one_process(tmp_path, ACMR_TINY, close_embeddings)


class TwoWorkerStrategy:
    """Stands in for worker `index` of a two-worker cluster with one replica each (what
    distribute.worker_rows reads of a MultiWorkerMirroredStrategy)."""

    num_replicas_in_sync = 2

    def __init__(self, index):
        self.extended = type("Extended", (), {"worker_devices": ["/cpu:0"], "_id_in_cluster": index})()


def test_each_worker_reads_only_its_rows_of_each_global_batch(tmp_path, monkeypatch):
    """Worker w of 2 reads rows [4w, 4w + 4) of each global batch of 8 from the HDF5 image file,
    never the whole batch, and these are the rows one process reads for the batch."""
    import keras

    import utils.data
    from tests.test_full_scale import count_image_reads, write_small_image_file
    from trainers.ssah import Config
    from trainers.ssah.epochs import EpochLoop
    from trainers.ssah.training import build_model
    from utils import distribute

    path = str(tmp_path / "small.h5")
    write_small_image_file(path, n=32)
    data = utils.data.load_dataset("coco", path, 0, split_sizes=(8, 24))
    config = Config(dataset="coco", bits=8, embed_dim=16, hidden_dim=32, batch_size=8, schedule="tiny")
    import trainers.ssah.training as ssah
    monkeypatch.setattr(ssah, "build_trunk", lambda config, data, backbone: (
        keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(8)]), None))
    trainer = build_model(config, data, "cnnf")
    read_rows = count_image_reads(monkeypatch)
    rows_read, drawn = {}, None
    for worker in (None, 0, 1):
        monkeypatch.setattr(trainer, "strategy", None if worker is None else TwoWorkerStrategy(worker))
        loop = EpochLoop(trainer, config, data.part("train"))
        if drawn is None:
            loop._draw_pass()
            drawn = loop.pass_rows.numpy()
        loop.pass_rows.assign(drawn)  # every worker draws the same batches (the same seeded generator)
        read_rows.clear()
        rows_read[worker] = [rows.numpy() for rows, images, labels in loop._batches("img")]
        assert [count for _, count in read_rows] == [len(rows) for rows in rows_read[worker]]
    assert len(rows_read[None]) == 3 and all(len(rows) == 8 for rows in rows_read[None])
    for worker in (0, 1):
        assert all(len(rows) == 4 for rows in rows_read[worker])
    for whole, first, second in zip(rows_read[None], rows_read[0], rows_read[1]):
        np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    assert distribute.worker_rows(TwoWorkerStrategy(1), 8) == (4, 8)


# METAH's two replicas on two logical CPU devices: tests/test_full_scale.py (one process for both
# methods' two-device comparisons).
