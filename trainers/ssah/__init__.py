"""SSAH (Li et al., CVPR 2018): self-supervised adversarial hashing for cross-modal retrieval.

`python train.py --method ssah --variant original --dataset flickr --bits 32`

One epoch = four alternating steps: LabNet passes, discriminator passes, ImgNet passes,
TxtNet passes (the program's order; the paper's, `step_order`, runs the discriminators
last). Each step is ONE tf.GradientTape update of a random batch against stored copies of
all n training items (buffers F, G, H of hashes and feat_I, feat_T, feat_L of semantic
features). A step first writes its batch's outputs (computed before the update) into its
buffers, as the authors' program does. Every departure of the program from the paper is a
named setting of `Config`; `PRESETS["original"]` is the program, `PRESETS["paper"]` the paper.

Files: config (settings, presets, schedules, early-stop rules), steps (SSAHTrainer: nets,
buffers, the four updates), epochs (an epoch's passes, early stop, mid-epoch checkpoints),
training (building, evaluation, SSAH's part of the shared loop trainers/loop.py, fit/train), encoding (codes of new items).
"""
from trainers.ssah.config import (DATASET_DEFAULTS, EARLY_STOP, IMAGENET_MEAN_RGB, METHOD, PRESET_FIELD, PRESETS,
                                  PROGRAM_MS_WINDOWS, PROGRAM_STEP_ORDER, SCHEDULES, STEP_NAMES, STEP_TERMS, Config,
                                  EarlyStopRule, check_network_settings, learning_rate, resolve_backbone)
from trainers.ssah.encoding import dataset_vocabulary, encode, restored_trainer, tag_vectors
from trainers.ssah.export import encoders
from trainers.ssah.epochs import SUMMARY_KEYS, EpochLoop, StopCheck, inner_loop
from trainers.ssah.steps import SSAHTrainer, checkpoint_variable_names
from trainers.ssah.training import (SSAHTraining, _check_resume_checkpoint, build_trainer, build_trunk, evaluate,
                                    fit, load_data, text_standardizer, train, validation_score)

__all__ = ["DATASET_DEFAULTS", "EARLY_STOP", "IMAGENET_MEAN_RGB", "METHOD", "PRESET_FIELD", "PRESETS", "PROGRAM_MS_WINDOWS",
           "PROGRAM_STEP_ORDER", "SCHEDULES", "STEP_NAMES", "STEP_TERMS", "SUMMARY_KEYS", "Config", "EarlyStopRule",
           "EpochLoop", "SSAHTrainer", "SSAHTraining", "StopCheck", "build_trainer", "build_trunk",
           "check_network_settings", "checkpoint_variable_names", "dataset_vocabulary", "encode", "encoders", "evaluate", "fit",
           "inner_loop", "learning_rate", "load_data", "resolve_backbone", "tag_vectors", "text_standardizer", "train", "validation_score",
           "_check_resume_checkpoint"]
