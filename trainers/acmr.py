"""ACMR (Adversarial Cross-Modal Retrieval, Wang et al., ACM MM 2017): the authors' program
and the paper's method (../shared/spec/acmr.md).

`python train.py --method acmr --variant original --dataset wiki`  (the triplet_wiki program)
`python train.py --method acmr --variant paper --dataset wiki`     (the paper's method)

One update = one tf.GradientTape. Projectors (+ the label classifier when it is trained) and
the modality classifier have one Adam each. The modality classifier sits behind a gradient
reversal layer; the projectors' objective is emb_loss (+ the modality loss when
`adversarial_in_projector_loss`, whose gradient reaches them reversed and scaled by lambda).
With `shared_forward_pass` (the program), the modality classifier's update comes from the same
forward pass as the projectors' update; otherwise it gets its own pass after it (the paper's
alternation, every `projector_steps` projector updates).
"""
import dataclasses
import os
import time

import numpy as np

from utils.config import CommonConfig
from utils.errors import UserError

PRESET_FIELD = "variant"

# The paper's embedding loss adds L_reg with no coefficient of its own (alpha and beta weigh the
# other two terms); the program has no regulariser at all.
PAPER_REGULARISATION_WEIGHT = 1.0

PRESETS = {
    # triplet_wiki as the authors coded it; golden-checked (tests/test_acmr_golden.py).
    "original": {"adversarial_in_projector_loss": False, "train_label_classifier": False,
                 "shared_forward_pass": True, "projector_steps": 1, "lambda_schedule": "dann",
                 "shuffle": False, "drop_last": True, "architecture": "coded", "triplet_form": "coded",
                 "mining_mask": "multiply"},
    # The paper: reversed modality loss in the projectors' objective, trained label classifier,
    # fixed lambda 0.05, k = 5 projector steps per classifier step, the paper's layer sizes and
    # per-triplet loss; shuffled batches (ours: the paper does not say).
    "paper": {"adversarial_in_projector_loss": True, "train_label_classifier": True,
              "shared_forward_pass": False, "projector_steps": 5, "lambda_schedule": "fixed",
              "shuffle": True, "drop_last": True, "architecture": "paper", "triplet_form": "paper",
              "mining_mask": "multiply", "regularisation_weight": PAPER_REGULARISATION_WEIGHT},
}
PRESETS["tuned"] = dict(PRESETS["original"])  # plus trainers/presets/acmr-DATASET.json (train.build_config)

# The programs' epochs and loss weights; a setting left at -1 / 0 takes these.
PROGRAM_DEFAULTS = {
    "triplet": {"epochs": 50, "label_weight": 100.0},
    "simple-wiki": {"epochs": 200, "label_weight": 100.0, "dissimilar_weight": 0.02},
    "simple-nuswide10k": {"epochs": 50, "label_weight": 50.0, "dissimilar_weight": 0.2},
}


def _field(default, help_text, **metadata):
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


@dataclasses.dataclass
class Config(CommonConfig):
    dataset: str = _field("wiki", "wiki (wikiData.mat: 128-d SIFT / 10-d LDA), wiki-pickle or nuswide10k "
                          "(the authors' pickle folders), or any feature dataset of load_dataset")
    variant: str = _field("original", "original: the authors' triplet_wiki program; paper: the paper's "
                          "method (see PRESETS)", choices=tuple(PRESETS))
    loss_program: str = _field("triplet", "triplet: triplet_wiki, the paper's ACMR; simple: simple_wiki / "
                               "simple_nuswide (similar + dissimilar terms; weights by dataset)",
                               choices=("triplet", "simple"))
    # Networks
    architecture: str = _field("coded", "layer sizes: coded (the program's, per dataset: wiki d->512->100->40 / "
                               "d->40->100->40; nuswide10k d->4096->1000->40 / d->1000->300->40; modality "
                               "40->20->10->2) or paper (image ->2000->200, text ->500->200, modality ->50->2)",
                               choices=("coded", "paper"))
    # Losses
    epochs: int = _field(0, "training epochs; 0: the program's (triplet 50, simple_wiki 200, simple_nuswide 50)")
    label_weight: float = _field(-1.0, "weight of the label loss; -1: the program's (100; simple_nuswide 50)")
    dissimilar_weight: float = _field(-1.0, "simple programs: weight of the dissimilar term; -1: the "
                                      "program's (wiki 0.02, nuswide10k 0.2)")
    dissimilar_margin: float = _field(0.1, "simple programs: margin in mean(max(0, margin - D*M))")
    margin: float = _field(0.1, "triplet margin (mu)")
    alpha: float = _field(5.0, "coded triplet: weight of the positive term")
    triplet_form: str = _field("coded", "coded: hinge on batch sums of 0.5||.||^2, alpha on the positive "
                               "term; paper: per triplet l2(v,t+) + negative_weight * max(0, mu - l2(v,t-))",
                               choices=("coded", "paper"))
    negative_weight: float = _field(1.0, "paper triplet: weight (the paper's lambda of Eq. 4) of the negative "
                                    "hinge; the paper gives no value (ours: 1)")
    regularisation_weight: float = _field(0.0, "weight of the paper's L_reg, the sum of the Frobenius norms "
                                          "||W||_F of the projectors' weight matrices (not squared; biases "
                                          "left out), added to the embedding loss; 0: none, as the program "
                                          "(paper variant: 1)")
    mining_mask: str = _field("multiply", "hard-negative mining in the raw input space: multiply (as coded: "
                              "similarity * [labels differ], so a same-label item can win) or exclude",
                              choices=("multiply", "exclude"))
    # Adversarial part
    adversarial_in_projector_loss: bool = _field(False, "add the modality loss (gradient-reversed) to the "
                                                 "projectors' objective; the program leaves it out (inert GRL)")
    train_label_classifier: bool = _field(False, "train the label classifier with the projectors; the program "
                                          "never updates it (the projectors fit a fixed random classifier)")
    shared_forward_pass: bool = _field(True, "compute the modality classifier's update from the same forward "
                                       "pass as the projectors' (the program); false: a fresh pass after them")
    projector_steps: int = _field(1, "k: projector updates per modality-classifier update (paper: 5)")
    lambda_schedule: str = _field("dann", "gradient-reversal lambda per epoch: dann (2/(1+exp(-10 p))-1, "
                                  "p = epoch/epochs; the program) or fixed (lambda_value)",
                                  choices=("dann", "fixed"))
    lambda_value: float = _field(0.05, "lambda when the schedule is fixed (paper: 0.05)")
    lambda_gamma: float = _field(10.0, "gamma of the DANN schedule")
    # Optimisation
    learning_rate: float = _field(1e-4, "Adam learning rate of the projectors (and label classifier)")
    modality_learning_rate: float = _field(1e-4, "Adam learning rate of the modality classifier")
    beta_1: float = _field(0.5, "Adam beta_1 (the program: 0.5)")
    beta_2: float = _field(0.999, "Adam beta_2")
    adam_epsilon: float = _field(1e-8, "Adam epsilon (TF1's default 1e-8)")
    batch_size: int = _field(64, "pairs per batch")
    shuffle: bool = _field(False, "shuffle the training pairs every epoch (seeded); the program keeps the "
                           "file order")
    drop_last: bool = _field(True, "drop the last partial batch (the program: 2173 // 64 = 33 batches)")
    # Evaluation and bookkeeping
    top_k: int = _field(50, "the authors' protocol: mAP@top_k, test against test")
    full_test_batches: bool = _field(True, "the authors' protocol evaluates only full test batches "
                                     "(640 of the 693 Wikipedia test pairs)")
    eval_every: int = _field(1, "evaluate both protocols every N epochs (and after the last)")
    log_every: int = _field(5, "log the loss terms to TensorBoard every N iterations")
    separability_every: int = _field(0, "measurement only: every N epochs, fit a fresh linear classifier to "
                                     "convergence telling the training pairs' image from text embeddings and "
                                     "log its accuracy on the test pairs (eval/modality/separability), next to "
                                     "the live modality classifier's test accuracy; 0: off")


# ----------------------------------------------------------------------------- settings

def resolved(config):
    """The effective program name, epochs and weights (settings at -1 / 0 take the program's)."""
    program = "triplet" if config.loss_program == "triplet" else (
        "simple-nuswide10k" if config.dataset == "nuswide10k" else "simple-wiki")
    defaults = PROGRAM_DEFAULTS[program]
    return {
        "program": program,
        "epochs": config.epochs if config.epochs > 0 else defaults["epochs"],
        "label_weight": config.label_weight if config.label_weight >= 0 else defaults["label_weight"],
        "dissimilar_weight": (config.dissimilar_weight if config.dissimilar_weight >= 0
                              else defaults.get("dissimilar_weight", 0.0)),
    }


def check_config(config):
    if config.batch_size < 2:
        raise UserError(f"--batch-size must be at least 2 (negatives are mined within a batch), got {config.batch_size}")
    if config.projector_steps < 1 or config.eval_every < 1 or config.log_every < 1 or config.top_k < 1:
        raise UserError("--projector-steps, --eval-every, --log-every and --top-k must be at least 1")
    if config.separability_every < 0:
        raise UserError(f"--separability-every must be >= 0 (0: off), got {config.separability_every}")
    if config.epochs < 0:
        raise UserError(f"--epochs must be >= 0 (0: the program's), got {config.epochs}")
    for name in ("learning_rate", "modality_learning_rate"):
        if getattr(config, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if config.regularisation_weight < 0:
        raise UserError(f"--regularisation-weight must be >= 0 (0: off), got {config.regularisation_weight}")


def lambda_for_epoch(config, epoch, epochs):
    from models.layers import dann_lambda
    if config.lambda_schedule == "fixed":
        return config.lambda_value
    return dann_lambda(epoch / epochs, config.lambda_gamma)


# ----------------------------------------------------------------------------- data

def load_data(config):
    """(CrossModalData, train part, test part) with float32 feature matrices."""
    from utils.data import load_dataset
    data = load_dataset(config.dataset, config.data, seed=config.seed, split_file=config.split_file,
                        split_sizes=config.split_sizes)
    if data.image_kind != "features":
        raise UserError(f"ACMR works on feature vectors; dataset '{config.dataset}' holds raw images: "
                        f"extract features first (e.g. VGG fc7) or use wiki / wiki-pickle / nuswide10k")
    return data


def epoch_batches(num_rows, batch_size, shuffle, drop_last, seed, epoch):
    """Row positions of each batch of one epoch (a function of seed and epoch, so resuming agrees)."""
    order = np.random.RandomState([seed, epoch]).permutation(num_rows) if shuffle else np.arange(num_rows)
    stop = (num_rows // batch_size) * batch_size if drop_last else num_rows
    return [order[start:min(start + batch_size, stop)] for start in range(0, stop, batch_size)]


# ----------------------------------------------------------------------------- model + updates

class AcmrModel:
    """The networks, the two Adam optimisers and the compiled updates."""

    def __init__(self, config, image_dim, text_dim, num_classes):
        import keras
        import tensorflow as tf
        from models.acmr import AcmrNetworks, layer_sizes
        self.config = config
        self.settings = resolved(config)
        image_widths, text_widths, modality_hidden = layer_sizes(config.architecture, config.dataset)
        self.nets = AcmrNetworks(image_dim, text_dim, num_classes, image_widths, text_widths, modality_hidden)
        self.projector_variables = self.nets.projector_variables + (
            self.nets.label_classifier.trainable_variables if config.train_label_classifier else [])
        self.modality_variables = self.nets.modality_classifier.trainable_variables
        self.regularised_matrices = [layer.kernel for projector in (self.nets.image_projector,
                                                                    self.nets.text_projector)
                                     for layer in projector.dense_layers]

        def adam(rate, name):
            return keras.optimizers.Adam(rate, beta_1=config.beta_1, beta_2=config.beta_2,
                                         epsilon=config.adam_epsilon, name=name)
        self.projector_optimizer = adam(config.learning_rate, "projector_adam")
        self.modality_optimizer = adam(config.modality_learning_rate, "modality_adam")
        self.projector_optimizer.build(self.projector_variables)
        self.modality_optimizer.build(self.modality_variables)
        self.train_step = tf.function(self._train_step)
        self.modality_step = tf.function(self._modality_step)
        self._embed = tf.function(lambda img, txt: (self.nets.image_projector(img), self.nets.text_projector(txt)),
                                  reduce_retracing=True)

    def set_lambda(self, value):
        self.nets.modality_classifier.set_lambda(value)

    def loss_terms(self, img, txt, labels, img_negative_index, txt_negative_index):
        """Every loss term of one batch (a dict of scalars) from ONE forward pass.

        "emb" is the program's emb_loss. With adversarial_in_projector_loss the modality
        classifier sees the embeddings through the reversal layer (its loss reaches the
        projectors as -lambda * gradient); otherwise it sees stop_gradient(embeddings), so its
        loss can never reach them (the program's inert adversarial path)."""
        import tensorflow as tf
        from losses import acmr as L
        c, s = self.config, self.settings
        nets = self.nets
        emb_img, emb_txt = nets.image_projector(img), nets.text_projector(txt)
        label = L.label_loss(nets.label_classifier(emb_img), nets.label_classifier(emb_txt), labels)
        terms = {"label": label}
        if s["program"] == "triplet":
            # The negative text of image anchor i is the text of row img_negative_index[i].
            txt_negative = tf.gather(emb_txt, img_negative_index)
            img_negative = tf.gather(emb_img, txt_negative_index)
            if c.triplet_form == "coded":
                terms["triplet"] = L.triplet_loss_coded(emb_img, emb_txt, txt_negative, img_negative,
                                                        c.margin, c.alpha)
            else:
                terms["triplet"] = L.triplet_loss_paper(emb_img, emb_txt, txt_negative, img_negative,
                                                        c.margin, c.negative_weight)
            terms["emb"] = s["label_weight"] * label + terms["triplet"]
        else:
            terms["similar"] = L.similar_loss(emb_img, emb_txt)
            terms["dissimilar"] = L.dissimilar_loss(emb_img, emb_txt, labels, c.dissimilar_margin)
            terms["emb"] = s["label_weight"] * label + terms["similar"] + s["dissimilar_weight"] * terms["dissimilar"]
        if c.regularisation_weight > 0:
            terms["regularisation"] = L.frobenius_regulariser(self.regularised_matrices)
            terms["emb"] = terms["emb"] + c.regularisation_weight * terms["regularisation"]
        adversarial = c.adversarial_in_projector_loss
        feed_img = emb_img if adversarial else tf.stop_gradient(emb_img)
        feed_txt = emb_txt if adversarial else tf.stop_gradient(emb_txt)
        logits_img = nets.modality_classifier(feed_img, reverse=adversarial)
        logits_txt = nets.modality_classifier(feed_txt, reverse=adversarial)
        terms["modality"] = L.modality_loss(logits_img, logits_txt)
        terms["modality_accuracy"] = L.modality_accuracy(logits_img, logits_txt)
        return terms, (emb_img, emb_txt)

    def _train_step(self, img, txt, labels, img_negative_index, txt_negative_index, update_modality):
        """Projector update; with update_modality (a Python bool) and shared_forward_pass, also the
        modality classifier's update from the same forward pass (one tape, one gradient call)."""
        import tensorflow as tf
        both = update_modality and self.config.shared_forward_pass
        variables = self.projector_variables + (self.modality_variables if both else [])
        with tf.GradientTape() as tape:
            terms, _ = self.loss_terms(img, txt, labels, img_negative_index, txt_negative_index)
            # The modality loss reaches the projectors only through the reversal layer (adversarial)
            # and never otherwise (stop_gradient); the modality variables see only that loss.
            objective = terms["emb"] + terms["modality"]
        gradients = tape.gradient(objective, variables)
        n = len(self.projector_variables)
        self.projector_optimizer.apply_gradients(zip(gradients[:n], self.projector_variables))
        if both:
            self.modality_optimizer.apply_gradients(zip(gradients[n:], self.modality_variables))
        return terms

    def _modality_step(self, img, txt, labels, img_negative_index, txt_negative_index):
        """The modality classifier's own update from a fresh forward pass."""
        import tensorflow as tf
        with tf.GradientTape() as tape:
            terms, _ = self.loss_terms(img, txt, labels, img_negative_index, txt_negative_index)
        gradients = tape.gradient(terms["modality"], self.modality_variables)
        self.modality_optimizer.apply_gradients(zip(gradients, self.modality_variables))
        return terms

    def update(self, img, txt, labels, img_negative_index, txt_negative_index, update_modality):
        """One alternation step; returns the loss terms measured before the updates."""
        import tensorflow as tf
        args = (tf.constant(img, tf.float32), tf.constant(txt, tf.float32), tf.constant(labels, tf.float32),
                tf.constant(img_negative_index, tf.int32), tf.constant(txt_negative_index, tf.int32))
        terms = self.train_step(*args, bool(update_modality))
        if update_modality and not self.config.shared_forward_pass:
            self.modality_step(*args)
        return terms

    def embed(self, images, texts, batch_size=1024):
        """Embeddings of all rows (images and texts row-aligned), in batches."""
        out_img, out_txt = [], []
        for start in range(0, len(images), batch_size):
            e_img, e_txt = self._embed(np.asarray(images[start:start + batch_size], np.float32),
                                       np.asarray(texts[start:start + batch_size], np.float32))
            out_img.append(e_img.numpy())
            out_txt.append(e_txt.numpy())
        return np.concatenate(out_img), np.concatenate(out_txt)

    def checkpoint(self, epoch, iteration, partial_epoch=None):
        """Every variable of the four networks and the two optimisers, and the loop's position."""
        import tensorflow as tf
        n = self.nets
        position = {"partial_epoch": partial_epoch} if partial_epoch is not None else {}
        return tf.train.Checkpoint(image_projector=n.image_projector, text_projector=n.text_projector,
                                   label_classifier=n.label_classifier, modality_classifier=n.modality_classifier,
                                   projector_optimizer=self.projector_optimizer,
                                   modality_optimizer=self.modality_optimizer, epoch=epoch, iteration=iteration,
                                   **position)


# ----------------------------------------------------------------------------- evaluation

# Each figure is named by its database: the authors' protocol ranks the test pairs against the
# test pairs themselves (mAP@top_k); the other ranks them against the split's database part
# (the training pairs on wiki and nuswide10k), as eval.py does on the exported embeddings.
TEST_PROTOCOL = "map_top_k_test_vs_test"
DATABASE_PROTOCOL = "map_test_vs_database"

def evaluate(model, data, config):
    """Both protocols, both directions; returns (figures, exported arrays).

    TEST_PROTOCOL (the authors'): mAP@top_k, Euclidean on raw embeddings, test against test (only
    full batches when full_test_batches). DATABASE_PROTOCOL: mAP over the whole ranking, test
    queries against the database part.
    Ties (rare for real embeddings) follow config.ties."""
    from utils import metrics
    query_img, query_txt, query_labels = data.part("query")
    db_img, db_txt, db_labels = data.part("database")
    q_img, q_txt = model.embed(query_img, query_txt)
    d_img, d_txt = model.embed(db_img, db_txt)
    n_test = (len(q_img) // config.batch_size) * config.batch_size if config.full_test_batches else len(q_img)
    if n_test == 0:
        raise UserError(f"the test set has {len(q_img)} pairs, fewer than one batch of {config.batch_size}: "
                        f"pass --full-test-batches false")
    t_img, t_txt, t_lab = q_img[:n_test], q_txt[:n_test], query_labels[:n_test]
    ties = config.ties
    figures = {TEST_PROTOCOL: {
        "i->t": metrics.embedding_map(t_img, t_txt, t_lab, t_lab, top_k=config.top_k, ties=ties),
        "t->i": metrics.embedding_map(t_txt, t_img, t_lab, t_lab, top_k=config.top_k, ties=ties),
    }, DATABASE_PROTOCOL: {
        "i->t": metrics.embedding_map(q_img, d_txt, query_labels, db_labels, ties=ties),
        "t->i": metrics.embedding_map(q_txt, d_img, query_labels, db_labels, ties=ties),
    }}
    for protocol in figures.values():
        protocol["average"] = (protocol["i->t"] + protocol["t->i"]) / 2
    figures[TEST_PROTOCOL]["test_pairs"] = int(n_test)
    exports = {"Qi": q_img, "Qt": q_txt, "Di": d_img, "Dt": d_txt,
               "query_L": query_labels, "retrieval_L": db_labels}
    return {k: {n: float(v) for n, v in p.items()} for k, p in figures.items()}, exports


def modality_diagnostics(model, data):
    """How the modality game stands (measurements only; nothing is trained in the model):
    live_test: the live modality classifier's accuracy on the test pairs' embeddings;
    separability: a fresh linear classifier fitted to convergence on the training pairs'
    embeddings (utils.separability), its accuracy on the test pairs. 0.5 = chance."""
    import tensorflow as tf
    from losses.acmr import modality_accuracy
    from utils.separability import linear_separability
    train_img, train_txt, _ = data.part("train")
    query_img, query_txt, _ = data.part("query")
    e_train_img, e_train_txt = model.embed(train_img, train_txt)
    e_img, e_txt = model.embed(query_img, query_txt)
    classifier = model.nets.modality_classifier
    live = modality_accuracy(classifier(tf.constant(e_img), reverse=False),
                             classifier(tf.constant(e_txt), reverse=False))
    probe = linear_separability(e_train_img, e_train_txt, e_img, e_txt)
    return {"live_test": float(live), "separability": probe["test"], "separability_train": probe["train"]}


# ----------------------------------------------------------------------------- training

def fit(config, data=None, run=None, resume=False, model=None):
    """Trains and evaluates; logs, checkpoints and exports only when `run` is given.

    Returns {"final": figures, "epochs": [per-epoch figures and mean losses], "settings": ...}."""
    import contextlib
    import json

    import tensorflow as tf
    from losses.acmr import mine_negatives
    from utils.run import CheckpointCadence, check_finite, progress
    check_config(config)
    data = data if data is not None else load_data(config)
    train_img, train_txt, train_labels = data.part("train")
    train_img, train_txt = np.asarray(train_img, np.float32), np.asarray(train_txt, np.float32)
    if len(train_img) < config.batch_size and config.drop_last:
        raise UserError(f"the training set has {len(train_img)} pairs, fewer than one batch of "
                        f"{config.batch_size}: lower --batch-size or pass --drop-last false")
    model = model or AcmrModel(config, train_img.shape[1], train_txt.shape[1], data.num_classes)
    settings = model.settings
    epochs = settings["epochs"]

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    iteration_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
    # The epoch in progress at a checkpoint between epoch ends (JSON: batches done, loss sums, ...),
    # saved in the checkpoint itself so that the two always agree.
    partial_var = tf.Variable("", dtype=tf.string, trainable=False, name="partial_epoch")
    manager, history = None, []
    if run is not None:
        checkpoint = model.checkpoint(epoch_var, iteration_var, partial_var)
        manager = run.checkpoint_manager(checkpoint)
        if resume:
            restored = run.restore_latest(checkpoint)
            print(f"resumed from {restored}" if restored else "no checkpoint yet: starting from scratch")
            # Records written after the restored checkpoint (a kill between the two writes) are dropped.
            history = _saved_history(run)[:int(epoch_var.numpy())] if restored else []
    partial = json.loads(partial_var.numpy().decode() or "null")

    def save_checkpoint(epoch, batches_done, sums, count, batch_accuracy, score=None):
        """Checkpoint numbers count iterations, so mid-epoch ones sort between epoch ends;
        `score` (an epoch end's mean mAP) lets the run keep its best checkpoint too."""
        run.save_results({"epochs": history, "settings": settings})
        epoch_var.assign(epoch)
        iteration_var.assign(iteration)
        partial_var.assign(json.dumps({"batches": batches_done, "sums": sums, "count": count,
                                       "modality_accuracy_batches": batch_accuracy}) if batches_done else "")
        run.save_checkpoint(manager, iteration, score=score)

    start_time = time.perf_counter()
    iteration = int(iteration_var.numpy())
    bar = progress(range(int(epoch_var.numpy()), epochs), total=epochs, initial=int(epoch_var.numpy()),
                   desc=f"acmr {config.variant} {config.dataset}")
    cadence = CheckpointCadence(run.dir, config.checkpoint_every) if run is not None else None
    with cadence or contextlib.nullcontext():
        for epoch in bar:
            lam = lambda_for_epoch(config, epoch, epochs)
            model.set_lambda(lam)
            sums, count, batch_accuracy, skip = {}, 0, [], 0
            if partial:  # resuming inside this epoch: its batches so far are done and summed
                sums, count, skip = partial["sums"], partial["count"], partial["batches"]
                batch_accuracy, partial = partial["modality_accuracy_batches"], None
            batches = epoch_batches(len(train_img), config.batch_size, config.shuffle, config.drop_last,
                                    config.seed, epoch)
            for position in range(skip, len(batches)):
                rows = batches[position]
                img, txt, labels = train_img[rows], train_txt[rows], train_labels[rows]
                img_negative = mine_negatives(img, labels, config.mining_mask)
                txt_negative = mine_negatives(txt, labels, config.mining_mask)
                update_modality = (iteration + 1) % config.projector_steps == 0
                terms = model.update(img, txt, labels, img_negative, txt_negative, update_modality)
                values = {k: float(v) for k, v in terms.items()}
                check_finite(values, f"ACMR epoch {epoch} iteration {iteration}")
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                batch_accuracy.append(values["modality_accuracy"])
                if run is not None and iteration % config.log_every == 0:
                    run.log_scalars(iteration, {**values, "lambda": lam}, prefix="train/")
                iteration += 1
                if run is not None and position + 1 < len(batches) and cadence.due(iteration):
                    save_checkpoint(epoch, position + 1, sums, count, batch_accuracy)
                    cadence.saved()  # stops here (one line, exit code 130) after SIGINT/SIGTERM
            means = {k: v / max(count, 1) for k, v in sums.items()}
            # modality_accuracy_batches: each batch's accuracy before that iteration's updates.
            record = {"epoch": epoch + 1, "lambda": lam, "losses": means,
                      "modality_accuracy_batches": batch_accuracy}
            if config.separability_every and ((epoch + 1) % config.separability_every == 0 or epoch + 1 == epochs):
                record["modality"] = modality_diagnostics(model, data)
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs:
                record["map"], _ = evaluate(model, data, config)
            history.append(record)
            bar.set_postfix(modality_acc=f"{means.get('modality_accuracy', 0):.2f}",
                            map=f"{record.get('map', {}).get(TEST_PROTOCOL, {}).get('average', float('nan')):.3f}",
                            ties=config.ties)
            if run is not None:
                run.log_scalars(epoch + 1, {**means, "lambda": lam}, prefix="epoch/")
                if "modality" in record:
                    run.log_scalars(epoch + 1, record["modality"], prefix="eval/modality/")
                for protocol, figures in record.get("map", {}).items():
                    run.log_scalars(epoch + 1, figures, prefix=f"eval/{protocol}/")
                save_checkpoint(epoch + 1, 0, {}, 0, [],
                                score=record["map"][TEST_PROTOCOL]["average"] if "map" in record else None)
                cadence.saved()
    seconds = time.perf_counter() - start_time

    final, exports = evaluate(model, data, config)
    results = {"final": final, "epochs": history, "settings": settings, "seconds": seconds,
               "iterations": iteration}
    if run is not None:
        run.export_codes(exports)
        run.save_results(results)
        run.flush()
    return results


def _saved_history(run):
    from utils import io
    path = run.path("results.json")
    return io.load_json(path).get("epochs", []) if os.path.exists(path) else []


def train(config, run, resume=False):
    return fit(config, run=run, resume=resume)


# ----------------------------------------------------------------------------- encoding new items

def encode(run_dir, inputs, modality):
    """Embeddings (float32, items x dims) of new items from a trained ACMR run.

    Rebuilds the projectors from RUN_DIR/config.json (the run's dataset is loaded for its
    feature sizes) and restores the latest checkpoint. modality "image" (image feature
    rows) or "text" (text feature rows), shaped like the run's data."""
    import tensorflow as tf

    from utils.run import item_rows, restore_trained, saved_config
    if modality not in ("image", "text"):
        raise UserError(f"unknown modality {modality!r} for ACMR; choose image or text")
    _, config = saved_config(run_dir, {"acmr": Config})
    data = load_data(config)
    image_dim, text_dim = data.images.shape[1], data.text_dim
    width = image_dim if modality == "image" else text_dim
    inputs = item_rows(inputs, (width,), f"{modality} features").astype(np.float32)
    model = AcmrModel(config, image_dim, text_dim, data.num_classes)
    epoch, iteration = (tf.Variable(0, dtype=tf.int64, trainable=False) for _ in range(2))
    restore_trained(run_dir, model.checkpoint(epoch, iteration))
    other = np.zeros((len(inputs), text_dim if modality == "image" else image_dim), np.float32)
    images, texts = (inputs, other) if modality == "image" else (other, inputs)
    return model.embed(images, texts)[0 if modality == "image" else 1]
