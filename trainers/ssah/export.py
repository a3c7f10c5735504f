"""SSAH's encoders for export.py: its image and text nets (and, with the dataset's vocabulary, a
tag-word encoder) as portable models with the trainer's preprocessing baked in."""
import numpy as np

from models import portable
from trainers.ssah import encoding


def _image_preprocessing(config, data, trainer):
    """(preprocess(x, names), descriptions): the trainer's image_preprocess as built-in layers."""
    from keras import ops
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


def _text_preprocessing(trainer):
    """(preprocess(x, names) or None, descriptions): --text-norm as a built-in layer."""
    from keras import ops
    statistics = trainer.text_preprocess
    if not hasattr(statistics, "mean"):
        return None, []
    return ((lambda x, names: portable.standardize(ops.cast(x, "float32"), statistics.mean, statistics.std,
                                                   names("text_standardize"))),
            ["text standardisation: (x - mean) / std with the training items' statistics"])


def encoders(run_dir):
    """(config, {name: portable.Encoder}) of a trained run: image, text and (with a vocabulary) tag-word encoders."""
    # the run's own split: its training part gives the feature statistics (a validation part,
    # where the run carved one, is not training data)
    config, data, trainer = encoding.restored_model(run_dir)

    img_net, txt_net = trainer.nets["img"], trainer.nets["txt"]
    preprocess, steps = _image_preprocessing(config, data, trainer)
    image_shape = list(data.images.shape[1:])
    is_features = data.image_kind == "features"
    rows = np.sort(data.split.train[:32])
    probe = np.asarray(data.images[rows], np.float32 if is_features else np.uint8)
    portable.check_baked_preprocessing(preprocess, trainer.image_preprocess(probe), probe, "image")
    text_preprocess, text_steps = _text_preprocessing(trainer)
    if text_preprocess is not None:
        text_probe = np.asarray(data.texts[rows], np.float32)
        portable.check_baked_preprocessing(text_preprocess, trainer.text_preprocess(text_probe), text_probe, "text")
    image_dtype = "float32" if is_features else "uint8"
    encoders = {
        "image": portable.Encoder(portable.ssah_image_model(img_net, preprocess, tuple(image_shape), image_dtype),
                         {"name": "images", "shape": image_shape, "dtype": image_dtype,
                          "meaning": "image feature rows" if is_features else "RGB images, 0-255"},
                         portable.codes_output(config.bits), steps + ["sign"]),
        "text": portable.Encoder(portable.ssah_text_model(txt_net, text_preprocess),
                        {"name": "tag_vectors", "shape": [data.text_dim], "dtype": "float32",
                         "meaning": "bag-of-tags rows over the dataset's tag columns"},
                        portable.codes_output(config.bits), text_steps + ["sign"]),
    }
    vocabulary = encoding.dataset_vocabulary(config)
    if vocabulary is not None:
        encoders["tag_words"] = portable.Encoder(
            portable.ssah_tag_words_model(txt_net, vocabulary, text_preprocess),
            {"name": "tag_words", "shape": [None], "dtype": "string",
             "meaning": 'tag words per item, rows padded with "" (words outside the vocabulary count for nothing)'},
            portable.codes_output(config.bits),
            [f"tag lookup: StringLookup multi_hot over the dataset's {len(vocabulary)}-word vocabulary",
             *text_steps, "sign"])
    return config, encoders
