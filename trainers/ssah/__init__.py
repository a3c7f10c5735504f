"""SSAH (Li et al., CVPR 2018): self-supervised adversarial hashing for cross-modal retrieval.

`python train.py --method ssah --variant original --dataset flickr --bits 32`

One epoch = four alternating steps: LabNet passes, discriminator passes, ImgNet passes,
TxtNet passes (the program's order; the paper's, `step_order`, runs the discriminators
last). Each step is ONE tf.GradientTape update of a random batch against stored copies of
all n training items (buffers F, G, H of hashes and feat_I, feat_T, feat_L of semantic
features). A step first writes its batch's outputs (computed before the update) into its
buffers, as the authors' program does. Every departure of the program from the paper is a
named setting of `Config`; `PRESETS["original"]` is the program, `PRESETS["paper"]` the paper.

Files: config (settings, presets, schedules, early-stop rules, the registered MethodSpec),
steps (SsahModel: nets, buffers, the four updates), epochs (an epoch's passes, early stop,
mid-epoch checkpoints), training (building, evaluation, SSAH's part of the shared loop
trainers/loop.py, fit/train), encoding (codes of new items), export (its encoders for
export.py). The names below load their file on first use: reading the settings (config)
imports no TensorFlow, so `python train.py --help` stays fast.
"""
import importlib

# Each public name and the file that defines it.
_DEFINED_IN = {
    "config": ("DATASET_DEFAULTS", "EARLY_STOP", "IMAGENET_MEAN_RGB", "METHOD", "PRESET_FIELD", "PRESETS",
               "PROGRAM_MS_WINDOWS", "PROGRAM_STEP_ORDER", "SCHEDULES", "STEP_NAMES", "STEP_TERMS", "Config",
               "EarlyStopRule", "check_config", "check_network_settings", "learning_rate", "resolve_backbone"),
    "encoding": ("dataset_vocabulary", "encode", "restored_model", "tag_vectors"),
    "export": ("encoders",),
    "epochs": ("SUMMARY_KEYS", "EpochLoop", "StopCheck", "inner_loop"),
    "steps": ("SsahModel", "checkpoint_variable_names"),
    "training": ("SsahTraining", "_check_resume_checkpoint", "build_model", "build_trunk", "evaluate", "fit",
                 "load_data", "text_standardizer", "train", "validation_score"),
}
_FILE_OF = {name: file for file, names in _DEFINED_IN.items() for name in names}
__all__ = sorted(_FILE_OF)


def __getattr__(name):
    if name in _DEFINED_IN:  # a file of the package, e.g. trainers.ssah.encoding
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _FILE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FILE_OF[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(_FILE_OF))
