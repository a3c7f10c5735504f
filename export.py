"""Export a trained run's encoders for use outside this repository.

  python export.py RUN_DIR                      both formats into RUN_DIR/export/
  python export.py RUN_DIR --format keras       only the .keras files
  python export.py RUN_DIR --format savedmodel  only the TensorFlow SavedModels

Each encoder takes raw inputs and gives what the run exports to codes.mat: +-1 codes
(SSAH's image and text nets, METAH's hashing net) or embeddings (ACMR's projectors). The
preprocessing is inside the model (feature standardisation, the mean image and channel
order of a CNN, METAH's source statistics, the dataset's tag vocabulary) and so is the
sign (0 -> +1). The models hold only Keras built-in layers and keras.ops: elsewhere,

    import keras; model = keras.saving.load_model("RUN_DIR/export/text.keras")
    import tensorflow as tf; model = tf.saved_model.load("RUN_DIR/export/text_savedmodel"); model.serve(x)

RUN_DIR/export/manifest.json says, per encoder, its files, input, output and the baked
preprocessing. The checkpoint used is the run's latest, as encoding new items does.
"""
import argparse
import dataclasses
import os
import shutil
import tempfile

import numpy as np

from utils import io
from utils.errors import UserError, run_command_line

FORMATS = ("keras", "savedmodel", "both")
EXPORT_FOLDER = "export"
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Encoder:
    """One exported model and what the manifest says about it."""
    model: object
    input: dict       # name, shape (without the batch axis), dtype, meaning
    output: dict      # name, shape, meaning
    preprocessing: list


def _method(run_dir):
    if not os.path.isdir(run_dir):
        raise UserError(f"run folder not found: {run_dir}; give the folder that train.py printed")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{run_dir} is not a run folder (no config.json); give the folder that train.py printed")
    return io.load_json(path).get("method")


def _codes_output(bits):
    return {"name": "codes", "shape": [bits], "dtype": "float32",
            "meaning": "+-1 hash codes: sign of the tanh hash layer, 0 counts as +1"}


# --------------------------------------------------------------------------- SSAH

def check_baked_preprocessing(preprocess, reference, probe, what):
    """The baked preprocessing (a keras.ops graph) must give what the trainer computes (`reference`)
    on `probe` rows: this catches a trainer whose preprocessing changed and export.py did not."""
    import keras

    from utils import portable
    inputs = keras.Input(probe.shape[1:], dtype=str(probe.dtype))
    baked = np.asarray(keras.Model(inputs, preprocess(inputs, portable.Namer()))(probe))
    if not np.allclose(baked, np.asarray(reference, np.float32), rtol=1e-5, atol=1e-6):
        raise ValueError(f"the exported {what} preprocessing differs from the trainer's; export.py must follow "
                         f"the trainer's preprocessing")


def _ssah_image_preprocessing(config, data, trainer):
    """(preprocess(x, names), descriptions): the trainer's image_preprocess as built-in layers."""
    from keras import ops

    from utils import portable
    trunk = trainer.nets["img"].trunk
    if data.image_kind == "features":
        if config.feature_norm != "standardize":
            return (lambda x, names: ops.cast(x, "float32")), ["none (features used as they are)"]
        mean, std = trainer.image_preprocess.mean, trainer.image_preprocess.std  # the training items'
        return ((lambda x, names: portable.standardize(ops.cast(x, "float32"), mean, std, names("standardize"))),
                ["feature standardisation: (x - mean) / std with the training items' statistics"])
    if trunk.mean_image is not None:
        steps = (["RGB -> BGR channel order"] if trunk.bgr_input else []) + ["minus the weight file's mean image"]
        return (lambda x, names: portable.conv_trunk_prepare(x, trunk, names)), steps
    # no mean from a weight file: the trainer subtracts the dataset's mean image, else ImageNet's
    # channel mean; its preprocessing of a black image is minus that mean, exactly
    mean = -np.asarray(trainer.image_preprocess(np.zeros((1,) + tuple(data.images.shape[1:]), np.uint8)))[0]
    what = "the dataset's mean image" if data.mean_image is not None else "ImageNet's per-channel RGB mean"

    def subtract_mean(x, names):
        return portable.standardize(ops.cast(x, "float32"), mean, np.ones_like(mean), names("mean_image"),
                                    axis=(1, 2, 3))
    return subtract_mean, [f"minus {what}"]


def _ssah_text_preprocessing(trainer):
    """(preprocess(x, names) or None, descriptions): --text-norm as a built-in layer."""
    from keras import ops

    from utils import portable
    statistics = trainer.text_preprocess
    if not hasattr(statistics, "mean"):
        return None, []
    return ((lambda x, names: portable.standardize(ops.cast(x, "float32"), statistics.mean, statistics.std,
                                                   names("text_standardize"))),
            ["text standardisation: (x - mean) / std with the training items' statistics"])


def ssah_encoders(run_dir):
    import trainers.ssah as ssah
    from utils import portable
    # the run's own split: its training part gives the feature statistics (a validation part,
    # where the run carved one, is not training data)
    config, data, trainer = ssah.restored_trainer(run_dir)

    img_net, txt_net = trainer.nets["img"], trainer.nets["txt"]
    preprocess, steps = _ssah_image_preprocessing(config, data, trainer)
    image_shape = list(data.images.shape[1:])
    is_features = data.image_kind == "features"
    rows = np.sort(data.split.train[:32])
    probe = np.asarray(data.images[rows], np.float32 if is_features else np.uint8)
    check_baked_preprocessing(preprocess, trainer.image_preprocess(probe), probe, "image")
    text_preprocess, text_steps = _ssah_text_preprocessing(trainer)
    if text_preprocess is not None:
        text_probe = np.asarray(data.texts[rows], np.float32)
        check_baked_preprocessing(text_preprocess, trainer.text_preprocess(text_probe), text_probe, "text")
    image_dtype = "float32" if is_features else "uint8"
    encoders = {
        "image": Encoder(portable.ssah_image_model(img_net, preprocess, tuple(image_shape), image_dtype),
                         {"name": "images", "shape": image_shape, "dtype": image_dtype,
                          "meaning": "image feature rows" if is_features else "RGB images, 0-255"},
                         _codes_output(config.bits), steps + ["sign"]),
        "text": Encoder(portable.ssah_text_model(txt_net, text_preprocess),
                        {"name": "tag_vectors", "shape": [data.text_dim], "dtype": "float32",
                         "meaning": "bag-of-tags rows over the dataset's tag columns"},
                        _codes_output(config.bits), text_steps + ["sign"]),
    }
    vocabulary = ssah.dataset_vocabulary(config)
    if vocabulary is not None:
        encoders["tag_words"] = Encoder(
            portable.ssah_tag_words_model(txt_net, vocabulary, text_preprocess),
            {"name": "tag_words", "shape": [None], "dtype": "string",
             "meaning": 'tag words per item, rows padded with "" (words outside the vocabulary count for nothing)'},
            _codes_output(config.bits),
            [f"tag lookup: StringLookup multi_hot over the dataset's {len(vocabulary)}-word vocabulary",
             *text_steps, "sign"])
    return config, encoders


# --------------------------------------------------------------------------- ACMR

def acmr_encoders(run_dir):
    import trainers.acmr as acmr
    from utils import portable
    config, data, model = acmr.restored_model(run_dir)
    dims = {"image": data.images.shape[1], "text": data.text_dim}
    projectors = {"image": model.nets.image_projector, "text": model.nets.text_projector}
    encoders = {}
    for modality, projector in projectors.items():
        width = projector.dense_layers[-1].units
        encoders[modality] = Encoder(
            portable.acmr_projector_model(projector, dims[modality], modality),
            {"name": f"{modality}_features", "shape": [int(dims[modality])], "dtype": "float32",
             "meaning": f"{modality} feature rows, as the run's data"},
            {"name": "embeddings", "shape": [int(width)], "dtype": "float32",
             "meaning": "common-space embeddings (compare by Euclidean distance)"},
            ["none (features used as they are)" if projector.standardize is None else
             "standardisation: (x - training mean) / training std, per dimension"])
    return config, encoders


# --------------------------------------------------------------------------- METAH

def _metah_preprocessing(config, pair):
    """(preprocess(x, names), descriptions): trainers.metah.prepare_inputs with the source statistics
    (the same formulas; check_baked_preprocessing compares the two)."""
    from keras import ops

    from utils import portable
    from utils.data import standardization
    if pair.source.kind == "images":
        return (lambda x, names: ops.cast(x, "float32")), ["none (images as float32; the trunk scales them)"]
    train = pair.source.inputs.astype(np.float32)[pair.source_train]
    if config.feature_norm == "center":
        mean = train.mean(axis=0)
        scale = np.float32(max(float(np.sqrt(np.mean(np.square(train - mean)))), 1e-8))
        std, what = np.full_like(mean, scale), "centring: (x - source mean) / source RMS (one scalar)"
    elif config.feature_norm == "standardize":
        mean, std = standardization(train)
        what = "standardisation: (x - source mean) / source std"
    elif config.feature_norm == "l2":
        def unit(x, names):
            x = ops.cast(x, "float32")
            return ops.divide(x, ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12))
        return unit, ["rows to unit length"]
    else:
        return (lambda x, names: ops.cast(x, "float32")), ["none (features used as they are)"]
    return ((lambda x, names: portable.standardize(ops.cast(x, "float32"), mean, std, names("standardize"))),
            [f"feature {what}"])


def metah_encoders(run_dir):
    import trainers.metah as metah
    from utils import portable
    from utils.data.domains import DomainData
    config, pair, model = metah.restored_model(run_dir)
    input_shape = tuple(pair.source.inputs.shape[1:])
    preprocess, steps = _metah_preprocessing(config, pair)
    is_images = pair.source.kind == "images"
    dtype = "uint8" if is_images else "float32"
    probe = np.asarray(pair.target.inputs[:32], dtype)
    probe_domain = DomainData("probe", probe, np.zeros(len(probe), np.int64))
    reference = metah.prepare_inputs(dataclasses.replace(pair, target=probe_domain), config)[1]
    check_baked_preprocessing(preprocess, reference, probe, "feature")
    return config, {"image": Encoder(
        portable.metah_model(model.net, input_shape, dtype, preprocess),
        {"name": "inputs", "shape": list(input_shape), "dtype": dtype,
         "meaning": "RGB images, 0-255" if is_images else "feature rows of either domain, as the run's data"},
        _codes_output(config.bits), steps + ["sign"])}


BUILDERS = {"ssah": ssah_encoders, "acmr": acmr_encoders, "metah": metah_encoders}


# --------------------------------------------------------------------------- writing

def _write_folder_atomically(folder, fill):
    """Fills a temporary folder beside `folder` with fill(tmp), then swaps it in: a reader sees
    the old export or the new one, never a half-written one."""
    parent = os.path.dirname(os.path.abspath(folder))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=parent)
    old = None
    try:
        fill(tmp)
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old.", dir=parent)
            os.replace(folder, os.path.join(old, "previous"))
        os.replace(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_savedmodel(encoder, path):
    """A TensorFlow SavedModel: `serve(x)` returns the output tensor; the signatures `serve` and
    `serving_default` (TF Serving) map {input name: x} to {output name: output}. (keras' own
    Model.export stores every variable twice; tracking the model once stores them once.)"""
    import tensorflow as tf
    model = encoder.model
    spec = tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype, name=encoder.input["name"])
    module = tf.Module()
    module.model = model  # tracks the variables and lookup tables once
    module.serve = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    signature = tf.function(lambda x: {encoder.output["name"]: module.serve(x)}, input_signature=[spec],
                            autograph=False)
    tf.saved_model.save(module, path, signatures={"serve": signature, "serving_default": signature})


def export_run(run_dir, fmt="both"):
    """Writes RUN_DIR/export/ and returns its manifest (a dict)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    method = _method(run_dir)
    if method not in BUILDERS:
        raise UserError(f"{run_dir}/config.json names method {method!r}; export knows {', '.join(BUILDERS)}")
    from utils.run import checkpoint_candidates
    if not checkpoint_candidates(run_dir):
        raise UserError(f"{run_dir} has no checkpoint to export; train it first (train.py --resume {run_dir})")
    config, encoders = BUILDERS[method](run_dir)
    import keras
    import tensorflow as tf
    manifest = {"method": method, "bits": int(config.bits) if method != "acmr" else None,
                "dataset": config.dataset, "written_with": {"keras": keras.__version__, "tensorflow": tf.__version__},
                "encoders": {}}

    def fill(folder):
        for name, encoder in encoders.items():
            files = {}
            if fmt in ("keras", "both"):
                files["keras"] = f"{name}.keras"
                encoder.model.save(os.path.join(folder, files["keras"]))
            if fmt in ("savedmodel", "both"):
                files["savedmodel"] = f"{name}_savedmodel"
                save_savedmodel(encoder, os.path.join(folder, files["savedmodel"]))
            manifest["encoders"][name] = {"files": files, "input": encoder.input, "output": encoder.output,
                                          "preprocessing": encoder.preprocessing}
        io.save_json(os.path.join(folder, MANIFEST), manifest)

    _write_folder_atomically(os.path.join(run_dir, EXPORT_FOLDER), fill)
    return manifest


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder of train.py (with config.json and checkpoints)")
    parser.add_argument("--format", default="both", choices=FORMATS,
                        help="keras (.keras files), savedmodel (TensorFlow SavedModel folders) or both")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    manifest = export_run(args.run_dir, args.format)
    folder = os.path.join(args.run_dir, EXPORT_FOLDER)
    for name, entry in manifest["encoders"].items():
        print(f"{name}: {', '.join(os.path.join(folder, f) for f in entry['files'].values())}  "
              f"({entry['input']['name']} -> {entry['output']['name']})")
    return manifest


if __name__ == "__main__":
    run_command_line(main)
