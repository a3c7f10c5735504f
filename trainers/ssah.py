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
# Early stop: LabNet checks every pass from its third on; ImgNet/TxtNet check every second
# pass (0, 2, 4, ...) and may stop from the fourth pass on (the program's k > 1 and k > 2).
LAB_STOP_FROM, MODALITY_STOP_FROM, MODALITY_MONITOR_EVERY = 2, 3, 2

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
               "ms_fusion": ("per_window", "joint"), "labnet_activation": ("relu", "sigmoid")}
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

    def __init__(self, config, train_labels, text_dim, trunk, image_preprocess=None, seed=0, strategy=None):
        """strategy: a tf.distribute strategy (None: one device); create `trunk` under its scope
        and under distribute.dtype_policy(config.mixed_precision)."""
        self.config = config
        self.strategy = strategy
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
        text_features = self.nets["txt"](batch_texts)[0]
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
        return self._modality_step("txt", batch_index, batch_texts, batch_labels, learning_rate)

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
        n x n pairwise NLL is summed over row chunks so that n = 10,000 fits in memory.
        """
        import tensorflow as tf

        from losses import ssah as L
        b = self.buffers

        def nll(first, second):
            total = 0.0
            for start in range(0, self.num_items, chunk):
                stop = min(start + chunk, self.num_items)
                sim = tf.cast(tf.matmul(self.labels[start:stop], self.labels, transpose_b=True) > 0,
                              tf.float32) * self.config.similarity_scale
                total += float(L.pairwise_nll(first[start:stop], second, sim))
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
        prepare = self.image_preprocess if modality == "img" else tf.convert_to_tensor

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

    def checkpoint_objects(self):
        objects = {name: net for name, net in self.nets.items()}
        objects.update({f"buffer_{name}": var for name, var in self.buffers.items()})
        objects["unified_codes"] = self.unified_codes
        objects["rng"] = self.rng
        for step, loss_scale in self.loss_scales.items():
            objects[f"loss_scale_{step}"] = loss_scale
        for step, optimizer in self.optimizers.items():
            objects[f"optimizer_{step}"] = optimizer
        return objects


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


def build_trainer(config, data, backbone, strategy=None):
    """An SSAHTrainer for `data`'s training part with every variable created; the trunk is
    built under the strategy's scope and the run's dtype policy."""
    with distribute.scope(strategy), distribute.dtype_policy(config.mixed_precision):
        trunk, preprocess = build_trunk(config, data, backbone)
    trainer = SSAHTrainer(config, data.labels[data.split.train], data.text_dim, trunk, preprocess,
                          seed=config.seed, strategy=strategy)
    trainer.build(tuple(data.images.shape[1:]))
    return trainer


# --------------------------------------------------------------------------- training loop

def _check_resume_shapes(run, data_shape):
    """One-line error when the data no longer matches the checkpoint (e.g. another tag file)."""
    import tensorflow as tf
    path = tf.train.latest_checkpoint(run.path("checkpoints"))
    if path is None:
        return
    reader = tf.train.load_checkpoint(path)
    key = next((k for k in reader.get_variable_to_shape_map() if k.startswith("data_shape")), None)
    if key is None:
        return
    saved = dict(zip(("training items", "tag dimension", "classes", "image dimension"),
                     reader.get_tensor(key).tolist()))
    differences = [f"{name} {old} (now {new})" for (name, old), new in zip(saved.items(), data_shape) if old != new]
    if differences:
        raise UserError(f"the checkpoint in {run.path('checkpoints')} was trained with "
                        f"{', '.join(differences)}: resume with the same data or start a new run")


def evaluate(trainer, data, config):
    """Codes of query and database items and mAP in all four directions."""
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
    maps = {direction: mean_average_precision(codes[q], codes[d], codes[ql], codes[dl])
            for direction, (q, d, ql, dl) in EXPORTS["ssah"]["directions"].items()}
    return maps, codes


def train(config, run, resume=False):
    import tensorflow as tf

    from utils.data import load_dataset
    from utils.data.pipeline import image_batches
    from utils.run import check_finite, progress

    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{config.schedule}'; choose one of {', '.join(SCHEDULES)}")
    if config.bits < 1 or config.embed_dim < 1 or config.batch_size < 1:
        raise UserError("bits, embed_dim and batch_size must be positive")
    data = load_dataset(config.dataset, config.data, config.seed, config.split_file)
    backbone = resolve_backbone(config, data)
    train_images, train_texts, train_labels = data.part("train")
    image_shape = tuple(data.images.shape[1:])
    data_shape = (len(train_labels), data.text_dim, data.num_classes,
                  int(image_shape[0]) if backbone == "features" else 0)
    if resume:
        _check_resume_shapes(run, data_shape)

    trainer = build_trainer(config, data, backbone, distribute.make_strategy(config.strategy))

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    shape_var = tf.Variable(np.asarray(data_shape, np.int64), trainable=False, name="data_shape")
    # Iterations done per step (TensorBoard's x axis), kept across resumes.
    iteration_var = tf.Variable(np.zeros(4, np.int64), trainable=False, name="iterations")
    checkpoint = tf.train.Checkpoint(epoch=epoch_var, data_shape=shape_var, iterations=iteration_var,
                                     **trainer.checkpoint_objects())
    manager = run.checkpoint_manager(checkpoint)
    history = []
    if resume:
        restored = run.restore_latest(checkpoint)
        if restored:
            print(f"resumed from {restored} (epoch {int(epoch_var.numpy())})", flush=True)
            if os.path.exists(run.path("results.json")):
                from utils import io
                history = list(io.load_json(run.path("results.json")).get("epochs", []))[:int(epoch_var.numpy())]

    schedule = SCHEDULES[config.schedule]
    n, batch = trainer.num_items, trainer.batch_size
    iterations = max(1, n // batch)
    counters = dict(zip(("lab", "dis", "img", "txt"), (int(v) for v in iteration_var.numpy())))

    def draw():
        return tf.argsort(trainer.rng.uniform([n]))[:batch].numpy()

    def pass_inputs(step):
        """The step inputs of one pass. The rows of all its batches are drawn first (the same
        RNG sequence as drawing them one by one: nothing else draws in between); images of a
        lazy (HDF5) source then stream through tf.data (parallel reads, prefetch)."""
        draws = [draw() for _ in range(iterations)]
        images = None
        if step in ("img", "dis"):
            if isinstance(train_images, np.ndarray):
                images = (train_images[rows] for rows in draws)
            else:
                images = (values for values, _ in image_batches(train_images, np.concatenate(draws), batch))
        for rows in draws:
            if step == "lab":
                yield (rows, train_labels[rows])
            elif step == "img":
                yield (rows, next(images), train_labels[rows])
            elif step == "txt":
                yield (rows, train_texts[rows], train_labels[rows])
            else:
                yield (next(images), train_texts[rows], train_labels[rows])

    def one_pass(step, lr, bar):
        totals = {}
        for inputs in pass_inputs(step):
            losses = trainer.step(step, *inputs, learning_rate=lr)
            check_finite(losses, STEP_NAMES[step])
            counters[step] += 1
            run.log_scalars(counters[step], losses, prefix=f"{step}/")
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value / iterations
            bar.update(1)
        return totals

    def train_net(step, epoch, bar):
        """The inner loops of one net: passes per inner index with early stopping."""
        summary = {}
        for inner, passes in enumerate(schedule[step]):
            lr = learning_rate(config, step, epoch + inner)
            run.log_scalars(epoch, {f"lr_{step}_{inner}": lr}, prefix="learning_rate/")
            previous = None
            for k in range(passes):
                summary = one_pass(step, lr, bar)
                if step == "dis" or not config.early_stop:
                    continue
                every, stop_from = (1, LAB_STOP_FROM) if step == "lab" else (MODALITY_MONITOR_EVERY,
                                                                              MODALITY_STOP_FROM)
                if k % every:
                    continue
                monitored = trainer.monitoring_loss(step)
                check_finite({"monitoring": monitored}, STEP_NAMES[step] + " monitoring")
                run.log_scalars(counters[step], {"monitoring": monitored}, prefix=f"{step}/")
                if k >= stop_from and previous is not None and monitored > previous:
                    bar.update(iterations * (passes - k - 1))
                    break
                previous = monitored
        return summary

    results = {"epochs": history}
    start = int(epoch_var.numpy())
    total_passes = sum(sum(p) for p in schedule.values())
    for epoch in range(start, config.epochs):
        with progress(total=total_passes * iterations, desc=f"SSAH epoch {epoch + 1}/{config.epochs}") as bar:
            epoch_summary = {}
            for step in config.step_order:
                epoch_summary[step] = train_net(step, epoch, bar)
        trainer.update_unified_codes()
        maps, codes = evaluate(trainer, data, config)
        run.log_scalars(epoch + 1, maps, prefix="mAP/")
        run.flush()
        history.append({"epoch": epoch + 1, "mAP": maps,
                        "last_pass_losses": {s: v.get("loss", 0.0) for s, v in epoch_summary.items()},
                        "discriminator_accuracy": epoch_summary["dis"].get("accuracy")})
        epoch_var.assign(epoch + 1)
        iteration_var.assign([counters[s] for s in ("lab", "dis", "img", "txt")])
        manager.save(checkpoint_number=epoch + 1)
        run.export_codes(codes)
        results["final"] = dict(maps)
        results["final"]["epoch"] = epoch + 1
        run.save_results(results)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in maps.items()), flush=True)
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
    data = load_dataset(config.dataset, config.data, config.seed, config.split_file)
    if modality == "text" and _holds_words(inputs):
        inputs = tag_vectors(inputs, dataset_vocabulary(config), data.text_dim)
    item_shape = (data.text_dim,) if modality == "text" else data.images.shape[1:]
    inputs = item_rows(inputs, item_shape, f"{modality} inputs")
    trainer = build_trainer(config, data, resolve_backbone(config, data))
    restore_trained(run_dir, tf.train.Checkpoint(**trainer.checkpoint_objects()))
    return trainer.hash_codes("img" if modality == "image" else "txt", inputs, config.eval_batch_size)
