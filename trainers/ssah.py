"""SSAH (Li et al., CVPR 2018): self-supervised adversarial hashing for cross-modal retrieval.

`python train.py --method ssah --variant original --dataset flickr --bits 32`

One epoch = four alternating steps (see /work/shared/spec/ssah.md): LabNet passes,
discriminator passes, ImgNet passes, TxtNet passes (the program's order; the paper's,
`step_order`, runs the discriminators last). Each step is ONE tf.GradientTape
update of a random batch against stored copies of all n training items (buffers
F, G, H of hashes and feat_I, feat_T, feat_L of semantic features). A step first
writes its batch's outputs (computed before the update) into its buffers, as the
authors' program does. Every departure of the program from the paper is a named
setting of `Config`; `PRESETS["original"]` is the program, `PRESETS["paper"]` the paper.
"""
import collections
import dataclasses
import os

import numpy as np

from utils import distribute
from utils.config import CommonConfig
from utils.errors import UserError

PRESET_FIELD = "variant"


def _field(default, help_text, **metadata):
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


# Passes per inner index: the program's (LabNet 10, 5; discriminators 1, 1; ImgNet/TxtNet 15, 7, 5)
# and shorter ones for CPU runs. Inner index i uses learning rate list entry epoch + i.
SCHEDULES = {
    "original": {"lab": (10, 5), "dis": (1, 1), "img": (15, 7, 5), "txt": (15, 7, 5)},
    "short": {"lab": (4, 2), "dis": (1, 1), "img": (5, 3, 2), "txt": (5, 3, 2)},
    "tiny": {"lab": (1,), "dis": (1,), "img": (1,), "txt": (1,)},
}


@dataclasses.dataclass(frozen=True)
class EarlyStopRule:
    """The program's early stop of one net's inner loop (pass k counts from 0).

    After pass k it records the net's monitoring loss when k % record_every == 0, appending it
    to one list per net that runs on across inner indices. After EVERY pass k >= check_from it
    compares the list's last two entries and stops when the newer one is not lower
    (newer - older >= 0, equality included). ImgNet/TxtNet record only after even passes, so
    their check at k = 3 compares passes 2 and 0, and at k = 5 repeats the one of k = 4."""
    record_every: int
    check_from: int


# LabNet records every pass and checks from its third; ImgNet/TxtNet record every second pass
# and check from their fourth (the program's k > 1 and k > 2). The program's discriminator loop
# has the same test (k > 1) but runs one pass per inner index in every schedule, so never checks.
EARLY_STOP = {"lab": EarlyStopRule(record_every=1, check_from=2),
              "img": EarlyStopRule(record_every=2, check_from=3),
              "txt": EarlyStopRule(record_every=2, check_from=3)}

STEP_NAMES = {"lab": "LabNet", "dis": "discriminator", "img": "ImgNet", "txt": "TxtNet"}
# The program's order of the steps in an epoch and its multi-scale fusion windows (TxtNet).
PROGRAM_STEP_ORDER = ("lab", "dis", "img", "txt")
PROGRAM_MS_WINDOWS = (50, 30, 15, 10, 5)

# Per-channel ImageNet mean (RGB), used for uint8 images when neither the CNN-F file
# nor the dataset provides a mean image.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

# The program has no Wikipedia setting; its rates collapse every code there (README, SSAH on
# Wikipedia), so `--dataset wiki` starts from the rates and epoch count of the README's table.
# Applied before the variant preset; any explicit option overrides them.
DATASET_DEFAULTS = {
    "wiki": {"lr_lab_exponent": 2.5, "lr_img_exponent": 3.5, "epochs": 1},
}

PRESETS = {
    "original": {
        "adversarial_to_generators": False, "generator_steps_move_discriminators": True,
        "share_label_discriminators": False, "shared_adam_counter": True,
        "similarity_scale": 0.999, "pairwise_loss": "squared", "labnet_activation": "relu",
        "discriminator_hidden": (512, 256), "discriminator_activation": "relu",
        "ms_windows": PROGRAM_MS_WINDOWS, "ms_fusion": "per_window", "step_order": PROGRAM_STEP_ORDER,
    },
    "paper": {
        "adversarial_to_generators": True, "generator_steps_move_discriminators": False,
        "share_label_discriminators": True, "shared_adam_counter": False,
        "similarity_scale": 1.0, "pairwise_loss": "nll", "labnet_activation": "sigmoid",
        "discriminator_hidden": (4096, 4096), "discriminator_activation": "tanh",
        "ms_windows": (1, 2, 3, 5, 10), "ms_fusion": "joint", "step_order": ("lab", "img", "txt", "dis"),
    },
}
PRESETS["tuned"] = dict(PRESETS["original"])  # plus trainers/presets/ssah-DATASET.json (train.build_config)


@dataclasses.dataclass
class Config(CommonConfig):
    variant: str = _field("original", "original = the authors' program, paper = the published equations",
                          choices=tuple(PRESETS))
    # Networks
    backbone: str = _field("", "image trunk: cnnf, vgg19, or features (an MLP layer on feature vectors); "
                           "empty = features for feature datasets, cnnf for image datasets",
                           choices=("", "cnnf", "vgg19", "features"))
    weights: str = _field("", "trunk weight file (imagenet-vgg-f.mat for cnnf; VGG-19 .mat/.h5); "
                          "empty = random trunk weights")
    embed_dim: int = _field(512, "E, width of the semantic features F^v, F^t, F^l")
    hidden_dim: int = _field(4096, "hidden width of LabNet, TxtNet and the feature trunk")
    feature_norm: str = _field("standardize", "image FEATURE preprocessing (features backbone only; "
                               "the program has no feature path): standardize with the training "
                               "mean/std per dimension, or none", choices=("standardize", "none"))
    text_norm: str = _field("none", "text preprocessing: none (program: raw rows, e.g. LDA topic "
                            "proportions summing to 1) or standardize (training mean/std per dimension)",
                            choices=("standardize", "none"))
    labnet_activation: str = _field("relu", "LabNet hidden activation: relu (program) or sigmoid (paper text; "
                                    "on Wikipedia its features sink to 0 and every code collapses: README)",
                                    choices=("relu", "sigmoid"))
    discriminator_hidden: tuple[int, ...] = _field((512, 256), "discriminator hidden widths "
                                                   "(program 512,256; paper 4096,4096)")
    discriminator_activation: str = _field("relu", "discriminator hidden activation: relu (program) or "
                                           "tanh (paper)", choices=("relu", "tanh"))
    ms_windows: tuple[int, ...] = _field(PROGRAM_MS_WINDOWS, "TxtNet multi-scale fusion: average-pooling "
                                         "window widths (program 50,30,15,10,5; paper 1,2,3,5,10); a window "
                                         "wider than the text dimension is dropped")
    ms_fusion: str = _field("per_window", "TxtNet multi-scale fusion: per_window (program: a learned scalar "
                            "and relu per window, the raw vector kept as a channel) or joint (paper: one "
                            "1x1 convolution with relu fuses the windows' averages into one vector)",
                            choices=("per_window", "joint"))
    discriminator_dropout: float = _field(0.0, "discriminator dropout rate (the program feeds keep "
                                          "probability 1.0 everywhere: off)")
    # Losses
    alpha: float = _field(1.0, "weight of the pairwise feature term")
    gamma: float = _field(1.0, "weight of the pairwise hash term")
    beta: float = _field(1.0, "weight of the quantisation term mse(sign(H), H)")
    eta: float = _field(1.0, "weight of the label prediction term")
    delta: float = _field(1.0, "weight of the adversarial term in the ImgNet/TxtNet losses")
    pairwise_loss: str = _field("squared", "pairwise term: squared = the program's mse(S*Theta, "
                                "log(1+e^Theta)); nll = the paper's sum(log(1+e^Theta) - S*Theta)",
                                choices=("squared", "nll"))
    similarity_scale: float = _field(0.999, "S = scale where items share a label (program 0.999, paper 1)")
    # Quirks of the program's adversarial wiring
    adversarial_to_generators: bool = _field(False, "true (paper): the adversarial term is computed on "
                                             "the net's own batch features and its gradient reaches "
                                             "ImgNet/TxtNet; false (program): the discriminator is fed "
                                             "stored features (ImgNet step: all n stored image "
                                             "features; TxtNet step: the batch's text features before "
                                             "the update) as constants, so the term is inert for the nets")
    generator_steps_move_discriminators: bool = _field(True, "true (program): the ImgNet/TxtNet steps "
                                                       "also update D_I/D_T (towards 'label' for the fed "
                                                       "features) with the shared Adam at the net's rate; "
                                                       "false (paper): only the discriminator step trains them")
    share_label_discriminators: bool = _field(False, "true (paper): one discriminator per modality pair; "
                                              "false (program): the label branch of each is a separate "
                                              "network (four discriminators)")
    shared_adam_counter: bool = _field(True, "true (program): one TF1 Adam for LabNet/ImgNet/TxtNet whose "
                                       "bias-correction step counter advances on any of their updates; "
                                       "false: one Adam (own counter) per net")
    # Optimisation and schedule
    step_order: tuple[str, ...] = _field(PROGRAM_STEP_ORDER, "order of the four steps in an epoch: "
                                         "lab,dis,img,txt (program) or lab,img,txt,dis (paper)")
    batch_size: int = _field(128, "batch size")
    schedule: str = _field("original", "passes per epoch: original (LabNet 10,5; D 1,1; ImgNet/TxtNet "
                           "15,7,5, early stop), short (4,2; 1,1; 5,3,2), tiny (one pass each, for tests)",
                           choices=tuple(SCHEDULES))
    epochs: int = _field(5, "epochs (the program's default 500 runs its learning-rate lists to ~0: "
                         "rates fall by sqrt(10) per epoch)")
    early_stop: bool = _field(True, "stop a net's inner loop when its monitoring loss rises (program)")
    lr_lab_exponent: float = _field(2.0, "lr_lab[i] = 10^-(this + lr_exponent_step * i); on single-label "
                                    "data (Wikipedia) 1e-2 kills LabNet's relu units and every code "
                                    "collapses: --dataset wiki defaults to 2.5 (README, SSAH on Wikipedia)")
    lr_img_exponent: float = _field(4.5, "lr_img[i] = 10^-(this + lr_exponent_step * i); 4.5 suits a "
                                    "pretrained CNN-F; a random feature trunk needs ~3.5 (--dataset wiki defaults to it)")
    lr_txt_exponent: float = _field(3.5, "lr_txt[i] = 10^-(this + lr_exponent_step * i)")
    lr_dis_exponent: float = _field(3.0, "lr_dis[i] = 10^-(this + lr_exponent_step * i)")
    lr_exponent_step: float = _field(0.5, "exponent increment per list entry (entry = epoch + inner index)")
    eval_batch_size: int = _field(512, "batch size when computing query/database codes")
    # Full scale (utils/distribute.py); lazy (HDF5) images always stream through tf.data
    strategy: str = _field("none", "none (one device), mirrored (all local GPUs) or multiworker (the hosts "
                           "of TF_CONFIG): each replica takes its part of the global batch and the losses "
                           "and updates are those of the global batch", choices=distribute.STRATEGIES)
    mixed_precision: bool = _field(False, "Keras mixed_float16 (float16 compute; float32 variables, buffers "
                                   "and losses; dynamic loss scaling): for GPUs")
    jit: bool = _field(False, "compile each training step with XLA (tf.function jit_compile): for GPUs; "
                       "needs --strategy none")


def learning_rate(config, net, index):
    """The program's lists: lr_NET[index] = 10^-(exponent + step * index)."""
    exponent = getattr(config, f"lr_{net}_exponent")
    return float(10.0 ** -(exponent + config.lr_exponent_step * index))


def resolve_backbone(config, data):
    if config.backbone:
        if config.backbone == "features" and data.image_kind != "features":
            raise UserError(f"--backbone features needs feature vectors but dataset '{data.name}' has "
                            f"images {tuple(data.images.shape[1:])}: use --backbone cnnf or vgg19")
        if config.backbone != "features" and data.image_kind == "features":
            raise UserError(f"--backbone {config.backbone} needs images but dataset '{data.name}' has "
                            f"{data.images.shape[1]}-d features: use --backbone features")
        return config.backbone
    return "features" if data.image_kind == "features" else "cnnf"


def check_network_settings(config, text_dim):
    """One-line errors for settings the CLI's choices do not catch (or a Config built in code)."""
    choices = {"pairwise_loss": ("squared", "nll"), "discriminator_activation": ("relu", "tanh"),
               "ms_fusion": ("per_window", "joint"), "labnet_activation": ("relu", "sigmoid"),
               "text_norm": ("standardize", "none")}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    if sorted(config.step_order) != sorted(STEP_NAMES):
        raise UserError(f"step_order {','.join(config.step_order)} must name each of "
                        f"{','.join(STEP_NAMES)} once, e.g. --step-order lab,img,txt,dis")
    windows = tuple(config.ms_windows)
    if not windows or min(windows) < 1 or len(set(windows)) != len(windows):
        raise UserError(f"ms_windows {windows} must be distinct positive widths, e.g. --ms-windows 1,2,3,5,10")
    if config.ms_fusion == "joint" and min(windows) > text_dim:
        raise UserError(f"every --ms-windows width {windows} is wider than the {text_dim}-d text, so the joint "
                        f"fusion has nothing to fuse: give a window <= {text_dim}")


# --------------------------------------------------------------------------- the trainer

def _to_float(x):
    import tensorflow as tf
    return tf.cast(x, tf.float32)


def _scatter_rows(variable, rows, values):
    return variable.scatter_nd_update(rows[:, None], values)


class SSAHTrainer:
    """Nets, stored buffers, optimizers and the four update steps.

    nets: "lab", "img", "txt", "dis_img", "dis_txt" and, without shared label
    discriminators, "dis_img_label", "dis_txt_label" (D_I', D_T' of the program).
    Buffers (n rows, one per training item): F, G, H (image, text, label hashes),
    feat_I, feat_T, feat_L (semantic features), pred_I, pred_T, pred_L (label predictions).
    """

    def __init__(self, config, train_labels, text_dim, trunk, image_preprocess=None, seed=0, strategy=None,
                 text_preprocess=None):
        """strategy: a tf.distribute strategy (None: one device); create `trunk` under its scope
        and under distribute.dtype_policy(config.mixed_precision)."""
        self.config = config
        self.strategy = strategy
        self.text_preprocess = text_preprocess or _to_float
        with distribute.scope(strategy), distribute.dtype_policy(config.mixed_precision):
            self._create(train_labels, text_dim, trunk, image_preprocess, seed)

    def _create(self, train_labels, text_dim, trunk, image_preprocess, seed):
        import tensorflow as tf

        from models.ssah import Discriminator, ImgNet, LabNet, TxtNet
        from utils.optim import DynamicLossScale, TF1Adam

        config = self.config
        self.labels = tf.constant(np.asarray(train_labels, np.float32))
        self.num_items, self.num_classes = (int(s) for s in self.labels.shape)
        self.bits, self.embed_dim = config.bits, config.embed_dim
        self.batch_size = min(config.batch_size, self.num_items)
        self.image_preprocess = image_preprocess or _to_float
        check_network_settings(config, text_dim)

        c, k, e = self.num_classes, self.bits, self.embed_dim
        self.nets = {
            "lab": LabNet(c, k, e, hidden_dim=config.hidden_dim, hidden_activation=config.labnet_activation,
                          name="lab_net"),
            "img": ImgNet(trunk, c, k, e, name="img_net"),
            "txt": TxtNet(text_dim, c, k, e, hidden_dim=config.hidden_dim, windows=config.ms_windows,
                          fusion=config.ms_fusion, name="txt_net"),
        }
        dis_names = ["dis_img", "dis_txt"] + ([] if config.share_label_discriminators
                                              else ["dis_img_label", "dis_txt_label"])
        for name in dis_names:
            self.nets[name] = Discriminator(tuple(config.discriminator_hidden), config.discriminator_dropout,
                                            config.discriminator_activation, name=name)
        self.rng = tf.random.Generator.from_seed(seed)

        def buffer(name, width):
            return tf.Variable(self.rng.normal([self.num_items, width]), trainable=False, name=name)

        # The program starts the stored arrays as random normal.
        self.buffers = {name: buffer(name, k) for name in ("F", "G", "H")}
        self.buffers.update({name: buffer(name, e) for name in ("feat_I", "feat_T", "feat_L")})
        self.buffers.update({name: buffer(name, c) for name in ("pred_I", "pred_T", "pred_L")})
        self.unified_codes = tf.Variable(tf.zeros([self.num_items, k]), trainable=False, name="B")

        if config.shared_adam_counter:
            shared = TF1Adam(name="adam_generators")
            self.optimizers = {"lab": shared, "img": shared, "txt": shared}
        else:
            self.optimizers = {net: TF1Adam(name=f"adam_{net}") for net in ("lab", "img", "txt")}
        self.optimizers["dis"] = TF1Adam(name="adam_discriminators")
        # One loss scale per step: their losses differ by orders of magnitude (sums over n x batch vs means)
        self.loss_scales = ({step: DynamicLossScale(name=f"loss_scale_{step}") for step in STEP_NAMES}
                            if config.mixed_precision else {})
        self._compiled = {}

    # ----------------------------------------------------------------- building
    def build(self, image_shape):
        """Creates every variable (one dummy call per net) and the optimizers' slots."""
        import tensorflow as tf
        with distribute.scope(self.strategy):
            self.nets["lab"](tf.zeros([1, self.num_classes]))
            self.nets["img"](tf.zeros((1,) + tuple(image_shape)))
            self.nets["txt"](tf.zeros([1, self.nets["txt"].text_dim]))
            for name in self.discriminator_names:
                self.nets[name](tf.zeros([1, self.embed_dim]))
            for step in ("lab", "img", "txt", "dis"):
                self.optimizers[step].build(self.step_variables(step))

    @property
    def discriminator_names(self):
        return [name for name in self.nets if name.startswith("dis_")]

    def label_discriminator(self, modality):
        """D_I' / D_T' (the program's separate label branch) or D_I / D_T when shared."""
        name = f"dis_{modality}_label"
        return self.nets[name] if name in self.nets else self.nets[f"dis_{modality}"]

    def step_variables(self, step):
        """The variables a step updates (its optimizer's var_list)."""
        if step == "dis":
            return [v for name in self.discriminator_names for v in self.nets[name].trainable_variables]
        variables = list(self.nets[step].trainable_variables)
        if step in ("img", "txt") and self.config.generator_steps_move_discriminators and self.config.delta:
            variables += self.nets[f"dis_{step}"].trainable_variables
        return variables

    # ----------------------------------------------------------------- losses
    def similarity(self, batch_labels):
        """n x batch slice of S: scale where the stored item shares a label with the batch item."""
        import tensorflow as tf
        shared = tf.matmul(self.labels, batch_labels, transpose_b=True) > 0
        return tf.cast(shared, tf.float32) * self.config.similarity_scale

    def pairwise(self, stored, batch, similarity):
        from losses import ssah as L
        fn = L.pairwise_squared if self.config.pairwise_loss == "squared" else L.pairwise_nll
        return fn(stored, batch, similarity)

    def _write(self, names, batch_index, values):
        """Stores a batch's rows; under a strategy, the whole global batch on every device."""
        batch_index, *values = distribute.all_gather([batch_index, *values])
        distribute.synchronized_updates([(self.buffers[name], _scatter_rows, (batch_index, value))
                                         for name, value in zip(names, values)])

    def _outputs(self, net, inputs):
        """(feature, hash, label prediction) of a net, in float32 (mixed precision computes in float16)."""
        import tensorflow as tf
        return tuple(tf.cast(x, tf.float32) for x in self.nets[net](inputs, training=True))

    def _supervised_terms(self, feature, hashes, predicted, batch_labels, similarity):
        """The four terms every modality's loss shares (against the stored LABEL buffers)."""
        from losses import ssah as L
        cfg = self.config
        return {
            "pair_feature": cfg.alpha * self.pairwise(self.buffers["feat_L"], feature, similarity),
            "pair_hash": cfg.gamma * self.pairwise(self.buffers["H"], hashes, similarity),
            "quantisation": cfg.beta * L.quantisation_loss(hashes),
            "label": cfg.eta * L.label_loss(batch_labels, predicted),
        }

    def _apply(self, step, tape, loss, learning_rate):
        """Gradient of the global batch's loss (each replica's loss is its share; the shares'
        gradients are summed) and the update; under mixed precision, of scale * loss."""
        variables = self.step_variables(step)
        loss_scale = self.loss_scales.get(step)
        if loss_scale is None:
            gradients = distribute.all_reduce_sum(tape.gradient(loss, variables))
            self.optimizers[step].apply_gradients(zip(gradients, variables), learning_rate)
            return
        gradients = distribute.all_reduce_sum(tape.gradient(loss, variables, output_gradients=loss_scale.scale))
        gradients, finite = loss_scale.unscale(gradients)
        self.optimizers[step].apply_gradients(zip(gradients, variables), learning_rate, apply_if=finite)

    # ----------------------------------------------------------------- the four steps
    def lab_step_fn(self, batch_index, batch_labels, learning_rate):
        import tensorflow as tf
        similarity = self.similarity(batch_labels)
        with tf.GradientTape() as tape:
            feature, hashes, predicted = self._outputs("lab", batch_labels)
            self._write(("feat_L", "H", "pred_L"), batch_index,
                        (tf.stop_gradient(feature), tf.stop_gradient(hashes), tf.stop_gradient(predicted)))
            terms = self._supervised_terms(feature, hashes, predicted, batch_labels, similarity)
            loss = tf.add_n(list(terms.values()))
        self._apply("lab", tape, loss, learning_rate)
        return {"loss": loss, **terms}

    def discriminator_logits(self, image_features, text_features, label_features):
        return (self.nets["dis_img"](image_features, training=True),
                self.nets["dis_txt"](text_features, training=True),
                self.label_discriminator("img")(label_features, training=True),
                self.label_discriminator("txt")(label_features, training=True))

    def dis_step_fn(self, batch_images, batch_texts, batch_labels, learning_rate):
        import tensorflow as tf

        from losses import ssah as L
        image_features = self.nets["img"](self.image_preprocess(batch_images))[0]
        text_features = self.nets["txt"](self.text_preprocess(batch_texts))[0]
        label_features = self.nets["lab"](batch_labels)[0]
        with tf.GradientTape() as tape:
            logits = self.discriminator_logits(image_features, text_features, label_features)
            loss = distribute.replica_share(L.discriminator_loss(*logits))  # a mean over the batch
        self._apply("dis", tape, loss, learning_rate)
        correct = [tf.cast(logits[0] < 0, tf.float32), tf.cast(logits[1] < 0, tf.float32),
                   tf.cast(logits[2] > 0, tf.float32), tf.cast(logits[3] > 0, tf.float32)]
        accuracy = distribute.replica_share(tf.reduce_mean(tf.concat(correct, axis=0)))
        return {"loss": loss, "accuracy": accuracy}

    def _modality_step(self, modality, batch_index, inputs, batch_labels, learning_rate):
        import tensorflow as tf

        from losses import ssah as L
        hash_name, feat_name, pred_name = {"img": ("F", "feat_I", "pred_I"),
                                           "txt": ("G", "feat_T", "pred_T")}[modality]
        similarity = self.similarity(batch_labels)
        with tf.GradientTape() as tape:
            feature, hashes, predicted = self._outputs(modality, inputs)
            self._write((feat_name, hash_name, pred_name), batch_index,
                        (tf.stop_gradient(feature), tf.stop_gradient(hashes), tf.stop_gradient(predicted)))
            terms = self._supervised_terms(feature, hashes, predicted, batch_labels, similarity)
            if self.config.adversarial_to_generators:
                fed = feature
            elif modality == "img":   # the program feeds all n stored image features ...
                fed = self.buffers[feat_name]
            else:                     # ... but only the batch's text features (before the update)
                fed = tf.stop_gradient(feature)
            # A mean over the batch rows, or over all n stored rows (the same on every replica):
            # either way each replica holds 1/replicas of it (the other terms are sums over rows).
            adversarial = L.adversarial_loss(self.nets[f"dis_{modality}"](fed, training=True), 1.0)
            terms["adversarial"] = self.config.delta * distribute.replica_share(adversarial)
            loss = tf.add_n(list(terms.values()))
        self._apply(modality, tape, loss, learning_rate)
        return {"loss": loss, **terms}

    def img_step_fn(self, batch_index, batch_images, batch_labels, learning_rate):
        return self._modality_step("img", batch_index, self.image_preprocess(batch_images), batch_labels,
                                   learning_rate)

    def txt_step_fn(self, batch_index, batch_texts, batch_labels, learning_rate):
        return self._modality_step("txt", batch_index, self.text_preprocess(batch_texts), batch_labels,
                                   learning_rate)

    def step(self, name, *args, learning_rate):
        """Runs one update of step `name` (lab, dis, img, txt) as a compiled tf.function.

        The learning rate goes in as a tensor, so changing it does not retrace.
        """
        import tensorflow as tf
        if name not in self._compiled:
            self._compiled[name] = distribute.replicated_step(self.strategy, getattr(self, f"{name}_step_fn"),
                                                              jit=self.config.jit)
        args = [tf.convert_to_tensor(a) for a in args]
        losses = self._compiled[name](*args, tf.constant(learning_rate, tf.float32))
        return {key: float(value) for key, value in losses.items()}

    # ----------------------------------------------------------------- monitoring
    def monitoring_loss(self, net, chunk=1024):
        """The program's early-stop loss of `net` over all n stored items.

        Equals losses.ssah.monitoring_loss (LabNet) and modality_monitoring_loss (ImgNet:
        codes sign(F), pair (F, H); TxtNet: sign(G), pair (H, G)) with all weights 1; the
        n x n pairwise NLL is summed over row chunks so that n = 10,000 fits in memory. In float64
        (the program computes it in NumPy from float64 copies of the stored outputs).
        """
        import tensorflow as tf

        from losses import ssah as L
        b = self.buffers

        def nll(first, second):  # in float64, as the program's NumPy code (S too: 0.999 in float64)
            total = 0.0
            for start in range(0, self.num_items, chunk):
                stop = min(start + chunk, self.num_items)
                sim = tf.cast(tf.matmul(self.labels[start:stop], self.labels, transpose_b=True) > 0,
                              L.MONITORING_DTYPE) * self.config.similarity_scale
                total += float(L.pairwise_nll(first[start:stop], second, sim, L.MONITORING_DTYPE))
            return total

        if net == "lab":
            return (float(L.squared_error(b["pred_L"], self.labels))
                    + nll(b["H"], b["H"]) + nll(b["feat_L"], b["feat_L"]))
        hashes, predicted = (b["F"], b["pred_I"]) if net == "img" else (b["G"], b["pred_T"])
        first, second = (hashes, b["H"]) if net == "img" else (b["H"], hashes)
        codes = tf.sign(hashes)
        rest = (L.squared_error(codes, first) + L.squared_error(codes, second)
                + L.squared_error(b["H"], first) + L.squared_error(b["H"], second)
                + L.squared_error(predicted, self.labels))
        return float(rest) + nll(first, second)

    def update_unified_codes(self):
        """B = sign(H + F + G), the program's unified code of the training set."""
        import tensorflow as tf
        b = self.buffers
        self.unified_codes.assign(tf.sign(b["H"] + b["F"] + b["G"]))

    # ----------------------------------------------------------------- codes
    def hash_codes(self, modality, inputs, batch_size):
        """+-1 codes (sign of the tanh hash; 0 counts as +1) of `inputs` (array or lazy rows;
        lazy rows stream through tf.data)."""
        import tensorflow as tf

        from utils.data.pipeline import image_batches
        net = self.nets[modality]
        prepare = self.image_preprocess if modality == "img" else self.text_preprocess

        def hashes(x):
            return net(prepare(x))[1]
        fn = self._compiled.setdefault(f"codes_{modality}",
                                       tf.function(hashes, reduce_retracing=True, autograph=False))
        if isinstance(inputs, np.ndarray):
            batches = (inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size))
        else:
            batches = (values for values, _ in image_batches(inputs, np.arange(len(inputs)), batch_size))
        out = [fn(tf.convert_to_tensor(x)).numpy() for x in batches]
        return np.where(np.concatenate(out) >= 0, 1.0, -1.0).astype(np.float32)

    def variable_keys(self):
        """{id(variable): "NET/PATH"} for every variable of every net: PATH is the variable's path
        below the net, with the image trunk's own name (which Keras numbers per process: cnnf,
        cnnf_1, ...) written as "trunk", so that the keys are the same in every process."""
        keys = {}
        for name, net in self.nets.items():
            trunk = getattr(net, "trunk", None)
            for variable in net.variables:
                path = variable.path.removeprefix(net.name + "/")
                if trunk is not None and path.startswith(trunk.name + "/"):
                    path = "trunk/" + path[len(trunk.name) + 1:]
                keys[id(variable)] = f"{name}/{path}"
        if len(set(keys.values())) < len(keys):
            raise ValueError("two variables of one SSAH net share a path: give their layers distinct names")
        return keys

    def checkpoint_objects(self):
        """Every variable of the trainer for tf.train.Checkpoint. Keras 3 layers kept in Python
        lists or dicts (CNN-F's convolutions, the discriminators' hidden layers, TxtNet's
        multi-scale weights) are invisible to the checkpoint's object graph, so variables are
        listed explicitly by key (`variable_keys`): net_NAME: {PATH: variable};
        optimizer_NAME: {"iterations", "m/NAME/PATH", "v/NAME/PATH"} (the moment slots of the
        variables it updates); buffers, unified codes, the batch RNG and the loss scales as objects."""
        keys = self.variable_keys()
        objects = {f"net_{name}": {keys[id(v)].split("/", 1)[1]: v for v in net.variables}
                   for name, net in self.nets.items()}
        served = {}  # optimizer -> the variables it updates
        for step, optimizer in self.optimizers.items():
            served.setdefault(optimizer, {}).update({id(v): v for v in self.step_variables(step)})
        for optimizer, variables in served.items():
            entries = {"iterations": optimizer.iterations}
            for variable in variables.values():
                entries["m/" + keys[id(variable)]], entries["v/" + keys[id(variable)]] = optimizer.slots(variable)
            objects[f"optimizer_{optimizer.name}"] = entries
        objects.update({f"buffer_{name}": var for name, var in self.buffers.items()})
        objects["unified_codes"] = self.unified_codes
        objects["rng"] = self.rng
        for step, loss_scale in self.loss_scales.items():
            objects[f"loss_scale_{step}"] = loss_scale
        return objects


def checkpoint_variable_names(objects):
    """The names tf.train.Checkpoint(**objects) gives the variables held in its dicts."""
    def escape(name):
        return name.replace(".", "..").replace("/", ".S")
    return {f"{key}/{escape(inner)}/.ATTRIBUTES/VARIABLE_VALUE"
            for key, value in objects.items() if isinstance(value, dict) for inner in value}


# --------------------------------------------------------------------------- data and trunk

def build_trunk(config, data, backbone):
    """(trunk model, image preprocessing function).

    Features: optionally standardised with the training statistics. Images (uint8): the
    trunk's own `prepare` (channel order, minus the weight file's mean image) when a weight
    file gave a mean; otherwise minus the dataset's mean image, or ImageNet's per-channel
    RGB mean when the dataset has none.
    """
    import tensorflow as tf

    if backbone == "features":
        from models.ssah import FeatureTrunk
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
        from models.cnnf import CNNF, cnnf_from_file
        trunk = cnnf_from_file(config.weights) if config.weights else CNNF()
    elif backbone == "vgg19":
        from models import vgg19
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


def text_standardizer(config, data):
    """The text preprocessing of --text-norm: None (raw rows) or minus the training mean over
    the training std per dimension (the rows of 10-d LDA topic proportions are tiny and sum to
    1, unlike the standardised image features)."""
    if config.text_norm == "none":
        return None
    import tensorflow as tf
    train_texts = np.asarray(data.texts[data.split.train], np.float64)
    mean = tf.constant(train_texts.mean(axis=0).astype(np.float32))
    std = tf.constant(np.maximum(train_texts.std(axis=0), 1e-6).astype(np.float32))

    def standardize(x):
        return (tf.cast(x, tf.float32) - mean) / std
    return standardize


def build_trainer(config, data, backbone, strategy=None):
    """An SSAHTrainer for `data`'s training part with every variable created; the trunk is
    built under the strategy's scope and the run's dtype policy."""
    with distribute.scope(strategy), distribute.dtype_policy(config.mixed_precision):
        trunk, preprocess = build_trunk(config, data, backbone)
    trainer = SSAHTrainer(config, data.labels[data.split.train], data.text_dim, trunk, preprocess,
                          seed=config.seed, strategy=strategy, text_preprocess=text_standardizer(config, data))
    trainer.build(tuple(data.images.shape[1:]))
    return trainer


# --------------------------------------------------------------------------- the epoch loop

StopCheck = collections.namedtuple("StopCheck", "pass_index previous last stopped")


def inner_loop(passes, run_pass, monitor, rule, records, first_pass=0):
    """The passes of one inner index of one net, with the program's early stop.

    run_pass(k) runs pass k; monitor(k) gives the net's monitoring loss after it; rule: an
    EarlyStopRule, or None (no early stop); records: the net's list of recorded monitoring
    losses, which runs on across inner indices (appended to here). first_pass: resume there.
    Returns (passes run, counted from 0, [StopCheck of every check made])."""
    checks = []
    for k in range(first_pass, passes):
        run_pass(k)
        if rule is None:
            continue
        if k % rule.record_every == 0:
            records.append(float(monitor(k)))
        if k >= rule.check_from and len(records) >= 2:
            stopped = records[-1] - records[-2] >= 0
            checks.append(StopCheck(k, records[-2], records[-1], stopped))
            if stopped:
                return k + 1, checks
    return passes, checks


SUMMARY_KEYS = ("loss", "accuracy")  # what a pass reports: its mean loss (and discriminator accuracy)


class EpochLoop:
    """SSAH's epochs as the program runs them: per net, the inner indices of the schedule, each
    up to its passes with the program's early stop; a pass is n // batch updates, each on a
    fresh random batch (the first `batch` of a random permutation of the n training items).

    batch_order: None draws every batch from trainer.rng; else an iterable of row arrays
    (indices into the training items, `batch` each), one per update in the order the loop
    runs them (discriminator updates included), e.g. the batches the authors' program drew.
    run: the run folder for TensorBoard (None: no logging). keep_record: list every update,
    monitoring loss and stop check in `self.record`.

    Checkpoints inside an epoch: with `cadence` (utils.run.CheckpointCadence) and `save` set,
    after every update the loop asks the cadence; when due it stores its position (net, inner
    index, pass, updates done in the pass, the rows drawn for the pass, the recorded monitoring
    losses, the pass's running loss sums) in its variables (`checkpoint_objects`) and calls
    save(). After restoring such a checkpoint (and trainer.rng with it), `resume_from_variables`
    makes the next run_epoch continue at that update, so the rest of the run is the same as
    without the interruption."""

    def __init__(self, trainer, config, parts, schedule=None, batch_order=None, run=None, keep_record=False):
        import tensorflow as tf
        self.trainer, self.config, self.run = trainer, config, run
        self.images, self.texts, self.labels = parts
        self.schedule = schedule or SCHEDULES[config.schedule]
        self.batch = trainer.batch_size
        self.updates_per_pass = max(1, trainer.num_items // self.batch)
        self.batch_order = None if batch_order is None else iter(batch_order)
        self.cadence, self.save = None, None
        self.counters = dict.fromkeys(STEP_NAMES, 0)   # updates per step (TensorBoard's x axis)
        self.record = {"updates": [], "monitors": [], "stop_checks": []} if keep_record else None
        self._resume = None
        # position: mid-epoch flag, step (index in the epoch's order), inner index, pass, updates done in it
        self.position = tf.Variable(np.zeros(5, np.int64), trainable=False, name="loop_position")
        self.pass_rows = tf.Variable(np.zeros((self.updates_per_pass, self.batch), np.int64), trainable=False,
                                     name="pass_rows")
        self.monitor_records = tf.Variable(np.full(2, np.nan), trainable=False, name="monitor_records")
        self.pass_sums = tf.Variable(np.zeros(len(SUMMARY_KEYS)), trainable=False, name="pass_sums")
        self.step_summaries = tf.Variable(np.full((len(STEP_NAMES), len(SUMMARY_KEYS)), np.nan), trainable=False,
                                          name="step_summaries")
        self.iterations = tf.Variable(np.zeros(len(STEP_NAMES), np.int64), trainable=False, name="iterations")

    def checkpoint_objects(self):
        return {"loop_position": self.position, "pass_rows": self.pass_rows, "monitor_records": self.monitor_records,
                "pass_sums": self.pass_sums, "step_summaries": self.step_summaries, "iterations": self.iterations}

    def resume_from_variables(self):
        """After a restore: the update counters continue, and a checkpoint written inside an
        epoch makes the next run_epoch continue at its position."""
        self.counters = dict(zip(STEP_NAMES, (int(v) for v in self.iterations.numpy())))
        mid_epoch, step, inner, k, done = (int(v) for v in self.position.numpy())
        if not mid_epoch:
            self._resume = None
            return
        summaries = {name: {key: float(v) for key, v in zip(SUMMARY_KEYS, row) if not np.isnan(v)}
                     for name, row in zip(STEP_NAMES, self.step_summaries.numpy())}
        self._resume = {"step": step, "inner": inner, "pass": k, "done": done,
                        "rows": self.pass_rows.numpy(), "sums": self.pass_sums.numpy().copy(),
                        "records": [float(v) for v in self.monitor_records.numpy() if not np.isnan(v)],
                        "summaries": {name: s for name, s in summaries.items() if s}}

    @property
    def total_updates(self):
        return sum(self.counters.values())

    # ----------------------------------------------------------------- batches
    def _draw(self):
        import tensorflow as tf
        if self.batch_order is None:
            return tf.argsort(self.trainer.rng.uniform([self.trainer.num_items]))[:self.batch].numpy()
        rows = np.asarray(next(self.batch_order, ()))
        if rows.shape != (self.batch,):
            raise UserError(f"the given batch order ran out or holds a batch of shape {rows.shape}; "
                            f"give one row array of {self.batch} training-item indices per update")
        return rows

    def _inputs(self, step, draws):
        """The step inputs of the given batches; images of a lazy (HDF5) source stream through
        tf.data (parallel reads, prefetch)."""
        from utils.data.pipeline import image_batches
        images = None
        if step in ("img", "dis") and len(draws):
            if isinstance(self.images, np.ndarray):
                images = (self.images[rows] for rows in draws)
            else:
                images = (values for values, _ in image_batches(self.images, np.concatenate(draws), self.batch))
        for rows in draws:
            if step == "lab":
                yield (rows, self.labels[rows])
            elif step == "img":
                yield (rows, next(images), self.labels[rows])
            elif step == "txt":
                yield (rows, self.texts[rows], self.labels[rows])
            else:
                yield (next(images), self.texts[rows], self.labels[rows])

    # ----------------------------------------------------------------- one pass, one epoch
    def _pass(self, where, lr, bar, k):
        """Pass k: draws all its batches first (the same RNG sequence as one by one: nothing
        else draws in between), then updates; returns the pass's mean loss (and accuracy)."""
        from utils.run import check_finite
        step = where["step_name"]
        resume, self._resume_pass = self._resume_pass, None
        if resume is not None:
            draws, done, sums = resume["rows"], resume["done"], resume["sums"]
        else:
            draws, done, sums = np.stack([self._draw() for _ in range(self.updates_per_pass)]), 0, np.zeros(2)
        for b, inputs in enumerate(self._inputs(step, draws[done:]), start=done):
            losses = self.trainer.step(step, *inputs, learning_rate=lr)
            check_finite(losses, STEP_NAMES[step])
            self.counters[step] += 1
            if self.run is not None:
                self.run.log_scalars(self.counters[step], losses, prefix=f"{step}/")
            sums = sums + [losses.get(key, 0.0) for key in SUMMARY_KEYS]
            if self.record is not None:
                self.record["updates"].append({"step": step, "inner": where["inner"], "pass": k, "batch": b,
                                               "rows": draws[b], "lr": lr, "loss": losses["loss"]})
            if bar is not None:
                bar.update(1)
            if self.cadence is not None and self.cadence.due(self.total_updates):
                self._store_position(where, k, b + 1, draws, sums)
                self.save()
                self.cadence.saved()
        means = sums / self.updates_per_pass
        self._summaries[step] = {"loss": float(means[0])}
        if step == "dis":
            self._summaries[step]["accuracy"] = float(means[1])
        if bar is not None and hasattr(bar, "note"):  # one plain line per pass in logs
            bar.note(f"{STEP_NAMES[step]} lr index {where['inner']} pass {k + 1}: "
                     + ", ".join(f"{key} {value:.4f}" for key, value in self._summaries[step].items()))
        return self._summaries[step]

    def _store_position(self, where, k, done, draws, sums):
        self.position.assign([1, where["step"], where["inner"], k, done])
        self.pass_rows.assign(draws)
        records = ([np.nan, np.nan] + self._records)[-2:]
        self.monitor_records.assign(records)
        self.pass_sums.assign(sums)
        self.step_summaries.assign([[self._summaries.get(name, {}).get(key, np.nan) for key in SUMMARY_KEYS]
                                    for name in STEP_NAMES])
        self.iterations.assign([self.counters[name] for name in STEP_NAMES])

    def _monitor(self, step, inner, k):
        from utils.run import check_finite
        value = self.trainer.monitoring_loss(step)
        check_finite({"monitoring": value}, STEP_NAMES[step] + " monitoring")
        if self.run is not None:
            self.run.log_scalars(self.counters[step], {"monitoring": value}, prefix=f"{step}/")
        if self.record is not None:
            self.record["monitors"].append({"step": step, "inner": inner, "pass": k, "value": value})
        return value

    def run_epoch(self, epoch, bar=None):
        """One epoch (or the rest of it after resume_from_variables); returns per step the
        mean loss (discriminators: and accuracy) of its last pass."""
        resume, self._resume = self._resume, None
        self._summaries = dict(resume["summaries"]) if resume else {}
        self._resume_pass = None
        position = -1
        for step in self.config.step_order:
            position += 1
            if resume and position < resume["step"]:
                continue
            resuming_step = resume is not None and position == resume["step"]
            self._records = list(resume["records"]) if resuming_step else []
            rule = EARLY_STOP.get(step) if self.config.early_stop else None
            for inner, passes in enumerate(self.schedule[step]):
                if resuming_step and inner < resume["inner"]:
                    continue
                first_pass = 0
                lr = learning_rate(self.config, step, epoch + inner)
                if resuming_step and inner == resume["inner"]:
                    first_pass = resume["pass"]
                    self._resume_pass = resume
                    if bar is not None:
                        bar.update(self.updates_per_pass * first_pass + resume["done"])
                elif self.run is not None:  # at mAP's convention: the epoch being trained counts from 1
                    self.run.log_scalars(epoch + 1, {f"lr_{step}_{inner}": lr}, prefix="learning_rate/")
                where = {"step": position, "step_name": step, "inner": inner}

                def run_pass(k, where=where, lr=lr):
                    return self._pass(where, lr, bar, k)

                def monitor(k, step=step, inner=inner):
                    return self._monitor(step, inner, k)

                passes_run, checks = inner_loop(passes, run_pass, monitor, rule, self._records, first_pass)
                self._records = self._records[-2:]
                if self.record is not None:
                    self.record["stop_checks"] += [{"step": step, "inner": inner, **check._asdict()}
                                                   for check in checks]
                if bar is not None:
                    bar.update(self.updates_per_pass * (passes - passes_run))
            if resuming_step:
                resume = None  # the steps after it run whole
        return dict(self._summaries)

    def end_epoch(self):
        """Position and counters for the checkpoint written at the end of an epoch."""
        self.position.assign(np.zeros(5, np.int64))
        self.iterations.assign([self.counters[name] for name in STEP_NAMES])


# --------------------------------------------------------------------------- training loop

def _check_resume_checkpoint(run_dir, objects, data_shape=None):
    """One-line errors for a checkpoint that cannot restore `objects` (checkpoint_objects):
    one lacking some of their variables (an older version that did not save every variable,
    or other network settings; restoring would silently leave those at their initial values),
    or one trained on other data (e.g. another tag file)."""
    import tensorflow as tf
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
    """Codes of query and database items and mAP in all four directions (tie rule config.ties)."""
    from utils.metrics import mean_average_precision
    q_img, q_txt, q_lab = data.part("query")
    d_img, d_txt, d_lab = data.part("database")
    bs = config.eval_batch_size
    codes = {"Qi": trainer.hash_codes("img", q_img, bs),
             "Qt": trainer.hash_codes("txt", q_txt, bs),
             "Di": trainer.hash_codes("img", d_img, bs),
             "Dt": trainer.hash_codes("txt", d_txt, bs),
             "query_L": q_lab, "retrieval_L": d_lab}
    from utils.exports import EXPORTS
    maps = {direction: mean_average_precision(codes[q], codes[d], codes[ql], codes[dl], ties=config.ties)
            for direction, (q, d, ql, dl) in EXPORTS["ssah"]["directions"].items()}
    return maps, codes


def train(config, run, resume=False):
    import tensorflow as tf

    from utils.data import load_dataset
    from utils.run import CheckpointCadence, progress

    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{config.schedule}'; choose one of {', '.join(SCHEDULES)}")
    if config.bits < 1 or config.embed_dim < 1 or config.batch_size < 1:
        raise UserError("bits, embed_dim and batch_size must be positive")
    data = load_dataset(config.dataset, config.data, config.seed, config.split_file,
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
                from utils import io
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


# --------------------------------------------------------------------------- encoding new items

def dataset_vocabulary(config):
    """The tag words of the run's dataset in column order (FILE.vocab.json that utils.prepare
    writes beside FILE.h5), or None when the data has none."""
    from utils import io
    from utils.data import resolve_path
    from utils.prepare import sidecar_paths
    path = resolve_path(config.dataset, config.data)
    vocab_path = sidecar_paths(path)[0] if path and os.path.isfile(path) else ""
    return io.load_json(vocab_path)["vocabulary"] if vocab_path and os.path.exists(vocab_path) else None


def tag_vectors(words, vocabulary, text_dim):
    """Bag-of-tags rows (float32) of one tag list or a list of tag lists; unknown tags are skipped."""
    if vocabulary is None:
        raise UserError("the run's dataset has no vocabulary file (FILE.vocab.json from utils.prepare): "
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


def encode(run_dir, inputs, modality):
    """+-1 codes (float32, items x bits) of new items from a trained SSAH run.

    Rebuilds the nets from RUN_DIR/config.json (the run's dataset is loaded for its shapes
    and feature statistics) and restores the latest checkpoint. modality "image": image
    features, or uint8 images (n x h x w x 3), as the run's data; "text": tag vectors
    (n x tags), or tag words (one list, or a list of lists) mapped through the dataset's
    vocabulary."""
    import tensorflow as tf

    from utils.data import load_dataset
    from utils.run import item_rows, restore_trained, saved_config
    if modality not in ("image", "text"):
        raise UserError(f"unknown modality {modality!r} for SSAH; choose image or text")
    _, config = saved_config(run_dir, {"ssah": Config})
    data = load_dataset(config.dataset, config.data, config.seed, config.split_file,
                        split_sizes=config.split_sizes)
    if modality == "text" and _holds_words(inputs):
        inputs = tag_vectors(inputs, dataset_vocabulary(config), data.text_dim)
    item_shape = (data.text_dim,) if modality == "text" else data.images.shape[1:]
    inputs = item_rows(inputs, item_shape, f"{modality} inputs")
    trainer = build_trainer(config, data, resolve_backbone(config, data))
    objects = trainer.checkpoint_objects()
    _check_resume_checkpoint(run_dir, objects)
    restore_trained(run_dir, tf.train.Checkpoint(**objects))
    return trainer.hash_codes("img" if modality == "image" else "txt", inputs, config.eval_batch_size)
