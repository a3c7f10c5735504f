"""Preset files (the JSON a settings search writes and `train.py --preset-file` / the `tuned`
variant read) and the entries of a method's search space (MethodSpec.search_space)."""
import dataclasses
import json
import os
import re
import typing

from utils.errors import UserError

PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainers", "presets")
PRESET_FORMAT = "advhash-preset/1"
# Settings that belong to a run, not to a method's behaviour: a preset never carries them.
PER_RUN_FIELDS = ("dataset", "data", "bits", "seed", "runs_dir", "run_name", "checkpoint_every",
                  "keep_checkpoints", "split_file", "split_sizes", "validation_size", "validation_fraction",
                  "variant", "preset", "ties")


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched setting: a float or int range (log scale optional) or a list of choices
    (tuple settings as comma-separated text, as on the command line). With `preset`, the choices
    name presets of the method (its PRESETS) whose switches the trial takes; the other searched
    settings apply after them."""
    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple = ()
    preset: bool = False

    def distribution(self):
        """The Optuna distribution suggest() draws from (for trials added from a record)."""
        from optuna import distributions
        if self.choices:
            return distributions.CategoricalDistribution(list(self.choices))
        if self.integer:
            return distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return distributions.FloatDistribution(self.low, self.high, log=self.log)

    def holds(self, value):
        """Whether `value` lies in the searched choices or range."""
        if self.choices:
            return value in self.choices and type(value) in {type(choice) for choice in self.choices}
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def preset_name(method, dataset):
    """trainers/presets/METHOD-DATASET.json with the dataset name made file-safe
    ('office-googlenet:A->W' -> 'office-googlenet-A-W')."""
    return f"{method}-{re.sub(r'[^A-Za-z0-9]+', '-', dataset).strip('-')}.json"


def committed_preset(method, dataset, flag="--variant"):
    """Path of the committed tuned preset of `method` on `dataset`; a one-line error naming the
    tune command when there is none (`flag`: the option that chose `tuned`)."""
    path = os.path.join(PRESETS_DIR, preset_name(method, dataset))
    if not os.path.exists(path):
        raise UserError(f"{flag} tuned has no preset for {method} on '{dataset}' ({path} is missing): make one "
                        f"with python tune.py --method {method} --dataset '{dataset}' --trials 30 --out "
                        f"{os.path.relpath(path)}, or pass --preset-file FILE")
    return path


def converted(field, hint, value, path):
    """`value` from JSON as the Config field's type; a one-line error when it does not fit."""
    origin = typing.get_origin(hint)
    wrong = UserError(f"preset {path}: {field.name} = {value!r} is not a valid "
                      f"{getattr(hint, '__name__', str(hint))}; fix the value or delete the key")
    if hint is tuple or origin is tuple:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise wrong
        item_types = typing.get_args(hint)
        try:
            value = tuple(item_types[0](v) for v in value) if item_types else tuple(value)
        except (TypeError, ValueError):
            raise wrong from None
    elif hint is bool:
        if not isinstance(value, bool):
            raise wrong
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        value = float(value)
    elif hint is str and not isinstance(value, str):
        raise wrong
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"preset {path}: {field.name} = {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def preset_json(path):
    """The JSON of the preset file at `path`; a one-line error when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise UserError(f"preset file {path} does not exist; give the path of a JSON preset written by "
                        f"python tune.py")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"preset file {path} is not readable JSON ({error}); write it again with "
                        f"python tune.py") from None


def read_preset(path, method, config_class):
    """The settings of the preset file at `path` ({name: value} in the Config's types), checked:
    a missing file, bad JSON, another method's preset, an unknown or per-run setting, or a
    value of the wrong type is a one-line error."""
    preset = preset_json(path)
    if not isinstance(preset, dict) or not isinstance(preset.get("settings"), dict):
        raise UserError(f"preset file {path} has no 'settings' object; a preset is the JSON that "
                        f"python tune.py writes")
    if preset.get("method", method) != method:
        raise UserError(f"preset file {path} is for {preset['method']}, not {method}: use --method "
                        f"{preset['method']} or another preset")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    settings = {}
    for name, value in preset["settings"].items():
        if name not in fields:
            raise UserError(f"preset file {path} sets '{name}', which {method} does not have; delete the "
                            f"key (python train.py --method {method} --help lists the settings)")
        if name in PER_RUN_FIELDS:
            raise UserError(f"preset file {path} sets '{name}', a setting of the run, not of the method; "
                            f"delete the key and give --{name.replace('_', '-')} on the command line")
        settings[name] = converted(fields[name], hints[name], value, path)
    return settings


def write_preset(path, method, dataset, settings, **record):
    """Writes a preset atomically: `settings` (JSON values) and the provenance in `record`."""
    from utils import io
    io.save_json(path, {"format": PRESET_FORMAT, "method": method, "dataset": dataset,
                        "settings": settings, **record})


