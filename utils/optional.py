"""Optional packages (faiss, numba, pycocotools): the code works without each of them,
with a fallback that gives the same results (slower, or a plainer reader). requirements.txt
installs them all; a missing one is said once per process, on one stderr line naming what
changes and the pip command."""
import importlib
import sys

_ANNOUNCED = set()


def announce_missing(package, without, pip_name, error=None):
    """Prints, the first time only, "warning: PACKAGE is not installed: WITHOUT; to use it:
    pip install PIP_NAME" on stderr (with the import error when the package is there but broken)."""
    if package in _ANNOUNCED:
        return
    _ANNOUNCED.add(package)
    missing = isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == package
    state = "is not installed" if error is None or missing else f"does not import ({error})"
    print(f"warning: {package} {state}: {without}; to use it: pip install {pip_name}", file=sys.stderr)


def optional_module(name, without, pip_name):
    """The imported module `name`, or None (announced once, see announce_missing) when it cannot
    be imported."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        announce_missing(name.split(".")[0], without, pip_name, error)
        return None
