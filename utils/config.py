"""Settings live in one dataclass per method; this module turns it into a CLI.

Each field becomes `--field-name`; `metadata={"help": ..., "choices": ...}`
documents it. Booleans take an explicit value (`--flag true|false`) so that a
preset can be overridden in both directions.
"""
import argparse
import dataclasses
import typing

from utils.distribute import PRECISIONS, check_precision
from utils.errors import UserError
from utils.metrics import DEFAULT_TIES, TIE_RULES, check_ties


def setting(default, help_text, **metadata):
    """A Config field: its default, its --help text and any other metadata (e.g. choices)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


@dataclasses.dataclass
class CommonConfig:
    """Settings every method shares."""
    dataset: str = setting("synthetic", "dataset name (see README)")
    data: str = setting("", "path of the dataset file or folder; empty for the built-in default location")
    bits: int = setting(32, "code length K")
    seed: int = setting(0, "random seed; with it a CPU run is repeatable (op determinism is switched on)")
    runs_dir: str = setting("runs", "folder that holds run folders")
    run_name: str = setting("", "name of this run's folder (default: method-dataset-bits-time)")
    checkpoint_every: int = setting(0, "updates between checkpoints inside an epoch; 0: about every 10 "
                                       "minutes of work (SIGINT/SIGTERM also write one before stopping)")
    split_file: str = setting("", "optional .npz/.mat with query/train/database index arrays, to share a "
                                  "split between programs")
    split_sizes: tuple[int, ...] = setting((), "QUERY,TRAIN: sizes of the seeded split instead of the "
                                               "dataset's standard protocol (for small or subset files); "
                                               "database = every item but the queries")
    validation_size: int = setting(0, "training items (a seeded draw) held out as validation queries, ranked "
                                      "against the database without them: never trained on, they choose "
                                      "settings (tune.py) and the best checkpoint; 0: none (METAH: "
                                      "--validation-fraction of the source)")
    keep_checkpoints: str = setting("last,best", "checkpoints kept in RUN_DIR/checkpoints: 'last', "
                                                 "'last,best' (the last plus the one with the best epoch "
                                                 "mAP, in checkpoints/best) or a number N (the last N)")
    log_every: int = setting(10, "training updates per read of the loss sums kept on the device: their means "
                                 "go to TensorBoard (loss/STEP/TERM) and the NaN guard checks them")
    ties: str = setting(DEFAULT_TIES, "order of items at equal distance in every ranked figure: expected "
                                      "(mean over random orders, exact), argsort (the original programs' "
                                      "np.argsort), pessimistic (relevant last) or optimistic (relevant "
                                      "first)", choices=TIE_RULES)
    precision: str = setting("float32", "float32 (the programs'), mixed_bfloat16 (bfloat16 compute, float32 "
                                        "variables, buffers and losses; CPUs with AVX512-BF16/AMX and GPUs) "
                                        "or mixed_float16 (float16 compute with dynamic loss scaling; GPUs)",
                                        choices=PRECISIONS)

    def __post_init__(self):
        check_ties(self.ties)  # before training, not at the first evaluation
        check_precision(self.precision)
        if self.log_every < 1:
            raise UserError(f"--log-every must be at least 1, got {self.log_every}")


def _parse_bool(text):
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_list(item_type):
    def parse(text):
        return tuple(item_type(part) for part in str(text).split(",") if part.strip())
    return parse


# Settings that were replaced: old field -> (its replacement, {old value: new value}, advice). The
# old option is a one-line error naming the new one; a saved config with the old key still loads.
REPLACED_SETTINGS = {"mixed_precision": ("precision", {True: "mixed_float16", False: "float32"},
                                         "--precision mixed_float16 (float16, GPUs) or mixed_bfloat16")}


class _ReplacedOption(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        new, _, advice = REPLACED_SETTINGS[self.dest]
        raise UserError(f"{option_string} was replaced by --{new.replace('_', '-')}: give {advice}")


def add_config_arguments(parser, config_class):
    """Adds one option per dataclass field of `config_class` (and the REPLACED_SETTINGS options
    whose replacement is one of its fields, which say what replaced them)."""
    names = {field.name for field in dataclasses.fields(config_class)}
    for old, (replacement, _, _) in REPLACED_SETTINGS.items():
        if replacement not in names:
            continue
        parser.add_argument("--" + old.replace("_", "-"), dest=old, nargs="?", action=_ReplacedOption,
                            help=argparse.SUPPRESS)
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        hint = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        kwargs = {"default": None, "help": f"{field.metadata.get('help', '')} (default: {default})"}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if hint is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "{true,false}"
        elif hint is tuple or typing.get_origin(hint) is tuple:
            item_types = typing.get_args(hint)
            kwargs["type"] = _parse_list(item_types[0] if item_types else str)
            kwargs["metavar"] = "A,B,..."
        else:
            kwargs["type"] = hint
        parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)


def config_from_args(config_class, args, base=None):
    """Builds a config from parsed args; options left out keep `base`'s values (or the defaults)."""
    values = dataclasses.asdict(base) if base is not None else {}
    for field in dataclasses.fields(config_class):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return config_class(**values)


def config_from_dict(config_class, values):
    """Rebuilds a config saved as JSON; unknown keys are an error, missing keys take defaults."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = dict(values)
    for old, (new, mapping, _) in REPLACED_SETTINGS.items():
        if old in values and new in names and new not in values:
            values[new] = mapping[values.pop(old)]
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"saved config has unknown settings {unknown}; it was written by another "
                        f"version of {config_class.__module__}: start a new run instead of resuming")
    hints = typing.get_type_hints(config_class)
    converted = {k: tuple(v) if (hints[k] is tuple or typing.get_origin(hints[k]) is tuple) else v
                 for k, v in values.items()}
    return config_class(**converted)
