"""Full-scale training (issue 6): several replicas, mixed precision, XLA, streamed images, real COCO.

The two-replica comparisons (SSAH's steps, METAH's training) need two logical CPU devices, which
must be configured before TensorFlow initialises its devices: they run in one fresh process
(`python -m tests.test_full_scale mirrored [OFFICE]`) that reports the differences as JSON. Several
workers (train.py --strategy multiworker as two processes): tests/test_multiworker.py.
"""
import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from tests.conftest import SHARED, shared_path
from utils.errors import UserError

N, CLASSES, TEXT_DIM, IMAGE_DIM, BATCH, ROUNDS = 24, 5, 60, 12, 8, 2
STEPS = ("lab", "dis", "img", "txt")


def relative_difference(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))) if a.size else 0.0


def tiny_data():
    rng = np.random.RandomState(0)
    labels = (rng.rand(N, CLASSES) < 0.4).astype(np.float32)
    labels[np.arange(N), rng.randint(0, CLASSES, N)] = 1.0
    images = rng.randn(N, IMAGE_DIM).astype(np.float32)
    texts = (rng.rand(N, TEXT_DIM) < 0.2).astype(np.float32)
    return labels, images, texts


def tiny_trainer(variant="original", strategy=None, **overrides):
    import tensorflow as tf

    from models.ssah import FeatureTrunk
    from trainers.ssah import PRESETS, Config, SsahModel
    from utils import distribute

    labels = tiny_data()[0]
    config = dataclasses.replace(Config(bits=8, embed_dim=16, hidden_dim=32, batch_size=BATCH),
                                 **{**PRESETS[variant], **overrides})
    tf.keras.utils.set_random_seed(0)
    with distribute.scope(strategy), distribute.dtype_policy(config.precision):
        trunk = FeatureTrunk(32)
    trainer = SsahModel(config, labels, TEXT_DIM, trunk, strategy=strategy)
    trainer.build((IMAGE_DIM,))
    return trainer


def run_steps(trainer, steps=STEPS, rounds=ROUNDS, lr=1e-2):
    """Losses of `rounds` rounds of `steps`, each on a new random batch (same draws for every trainer)."""
    labels, images, texts = tiny_data()
    rng = np.random.RandomState(1)
    losses = []
    for _ in range(rounds):
        for step in steps:
            rows = rng.permutation(N)[:BATCH]
            args = {"lab": (rows, labels[rows]), "dis": (images[rows], texts[rows], labels[rows]),
                    "img": (rows, images[rows], labels[rows]), "txt": (rows, texts[rows], labels[rows])}[step]
            losses.append({k: float(v) for k, v in trainer.step(step, *args, learning_rate=lr).items()})
    return losses


def run_variant(variant, strategy):
    """Losses of ROUNDS rounds of the four steps, and the final variables and buffers."""
    trainer = tiny_trainer(variant, strategy)
    losses = run_steps(trainer)
    variables = [v.numpy() for net in trainer.nets.values() for v in net.trainable_variables]
    buffers = [b.numpy() for b in trainer.buffers.values()]
    return losses, variables, buffers


def main(mode, office=""):
    """mirrored: two logical CPU devices in this process (several workers: tests/test_multiworker.py):
    SSAH's steps on one and on two replicas (REPORT), then, given the office-caltech10 folder,
    METAH's training on one device and on both (METAH_REPORT)."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    tf.config.experimental.enable_op_determinism()
    report = {}
    for variant in ("original", "paper"):
        one_losses, one_vars, one_buffers = run_variant(variant, None)
        two_losses, two_vars, two_buffers = run_variant(variant, two)
        report[variant] = {
            "replicas": two.num_replicas_in_sync,
            "loss_keys_equal": all(a.keys() == b.keys() for a, b in zip(one_losses, two_losses)),
            "losses": [{k: (a[k], b[k]) for k in a} for a, b in zip(one_losses, two_losses)],
            "loss_difference": max(relative_difference(a[k], b[k]) for a, b in zip(one_losses, two_losses) for k in a),
            "variable_difference": max(relative_difference(a, b) for a, b in zip(two_vars, one_vars)),
            "buffer_difference": max(relative_difference(a, b) for a, b in zip(two_buffers, one_buffers)),
        }
    print("REPORT " + json.dumps(report), flush=True)
    if office:
        print("METAH_REPORT " + json.dumps(metah_one_and_two_devices(two, office)), flush=True)


def metah_one_and_two_devices(two, office):
    """METAH's final figures on one device and on the two logical CPU devices (`mirrored`)."""
    import tensorflow as tf

    from trainers import metah
    from utils import distribute
    distribute._started["mirrored"] = two  # both devices
    finals = {}
    for strategy in ("none", "mirrored"):
        tf.keras.utils.set_random_seed(0)
        config = metah.Config(dataset="office-googlenet:W->D", data=office, bits=16, iterations=12, batch_size=32,
                              eval_every_epoch=False, trunk_dropout=0.0, discriminator_dropout=0.0,
                              pairwise_gradient_accumulates=True, strategy=strategy)
        finals[strategy] = metah.fit(config)["final"]
    return finals


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_report(stdout, stderr):
    lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert sorted(report) == ["original", "paper"]
    for variant, result in report.items():
        assert result["replicas"] == 2 and result["loss_keys_equal"]
        assert len(result["losses"]) == ROUNDS * len(STEPS)
        # every loss term of every step (LabNet, discriminators, ImgNet, TxtNet), several rounds; the
        # paper variant's adversarial term (18.93) differs by 1.2e-5 relative on AVX2-only CPUs (the
        # sums of two replicas are rounded in another order), 1e-7 for the original variant
        assert result["loss_difference"] < (3e-5 if variant == "paper" else 1e-5), (variant, result["losses"])
        # Adam divides by sqrt(v): float32 rounding of tiny gradients shows a little more in the weights
        assert result["variable_difference"] < 1e-4, variant
        assert result["buffer_difference"] < 1e-5, variant


OFFICE = os.path.join(SHARED, "data", "office-caltech10")


@pytest.fixture(scope="module")
def two_device_process():
    """The stdout and stderr of ONE fresh process with two logical CPU devices (they must be
    configured before TensorFlow initialises its devices), shared by the two tests that read it:
    `python -m tests.test_full_scale mirrored [OFFICE]` reports SSAH's two-replica comparison and,
    when the office-caltech10 data is there, METAH's."""
    office = [OFFICE] if os.path.exists(OFFICE) else []
    done = subprocess.run([sys.executable, "-m", "tests.test_full_scale", "mirrored", *office], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


@pytest.mark.slow
def test_two_replicas_match_one_replica_on_the_global_batch(two_device_process):
    check_report(*two_device_process)


@pytest.mark.slow
def test_metah_two_replicas_train_as_one_device(two_device_process):
    """Without dropout (its masks are drawn per replica), two replicas give one device's figures."""
    shared_path("data", "office-caltech10")  # skips without the data
    stdout, stderr = two_device_process
    lines = [line for line in stdout.splitlines() if line.startswith("METAH_REPORT ")]
    assert lines, stderr[-3000:]
    report = json.loads(lines[-1][len("METAH_REPORT "):])
    one, two = report["none"], report["mirrored"]
    for direction in ("target->target", "target->source"):
        assert two[direction]["map"] == pytest.approx(one[direction]["map"], abs=1e-6)
    assert two["target_classifier_accuracy"] == pytest.approx(one["target_classifier_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_jit_steps_equal_plain_steps():
    steps = ("lab",)  # XLA compiles slowly on CPU: one step (scatter writes, pairwise terms, TF1 Adam)
    plain = run_steps(tiny_trainer(), steps, rounds=2)
    compiled = run_steps(tiny_trainer(jit=True), steps, rounds=2)
    for a, b in zip(plain, compiled):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_mixed_precision_computes_in_float16_and_keeps_float32_state():
    steps = ("img", "txt")  # float16 trunk, MS fusion and LRN; buffer writes
    reference = run_steps(tiny_trainer(), steps, rounds=1)
    trainer = tiny_trainer(precision="mixed_float16")
    mixed = run_steps(trainer, steps, rounds=1)
    layer = trainer.nets["txt"].fc1
    assert layer.compute_dtype == "float16" and layer.kernel.dtype == "float32"
    assert all(b.dtype == "float32" for b in trainer.buffers.values())
    assert sorted(trainer.loss_scales) == sorted(STEPS)
    for a, b in zip(reference, mixed):
        for key in a:  # float16 activations: close to, not equal to, the float32 losses
            assert np.isfinite(b[key]) and b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-2), key
    assert all(np.isfinite(float(s.scale.numpy())) and float(s.scale.numpy()) >= 1.0
               for s in trainer.loss_scales.values())


def test_loss_scale_skips_non_finite_updates_and_halves():
    import tensorflow as tf

    from utils.optim import DynamicLossScale, TF1Adam
    variable = tf.Variable([1.0, 2.0])
    optimizer, scale = TF1Adam(), DynamicLossScale(initial=8.0, period=2)
    optimizer.build([variable])
    for grad, expect_finite, expect_scale in (([np.inf, 1.0], False, 4.0), ([4.0, 4.0], True, 4.0),
                                              ([4.0, 4.0], True, 8.0)):
        before = variable.numpy().copy(), int(optimizer.iterations.numpy())
        grads, finite = scale.unscale([tf.constant(grad, tf.float32)])
        optimizer.apply_gradients(zip(grads, [variable]), 0.1, apply_if=finite)
        assert bool(finite) == expect_finite and float(scale.scale.numpy()) == expect_scale
        if expect_finite:
            np.testing.assert_allclose(grads[0].numpy(), np.asarray(grad) / 4.0)  # the scale before the step
            assert int(optimizer.iterations.numpy()) == before[1] + 1
            assert not np.array_equal(variable.numpy(), before[0])
        else:  # skipped: variable, moments and counter untouched
            np.testing.assert_array_equal(variable.numpy(), before[0])
            assert int(optimizer.iterations.numpy()) == before[1] and not optimizer.m[0].numpy().any()


def test_strategy_settings_fail_with_one_line_messages(monkeypatch):
    import tensorflow as tf

    from utils import distribute
    with pytest.raises(UserError, match="unknown strategy"):
        distribute.make_strategy("tpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not JSON"):
        distribute.make_strategy("multiworker")
    monkeypatch.delenv("TF_CONFIG")
    one_device = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(UserError, match="drop --jit or use --strategy none"):
        distribute.replicated_step(one_device, lambda x, lr: {"loss": x}, jit=True)
    def two_replicas(local_devices):  # on two workers (one device each) or on one worker
        extended = type("Extended", (), {"worker_devices": ["cpu"] * local_devices})()
        return type("TwoReplicas", (), {"num_replicas_in_sync": 2, "extended": extended})()
    with pytest.raises(UserError, match="multiple of 2"):
        distribute.worker_rows(two_replicas(1), 7)
    with pytest.raises(UserError, match="multiple of 2"):
        distribute.split_batch(two_replicas(2), [np.zeros((7, 3))])


# --------------------------------------------------------------------------- streamed images

FAST = ["--method", "ssah", "--schedule", "tiny", "--bits", "8", "--embed-dim", "16", "--hidden-dim", "32",
        "--batch-size", "8", "--eval-batch-size", "16", "--epochs", "1"]


def write_small_image_file(path, n=30, size=8):
    """A DCMH-layout HDF5 file (MATLAB axis order) with small images: read lazily, like a real one."""
    rng = np.random.RandomState(0)
    labels = (rng.rand(n, 4) < 0.4).astype(np.uint8)
    labels[np.arange(n), rng.randint(0, 4, n)] = 1
    images = (labels @ rng.randint(0, 60, (4, size * size * 3)) + rng.randint(0, 16, (n, size * size * 3)))
    with h5py.File(path, "w") as f:
        f["images"] = np.ascontiguousarray(images.astype(np.uint8).reshape(n, size, size, 3).T)
        f["YAll"] = np.ascontiguousarray((rng.rand(n, 20) < 0.3).astype(np.uint8).T)
        f["LAll"] = np.ascontiguousarray(labels.T)


def count_image_reads(monkeypatch):
    """[(the source's type, rows read)] of every host read of image rows (utils.data.pipeline.host_reads);
    the training rows of a source (utils.data.LazyRows) count as reads of that source."""
    import utils.data.pipeline as pipeline
    read_rows, real_reads = [], pipeline.host_reads

    def counted_reads(source):
        class Counted:  # the source, its reads counted
            shape, dtype = source.shape, source.dtype

            def __getitem__(self, rows):
                read_rows.append((type(getattr(source, "source", source)).__name__, len(rows)))
                return source[rows]
        return real_reads(Counted())
    monkeypatch.setattr(pipeline, "host_reads", counted_reads)
    return read_rows


@pytest.mark.slow
def test_streamed_images_train_exactly_as_images_in_memory(tmp_path, monkeypatch):
    """Same draws, same batches: a lazy HDF5 source (streamed) and the same images in memory
    give identical codes and figures; both read their image rows batch by batch on the host
    (utils.data.pipeline.host_reads), the lazy run from the HDF5 file, the other from memory."""
    import keras

    import train
    import trainers.ssah.training as ssah  # where build_model looks build_trunk up
    import utils.data
    from utils.data.dcmh import HDF5Images

    path = str(tmp_path / "small.h5")
    write_small_image_file(path)

    def small_trunk(config, data, backbone):  # CNN-F needs 224 x 224: a dense trunk on the pixels
        trunk = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(32, activation="relu")])
        return trunk, lambda x: (keras.ops.cast(x, "float32") - 100.0) / 50.0
    monkeypatch.setattr(ssah, "build_trunk", small_trunk)
    read_rows = count_image_reads(monkeypatch)
    real_load = utils.data.load_dataset
    outputs = {}
    for mode in ("lazy", "memory"):
        def load(*args, **kwargs):
            data = real_load(*args, **kwargs)
            assert isinstance(data.images, HDF5Images)
            if mode == "memory":
                data.images = data.images[np.arange(len(data.images))]
            return data
        monkeypatch.setattr(utils.data, "load_dataset", load)
        read_rows.clear()
        results = train.main(FAST + ["--dataset", "coco", "--data", path, "--seed", "3", "--split-sizes", "6,16",
                                     "--runs-dir", str(tmp_path), "--run-name", mode])
        outputs[mode] = results, scipy.io.loadmat(tmp_path / mode / "codes.mat"), list(read_rows)
    (lazy, lazy_codes, lazy_reads), (memory, memory_codes, memory_reads) = outputs["lazy"], outputs["memory"]
    # every image read is one batch (training: 8 rows; codes: up to the evaluation batch of 16), never the
    # whole source: at least a pass of the discriminators and one of ImgNet (2 batches each of the 16 items)
    assert "ndarray" not in {kind for kind, _ in lazy_reads} and {kind for kind, _ in memory_reads} == {"ndarray"}
    for reads in (lazy_reads, memory_reads):
        assert sum(rows == 8 for _, rows in reads) >= 4 and max(rows for _, rows in reads) <= 16
    assert lazy["final"] == memory["final"]
    for field in ("Qi", "Di", "Qt", "Dt"):
        np.testing.assert_array_equal(lazy_codes[field], memory_codes[field])


# --------------------------------------------------------------------------- real COCO, end to end

@pytest.mark.slow
def test_real_coco_mini_prepare_train_evaluate(tmp_path, monkeypatch):
    """The README's commands on the official COCO layout: `python prepare.py coco
    --annotations ... --images ... --images ...` (default output: the data folder) -> `python
    train.py --dataset coco --bits 32 --split-sizes 20,32` (no --data: found where prepare wrote
    it; a small CNN-F schedule: two batches of 16 per pass, the CNN-F updates are most of the
    test's time) -> `python eval.py RUN_DIR`."""
    root = shared_path("data", "coco-mini")
    import eval as evaluation
    import train
    import prepare
    from utils.data import resolve_path

    data_root = tmp_path / "data"
    monkeypatch.setenv("ADVHASH_DATA", str(data_root))  # the data folder prepare and train.py share
    with pytest.raises(UserError, match="python prepare.py coco"):
        resolve_path("coco", "")
    assert prepare.main(["coco", "--annotations", os.path.join(root, "annotations"),
                         "--images", os.path.join(root, "train2017"), "--images", os.path.join(root, "val2017"),
                         "--workers", "2"]) == 0
    assert resolve_path("coco", "") == str(data_root / "coco.h5")
    with pytest.raises(UserError, match="--split-sizes 19,79"):  # the standard 5,000 / 10,000 do not fit
        train.main(["--dataset", "coco", "--bits", "32", "--runs-dir", str(tmp_path / "runs")])
    read_rows = count_image_reads(monkeypatch)
    results = train.main(["--dataset", "coco", "--bits", "32", "--split-sizes", "20,32",
                          "--schedule", "tiny", "--epochs", "1", "--batch-size", "16", "--embed-dim", "64",
                          "--hidden-dim", "256", "--eval-batch-size", "40",
                          "--runs-dir", str(tmp_path / "runs"), "--run-name", "coco"])
    # the 224 x 224 images streamed from the prepared file a batch at a time (training: 16 rows, a pass of the
    # discriminators and one of ImgNet of 2 batches each; codes: up to 40)
    assert sum(rows == 16 for _, rows in read_rows) >= 4 and max(rows for _, rows in read_rows) <= 40
    run_dir = tmp_path / "runs" / "coco"
    assert json.loads((run_dir / "config.json").read_text())["config"]["backbone"] in ("", "cnnf")
    codes = scipy.io.loadmat(run_dir / "codes.mat")
    assert codes["Qi"].shape == (20, 32) and codes["Di"].shape == (139, 32) and codes["Dt"].shape == (139, 32)
    assert codes["query_L"].shape == (20, 80)
    evaluation.main([str(run_dir), "--no-tensorboard"])
    report = json.loads((run_dir / "report" / "report.json").read_text())
    for direction in ("i->t", "t->i"):
        assert report["summary"][direction]["map"] == pytest.approx(results["final"][direction], abs=1e-6)


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["mirrored"]))
