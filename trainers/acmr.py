"""ACMR (Adversarial Cross-Modal Retrieval, Wang et al., ACM MM 2017): the authors' program
(their TensorFlow 1 triplet_wiki / simple_wiki / simple_nuswide code) and the paper's method.

`python train.py --method acmr --variant original --dataset wiki`  (the triplet_wiki program)
`python train.py --method acmr --variant paper --dataset wiki`     (the paper's method)

One update = one tf.GradientTape. Projectors (+ the label classifier when it is trained) and
the modality classifier have one Adam each (`--adam-kernel tf1`: TF1's AdamOptimizer, as the
program). The modality classifier sits behind a gradient
reversal layer; the projectors' objective is emb_loss (+ the modality loss when
`adversarial_in_projector_loss`, whose gradient reaches them reversed and scaled by lambda).
With `shared_forward_pass` (the program), the modality classifier's update comes from the same
forward pass as the projectors' update; otherwise it gets its own pass after it (the paper's
alternation, every `projector_steps` projector updates). The epochs run in the shared loop
(trainers/loop.py); `AcmrTraining` supplies the updates and the evaluation.
"""
import dataclasses

import numpy as np

from trainers.loop import (DISCRIMINATOR_ACCURACY_TAG, LOSS_TAG, LR_TAG, Evaluation, LossMeter, Method,
                           TrainingLoop, inline_batches)
from trainers.registry import MethodSpec, check_settings, register
from utils import distribute
from utils.config import CommonConfig, setting
from utils.data import standardization
from utils.errors import UserError
from utils.exports import EXPORTS
from utils.presets import Param

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

# TensorBoard's step names (loss/STEP/TERM, lr/STEP): the projectors' update and the modality classifier's.
PROJECTOR_STEP, MODALITY_STEP = "projector", "modality_classifier"

# The programs' epochs and loss weights; a setting left at -1 / 0 takes these.
PROGRAM_DEFAULTS = {
    "triplet": {"epochs": 50, "label_weight": 100.0},
    "simple-wiki": {"epochs": 200, "label_weight": 100.0, "dissimilar_weight": 0.02},
    "simple-nuswide10k": {"epochs": 50, "label_weight": 50.0, "dissimilar_weight": 0.2},
}



@dataclasses.dataclass
class Config(CommonConfig):
    dataset: str = setting("wiki", "wiki (wikiData.mat: 128-d SIFT / 10-d LDA), wiki-pickle or nuswide10k "
                          "(the authors' pickle folders), or any feature dataset of load_dataset")
    variant: str = setting("original", "original: the authors' triplet_wiki program; paper: the paper's "
                          "method (see PRESETS)", choices=tuple(PRESETS))
    loss_program: str = setting("triplet", "triplet: triplet_wiki, the paper's ACMR; simple: simple_wiki / "
                               "simple_nuswide (similar + dissimilar terms; weights by dataset)",
                               choices=("triplet", "simple"))
    # Networks
    architecture: str = setting("coded", "layer sizes: coded (the program's, per dataset: wiki d->512->100->40 / "
                               "d->40->100->40; nuswide10k d->4096->1000->40 / d->1000->300->40; modality "
                               "40->20->10->2) or paper (image ->2000->200, text ->500->200, modality ->50->2)",
                               choices=("coded", "paper"))
    image_norm: str = setting("none", "image input: none (the program: raw rows, e.g. Wikipedia's L1-normalised "
                             "SIFT histograms) or standardize (minus the training rows' mean, over their std, "
                             "per dimension, inside the projector; mining stays on the raw rows)",
                             choices=("none", "standardize"))
    text_norm: str = setting("none", "text input: none (the program: raw rows, e.g. 10-d LDA topic proportions) "
                            "or standardize (as --image-norm)", choices=("none", "standardize"))
    # Losses
    epochs: int = setting(0, "training epochs; 0: the program's (triplet 50, simple_wiki 200, simple_nuswide 50)")
    label_weight: float = setting(-1.0, "weight of the label loss; -1: the program's (100; simple_nuswide 50)")
    dissimilar_weight: float = setting(-1.0, "simple programs: weight of the dissimilar term; -1: the "
                                      "program's (wiki 0.02, nuswide10k 0.2)")
    dissimilar_margin: float = setting(0.1, "simple programs: margin in mean(max(0, margin - D*M))")
    margin: float = setting(0.1, "triplet margin (mu)")
    alpha: float = setting(5.0, "coded triplet: weight of the positive term")
    triplet_form: str = setting("coded", "coded: hinge on batch sums of 0.5||.||^2, alpha on the positive "
                               "term; paper: per triplet l2(v,t+) + negative_weight * max(0, mu - l2(v,t-))",
                               choices=("coded", "paper"))
    negative_weight: float = setting(1.0, "paper triplet: weight (the paper's lambda of Eq. 4) of the negative "
                                    "hinge; the paper gives no value (ours: 1)")
    regularisation_weight: float = setting(0.0, "weight of the paper's L_reg, the sum of the Frobenius norms "
                                          "||W||_F of the projectors' weight matrices (not squared; biases "
                                          "left out), added to the embedding loss; 0: none, as the program "
                                          "(paper variant: 1)")
    mining_mask: str = setting("multiply", "hard-negative mining in the raw input space: multiply (as coded: "
                              "similarity * [labels differ], so a same-label item can win) or exclude",
                              choices=("multiply", "exclude"))
    # Adversarial part
    adversarial_in_projector_loss: bool = setting(False, "add the modality loss (gradient-reversed) to the "
                                                 "projectors' objective; the program leaves it out (inert GRL)")
    train_label_classifier: bool = setting(False, "train the label classifier with the projectors; the program "
                                          "never updates it (the projectors fit a fixed random classifier)")
    shared_forward_pass: bool = setting(True, "compute the modality classifier's update from the same forward "
                                       "pass as the projectors' (the program); false: a fresh pass after them")
    projector_steps: int = setting(1, "k: projector updates per modality-classifier update (paper: 5)")
    lambda_schedule: str = setting("dann", "gradient-reversal lambda per epoch: dann (2/(1+exp(-10 p))-1, "
                                  "p = epoch/epochs; the program) or fixed (lambda_value)",
                                  choices=("dann", "fixed"))
    lambda_value: float = setting(0.05, "lambda when the schedule is fixed (paper: 0.05)")
    lambda_gamma: float = setting(10.0, "gamma of the DANN schedule")
    # Optimisation
    learning_rate: float = setting(1e-4, "Adam learning rate of the projectors (and label classifier)")
    modality_learning_rate: float = setting(1e-4, "Adam learning rate of the modality classifier")
    beta_1: float = setting(0.5, "Adam beta_1 (the program: 0.5)")
    beta_2: float = setting(0.999, "Adam beta_2")
    adam_epsilon: float = setting(1e-8, "Adam epsilon (TF1's default 1e-8)")
    adam_kernel: str = setting("keras", "keras: Keras 3's Adam (the README's ACMR figures); tf1: TF1's "
                              "AdamOptimizer, the program's, bit for bit, as one fused kernel per variable "
                              "(faster; its float32 rounding of 1 - beta and beta^t differs from Keras' by "
                              "~1e-5 relative per step)", choices=("keras", "tf1"))
    batch_size: int = setting(64, "pairs per batch")
    shuffle: bool = setting(False, "shuffle the training pairs every epoch (seeded); the program keeps the "
                           "file order")
    drop_last: bool = setting(True, "drop the last partial batch (the program: 2173 // 64 = 33 batches)")
    # Evaluation and bookkeeping
    top_k: int = setting(50, "the authors' protocol: mAP@top_k, test against test")
    retrieval_distance: str = setting("euclidean", "distance that ranks the embeddings in every figure: "
                                     "euclidean (the program) or cosine (one minus the cosine: the two "
                                     "modalities' embedding norms no longer count)", choices=("euclidean", "cosine"))
    full_test_batches: bool = setting(True, "the authors' protocol evaluates only full test batches "
                                     "(640 of the 693 Wikipedia test pairs)")
    eval_every: int = setting(1, "evaluate both protocols every N epochs (and after the last)")
    strategy: str = setting("none", distribute.STRATEGY_HELP, choices=distribute.STRATEGIES)
    separability_every: int = setting(0, "measurement only: every N epochs, fit a fresh linear classifier to "
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


def meter_terms(config, settings):
    """The loss terms one update measures (keys of loss_terms) and their TensorBoard tags."""
    names = ["label"] + (["triplet"] if settings["program"] == "triplet" else ["similar", "dissimilar"])
    if config.regularisation_weight > 0:
        names.append("regularisation")
    terms = {name: LOSS_TAG.format(step=PROJECTOR_STEP, term=name) for name in names}
    terms["emb"] = LOSS_TAG.format(step=PROJECTOR_STEP, term="total")
    terms["modality"] = LOSS_TAG.format(step=MODALITY_STEP, term="cross_entropy")
    terms["modality_accuracy"] = DISCRIMINATOR_ACCURACY_TAG
    return terms


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
                        split_sizes=config.split_sizes, validation_size=config.validation_size)
    if data.image_kind != "features":
        raise UserError(f"ACMR works on feature vectors; dataset '{config.dataset}' holds raw images: "
                        f"extract features first (e.g. VGG fc7) or use wiki / wiki-pickle / nuswide10k")
    return data


def epoch_batches(num_rows, batch_size, shuffle, drop_last, seed, epoch):
    """Row positions of each batch of one epoch (a function of seed and epoch, so resuming agrees)."""
    order = np.random.RandomState([seed, epoch]).permutation(num_rows) if shuffle else np.arange(num_rows)
    stop = (num_rows // batch_size) * batch_size if drop_last else num_rows
    return [order[start:min(start + batch_size, stop)] for start in range(0, stop, batch_size)]


def input_standardization(config, data):
    """{"image": (mean, std) or None, "text": ...}: the per-dimension statistics of the training
    rows for each modality whose --image-norm / --text-norm is standardize (a constant std is 1)."""
    train_img, train_txt, _ = data.part("train")
    stats = {}
    for modality, rows, norm in (("image", train_img, config.image_norm), ("text", train_txt, config.text_norm)):
        if norm == "none":
            stats[modality] = None
            continue
        stats[modality] = tuple(value.astype(np.float32) for value in standardization(np.asarray(rows, np.float64)))
    return stats


# ----------------------------------------------------------------------------- model + updates

class AcmrModel:
    """The networks, the two Adam optimisers and the compiled updates. `input_stats`
    (input_standardization's dict) is needed when the config standardises an input."""

    def __init__(self, config, image_dim, text_dim, num_classes, input_stats=None):
        import keras
        import tensorflow as tf

        from models.acmr import AcmrNetworks, layer_sizes
        from utils.optim import DynamicLossScale, FusedAdam
        self.config = config
        self.settings = resolved(config)
        image_widths, text_widths, modality_hidden = layer_sizes(config.architecture, config.dataset)
        input_stats = input_stats or {}
        for modality in ("image", "text"):
            if getattr(config, f"{modality}_norm") != "none" and input_stats.get(modality) is None:
                raise ValueError(f"--{modality}-norm {getattr(config, f'{modality}_norm')} needs the training "
                                 f"rows' statistics: pass input_stats=input_standardization(config, data)")
        with distribute.dtype_policy(config.precision):
            self.nets = AcmrNetworks(image_dim, text_dim, num_classes, image_widths, text_widths, modality_hidden,
                                     image_standardize=input_stats.get("image"),
                                     text_standardize=input_stats.get("text"))
        self.projector_variables = self.nets.projector_variables + (
            self.nets.label_classifier.trainable_variables if config.train_label_classifier else [])
        self.modality_variables = self.nets.modality_classifier.trainable_variables
        self.regularised_matrices = [layer.kernel for projector in (self.nets.image_projector,
                                                                    self.nets.text_projector)
                                     for layer in projector.dense_layers]

        optimizer_class = FusedAdam if config.adam_kernel == "tf1" else keras.optimizers.Adam

        def adam(rate, name):
            return optimizer_class(rate, beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.adam_epsilon,
                                   name=name)
        self.projector_optimizer = adam(config.learning_rate, "projector_adam")
        self.modality_optimizer = adam(config.modality_learning_rate, "modality_adam")
        self.projector_optimizer.build(self.projector_variables)
        self.modality_optimizer.build(self.modality_variables)
        # mixed_float16: one loss scale for both updates (the shared pass takes one gradient)
        self.loss_scale = DynamicLossScale() if distribute.needs_loss_scaling(config.precision) else None
        self.meter = LossMeter("acmr", meter_terms(config, self.settings))
        self.train_step = tf.function(self._train_step)
        self.modality_step = tf.function(self._modality_step)
        self._embed = tf.function(lambda img, txt: distribute.float32((self.nets.image_projector(img),
                                                                       self.nets.text_projector(txt))),
                                  reduce_retracing=True)

    def set_lambda(self, value):
        self.nets.modality_classifier.set_lambda(value)

    def loss_terms(self, img, txt, labels, img_negative_index, txt_negative_index):
        """Every loss term of one batch (a dict of scalars) from ONE forward pass.

        "emb" is the program's emb_loss. With adversarial_in_projector_loss the modality
        classifier sees the embeddings through the reversal layer (its loss reaches the
        projectors as -lambda * gradient); otherwise it sees stop_gradient(embeddings), so its
        loss can never reach them (the program's inert adversarial path). Outputs and losses are
        float32 in every --precision."""
        import tensorflow as tf
        from losses import acmr as L
        c, s = self.config, self.settings
        adversarial = c.adversarial_in_projector_loss
        nets = self.nets

        def per_row_outputs(img, txt):
            emb_img, emb_txt = nets.image_projector(img), nets.text_projector(txt)
            feed_img = emb_img if adversarial else tf.stop_gradient(emb_img)
            feed_txt = emb_txt if adversarial else tf.stop_gradient(emb_txt)
            return tuple(distribute.float32(x) for x in (
                emb_img, emb_txt, nets.label_classifier(emb_img), nets.label_classifier(emb_txt),
                nets.modality_classifier(feed_img, reverse=adversarial),
                nets.modality_classifier(feed_txt, reverse=adversarial)))
        own = distribute.replica_rows(tf.shape(img)[0])
        if own is None:
            outputs = per_row_outputs(img, txt)
        else:  # under a strategy: the networks on this replica's rows, the losses on the whole batch
            first, count = own
            outputs = [distribute.whole_batch(x, first)
                       for x in per_row_outputs(img[first:first + count], txt[first:first + count])]
        emb_img, emb_txt, label_img, label_txt, logits_img, logits_txt = outputs
        label = L.label_loss(label_img, label_txt, labels)
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
        terms["modality"] = L.modality_loss(logits_img, logits_txt)
        terms["modality_accuracy"] = L.modality_accuracy(logits_img, logits_txt)
        return terms, (emb_img, emb_txt)

    def _train_step(self, img, txt, labels, img_negative_index, txt_negative_index, update_modality):
        """Projector update; with update_modality (a Python bool) and shared_forward_pass, also the
        modality classifier's update from the same forward pass (one tape, one gradient call)."""
        import tensorflow as tf

        from utils.optim import apply_if_finite, scaled_gradients
        both = update_modality and self.config.shared_forward_pass
        variables = self.projector_variables + (self.modality_variables if both else [])
        with tf.GradientTape() as tape:
            terms, _ = self.loss_terms(img, txt, labels, img_negative_index, txt_negative_index)
            # The modality loss reaches the projectors only through the reversal layer (adversarial)
            # and never otherwise (stop_gradient); the modality variables see only that loss.
            objective = terms["emb"] + terms["modality"]
            if "regularisation" in terms:  # a term of the weights themselves: each replica holds its share
                reg = terms["regularisation"]
                objective += self.config.regularisation_weight * (distribute.replica_share(reg) - reg)
        gradients, finite = scaled_gradients(tape, objective, variables, self.loss_scale)
        n = len(self.projector_variables)

        def apply():
            self.projector_optimizer.apply_gradients(zip(gradients[:n], self.projector_variables))
            if both:
                self.modality_optimizer.apply_gradients(zip(gradients[n:], self.modality_variables))
        apply_if_finite(finite, apply)
        return terms

    def _modality_step(self, img, txt, labels, img_negative_index, txt_negative_index):
        """The modality classifier's own update from a fresh forward pass."""
        import tensorflow as tf

        from utils.optim import apply_if_finite, scaled_gradients
        with tf.GradientTape() as tape:
            terms, _ = self.loss_terms(img, txt, labels, img_negative_index, txt_negative_index)
        gradients, finite = scaled_gradients(tape, terms["modality"], self.modality_variables, self.loss_scale)
        apply_if_finite(finite, lambda: self.modality_optimizer.apply_gradients(zip(gradients, self.modality_variables)))
        return terms

    def apply_update(self, img, txt, labels, img_negative_index, txt_negative_index, update_modality):
        """One alternation step inside a compiled function (update_modality: a Python bool);
        returns the loss terms measured before the updates."""
        terms = self._train_step(img, txt, labels, img_negative_index, txt_negative_index, update_modality)
        if update_modality and not self.config.shared_forward_pass:
            self._modality_step(img, txt, labels, img_negative_index, txt_negative_index)
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

    def checkpoint_objects(self):
        """Every variable of the four networks and the two optimisers, by checkpoint name."""
        n = self.nets
        objects = {"image_projector": n.image_projector, "text_projector": n.text_projector,
                   "label_classifier": n.label_classifier, "modality_classifier": n.modality_classifier,
                   "projector_optimizer": self.projector_optimizer, "modality_optimizer": self.modality_optimizer}
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        return objects

    def checkpoint(self, epoch=None, iteration=None, partial_epoch=None):
        """A tf.train.Checkpoint of checkpoint_objects() and the given position variables."""
        import tensorflow as tf
        position = {name: value for name, value in
                    (("epoch", epoch), ("iteration", iteration), ("partial_epoch", partial_epoch)) if value is not None}
        return tf.train.Checkpoint(**self.checkpoint_objects(), **position)


# ----------------------------------------------------------------------------- evaluation

# Each figure is named by its database: the authors' protocol ranks the test pairs against the
# test pairs themselves (mAP@top_k); the other ranks them against the split's database part
# (the training pairs on wiki and nuswide10k), as eval.py does on the exported embeddings.
TEST_PROTOCOL = "map_top_k_test_vs_test"
DATABASE_PROTOCOL = "map_test_vs_database"
# The validation items (carved from training) ranked against the database without them: the
# figure that chooses the best checkpoint (never the queries' figures).
VALIDATION_PROTOCOL = "map_validation_vs_database"

def evaluate(model, data, config):
    """Both protocols, both directions; returns (figures, exported arrays).

    TEST_PROTOCOL (the authors'): mAP@top_k, test against test (only full batches when
    full_test_batches). DATABASE_PROTOCOL: mAP over the whole ranking, test queries against the
    database part. Both rank by config.retrieval_distance (the program: Euclidean on raw
    embeddings); ties (rare for real embeddings) follow config.ties."""
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
    ranked = dict(ties=config.ties, metric=config.retrieval_distance)
    figures = {TEST_PROTOCOL: {
        "i->t": metrics.embedding_map(t_img, t_txt, t_lab, t_lab, top_k=config.top_k, **ranked),
        "t->i": metrics.embedding_map(t_txt, t_img, t_lab, t_lab, top_k=config.top_k, **ranked),
    }, DATABASE_PROTOCOL: {
        "i->t": metrics.embedding_map(q_img, d_txt, query_labels, db_labels, **ranked),
        "t->i": metrics.embedding_map(q_txt, d_img, query_labels, db_labels, **ranked),
    }}
    for protocol in figures.values():
        protocol["average"] = (protocol["i->t"] + protocol["t->i"]) / 2
    figures[TEST_PROTOCOL]["test_pairs"] = int(n_test)
    exports = {"Qi": q_img, "Qt": q_txt, "Di": d_img, "Dt": d_txt,
               "query_L": query_labels, "retrieval_L": db_labels}
    return {k: {n: float(v) for n, v in p.items()} for k, p in figures.items()}, exports


def validation_figures(model, data, config):
    """VALIDATION_PROTOCOL's mAP (both directions and their average, ties by config.ties), or
    None when the split has no validation part."""
    from utils import metrics
    if not len(data.split.validation):
        return None
    val_img, val_txt, val_labels = data.part("validation")
    db_img, db_txt, db_labels = data.part("validation_database")
    v_img, v_txt = model.embed(val_img, val_txt)
    d_img, d_txt = model.embed(db_img, db_txt)
    ranked = dict(ties=config.ties, metric=config.retrieval_distance)
    figures = {"i->t": metrics.embedding_map(v_img, d_txt, val_labels, db_labels, **ranked),
               "t->i": metrics.embedding_map(v_txt, d_img, val_labels, db_labels, **ranked)}
    figures["average"] = (figures["i->t"] + figures["t->i"]) / 2
    return {name: float(value) for name, value in figures.items()}


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

class AcmrTraining(Method):
    """ACMR's part of the shared loop: one unit is one epoch; one update is one batch (the
    projectors' update and, when due, the modality classifier's). Batches come through tf.data
    as row indices; the compiled step gathers them from the training matrices on the device,
    mines the negatives there and adds its loss terms to the model's LossMeter."""

    name = "ACMR"
    progress = "units"  # a line per epoch

    def __init__(self, config, data, model, strategy=None):
        import tensorflow as tf
        self.config, self.data, self.model, self.strategy = config, data, model, strategy
        self.settings = model.settings
        self.units = self.settings["epochs"]
        self.log_every = config.log_every
        self.meters = [model.meter]
        train_img, train_txt, train_labels = data.part("train")
        self.num_rows = len(train_img)
        self.train_inputs = (tf.constant(np.asarray(train_img, np.float32)),
                             tf.constant(np.asarray(train_txt, np.float32)),
                             tf.constant(np.asarray(train_labels, np.float32)))
        self.batches_per_epoch = len(epoch_batches(self.num_rows, config.batch_size, False, config.drop_last, 0, 0))
        # Each batch's modality accuracy before that iteration's updates (the epoch record's list).
        self.batch_accuracy = tf.Variable(tf.zeros(self.batches_per_epoch), trainable=False,
                                          name="modality_accuracy_batches")
        self.lam = 0.0
        self.run_updates = tf.function(self._run_updates)
        self._same_order_batches = None  # the pipeline of every epoch's batches when they are not shuffled

    def _update(self, rows, position, update_modality):
        """One update on the batch of training rows `rows` (batch `position` of the epoch); under a
        strategy every replica gets the rows, mines the negatives in the whole batch and runs the
        networks on its share (AcmrModel.loss_terms), and the terms are summed over replicas."""
        import tensorflow as tf
        if self.strategy is None:
            terms = self._batch_update(rows, update_modality)
        elif self.config.projector_steps == 1:
            terms = self._replicated_update(rows, True)
        else:  # the turn chosen outside the replicas: collectives cannot run inside a replica's tf.cond
            terms = tf.cond(update_modality, lambda: self._replicated_update(rows, True),
                            lambda: self._replicated_update(rows, False))
        self.model.meter.add(terms)
        self.batch_accuracy[position].assign(terms["modality_accuracy"])

    def _replicated_update(self, rows, update_modality):
        """The update on every replica (update_modality: a Python bool); the terms of the batch."""
        import tensorflow as tf

        def replica_share(rows):  # a replica's terms (of the whole batch) as its share of their sum
            terms = self._batch_update(rows, update_modality)
            return {key: distribute.replica_share(value) for key, value in terms.items()}
        shares = self.strategy.run(replica_share, args=(rows,))
        return {key: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for key, value in shares.items()}

    def _batch_update(self, rows, update_modality):
        """The update of the batch of training rows `rows`; returns its loss terms."""
        import tensorflow as tf
        from losses.acmr import mine_negatives_tf
        img, txt, labels = (tf.gather(part, rows) for part in self.train_inputs)
        mask = self.config.mining_mask
        negatives = mine_negatives_tf(img, labels, mask), mine_negatives_tf(txt, labels, mask)
        if isinstance(update_modality, bool) or self.config.projector_steps == 1:
            modality_turn = self.config.projector_steps == 1 or update_modality
            terms = self.model.apply_update(img, txt, labels, *negatives, modality_turn)
        else:
            terms = tf.cond(update_modality,
                            lambda: self.model.apply_update(img, txt, labels, *negatives, True),
                            lambda: self.model.apply_update(img, txt, labels, *negatives, False))
        return terms

    def _run_updates(self, batches, count, updates_before):
        """`count` updates on the next batches of the tf.data iterator `batches`, in one call;
        the modality classifier's turn (every projector_steps-th update of the run) is counted
        from `updates_before`, the updates of the run before this call."""
        import tensorflow as tf
        for i in tf.range(count):
            position, rows = next(batches)
            update_index = updates_before + tf.cast(i, tf.int64) + 1
            self._update(rows, position, update_index % self.config.projector_steps == 0)

    def unit_updates(self, unit):
        return self.batches_per_epoch

    def checkpoint_objects(self):
        return {**self.model.checkpoint_objects(), "modality_accuracy_batches": self.batch_accuracy}

    def batches(self, epoch, first):
        """tf.data: (position, rows) of the epoch's batches from batch `first` on. Without
        shuffling every epoch has the same order, so its pipeline is built once (building one
        costs ~7 ms, a fifth of a small epoch's updates)."""
        import tensorflow as tf
        c = self.config
        batches = self._same_order_batches
        if batches is None:
            order = np.concatenate(epoch_batches(self.num_rows, c.batch_size, c.shuffle, c.drop_last, c.seed, epoch))
            batches = inline_batches(tf.data.Dataset.from_tensor_slices(order).batch(c.batch_size).enumerate())
            if not c.shuffle:
                self._same_order_batches = batches
        return batches.skip(first) if first else batches

    def train_unit(self, unit, first, loop):
        import tensorflow as tf
        self.lam = lambda_for_epoch(self.config, unit, self.units)
        self.model.set_lambda(self.lam)
        if first == 0:
            self.batch_accuracy.assign(tf.zeros_like(self.batch_accuracy))
        batches, remaining = iter(self.batches(unit, first)), self.batches_per_epoch - first
        while remaining:
            count = loop.chunk_size(remaining)
            self.run_updates(batches, tf.constant(count), tf.constant(loop.updates, tf.int64))
            loop.updates_done(count)
            remaining -= count
        trained = {"epoch": unit + 1, "lambda": self.lam}
        every = self.config.separability_every
        if every and ((unit + 1) % every == 0 or unit + 1 == self.units):
            trained["modality"] = modality_diagnostics(self.model, self.data)
        return trained

    def unit_record(self, trained, losses, evaluation):
        record = {"epoch": trained["epoch"], "lambda": trained["lambda"], "losses": losses,
                  "modality_accuracy_batches": [float(v) for v in self.batch_accuracy.numpy()]}
        if "modality" in trained:
            record["modality"] = trained["modality"]
        if evaluation is not None:
            record["map"] = evaluation.figures
        return record

    def eval_due(self, units_done):
        return units_done % self.config.eval_every == 0 or units_done == self.units

    def evaluate(self, units_done, final):
        figures, exports = evaluate(self.model, self.data, self.config)
        validation = validation_figures(self.model, self.data, self.config)
        if validation is not None:
            figures[VALIDATION_PROTOCOL] = validation
        database = figures[DATABASE_PROTOCOL]
        scalars = {f"mAP/top{self.config.top_k}_test_vs_test/{direction}": figures[TEST_PROTOCOL][direction]
                   for direction in ("i->t", "t->i")}
        if validation is not None:
            scalars.update({f"mAP/validation/{direction}": validation[direction] for direction in ("i->t", "t->i")})
        return Evaluation(figures, maps={d: database[d] for d in ("i->t", "t->i")},
                          validation=None if validation is None else validation["average"],
                          scalars=scalars, exports=exports if final else None)

    def interval_scalars(self):
        c = self.config
        return {LR_TAG.format(step=PROJECTOR_STEP): c.learning_rate,
                LR_TAG.format(step=MODALITY_STEP): c.modality_learning_rate, "adversarial/lambda": self.lam}

    def results_extra(self):
        return {"settings": self.settings}


def fit(config, data=None, run=None, resume=False, model=None):
    """Trains and evaluates through the shared loop; logs, checkpoints and exports only when
    `run` is given. Returns {"final": figures, "epochs": [per-epoch records], "settings", "seconds",
    "iterations"}."""
    check_settings(METHOD, config)
    data = data if data is not None else load_data(config)
    train_img, train_txt, _ = data.part("train")
    if len(train_img) < config.batch_size and config.drop_last:
        raise UserError(f"the training set has {len(train_img)} pairs, fewer than one batch of "
                        f"{config.batch_size}: lower --batch-size or pass --drop-last false")
    strategy = distribute.make_strategy(config.strategy)
    if strategy is not None:
        distribute.worker_rows(strategy, config.batch_size)  # a one-line error when the batch does not split
        if not config.drop_last and len(train_img) % config.batch_size % strategy.num_replicas_in_sync:
            raise UserError(f"the last partial batch of {len(train_img) % config.batch_size} pairs does not split "
                            f"over {strategy.num_replicas_in_sync} replicas: pass --drop-last true")
    with distribute.scope(strategy):
        model = model or AcmrModel(config, np.shape(train_img)[1], np.shape(train_txt)[1], data.num_classes,
                                   input_stats=input_standardization(config, data))
    training = AcmrTraining(config, data, model, strategy)
    return TrainingLoop(training, run, resume, checkpoint_every=config.checkpoint_every,
                        desc=f"acmr {config.variant} {config.dataset}").run()


def train(config, run, resume=False):
    return fit(config, run=run, resume=resume)


# ----------------------------------------------------------------------------- encoding new items

def restored_model(run_dir, data=None):
    """(config, data, model) of a trained run: the networks rebuilt from RUN_DIR/config.json
    (the run's dataset gives the feature sizes; `data` when already loaded) with the latest
    checkpoint restored. encode() and export.py both start here."""
    import tensorflow as tf

    from utils.run import restore_trained, saved_config
    _, config = saved_config(run_dir, {"acmr": Config})
    data = data if data is not None else load_data(config)
    model = AcmrModel(config, data.images.shape[1], data.text_dim, data.num_classes,
                      input_stats=input_standardization(config, data))
    epoch, iteration = (tf.Variable(0, dtype=tf.int64, trainable=False) for _ in range(2))
    restore_trained(run_dir, model.checkpoint(epoch, iteration))
    return config, data, model


def encode(run_dir, inputs, modality):
    """Embeddings (float32, items x dims) of new items from a trained ACMR run (restored_model):
    modality "image" (image feature rows) or "text" (text feature rows), shaped like the run's data."""
    from utils.run import item_rows, saved_config
    if modality not in ("image", "text"):
        raise UserError(f"unknown modality {modality!r} for ACMR; choose image or text")
    _, config = saved_config(run_dir, {"acmr": Config})
    data = load_data(config)
    image_dim, text_dim = data.images.shape[1], data.text_dim
    width = image_dim if modality == "image" else text_dim
    inputs = item_rows(inputs, (width,), f"{modality} features").astype(np.float32)
    _, _, model = restored_model(run_dir, data)
    other = np.zeros((len(inputs), text_dim if modality == "image" else image_dim), np.float32)
    images, texts = (inputs, other) if modality == "image" else (other, inputs)
    return model.embed(images, texts)[0 if modality == "image" else 1]


def encoders(run_dir):
    """(config, {modality: portable.Encoder}) of a trained run, for export.py: the two projectors."""
    from models import portable
    config, data, model = restored_model(run_dir)
    dims = {"image": data.images.shape[1], "text": data.text_dim}
    projectors = {"image": model.nets.image_projector, "text": model.nets.text_projector}
    encoders = {}
    for modality, projector in projectors.items():
        width = projector.dense_layers[-1].units
        encoders[modality] = portable.Encoder(
            portable.acmr_projector_model(projector, dims[modality], modality),
            {"name": f"{modality}_features", "shape": [int(dims[modality])], "dtype": "float32",
             "meaning": f"{modality} feature rows, as the run's data"},
            {"name": "embeddings", "shape": [int(width)], "dtype": "float32",
             "meaning": "common-space embeddings (compare by Euclidean distance)"},
            ["none (features used as they are)" if projector.standardize is None else
             "standardisation: (x - training mean) / training std, per dimension"])
    return config, encoders


# ----------------------------------------------------------------------------- settings search (tune.py)

# ACMR's validation figures come in two protocols (mAP@top_k test vs test, mAP over all test vs
# database), each averaged over i->t and t->i; --objective says how one trial's score combines them.
OBJECTIVES = {
    "mean": "mean validation mAP over the directions (ACMR: the mean of the two protocols' averages)",
    "min": "the smaller of ACMR's two protocols' validation averages (mAP@top_k, mAP over all): a trial "
           "scores well only when both do",
    "top_k": "ACMR's validation mAP@top_k average alone (the authors' protocol)",
}

SEARCH_SPACE = (
    # The program's switches or the paper's (trained label classifier, active reversal layer,
    # k = 5, per-triplet loss, shuffling, L_reg): a search around the program alone picked
    # settings below the paper variant on test.
    Param("switches", choices=("original", "paper"), preset=True),
    # The switch that decides whether the label classifier learns (the paper) or stays the random
    # one the projectors fit (the program), searched apart from the others; its start value is
    # the switches' own (False in trial 0, True in the paper variant's trial).
    Param("train_label_classifier", choices=(False, True)),
    # Wikipedia's inputs are L1-normalised SIFT histograms and LDA proportions, far from unit scale.
    Param("image_norm", choices=("none", "standardize")),
    Param("text_norm", choices=("none", "standardize")),
    Param("architecture", choices=("coded", "paper")),
    Param("regularisation_weight", choices=(0.0, 1.0)),
    Param("learning_rate", 3e-5, 2e-3, log=True),
    Param("batch_size", choices=(32, 64, 128)),
    Param("epochs", 20, 120, integer=True),  # 120 epochs of the paper's widths at batch 32: ~5 min
    Param("label_weight", 1.0, 300.0, log=True),
    Param("alpha", 0.5, 20.0, log=True),
    Param("margin", 0.01, 1.0, log=True),
    # How the embeddings are ranked (the program: Euclidean): with cosine the two modalities'
    # embedding norms no longer count.
    Param("retrieval_distance", choices=("euclidean", "cosine")),
)


def objective_score(figures, objective="mean"):
    """One ACMR trial's score from its validation `figures` ({protocol: {"average": mAP, ...}})
    under `objective` (a name in OBJECTIVES)."""
    averages = {protocol: float(values["average"]) for protocol, values in figures.items()}
    if objective == "mean":
        return float(np.mean(list(averages.values())))
    if objective == "min":
        return min(averages.values())
    if objective == "top_k":
        return averages[TEST_PROTOCOL]
    raise UserError(f"--objective {objective} is not one of {', '.join(OBJECTIVES)}")


def validation_score(config, objective="mean"):
    """(score by `objective`, figures) of `config` trained on its training items (tune.py)."""
    from utils.data import validation_view
    figures = fit(config, data=validation_view(load_data(config)))["final"]
    return objective_score(figures, objective), figures


METHOD = register(MethodSpec(
    name="acmr", config_class=Config, preset_field=PRESET_FIELD, presets=PRESETS, base_preset="original",
    length_field="epochs", implementation=__name__, exports=EXPORTS["acmr"],
    databases={"image": ("Di", "retrieval_L"), "text": ("Dt", "retrieval_L")},
    default_database={"text": "image", "image": "text"}, search_space=SEARCH_SPACE, check=check_config,
    objectives=OBJECTIVES, rescore=objective_score, resolved=resolved))
