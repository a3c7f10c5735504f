"""Train a method: `python train.py --method ssah --dataset wiki --bits 32`.

`python train.py --method M --help` lists every setting of method M.
`python train.py --resume RUN_DIR` continues a killed run from its last checkpoint.
"""
import argparse
import dataclasses
import json
import os
import shutil

from trainers import METHODS, get_method
from utils.config import add_config_arguments, config_from_args
from utils.errors import UserError, run_command_line


def build_config(module, args):
    """Defaults, then the method's defaults for the chosen dataset, then the chosen preset
    (variant / ablation), then explicit options."""
    config = module.Config()
    dataset = getattr(args, "dataset", None) or config.dataset
    config = dataclasses.replace(config, **getattr(module, "DATASET_DEFAULTS", {}).get(dataset, {}))
    preset_field = getattr(module, "PRESET_FIELD", None)
    if preset_field:
        chosen = getattr(args, preset_field, None) or getattr(config, preset_field)
        if chosen not in module.PRESETS:
            raise UserError(f"unknown {preset_field} '{chosen}'; choose one of {', '.join(module.PRESETS)}")
        config = dataclasses.replace(config, **module.PRESETS[chosen], **{preset_field: chosen})
    return config_from_args(module.Config, args, base=config)


def main(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method", default="ssah", choices=METHODS)
    first.add_argument("--resume", default="")
    known, _ = first.parse_known_args(argv)

    from utils.run import NonFiniteLoss, Run, set_seed
    if known.resume:
        run = Run.open(known.resume, {m: get_method(m).Config for m in METHODS})
        module = get_method(run.method)
        config = run.config
    else:
        module = get_method(known.method)
        parser = argparse.ArgumentParser(description=__doc__, parents=[first],
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(parser, module.Config)
        args = parser.parse_args(argv)
        config = build_config(module, args)
        run = Run.create(known.method, config)
    print(f"run folder: {run.dir}", flush=True)
    set_seed(config.seed)
    try:
        results = module.train(config, run, resume=bool(known.resume))
    except NonFiniteLoss as error:
        raise UserError(str(error)) from None
    except UserError:
        checkpoints = run.path("checkpoints")
        if not known.resume and not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
            shutil.rmtree(run.dir)  # bad input found before anything was trained: leave no empty run
        raise
    print(f"final figures (ties: {config.ties}):")
    print(json.dumps(results.get("final", results), indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    run_command_line(main)
