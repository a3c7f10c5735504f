"""Building an SSAH trainer for a dataset, evaluating it, and training a run."""
import os

import numpy as np
import tensorflow as tf

import utils.data
from models import cnnf, vgg19
from models.ssah import FeatureTrunk
from trainers.ssah.config import IMAGENET_MEAN_RGB, SCHEDULES, resolve_backbone
from trainers.ssah.epochs import EpochLoop
from trainers.ssah.steps import SSAHTrainer, checkpoint_variable_names
from utils import distribute, io
from utils.errors import UserError
from utils.exports import EXPORTS
from utils.metrics import mean_average_precision
from utils.run import CheckpointCadence, progress


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
        mean_t, std_t = tf.constant(mean), tf.constant(std)

        def standardize(x):
            return (tf.cast(x, tf.float32) - mean_t) / std_t
        return FeatureTrunk(config.hidden_dim, name="feature_trunk"), standardize
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


def build_trainer(config, data, backbone, strategy=None):
    """An SSAHTrainer for `data`'s training part with every variable created; the trunk is
    built under the strategy's scope and the run's dtype policy."""
    with distribute.scope(strategy), distribute.dtype_policy(config.mixed_precision):
        trunk, preprocess = build_trunk(config, data, backbone)
    trainer = SSAHTrainer(config, data.labels[data.split.train], data.text_dim, trunk, preprocess,
                          seed=config.seed, strategy=strategy)
    trainer.build(tuple(data.images.shape[1:]))
    return trainer


def _check_resume_checkpoint(run_dir, objects, data_shape=None):
    """One-line errors for a checkpoint that cannot restore `objects` (checkpoint_objects):
    one lacking some of their variables (an older version that did not save every variable,
    or other network settings; restoring would silently leave those at their initial values),
    or one trained on other data (e.g. another tag file)."""
    path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if path is None:
        return
    try:
        reader = tf.train.load_checkpoint(path)
        names = reader.get_variable_to_shape_map()
    except Exception:  # unreadable: Run.restore_latest falls back to an older checkpoint, saying so
        return
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


def train(config, run, resume=False):
    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{config.schedule}'; choose one of {', '.join(SCHEDULES)}")
    if config.bits < 1 or config.embed_dim < 1 or config.batch_size < 1:
        raise UserError("bits, embed_dim and batch_size must be positive")
    data = utils.data.load_dataset(config.dataset, config.data, config.seed, config.split_file,
                        split_sizes=config.split_sizes)
    backbone = resolve_backbone(config, data)
    train_images, train_texts, train_labels = data.part("train")
    image_shape = tuple(data.images.shape[1:])
    data_shape = (len(train_labels), data.text_dim, data.num_classes,
                  int(image_shape[0]) if backbone == "features" else 0)
    trainer = build_trainer(config, data, backbone, distribute.make_strategy(config.strategy))
    if resume:
        _check_resume_checkpoint(run.dir, trainer.checkpoint_objects(), data_shape)
    loop = EpochLoop(trainer, config, (train_images, train_texts, train_labels), run=run)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # epochs finished
    shape_var = tf.Variable(np.asarray(data_shape, np.int64), trainable=False, name="data_shape")
    checkpoint = tf.train.Checkpoint(epoch=epoch_var, data_shape=shape_var, **loop.checkpoint_objects(),
                                     **trainer.checkpoint_objects())
    manager = run.checkpoint_manager(checkpoint)
    history = []
    if resume:
        restored = run.restore_latest(checkpoint)
        if restored:
            loop.resume_from_variables()
            inside = " inside it" if int(loop.position[0]) else ""
            print(f"resumed from {restored} (epoch {int(epoch_var.numpy()) + 1}{inside})", flush=True)
            if os.path.exists(run.path("results.json")):
                history = list(io.load_json(run.path("results.json")).get("epochs", []))[:int(epoch_var.numpy())]

    results = {"epochs": history}
    start = int(epoch_var.numpy())
    total_updates = sum(sum(p) for p in loop.schedule.values()) * loop.updates_per_pass
    with CheckpointCadence(run.dir, config.checkpoint_every) as cadence:
        loop.cadence, loop.save = cadence, manager.save
        for epoch in range(start, config.epochs):
            with progress(total=total_updates, desc=f"SSAH epoch {epoch + 1}/{config.epochs}") as bar:
                epoch_summary = loop.run_epoch(epoch, bar)
            trainer.update_unified_codes()
            maps, codes = evaluate(trainer, data, config)
            run.log_scalars(epoch + 1, maps, prefix="mAP/")
            run.flush()
            history.append({"epoch": epoch + 1, "mAP": maps,
                            "last_pass_losses": {s: v.get("loss", 0.0) for s, v in epoch_summary.items()},
                            "discriminator_accuracy": epoch_summary.get("dis", {}).get("accuracy")})
            epoch_var.assign(epoch + 1)
            loop.end_epoch()
            run.save_checkpoint(manager, None, score=float(np.mean(list(maps.values()))))  # keeps the best too
            run.export_codes(codes)
            results["final"] = dict(maps)
            results["final"]["epoch"] = epoch + 1
            run.save_results(results)
            print(f"epoch {epoch + 1}: mAP (ties: {config.ties}) " + ", ".join(f"{k} {v:.4f}" for k, v in maps.items()), flush=True)
            if epoch + 1 < config.epochs:
                cadence.saved()
    if "final" not in results:  # resumed a finished run: report its last epoch again
        maps, codes = evaluate(trainer, data, config)
        run.export_codes(codes)
        results["final"] = dict(maps, epoch=start)
        run.save_results(results)
    return results
