"""Building an SSAH trainer for a dataset, evaluating it, and training it on the shared loop."""
import os

import numpy as np
import tensorflow as tf

import utils.data
from models import cnnf, vgg19
from models.ssah import FeatureTrunk
from trainers.loop import DISCRIMINATOR_ACCURACY_TAG, LOSS_TAG, Evaluation, LossMeter, Method, TrainingLoop
from trainers.registry import check_settings
from trainers.ssah.config import IMAGENET_MEAN_RGB, METHOD, STEP_NAMES, STEP_TERMS, resolve_backbone
from trainers.ssah.epochs import EpochLoop
from trainers.ssah.steps import SsahModel, checkpoint_variable_names
from utils import distribute
from utils.errors import UserError
from utils.data import LazyRows
from utils.exports import EXPORTS
from utils.metrics import mean_average_precision


def build_trunk(config, data, backbone):
    """(trunk model, image preprocessing function).

    Features: optionally standardised with the training statistics. Images (uint8): the
    trunk's own `prepare` (channel order, minus the weight file's mean image) when a weight
    file gave a mean; otherwise minus the dataset's mean image, or ImageNet's per-channel
    RGB mean when the dataset has none.
    """
    if backbone == "features":
        train_images = data.images[data.split.train]
        if config.feature_norm == "standardize":
            mean = train_images.mean(axis=0).astype(np.float32)
            std = np.maximum(train_images.std(axis=0), 1e-6).astype(np.float32)
        else:
            mean = np.zeros(train_images.shape[1], np.float32)
            std = np.ones(train_images.shape[1], np.float32)
        return FeatureTrunk(config.hidden_dim, name="feature_trunk"), standardizer(mean, std)
    if backbone == "cnnf":
        trunk = cnnf.cnnf_from_file(config.weights) if config.weights else cnnf.CNNF()
    elif backbone == "vgg19":
        trunk = vgg19.vgg19_from_file(config.weights) if config.weights else vgg19.VGG19()
    else:
        raise UserError(f"unknown backbone {backbone!r}; choose cnnf, vgg19 or features")
    if getattr(trunk, "mean_image", None) is not None:
        return trunk, trunk.prepare
    fallback = data.mean_image if data.mean_image is not None else IMAGENET_MEAN_RGB
    mean = tf.constant(np.asarray(fallback, np.float32))  # (224, 224, 3) or (3,): broadcasts

    def subtract_mean(x):
        return tf.cast(x, tf.float32) - mean
    return trunk, subtract_mean


def standardizer(mean, std):
    """x -> (x - mean) / std per dimension, in float32 (the statistics of the training rows); the
    function carries its float32 `mean` and `std`, which export.py bakes into portable models."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    def standardize(x):
        return (tf.cast(x, tf.float32) - mean_t) / std_t
    standardize.mean, standardize.std = mean, std
    return standardize


def text_standardizer(config, data):
    """The text preprocessing of --text-norm: None (raw rows, the program) or standardised with
    the training mean/std per dimension (the rows of 10-d LDA topic proportions are tiny and sum
    to 1, unlike the standardised image features)."""
    if config.text_norm == "none":
        return None
    train_texts = np.asarray(data.texts[data.split.train], np.float64)
    return standardizer(train_texts.mean(axis=0), np.maximum(train_texts.std(axis=0), 1e-6))


def build_model(config, data, backbone, strategy=None):
    """An SsahModel for `data`'s training part with every variable created; the trunk is
    built under the strategy's scope and the run's dtype policy."""
    with distribute.scope(strategy), distribute.dtype_policy(config.precision):
        trunk, preprocess = build_trunk(config, data, backbone)
    trainer = SsahModel(config, data.labels[data.split.train], data.text_dim, trunk, preprocess,
                          seed=config.seed, strategy=strategy, text_preprocess=text_standardizer(config, data))
    trainer.build(tuple(data.images.shape[1:]))
    return trainer


def _check_resume_checkpoint(run_dir, objects, data_shape=None):
    """One-line errors for a checkpoint that cannot restore `objects` (checkpoint_objects):
    one lacking some of their variables (an older version that did not save every variable,
    or other network settings; restoring would silently leave those at their initial values),
    or one trained on other data (e.g. another tag file)."""
    from utils.run import readable_checkpoint
    path = readable_checkpoint(run_dir)  # the one Run.restore_latest restores (it says why when not the newest)
    if path is None:
        return
    reader = tf.train.load_checkpoint(path)
    names = reader.get_variable_to_shape_map()
    key = next((k for k in names if k.startswith("data_shape")), None)
    if key is not None and data_shape is not None:
        saved = dict(zip(("training items", "tag dimension", "classes", "image dimension"),
                         reader.get_tensor(key).tolist()))
        differences = [f"{name} {old} (now {new})" for (name, old), new in zip(saved.items(), data_shape) if old != new]
        if differences:
            raise UserError(f"the checkpoint in {os.path.join(run_dir, 'checkpoints')} was trained with "
                            f"{', '.join(differences)}: resume with the same data or start a new run")
    missing = sorted(checkpoint_variable_names(objects) - set(names))
    if missing:
        raise UserError(f"the checkpoint {path} lacks {len(missing)} variables of this model (e.g. "
                        f"{missing[0].split('/.ATTRIBUTES')[0]}): it was written by an older version that "
                        f"did not save every variable, or with other network settings; train a new run")


def evaluate(trainer, data, config):
    """Codes of query and database items (and the training items' unified code B, as of the last
    update_unified_codes) and mAP in all four directions (tie rule config.ties)."""
    q_img, q_txt, q_lab = data.part("query")
    d_img, d_txt, d_lab = data.part("database")
    bs = config.eval_batch_size
    codes = {"Qi": trainer.hash_codes("img", q_img, bs),
             "Qt": trainer.hash_codes("txt", q_txt, bs),
             "Di": trainer.hash_codes("img", d_img, bs),
             "Dt": trainer.hash_codes("txt", d_txt, bs),
             "query_L": q_lab, "retrieval_L": d_lab,
             "B": trainer.unified_codes.numpy()}  # the training set's unified code, as the program keeps it
    maps = {direction: mean_average_precision(codes[q], codes[d], codes[ql], codes[dl], ties=config.ties)
            for direction, (q, d, ql, dl) in EXPORTS["ssah"]["directions"].items()}
    return maps, codes


def validation_maps(trainer, data, config):
    """mAP in the four directions of the validation items against the database without them
    (tie rule config.ties), or None when the split has no validation part."""
    if not len(data.split.validation):
        return None
    v_img, v_txt, v_lab = data.part("validation")
    d_img, d_txt, d_lab = data.part("validation_database")
    bs = config.eval_batch_size
    codes = {"Qi": trainer.hash_codes("img", v_img, bs), "Qt": trainer.hash_codes("txt", v_txt, bs),
             "Di": trainer.hash_codes("img", d_img, bs), "Dt": trainer.hash_codes("txt", d_txt, bs),
             "query_L": v_lab, "retrieval_L": d_lab}
    return {direction: mean_average_precision(codes[q], codes[d], codes[ql], codes[dl], ties=config.ties)
            for direction, (q, d, ql, dl) in EXPORTS["ssah"]["directions"].items()}


def data_shape(data, backbone):
    """(training items, tag dimension, classes, feature dimension or 0): what a checkpoint was trained on."""
    return (len(data.split.train), data.text_dim, data.num_classes,
            int(data.images.shape[1]) if backbone == "features" else 0)


def training_parts(data):
    """(images, texts, labels) of the training items for EpochLoop: images and texts as row
    subsets of the data's own (utils.data.LazyRows: no copy of the training rows; matrices are
    gathered through them on the device, which shares the host matrix on a CPU)."""
    rows = data.split.train
    return LazyRows(data.images, rows), LazyRows(data.texts, rows), data.labels[rows]


class SsahTraining(Method):
    """SSAH's part of the shared loop: a unit is one epoch of EpochLoop (the four steps' passes
    with the program's early stop; mid-epoch checkpoints hold its position); after it the
    unified code B is updated and the codes evaluated and exported. One LossMeter per step
    sums its loss terms on the device (tags loss/STEP/TERM, discriminator/accuracy)."""

    name = "SSAH"
    progress = "unit_updates"  # a bar per epoch, a plain line per pass

    def __init__(self, config, data, trainer, backbone, run=None):
        self.config, self.data, self.trainer = config, data, trainer
        self.units, self.log_every = config.epochs, config.log_every
        self.epoch_loop = EpochLoop(trainer, config, training_parts(data), run=run)
        self.meters = []
        for step, terms in STEP_TERMS.items():
            tags = {f"{step}/{term}": LOSS_TAG.format(step=step, term="total" if term == "loss" else term)
                    for term in terms}
            if step == "dis":
                tags["dis/accuracy"] = DISCRIMINATOR_ACCURACY_TAG
            meter = LossMeter(STEP_NAMES[step], tags)
            self.meters.append(meter)
            trainer.accumulators[step].append(
                lambda losses, meter=meter, step=step: meter.add({f"{step}/{k}": v for k, v in losses.items()}))
        self.data_shape = tf.Variable(np.asarray(data_shape(data, backbone), np.int64), trainable=False,
                                      name="data_shape")
        self._last = None  # (epochs done, Evaluation) of the last evaluation

    def unit_updates(self, unit):
        if self.config.early_stop:
            return None  # an early stop may end an inner loop sooner
        return sum(sum(passes) for passes in self.epoch_loop.schedule.values()) * self.epoch_loop.updates_per_pass

    def checkpoint_objects(self):
        return {"data_shape": self.data_shape, **self.epoch_loop.checkpoint_objects(),
                **self.trainer.checkpoint_objects()}

    def after_restore(self, units_done, unit_updates_done):
        self.epoch_loop.resume_from_variables()

    def train_unit(self, unit, first_update, loop):
        summary = self.epoch_loop.run_epoch(unit, loop)
        self.epoch_loop.end_epoch()
        self.trainer.update_unified_codes()
        return {"epoch": unit + 1,
                "last_pass_losses": {step: values.get("loss", 0.0) for step, values in summary.items()},
                "discriminator_accuracy": summary.get("dis", {}).get("accuracy")}

    def evaluate(self, units_done, final):
        if final and self._last is not None and self._last[0] == units_done:
            return self._last[1]  # the last epoch's (a resumed finished run evaluates again)
        maps, codes = evaluate(self.trainer, self.data, self.config)
        validation = validation_maps(self.trainer, self.data, self.config)
        figures = dict(maps, epoch=units_done)
        scalars = {}
        if validation is not None:
            figures["validation"] = validation
            scalars = {f"mAP/validation/{direction}": value for direction, value in validation.items()}
        print(f"epoch {units_done}: mAP (ties: {self.config.ties}) "
              + ", ".join(f"{k} {v:.4f}" for k, v in maps.items()), flush=True)
        evaluation = Evaluation(figures, maps=maps, scalars=scalars, exports=codes,
                                codes={name: codes[name] for name in ("Qi", "Qt", "Di", "Dt")},
                                validation=None if validation is None else float(np.mean(list(validation.values()))))
        self._last = (units_done, evaluation)
        return evaluation

    def unit_record(self, trained, losses, evaluation):
        record = {"epoch": trained["epoch"], "mAP": evaluation.maps, "losses": losses,
                  "last_pass_losses": trained["last_pass_losses"],
                  "discriminator_accuracy": trained["discriminator_accuracy"]}
        if "validation" in evaluation.figures:
            record["validation_mAP"] = evaluation.figures["validation"]
        return record


def load_data(config):
    return utils.data.load_dataset(config.dataset, config.data, config.seed, config.split_file,
                                   split_sizes=config.split_sizes, validation_size=config.validation_size)


def fit(config, data=None, run=None, resume=False):
    """Trains and evaluates through the shared loop; logs, checkpoints and exports (codes.mat
    every epoch) only when `run` is given. Returns {"final": the last epoch's mAP per direction
    and "epoch", "epochs": per-epoch records, "seconds", "iterations"}."""
    check_settings(METHOD, config)
    data = data if data is not None else load_data(config)
    backbone = resolve_backbone(config, data)
    trainer = build_model(config, data, backbone, distribute.make_strategy(config.strategy))
    if resume and run is not None:
        _check_resume_checkpoint(run.checkpoint_source, trainer.checkpoint_objects(), data_shape(data, backbone))
    training = SsahTraining(config, data, trainer, backbone, run=run)
    return TrainingLoop(training, run, resume, checkpoint_every=config.checkpoint_every,
                        desc=f"SSAH {config.variant} {config.dataset}").run()


def train(config, run, resume=False):
    return fit(config, run=run, resume=resume)


def validation_score(config, objective="mean"):
    """(mean validation mAP over i->t and t->i, figures) of `config` trained on its training items
    (the settings search, tune.py)."""
    figures = fit(config, data=utils.data.validation_view(load_data(config)))["final"]
    return float(np.mean([figures["i->t"], figures["t->i"]])), figures
