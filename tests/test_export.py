"""export.py: each method's encoders, loaded in a fresh Python process that imports nothing of
this repository (keras.saving.load_model / tf.saved_model.load only), give the run's own
exported query codes (embeddings for ACMR) for the same raw inputs. One such process per test
module (the `outside` fixture) loads every test's export in turn, checking after each that no
module of the repository was imported. The runs are copies of the shared small ones
(tests/trained_runs.py), trained once per session, except those trained here with other options."""
import json
import os
import select
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

import export
import train
from tests.conftest import REPO_ROOT
from tests.trained_runs import CNNF_SPLIT, SSAH_TINY, golden_width_cnnf
from utils.errors import UserError

# Runs with -I (no PYTHONPATH, no script folder on sys.path) in a folder outside the repository;
# reads one request a line on stdin (JSON [export folder, inputs .npz, outputs .npz]) and answers
# each on its own line ("ok" or the error) on the stdout it started with (anything else printed goes
# to stderr).
OUTSIDE_LOADER = r"""
import importlib.util, json, os, sys, traceback
repo = sys.argv[1]
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
assert not any(os.path.abspath(p or os.getcwd()).startswith(repo) for p in sys.path), sys.path
for name in ("utils", "models", "trainers", "losses", "export"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
import numpy as np
import keras
import tensorflow as tf

def load_and_run(export_dir, inputs_path, outputs_path):
    inputs = np.load(inputs_path)
    manifest = json.load(open(os.path.join(export_dir, "manifest.json")))
    outputs = {}
    for key in inputs.files:  # NAME or NAME@WHAT: inputs for the encoder NAME
        name, x = key.split("@")[0], tf.constant(inputs[key])
        outputs[key + ".keras"] = np.asarray(keras.saving.load_model(os.path.join(export_dir, name + ".keras"))(x))
        saved = tf.saved_model.load(os.path.join(export_dir, name + "_savedmodel"))
        outputs[key + ".savedmodel"] = saved.serve(x).numpy()
        entry = manifest["encoders"][name]  # the TF Serving signature: {input name: x} -> {output name: y}
        signed = saved.signatures["serving_default"](**{entry["input"]["name"]: x})[entry["output"]["name"]]
        assert np.array_equal(signed.numpy(), outputs[key + ".savedmodel"]), key
    loaded = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    assert not [f for f in loaded if os.path.abspath(f).startswith(repo + os.sep)], "a repository module was imported"
    np.savez(outputs_path, **outputs)

for line in sys.stdin:
    try:
        load_and_run(*json.loads(line))
        reply = "ok"
    except BaseException:
        reply = traceback.format_exc()
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""
OUTSIDE_TIMEOUT = 300  # seconds for one request


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The loader process outside the repository, started once for the module's tests."""
    folder = tmp_path_factory.mktemp("outside")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(folder / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-I", "-c", OUTSIDE_LOADER, REPO_ROOT], cwd=folder, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    yield process, folder / "stderr.txt"
    process.kill()  # every answer is in: no need to wait for TensorFlow's shutdown
    process.wait()
    process.stdin.close()
    process.stdout.close()


def outside_outputs(outside, tmp_path, run_dir, inputs):
    """{"KEY.keras": outputs, "KEY.savedmodel": outputs} of the exported encoder NAME on
    inputs[KEY] (KEY: NAME or NAME@WHAT), computed by the process outside the repository."""
    process, stderr = outside
    folder = tmp_path / "outside"
    folder.mkdir()
    np.savez(folder / "inputs.npz", **inputs)
    assert process.poll() is None, stderr.read_text()[-3000:]
    process.stdin.write(json.dumps([os.path.join(run_dir, "export"), str(folder / "inputs.npz"),
                                    str(folder / "outputs.npz")]) + "\n")
    process.stdin.flush()
    ready, _, _ = select.select([process.stdout], [], [], OUTSIDE_TIMEOUT)
    if not ready:
        process.kill()  # its late answer must not pass for the next request's
        pytest.fail(f"no answer in {OUTSIDE_TIMEOUT} s: {stderr.read_text()[-3000:]}")
    reply = process.stdout.readline()
    assert reply, f"the loader stopped: {stderr.read_text()[-3000:]}"
    assert json.loads(reply) == "ok", json.loads(reply)[-3000:]
    return dict(np.load(folder / "outputs.npz"))


def assert_both_formats_give(outputs, name, expected, exact=True):
    for fmt in ("keras", "savedmodel"):
        got = outputs[f"{name}.{fmt}"]
        if exact:
            np.testing.assert_array_equal(got, expected, err_msg=f"{name}.{fmt}")
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=f"{name}.{fmt}")


def train_run(tmp_path, options, name="run"):
    train.main(options + ["--runs-dir", str(tmp_path / "runs"), "--run-name", name])
    run_dir = str(tmp_path / "runs" / name)
    return run_dir, scipy.io.loadmat(f"{run_dir}/codes.mat")


@pytest.mark.slow
def test_ssah_export_with_tag_words_reproduces_the_query_codes_outside(tmp_path, monkeypatch, outside, trained_runs):
    import trainers.ssah as ssah
    from utils.data import load_dataset
    run = trained_runs.copy("ssah", tmp_path)
    run_dir, exported = run.dir, run.codes
    query_images, query_texts, _ = load_dataset("synthetic").part("query")
    vocabulary = [f"tag{j}" for j in range(query_texts.shape[1])]
    monkeypatch.setattr(ssah.encoding, "dataset_vocabulary", lambda config: vocabulary)  # synthetic data has none
    manifest = export.export_run(run_dir)
    assert set(manifest["encoders"]) == {"image", "text", "tag_words"}
    assert json.load(open(os.path.join(run_dir, "export", "manifest.json"))) == manifest
    assert manifest["method"] == "ssah" and manifest["bits"] == 16 and set(manifest["written_with"]) == {
        "keras", "tensorflow"}
    assert any("standardisation" in step for step in manifest["encoders"]["image"]["preprocessing"])

    assert set(np.unique(query_texts)) <= {0, 1}  # binary tags: the words give the same rows
    rows = [[vocabulary[j] for j in np.flatnonzero(row)] + ["unknown-tag"] for row in query_texts]
    width = max(len(r) for r in rows)
    words = np.array([r + [""] * (width - len(r)) for r in rows])
    # a one-epoch run gives nearly constant codes: scaled random rows tell the items apart
    rng = np.random.RandomState(0)
    spread = {"image@spread": (rng.rand(40, query_images.shape[1]) * 30).astype(np.float32),
              "text@spread": (rng.rand(40, query_texts.shape[1]) * 300).astype(np.float32)}
    outputs = outside_outputs(outside, tmp_path, run_dir, {"image": query_images.astype(np.float32),
                                                           "text": query_texts.astype(np.float32),
                                                           "tag_words": words, **spread})
    assert_both_formats_give(outputs, "image", exported["Qi"])
    assert_both_formats_give(outputs, "text", exported["Qt"])
    assert_both_formats_give(outputs, "tag_words", exported["Qt"])
    for key, rows in spread.items():
        expected = ssah.encode(run_dir, rows, key.split("@")[0])
        assert len(np.unique(expected, axis=0)) > 10
        assert_both_formats_give(outputs, key, expected)


@pytest.mark.slow
def test_ssah_export_bakes_in_the_text_standardisation(tmp_path):
    import keras

    import trainers.ssah as ssah
    from utils.data import load_dataset
    run_dir, exported = train_run(tmp_path, SSAH_TINY + ["--text-norm", "standardize"])
    manifest = export.export_run(run_dir, "keras")
    assert any("text standardisation" in step for step in manifest["encoders"]["text"]["preprocessing"])
    model = keras.saving.load_model(os.path.join(run_dir, "export", "text.keras"))
    query_texts = load_dataset("synthetic").part("query")[1].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(query_texts)), exported["Qt"])
    rows = np.random.RandomState(0).rand(60, query_texts.shape[1]).astype(np.float32)
    expected = ssah.encode(run_dir, rows, "text")
    assert len(np.unique(expected, axis=0)) > 2  # rows the standardisation tells apart
    np.testing.assert_array_equal(np.asarray(model(rows)), expected)


@pytest.mark.slow
def test_ssah_cnnf_export_bakes_in_the_mean_image_and_reproduces_the_image_codes(tmp_path, monkeypatch, outside,
                                                                                 trained_runs):
    import utils.data
    run = trained_runs.copy("ssah_cnnf", tmp_path)  # SSAH with a CNN-F of the golden file's few channels
    run_dir, exported = run.dir, run.codes
    golden_width_cnnf(monkeypatch)  # the nets rebuilt as the run trained them
    manifest = export.export_run(run_dir)
    assert manifest["encoders"]["image"]["input"] == {"name": "images", "shape": [224, 224, 3], "dtype": "uint8",
                                                      "meaning": "RGB images, 0-255"}
    data = utils.data.load_dataset("coco", run.data, split_sizes=CNNF_SPLIT)
    query_images, _, _ = data.part("query")
    query_images = np.asarray(query_images[np.arange(len(query_images))], np.uint8)
    outputs = outside_outputs(outside, tmp_path, run_dir, {"image": query_images})
    assert len(np.unique(exported["Qi"], axis=0)) > 1
    assert_both_formats_give(outputs, "image", exported["Qi"])


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["none", "standardize"])
def test_acmr_export_reproduces_the_query_embeddings(tmp_path, norm, outside, trained_runs):
    from tests.trained_runs import ACMR_SYNTHETIC
    from utils.data import load_dataset
    if norm == "none":  # the program's inputs: the shared run
        run = trained_runs.copy("acmr", tmp_path)
        run_dir, exported = run.dir, run.codes
    else:
        run_dir, exported = train_run(tmp_path, ACMR_SYNTHETIC + ["--image-norm", norm, "--text-norm", norm])
    manifest = export.export_run(run_dir)
    assert ("standardisation" in manifest["encoders"]["text"]["preprocessing"][0]) == (norm == "standardize")
    query_images, query_texts, _ = load_dataset("synthetic").part("query")
    outputs = outside_outputs(outside, tmp_path, run_dir, {"image": query_images.astype(np.float32),
                                                           "text": query_texts.astype(np.float32)})
    assert_both_formats_give(outputs, "image", exported["Qi"], exact=False)
    assert_both_formats_give(outputs, "text", exported["Qt"], exact=False)


@pytest.mark.slow
def test_metah_export_bakes_in_the_source_statistics(tmp_path, outside, trained_runs):
    import trainers.metah as metah
    from utils.run import saved_config
    run = trained_runs.copy("metah", tmp_path)
    run_dir, exported = run.dir, run.codes
    manifest = export.export_run(run_dir)
    assert "centring" in manifest["encoders"]["image"]["preprocessing"][0]
    pair = metah.load_pair(saved_config(run_dir, {"metah": metah.Config})[1])
    queries = pair.target.inputs[pair.target_query].astype(np.float32)
    outputs = outside_outputs(outside, tmp_path, run_dir, {"image": queries})
    assert len(np.unique(exported["Q"], axis=0)) > 1
    assert_both_formats_give(outputs, "image", exported["Q"].astype(np.float32))


@pytest.mark.slow
def test_export_errors_are_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        export.export_run(str(run_dir))
    (run_dir / "config.json").write_text(json.dumps({"method": "ssah", "config": {}}))
    with pytest.raises(UserError, match="no checkpoint to export; train it first"):
        export.export_run(str(run_dir))
    with pytest.raises(UserError, match="unknown export format 'onnx'"):
        export.export_run(str(run_dir), "onnx")
    with pytest.raises(SystemExit):
        export.main([str(run_dir), "--format", "onnx"])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    assert not os.path.exists(run_dir / "export")


def roundtrip(model, tmp_path):
    """The model saved to .keras and loaded back (built-in layers and keras.ops only: no custom objects)."""
    import keras
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    return keras.saving.load_model(path)


@pytest.mark.parametrize("fusion,text_dim", [("joint", 40), ("per_window", 12)])
def test_portable_text_net_gives_the_net_codes(tmp_path, fusion, text_dim):
    """Both multi-scale fusions, and a text narrower than some windows (they are dropped)."""
    import keras
    import tensorflow as tf

    from models.ssah import TxtNet
    from models import portable
    keras.utils.set_random_seed(1)
    net = TxtNet(text_dim, 5, 16, embed_dim=24, hidden_dim=32, fusion=fusion)
    rng = np.random.RandomState(0)
    texts = rng.normal(0, 5, (30, text_dim)).astype(np.float32)
    net(tf.constant(texts))
    for variable in net.weights:  # the program's 0.01-scaled start gives one code for every item
        if variable.path.endswith("bias"):
            value = np.zeros(variable.shape)
        elif len(variable.shape) == 2:
            value = rng.normal(0, 1 / np.sqrt(variable.shape[0]), variable.shape)
        else:  # the fusion's weights: positive, so that the relu after them passes the text
            value = np.abs(rng.normal(0, 1, variable.shape))
        variable.assign(value.astype(np.float32))
    expected = np.where(net(tf.constant(texts))[1].numpy() >= 0, 1.0, -1.0)
    assert len(np.unique(expected, axis=0)) > 5
    model = roundtrip(portable.ssah_text_model(net), tmp_path)
    np.testing.assert_array_equal(np.asarray(model(texts)), expected)


@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["cnn", "mlp", "cnnf"])
def test_portable_metah_net_leaves_dropout_out_and_gives_the_net_codes(tmp_path, monkeypatch, trunk):
    import functools

    import keras
    import tensorflow as tf
    from keras import ops

    import models.cnnf
    from models.metah import HashingNetwork
    from models import portable
    monkeypatch.setattr(models.cnnf, "CNNF", functools.partial(models.cnnf.CNNF, widths=models.cnnf.GOLDEN_WIDTHS))
    keras.utils.set_random_seed(2)
    net = HashingNetwork(16, 4, trunk=trunk, hidden=(32, 16), dropout=0.5)
    rng = np.random.RandomState(0)
    shape = {"cnn": (16, 16, 3), "mlp": (20,), "cnnf": (224, 224, 3)}[trunk]
    inputs = (rng.rand(6, *shape) * (3 if trunk == "mlp" else 255)).astype(np.float32)
    if trunk == "cnnf":  # a random CNN-F's features share one direction: centre the hash layer on them
        net(tf.constant(inputs))
        features = net.trunk(tf.constant(inputs)).numpy()
        net.hash_layer.bias.assign(-(features @ net.hash_layer.kernel.numpy()).mean(axis=0))
    expected = np.where(net(tf.constant(inputs), training=False)[0].numpy() >= 0, 1.0, -1.0)
    assert len(np.unique(expected, axis=0)) > 3
    model = portable.metah_model(net, shape, "float32", lambda x, names: ops.cast(x, "float32"))
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    np.testing.assert_array_equal(np.asarray(roundtrip(model, tmp_path)(inputs)), expected)


def test_portable_conv_trunk_matches_a_bgr_trunk_with_a_mean_image(tmp_path):
    """The MatConvNet chain (asymmetric padding, LRN over channels, max pools padded with -inf,
    an average pool) and ConvTrunk.prepare (RGB -> BGR, minus the mean image) from built-ins."""
    import keras
    import tensorflow as tf

    from models.cnnf import ConvTrunk, LayerSpec
    from models import portable
    keras.utils.set_random_seed(3)
    lrn = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    geometry = [LayerSpec("conv", 0, "conv1", (5, 5), 8, (2, 2), (0, 1, 2, 1)), LayerSpec("relu", 1),
                LayerSpec("lrn", 2, lrn=lrn), LayerSpec("pool", 3, size=(3, 3), stride=(2, 2), pad=(0, 1, 0, 1)),
                LayerSpec("conv", 4, "conv2", (3, 3), 6, (1, 1), (1, 1, 1, 1)),
                LayerSpec("pool", 5, size=(2, 2), stride=(2, 2), pooling="avg")]
    rng = np.random.RandomState(0)
    mean_image = rng.uniform(0, 255, (24, 24, 3)).astype(np.float32)
    trunk = ConvTrunk(geometry, mean_image=mean_image, bgr_input=True)
    images = rng.randint(0, 256, (5, 24, 24, 3)).astype(np.uint8)
    expected = trunk(trunk.prepare(tf.constant(images))).numpy()
    names = portable.Namer()
    inputs = keras.Input((24, 24, 3), dtype="uint8")
    outputs = portable.conv_trunk(portable.conv_trunk_prepare(inputs, trunk, names), trunk, names)
    model = roundtrip(keras.Model(inputs, outputs, name="trunk"), tmp_path)
    assert expected.shape == (5, 2 * 3 * 6) and np.abs(expected).max() > 1
    np.testing.assert_allclose(np.asarray(model(images)), expected, rtol=1e-5, atol=1e-4)


def test_a_failed_export_leaves_the_previous_one(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "old.keras").write_text("previous")

    def failing(tmp):
        open(os.path.join(tmp, "new.keras"), "w").close()
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        export._write_folder_atomically(str(folder), failing)
    assert os.listdir(tmp_path) == ["export"] and os.listdir(folder) == ["old.keras"]
    export._write_folder_atomically(str(folder), lambda tmp: open(os.path.join(tmp, "new.keras"), "w").close())
    assert os.listdir(tmp_path) == ["export"] and os.listdir(folder) == ["new.keras"]


def test_baked_preprocessing_that_differs_from_the_trainers_is_an_error():
    from keras import ops

    from models import portable
    rows = np.random.RandomState(0).rand(4, 5).astype(np.float32)
    portable.check_baked_preprocessing(lambda x, names: ops.multiply(x, 2.0), rows * 2, rows, "image")
    with pytest.raises(ValueError, match="exported image preprocessing differs from the trainer's"):
        portable.check_baked_preprocessing(lambda x, names: ops.multiply(x, 2.0), rows * 2 + 1e-3, rows, "image")
