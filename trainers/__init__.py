"""One module per method. Each exposes:

  Config        a dataclass (subclass of utils.config.CommonConfig) with every setting
  PRESETS       optional dict name -> dict of settings (e.g. variants, ablations)
  train(config, run)  trains, evaluates, exports RUN_DIR/codes.mat, returns a dict of figures
"""
import importlib

METHODS = ("ssah", "acmr", "metah")


def get_method(name):
    from utils.errors import UserError
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return importlib.import_module(f"trainers.{name}")
