"""SSAH's settings: the Config dataclass, the program's and the paper's presets, the pass
schedules, the early-stop rules and the learning-rate lists."""
import dataclasses

from trainers.registry import MethodSpec, backbone_trunk, register
from utils import distribute
from utils.config import CommonConfig, setting
from utils.exports import EXPORTS
from utils.presets import Param
from utils.errors import UserError


PRESET_FIELD = "variant"



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
# The loss terms each step returns ("loss" is the step's total; the discriminators' accuracy is
# the share of their four batches they classify right).
STEP_TERMS = {"lab": ("loss", "pair_feature", "pair_hash", "quantisation", "label"),
              "dis": ("loss", "accuracy"),
              "img": ("loss", "pair_feature", "pair_hash", "quantisation", "label", "adversarial"),
              "txt": ("loss", "pair_feature", "pair_hash", "quantisation", "label", "adversarial")}
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
    variant: str = setting("original", "original = the authors' program, paper = the published equations, "
                          "tuned = the program with the settings tune.py chose for the dataset "
                          "(trainers/presets/ssah-DATASET.json)",
                          choices=tuple(PRESETS))
    # Networks
    backbone: str = setting("", "image trunk: cnnf, vgg19, or features (an MLP layer on feature vectors); "
                           "empty = features for feature datasets, cnnf for image datasets",
                           choices=("", "cnnf", "vgg19", "features"))
    weights: str = setting("", "trunk weight file (imagenet-vgg-f.mat for cnnf; VGG-19 .mat/.h5); "
                          "empty = random trunk weights")
    embed_dim: int = setting(512, "E, width of the semantic features F^v, F^t, F^l")
    hidden_dim: int = setting(4096, "hidden width of LabNet, TxtNet and the feature trunk")
    feature_norm: str = setting("standardize", "image FEATURE preprocessing (features backbone only; "
                               "the program has no feature path): standardize with the training "
                               "mean/std per dimension, or none", choices=("standardize", "none"))
    text_norm: str = setting("none", "text preprocessing: none (program: raw rows, e.g. LDA topic "
                            "proportions summing to 1) or standardize (training mean/std per dimension)",
                            choices=("standardize", "none"))
    labnet_activation: str = setting("relu", "LabNet hidden activation: relu (program) or sigmoid (paper text; "
                                    "on Wikipedia its features sink to 0 and every code collapses: README)",
                                    choices=("relu", "sigmoid"))
    discriminator_hidden: tuple[int, ...] = setting((512, 256), "discriminator hidden widths "
                                                   "(program 512,256; paper 4096,4096)")
    discriminator_activation: str = setting("relu", "discriminator hidden activation: relu (program) or "
                                           "tanh (paper)", choices=("relu", "tanh"))
    ms_windows: tuple[int, ...] = setting(PROGRAM_MS_WINDOWS, "TxtNet multi-scale fusion: average-pooling "
                                         "window widths (program 50,30,15,10,5; paper 1,2,3,5,10); a window "
                                         "wider than the text dimension is dropped")
    ms_fusion: str = setting("per_window", "TxtNet multi-scale fusion: per_window (program: a learned scalar "
                            "and relu per window, the raw vector kept as a channel) or joint (paper: one "
                            "1x1 convolution with relu fuses the windows' averages into one vector)",
                            choices=("per_window", "joint"))
    discriminator_dropout: float = setting(0.0, "discriminator dropout rate (the program feeds keep "
                                          "probability 1.0 everywhere: off)")
    # Losses
    alpha: float = setting(1.0, "weight of the pairwise feature term")
    gamma: float = setting(1.0, "weight of the pairwise hash term")
    beta: float = setting(1.0, "weight of the quantisation term mse(sign(H), H)")
    eta: float = setting(1.0, "weight of the label prediction term")
    delta: float = setting(1.0, "weight of the adversarial term in the ImgNet/TxtNet losses")
    pairwise_loss: str = setting("squared", "pairwise term: squared = the program's mse(S*Theta, "
                                "log(1+e^Theta)); nll = the paper's sum(log(1+e^Theta) - S*Theta)",
                                choices=("squared", "nll"))
    similarity_scale: float = setting(0.999, "S = scale where items share a label (program 0.999, paper 1)")
    # Quirks of the program's adversarial wiring
    adversarial_to_generators: bool = setting(False, "true (paper): the adversarial term is computed on "
                                             "the net's own batch features and its gradient reaches "
                                             "ImgNet/TxtNet; false (program): the discriminator is fed "
                                             "stored features (ImgNet step: all n stored image "
                                             "features; TxtNet step: the batch's text features before "
                                             "the update) as constants, so the term is inert for the nets")
    generator_steps_move_discriminators: bool = setting(True, "true (program): the ImgNet/TxtNet steps "
                                                       "also update D_I/D_T (towards 'label' for the fed "
                                                       "features) with the shared Adam at the net's rate; "
                                                       "false (paper): only the discriminator step trains them")
    share_label_discriminators: bool = setting(False, "true (paper): one discriminator per modality pair; "
                                              "false (program): the label branch of each is a separate "
                                              "network (four discriminators)")
    shared_adam_counter: bool = setting(True, "true (program): one TF1 Adam for LabNet/ImgNet/TxtNet whose "
                                       "bias-correction step counter advances on any of their updates; "
                                       "false: one Adam (own counter) per net")
    # Optimisation and schedule
    step_order: tuple[str, ...] = setting(PROGRAM_STEP_ORDER, "order of the four steps in an epoch: "
                                         "lab,dis,img,txt (program) or lab,img,txt,dis (paper)")
    batch_size: int = setting(128, "batch size")
    schedule: str = setting("original", "passes per epoch: original (LabNet 10,5; D 1,1; ImgNet/TxtNet "
                           "15,7,5, early stop), short (4,2; 1,1; 5,3,2), tiny (one pass each, for tests)",
                           choices=tuple(SCHEDULES))
    epochs: int = setting(5, "epochs (the program's default 500 runs its learning-rate lists to ~0: "
                         "rates fall by sqrt(10) per epoch)")
    early_stop: bool = setting(True, "stop a net's inner loop when its monitoring loss rises (program)")
    lr_lab_exponent: float = setting(2.0, "lr_lab[i] = 10^-(this + lr_exponent_step * i); on single-label "
                                    "data (Wikipedia) 1e-2 kills LabNet's relu units and every code "
                                    "collapses: --dataset wiki defaults to 2.5 (README, SSAH on Wikipedia)")
    lr_img_exponent: float = setting(4.5, "lr_img[i] = 10^-(this + lr_exponent_step * i); 4.5 suits a "
                                    "pretrained CNN-F; a random feature trunk needs ~3.5 (--dataset wiki defaults to it)")
    lr_txt_exponent: float = setting(3.5, "lr_txt[i] = 10^-(this + lr_exponent_step * i)")
    lr_dis_exponent: float = setting(3.0, "lr_dis[i] = 10^-(this + lr_exponent_step * i)")
    lr_exponent_step: float = setting(0.5, "exponent increment per list entry (entry = epoch + inner index)")
    eval_batch_size: int = setting(512, "batch size when computing query/database codes")
    # Full scale (utils/distribute.py); lazy (HDF5) images always stream through tf.data
    strategy: str = setting("none", distribute.STRATEGY_HELP, choices=distribute.STRATEGIES)
    jit: bool = setting(False, "compile each training step with XLA (tf.function jit_compile): for GPUs; "
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
    network_fields = ("pairwise_loss", "discriminator_activation", "ms_fusion", "labnet_activation", "text_norm")
    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(Config) if f.name in network_fields}
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


def check_config(config):
    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule '{config.schedule}'; choose one of {', '.join(SCHEDULES)}")
    if config.bits < 1 or config.embed_dim < 1 or config.batch_size < 1:
        raise UserError("bits, embed_dim and batch_size must be positive")
    if config.epochs < 1:
        raise UserError(f"--epochs {config.epochs} trains nothing (the run would be untrained networks marked "
                        f"complete); give --epochs 1 or more, and evaluate a trained run with eval.py RUN_DIR")


# The settings search (tune.py) may change: the causes the issue names (input standardisation,
# MS-fusion windows for small d, passes and rates, loss weights), each a Config field.
SEARCH_SPACE = (
    # LabNet/ImgNet rates stay at the wiki defaults (other LabNet rates collapse every code);
    # random draws of all eleven settings scored far below the base in a ten-trial search.
    Param("text_norm", choices=("none", "standardize")),
    Param("ms_windows", choices=("50,30,15,10,5", "1,2,3,5", "1")),
    Param("schedule", choices=("original", "short")),
    Param("epochs", 1, 2, integer=True),  # 2 epochs of the program's passes: about 3 min on 2 cores
    Param("lr_txt_exponent", 3.0, 4.0),
    Param("lr_exponent_step", 0.0, 0.5),
    Param("eta", 0.3, 3.0, log=True),
)

METHOD = register(MethodSpec(
    name="ssah", config_class=Config, preset_field=PRESET_FIELD, presets=PRESETS, base_preset="original",
    length_field="epochs", implementation="trainers.ssah", exports=EXPORTS["ssah"],
    databases={"image": ("Di", "retrieval_L"), "text": ("Dt", "retrieval_L")},
    default_database={"text": "image", "image": "text"}, dataset_defaults=DATASET_DEFAULTS,
    search_space=SEARCH_SPACE, check=check_config, image_trunk=backbone_trunk, text_words=True))
