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
import os
import shutil
import tempfile

from trainers.registry import METHODS, get_method
from utils import io
from utils.errors import UserError, run_command_line

FORMATS = ("keras", "savedmodel", "both")
EXPORT_FOLDER = "export"
MANIFEST = "manifest.json"


def _method(run_dir):
    if not os.path.isdir(run_dir):
        raise UserError(f"run folder not found: {run_dir}; give the folder that train.py printed")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{run_dir} is not a run folder (no config.json); give the folder that train.py printed")
    return io.load_json(path).get("method")


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
    if method not in METHODS:
        raise UserError(f"{run_dir}/config.json names method {method!r}; export knows {', '.join(METHODS)}")
    from utils.run import checkpoint_candidates
    if not checkpoint_candidates(run_dir):
        raise UserError(f"{run_dir} has no checkpoint to export; train it first (train.py --resume {run_dir})")
    spec = get_method(method)
    config, encoders = spec.encoders(run_dir)
    import keras
    import tensorflow as tf
    manifest = {"method": method, "bits": int(config.bits) if spec.exports["distance"] == "hamming" else None,
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
