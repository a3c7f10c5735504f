"""One module (or package) per method; each declares one trainers.registry.MethodSpec (its
Config, presets, length field, search space, exports, checks; fit/train/encode/encoders/
validation_score in its implementation module) and registers it. Look methods up with
get_method(name).
"""
from trainers.registry import METHODS, get_method

__all__ = ["METHODS", "get_method"]
