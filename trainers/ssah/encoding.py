"""Codes of new items (image features or images, tag vectors or tag words) from a trained run."""
import os

import numpy as np
import tensorflow as tf

from trainers.ssah.config import Config, resolve_backbone
from trainers.ssah.training import _check_resume_checkpoint, build_model, load_data
from utils import io
from utils.data import resolve_path, sidecar_paths
from utils.errors import UserError
from utils.run import item_rows, restore_trained, saved_config


def dataset_vocabulary(config):
    """The tag words of the run's dataset in column order (FILE.vocab.json that prepare.py
    writes beside FILE.h5), or None when the data has none."""
    path = resolve_path(config.dataset, config.data)
    vocab_path = sidecar_paths(path)[0] if path and os.path.isfile(path) else ""
    return io.load_json(vocab_path)["vocabulary"] if vocab_path and os.path.exists(vocab_path) else None


def tag_vectors(words, vocabulary, text_dim):
    """Bag-of-tags rows (float32) of one tag list or a list of tag lists; unknown tags are skipped."""
    if vocabulary is None:
        raise UserError("the run's dataset has no vocabulary file (FILE.vocab.json from prepare.py): "
                        f"give tag vectors (items x {text_dim}) instead of tag words")
    items = [words] if all(isinstance(w, str) for w in words) else list(words)
    column = {word: j for j, word in enumerate(vocabulary)}
    vectors = np.zeros((len(items), text_dim), np.float32)
    for row, item in enumerate(items):
        known = [column[w] for w in item if w in column]
        if not known:
            raise UserError(f"none of the tags {list(item)[:5]} is in the dataset's {len(vocabulary)}-word "
                            f"vocabulary; give other tags or a tag vector")
        vectors[row, known] = 1.0
    return vectors


def _holds_words(inputs):
    """True for a tag list ["dog", "beach"] or a list of tag lists."""
    if isinstance(inputs, np.ndarray):
        return inputs.dtype.kind in "UO"
    first = inputs[0] if len(inputs) else None
    return isinstance(first, str) or (isinstance(first, (list, tuple)) and bool(first)
                                      and isinstance(first[0], str))


def restored_model(run_dir, data=None):
    """(config, data, trainer) of a trained run: the networks rebuilt from RUN_DIR/config.json
    (the run's dataset gives shapes and feature statistics; `data` when already loaded) with
    the latest checkpoint restored. encode() and export.py both start here."""
    _, config = saved_config(run_dir, {"ssah": Config})
    data = data if data is not None else load_data(config)
    trainer = build_model(config, data, resolve_backbone(config, data))
    objects = trainer.checkpoint_objects()
    _check_resume_checkpoint(run_dir, objects)
    restore_trained(run_dir, tf.train.Checkpoint(**objects))
    return config, data, trainer


def encode(run_dir, inputs, modality):
    """+-1 codes (float32, items x bits) of new items from a trained SSAH run.

    Rebuilds the nets from RUN_DIR/config.json (the run's dataset is loaded for its shapes
    and feature statistics) and restores the latest checkpoint. modality "image": image
    features, or uint8 images (n x h x w x 3), as the run's data; "text": tag vectors
    (n x tags), or tag words (one list, or a list of lists) mapped through the dataset's
    vocabulary."""
    if modality not in ("image", "text"):
        raise UserError(f"unknown modality {modality!r} for SSAH; choose image or text")
    _, config = saved_config(run_dir, {"ssah": Config})
    data = load_data(config)
    if modality == "text" and _holds_words(inputs):
        inputs = tag_vectors(inputs, dataset_vocabulary(config), data.text_dim)
    item_shape = (data.text_dim,) if modality == "text" else data.images.shape[1:]
    inputs = item_rows(inputs, item_shape, f"{modality} inputs")
    _, _, trainer = restored_model(run_dir, data)
    return trainer.hash_codes("img" if modality == "image" else "txt", inputs, config.eval_batch_size)
