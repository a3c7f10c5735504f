"""The method registry (trainers/registry.py) and the layering it allows: utils/ below the methods,
the scripts looking methods up by name, and help that imports no TensorFlow."""
import ast
import dataclasses
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from trainers.registry import METHODS, check_settings, get_method
from utils.errors import UserError

# What utils/ must not import: the methods, the models and the scripts built on them.
ABOVE_UTILS = {"train", "eval", "export", "search", "tune", "prepare", "trainers", "models", "losses"}


def python_files(folder):
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        yield from (os.path.join(root, name) for name in files if name.endswith(".py"))


def imported_modules(path):
    """Every module an `import` or `from ... import` in the file names (at any depth)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_nothing_under_utils_imports_the_methods_models_or_scripts():
    offending = [f"{os.path.relpath(path, REPO_ROOT)} imports {module}"
                 for path in python_files(os.path.join(REPO_ROOT, "utils"))
                 for module in imported_modules(path) if module.split(".")[0] in ABOVE_UTILS]
    assert not offending, offending


def test_no_branch_on_a_method_name_outside_the_registry():
    """The issue's check: `grep -rn "method ==\\|method in (" --include=*.py . | grep -v tests/` finds nothing."""
    pattern = re.compile(r"method ==|method in \(")
    found = [f"{os.path.relpath(path, REPO_ROOT)}:{number}: {line.strip()}"
             for path in python_files(REPO_ROOT) if f"{os.sep}tests{os.sep}" not in path
             for number, line in enumerate(open(path), 1) if pattern.search(line)]
    assert not found, found


@pytest.mark.parametrize("method", METHODS)
def test_each_registered_method_is_consistent(method):
    spec = get_method(method)
    fields = {field.name: field for field in dataclasses.fields(spec.config_class)}
    assert spec.name == method
    assert spec.length_field in fields and spec.validation_field in fields
    assert set(fields[spec.preset_field].metadata["choices"]) == set(spec.presets)
    assert spec.base_preset in spec.presets and "tuned" in spec.presets
    assert all(set(settings) <= set(fields) for settings in spec.presets.values())
    assert all(param.preset or param.name in fields for param in spec.search_space)
    exported = {name for fields_of in spec.exports["directions"].values() for name in fields_of}
    assert all(set(pair) <= exported for pair in spec.databases.values())
    assert set(spec.default_database.values()) <= set(spec.databases)
    assert "mean" in spec.objectives


def test_an_unknown_method_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown method 'nope'; choose one of ssah, acmr, metah"):
        get_method("nope")


def test_settings_are_checked_in_one_place():
    """The shared checks and the method's own both run from check_settings."""
    metah, acmr = get_method("metah"), get_method("acmr")
    with pytest.raises(UserError, match="--validation-fraction"):
        check_settings(metah, metah.config_class(validation_size=5))
    with pytest.raises(UserError, match="--batch-size must be at least 2"):
        check_settings(acmr, acmr.config_class(batch_size=1))
    with pytest.raises(UserError, match="keep"):
        check_settings(acmr, acmr.config_class(keep_checkpoints="sometimes"))


# The scripts, run in a fresh interpreter: help and an argument error end before TensorFlow is imported.
NO_TENSORFLOW = """
import sys
sys.argv = {argv!r}
import train
try:
    train.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
heavy = sorted(name for name in ("tensorflow", "keras") if name in sys.modules)
print("CODE", code, "HEAVY", heavy)
"""


@pytest.mark.parametrize("argv", [["--method", method, "--help"] for method in METHODS]
                         + [["--method", "acmr", "--bogus"]])
def test_help_and_argument_errors_import_no_tensorflow(argv):
    done = subprocess.run([sys.executable, "-c", NO_TENSORFLOW.format(argv=["train.py", *argv])], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    expected_code = 0 if "--help" in argv else 2
    assert f"CODE {expected_code} HEAVY []" in done.stdout, (done.stdout[-2000:], done.stderr[-2000:])
    if "--help" in argv:
        assert "--" + get_method(argv[1]).length_field.replace("_", "-") in done.stdout
    else:
        assert "unrecognized arguments: --bogus" in done.stderr
