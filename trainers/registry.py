"""The method registry: each method declares one MethodSpec in its own module and registers it;
train.py, eval.py, export.py, search.py and tune.py look methods up here, by name.

Importing this module (and a method's declaration) imports no TensorFlow: the heavy parts of a
method (fit, train, encode, its export builders, its validation score) live in its
`implementation` module, imported on first use. So `python train.py --method M --help` and
argument errors stay fast.
"""
import dataclasses
import importlib
import typing

from utils.errors import UserError

# Method name -> the module that declares and registers its MethodSpec (imported on look-up).
DECLARATIONS = {"ssah": "trainers.ssah.config", "acmr": "trainers.acmr", "metah": "trainers.metah"}
METHODS = tuple(DECLARATIONS)
_REGISTERED = {}


def _no_trunk(config):
    return None, "", ""


def backbone_trunk(config):
    """(image trunk, its weight file, the flag that gives it) of a method with --backbone / --weights
    (an empty --backbone becomes cnnf on a prepared image dataset)."""
    from utils.data import PREPARED
    trunk = getattr(config, "backbone", None)
    if trunk == "" and config.dataset in PREPARED:
        trunk = "cnnf"
    return trunk, getattr(config, "weights", ""), "--weights"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Everything the scripts need to know about one method."""
    name: str
    config_class: type                 # the Config dataclass (subclass of utils.config.CommonConfig)
    preset_field: str                  # the Config field that names the preset ("variant", "preset")
    presets: dict                      # preset name -> settings ("tuned" adds the committed preset file)
    base_preset: str                   # the authors' program (the settings search starts there)
    length_field: str                  # how long it trains: the one setting --resume may grow
    implementation: str                # module with fit, train, encode, encoders, validation_score, evaluate
    exports: dict                      # codes.mat fields per direction, distance (utils.exports)
    databases: dict                    # search.py: database name -> (codes field, labels field)
    default_database: dict             # search.py: query modality -> database searched by default
    dataset_defaults: dict = dataclasses.field(default_factory=dict)  # per dataset, before the preset
    search_space: tuple = ()           # utils.presets.Param entries of the settings search
    check: typing.Callable = None      # check(config): the method's own setting checks (UserError)
    image_trunk: typing.Callable = _no_trunk  # config -> (trunk, weight file, flag) for the random-trunk warning
    text_words: bool = False           # search.py --text: its text encoder reads tag words
    validation_field: str = "validation_size"  # the setting that holds out validation items
    validation_share: float = 0.2      # tune: default share held out (of the training items; METAH: of the source)
    target_balance_floor: float = None  # tune: default floor of the unlabelled target's balance; None: no target
    objectives: dict = dataclasses.field(default_factory=lambda: {"mean": "mean validation mAP over the directions"})
    rescore: typing.Callable = None    # tune --warm-start: (figures, objective) -> score; None: not supported
    resolved: typing.Callable = None   # config -> effective values of settings whose default means "the program's"

    def module(self):
        return importlib.import_module(self.implementation)

    def fit(self, config, **kwargs):
        return self.module().fit(config, **kwargs)

    def train(self, config, run, resume=False):
        return self.module().train(config, run, resume=resume)

    def encode(self, run_dir, inputs, modality):
        return self.module().encode(run_dir, inputs, modality)

    def evaluate(self, *args, **kwargs):
        return self.module().evaluate(*args, **kwargs)

    def encoders(self, run_dir):
        """(config, {name: models.portable.Encoder}) of a trained run, for export.py."""
        return self.module().encoders(run_dir)

    def validation_score(self, config, objective="mean"):
        """(score, figures) of one trained config on its validation items (tune.py)."""
        return self.module().validation_score(config, objective)

    def resolved_settings(self, config):
        return self.resolved(config) if self.resolved is not None else {}

    @property
    def Config(self):  # noqa: N802 - reads as the class it is
        return self.config_class


def register(spec):
    """Called once by each method's declaring module."""
    _REGISTERED[spec.name] = spec
    return spec


def get_method(name):
    """The MethodSpec of `name`; a one-line error naming the known methods otherwise."""
    if name not in DECLARATIONS:
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    if name not in _REGISTERED:
        importlib.import_module(DECLARATIONS[name])
    return _REGISTERED[name]


def config_classes():
    """{method: Config} of every method (reading saved run folders)."""
    return {name: get_method(name).config_class for name in METHODS}


def check_settings(spec, config):
    """Every check of a method's settings, in one place: the shared ones, then the method's own
    (spec.check); train.py calls it before creating a run, each fit before training."""
    from utils.data import FEATURE_DATASETS
    from utils.run import keep_policy
    keep_policy(config.keep_checkpoints)
    weights, backbone = getattr(config, "weights", ""), getattr(config, "backbone", None)
    if weights and (backbone == "features" or (backbone == "" and config.dataset in FEATURE_DATASETS)):
        raise UserError(f"--weights {weights} is a trunk weight file but the image side is feature vectors "
                        f"(backbone features) and has no trunk: drop --weights, or use images with "
                        f"--backbone cnnf or vgg19")
    if spec.check is not None:
        spec.check(config)


def spec_of(config):
    """The MethodSpec whose Config `config` is (its module registered it when it was imported)."""
    return next(spec for spec in _REGISTERED.values() if isinstance(config, spec.config_class))
