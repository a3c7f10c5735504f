"""Train a method: `python train.py --method ssah --dataset wiki --bits 32`.

`python train.py --method M --help` lists every setting of method M.
`python train.py --resume RUN_DIR` continues a killed run from its last checkpoint;
`python train.py --resume RUN_DIR --epochs N` (METAH: `--iterations N`) extends a run to a
larger N. A finished run's outputs are never rewritten.
"""
import argparse
import dataclasses
import json
import sys

from trainers.registry import METHODS, check_settings, config_classes, get_method
from utils.config import add_config_arguments, config_from_args
from utils.errors import UserError, WriteFailed, run_command_line

# Settings `--resume` may change because they do not change what is trained.
RESUME_MAY_CHANGE = ("checkpoint_every", "keep_checkpoints")


def build_config(spec, args):
    """Defaults, then the method's defaults for the chosen dataset, then the chosen preset
    (variant / ablation; `tuned` adds the committed preset file of the dataset), then the
    settings of --preset-file, then explicit options."""
    from utils.presets import committed_preset, read_preset
    config = spec.config_class()
    dataset = getattr(args, "dataset", None) or config.dataset
    config = dataclasses.replace(config, **spec.dataset_defaults.get(dataset, {}))
    preset_field = spec.preset_field
    chosen = getattr(args, preset_field, None) or getattr(config, preset_field)
    if chosen not in spec.presets:
        raise UserError(f"unknown {preset_field} '{chosen}'; choose one of {', '.join(spec.presets)}")
    config = dataclasses.replace(config, **spec.presets[chosen], **{preset_field: chosen})
    preset_files = [committed_preset(spec.name, dataset, f"--{preset_field}")] if chosen == "tuned" else []
    if getattr(args, "preset_file", ""):
        preset_files.append(args.preset_file)
    for path in preset_files:
        config = dataclasses.replace(config, **read_preset(path, spec.name, spec.config_class))
    return config_from_args(spec.config_class, args, base=config)


def check_config(config, spec):
    """Every check of the settings (trainers.registry.check_settings), then the warnings."""
    check_settings(spec, config)
    warning = random_trunk_warning(config, spec)
    if warning:
        print(warning, file=sys.stderr)


# What to fetch for a pretrained image trunk, by trunk name.
TRUNK_WEIGHT_FILES = {
    "cnnf": "imagenet-vgg-f.mat (MatConvNet's CNN-F)",
    "vgg19": "the VGG-19 weights (Keras vgg19_weights_tf_dim_ordering_tf_kernels.h5 or MatConvNet "
             "imagenet-vgg-verydeep-19.mat)",
}


def random_trunk_warning(config, spec):
    """The one-line warning when an image trunk would train from random weights because no weight
    file was given (`python train.py --dataset coco` alone does that), else None."""
    trunk, weights, flag = spec.image_trunk(config)
    if weights or trunk not in TRUNK_WEIGHT_FILES:
        return None
    return (f"warning: the {trunk} image trunk starts from random weights (no {flag}); for the pretrained "
            f"trunk fetch {TRUNK_WEIGHT_FILES[trunk]} and pass {flag} PATH")


def method_parser(spec, first):
    parser = argparse.ArgumentParser(description=__doc__, parents=[first],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, spec.config_class)
    return parser


def resumed_config(run, spec, parser, argv, method_given):
    """The run's saved config with the options given beside --resume; only the length may
    change (to a larger value), and the settings in RESUME_MAY_CHANGE."""
    if method_given and method_given != run.method:
        raise UserError(f"{run.dir} is a {run.method} run; drop --method {method_given} when resuming it")
    args = parser.parse_args(argv)
    config = config_from_args(spec.config_class, args, base=run.config)
    length_field = spec.length_field
    changed = [f.name for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(run.config, f.name)
               and f.name not in RESUME_MAY_CHANGE + (length_field,)]
    if changed:
        names = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise UserError(f"{names} differ from the settings of {run.dir}, and --resume continues the same run; "
                        f"only --{length_field.replace('_', '-')} may grow: drop {names} or start a new run")
    old, new = getattr(run.config, length_field), getattr(config, length_field)
    if new < old:
        raise UserError(f"--{length_field} {new} is shorter than the run's {old}; a run can only be extended")
    return config


def open_run(method, config, resume_dir=""):
    """Starts the run's --strategy first (before any other TensorFlow work: a multiworker
    strategy must configure its collectives at startup), then opens the run folder: the chief
    (or the only process) creates or reopens it; another worker of a multiworker run gets a
    temporary folder of its own (utils.run.WorkerRun)."""
    from utils import distribute
    from utils.run import Run, WorkerRun
    name = getattr(config, "strategy", "none")
    distribute.start(name)
    if distribute.is_chief(name):
        return Run.open(resume_dir, {method: type(config)}) if resume_dir else Run.create(method, config)
    task_type, index, _ = distribute.cluster_task()
    run = WorkerRun(method, config, index, chief_dir=resume_dir)
    print(f"{task_type} {index}: the chief writes the run folder; this worker's checkpoints and logs go to "
          f"{run.dir} (removed at the end)", flush=True)
    return run


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method", default=None, choices=METHODS)
    first.add_argument("--resume", default="")
    first.add_argument("--preset-file", default="", help="JSON preset of python tune.py: its settings "
                       "apply after the variant, before explicit options")
    known, _ = first.parse_known_args(argv)
    if not known.resume:  # --help and argument errors end here, before the heavier imports below
        spec = get_method(known.method or "ssah")
        config = build_config(spec, method_parser(spec, first).parse_args(argv))

    from utils.run import NonFiniteLoss, finished_length, mark_completed, saved_config, set_seed, tee_stdout
    if known.resume and known.preset_file:
        raise UserError("--resume continues a run with its saved settings: drop --preset-file")
    if known.resume:
        method, saved = saved_config(known.resume, config_classes())
        run = open_run(method, saved, resume_dir=known.resume)
        spec = get_method(run.method)
    else:
        check_config(config, spec)
        run = open_run(spec.name, config)
    length_field = spec.length_field
    try:
        if known.resume:
            config = resumed_config(run, spec, method_parser(spec, first), argv, known.method)
            check_config(config, spec)
            done = finished_length(run, length_field)
            flag = "--" + length_field.replace("_", "-")
            if done is not None:
                trained, length = done.get("trained", done[length_field]), getattr(config, length_field)
                if length == done[length_field]:
                    print(f"{run.dir} is finished ({trained} {length_field}); its outputs are kept as they are. "
                          f"To train longer: python train.py --resume {run.dir} {flag} N (N > {trained})")
                    from utils import io
                    return io.load_json(run.path("results.json"))
                if length <= trained:
                    raise UserError(f"{run.dir} has already trained {trained} {length_field}; give {flag} "
                                    f"larger than {trained} to extend it")
            if config != run.config:
                run.set_config(config)
        run.start_log()
        run.log_config()
        with tee_stdout(run.path("train.log")):
            print(f"run folder: {run.dir}", flush=True)
            set_seed(config.seed)
            try:
                results = spec.train(config, run, resume=bool(known.resume))
            except NonFiniteLoss as error:
                run.log(f"error: {error}")
                raise UserError(str(error)) from None
            except UserError as error:
                if not known.resume and not run.has_checkpoints() and not isinstance(error, WriteFailed):
                    run.discard()  # bad input found before anything was trained: leave no empty run
                else:
                    run.log(f"error: {error}")
                raise
            mark_completed(run, length_field, getattr(config, length_field))
            print(f"final figures (ties: {config.ties}):")
            print(json.dumps(results.get("final", results), indent=2, sort_keys=True))
        return results
    finally:
        run.close()


if __name__ == "__main__":
    run_command_line(main)
