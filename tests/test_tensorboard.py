"""One TensorBoard scheme for every method: the event files of a short run of each method hold
loss/STEP/TERM, lr/STEP, mAP/DIRECTION and discriminator/accuracy (x axis: the run's updates),
the resolved config as text and as HParams. A new method's case: one more test calling
`assert_scheme` with its run folder and its tags."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.test_acmr import write_wiki_pickles
from tests.test_metah import write_domain_files

# First components a scalar tag may have: the scheme's four, and method-specific extras
# (the reversal's lambda, figures beside the mAPs).
TAG_FAMILIES = {"loss", "lr", "mAP", "discriminator", "adversarial", "eval", "mAP_radius2", "precision_radius2",
                "modality", "codes"}


def event_contents(run_dir):
    """Every summary in RUN_DIR/tb: {tag: [(step, plugin, value)]}, value a float for scalars,
    the text for text, the parsed HParams plugin data for hparams."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorflow.core.util import event_pb2
    contents = {}
    folder = os.path.join(run_dir, "tb")
    for name in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "hparams":
                    content = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                elif plugin == "text":
                    content = tf.make_ndarray(value.tensor).item().decode()
                else:
                    content = float(tf.make_ndarray(value.tensor))
                contents.setdefault(value.tag, []).append((event.step, plugin, content))
    return contents


def assert_scheme(run_dir, method, required, updates):
    """The run's events follow the scheme: the `required` scalar tags are there, every scalar tag
    is of a known family, losses are logged at update steps up to `updates`, the mAPs at
    `updates` at the end, the config as text and HParams (with the tie rule)."""
    contents = event_contents(run_dir)
    scalars = {tag for tag, entries in contents.items() if entries[0][1] == "scalars"}
    assert set(required) <= scalars, sorted(set(required) - scalars)
    assert {tag.split("/")[0] for tag in scalars} <= TAG_FAMILIES, sorted(scalars)
    for tag in scalars:
        assert all(0 < step <= updates for step, _, _ in contents[tag]), tag
        assert all(np.isfinite(value) for _, _, value in contents[tag]), tag
    for tag in (t for t in required if t.startswith("mAP/")):
        assert contents[tag][-1][0] == updates, tag
    assert contents["discriminator/accuracy"][-1][2] <= 1.0
    config_text = contents["config"][0][2]
    assert f"method: {method}" in config_text and "| ties |" in config_text
    hparams = [entry[2] for tag, entries in contents.items() if entries[0][1] == "hparams" for entry in entries
               if entry[2].HasField("session_start_info")]
    assert len(hparams) == 1
    values = hparams[0].session_start_info.hparams
    assert values["method"].string_value == method and values["ties"].string_value
    return contents


@pytest.mark.slow
def test_acmr_run_follows_the_scheme(tmp_path):
    import train
    write_wiki_pickles(str(tmp_path), n_train=64, n_test=40)
    train.main(["--method", "acmr", "--dataset", "wiki-pickle", "--data", str(tmp_path), "--batch-size", "16",
                "--epochs", "2", "--log-every", "2", "--runs-dir", str(tmp_path / "runs"), "--run-name", "acmr"])
    contents = assert_scheme(str(tmp_path / "runs" / "acmr"), "acmr", [
        "loss/projector/label", "loss/projector/triplet", "loss/projector/total",
        "loss/modality_classifier/cross_entropy", "lr/projector", "lr/modality_classifier",
        "mAP/i->t", "mAP/t->i", "discriminator/accuracy"], updates=8)
    assert [step for step, _, _ in contents["loss/projector/total"]] == [2, 4, 6, 8]  # every --log-every updates
    assert contents["lr/projector"][0][2] == np.float32(1e-4)


@pytest.mark.slow
def test_metah_run_follows_the_scheme(tmp_path):
    import train
    write_domain_files(str(tmp_path))
    train.main(["--method", "metah", "--dataset", "folder:src->tgt", "--data", str(tmp_path), "--bits", "16",
                "--iterations", "8", "--batch-size", "16", "--hidden", "32", "--discriminator-hidden", "32",
                "--log-every", "4", "--runs-dir", str(tmp_path / "runs"), "--run-name", "metah"])
    contents = assert_scheme(str(tmp_path / "runs" / "metah"), "metah", [
        "loss/hashing/pairwise", "loss/hashing/quantisation", "loss/hashing/classification", "loss/hashing/entropy",
        "loss/hashing/total", "loss/discriminator/domain", "lr/hashing", "mAP/target->target", "mAP/target->source",
        "discriminator/accuracy"], updates=8)
    assert [step for step, _, _ in contents["loss/hashing/total"]] == [4, 8]
    # The epoch-end evaluation (4 updates per epoch) and the final one, on the same x axis.
    assert [step for step, _, _ in contents["mAP/target->target"]] == [4, 8]


@pytest.mark.slow
def test_ssah_run_follows_the_scheme(trained_runs):
    # the shared tiny run (tests/trained_runs.py): one epoch, one pass of each net, --log-every 2
    run_dir = trained_runs.get("ssah").dir
    terms = ("total", "pair_feature", "pair_hash", "quantisation", "label")
    contents = assert_scheme(run_dir, "ssah", [
        *(f"loss/lab/{term}" for term in terms), "loss/dis/total", "discriminator/accuracy",
        *(f"loss/{step}/{term}" for step in ("img", "txt") for term in terms + ("adversarial",)),
        *(f"lr/{step}" for step in ("lab", "dis", "img", "txt")),
        "mAP/i->t", "mAP/t->i", "mAP/i->i", "mAP/t->t"], updates=28)  # 4 steps x 1 pass x 1000 // 128
    # LabNet runs updates 1-7: its means are read at every second update while it has new ones
    assert [step for step, _, _ in contents["loss/lab/total"]] == [2, 4, 6, 8]
    assert [step for step, _, _ in contents["lr/img"]] == [15]  # the first ImgNet update
    assert contents["lr/lab"][0][2] == np.float32(1e-2)  # the program's lr_lab[0] = 10^-2
