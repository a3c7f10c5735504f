"""Optional packages (faiss, numba, pycocotools): the code works without each of them,
with a fallback that gives the same results (slower, or a plainer reader). requirements.txt
installs them all; a missing one is said once per process, on one stderr line naming what
changes and the pip command."""
import importlib
import sys

_ANNOUNCED = set()


def optional_module(name, without, pip_name):
    """The imported module `name`, or None when it cannot be imported. The first time it is
    missing, prints "warning: NAME is not installed: WITHOUT (pip install PIP_NAME)" on stderr."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if name not in _ANNOUNCED:
            _ANNOUNCED.add(name)
            print(f"warning: {name.split('.')[0]} is not installed: {without} (pip install {pip_name})",
                  file=sys.stderr)
        return None
