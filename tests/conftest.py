"""Shared fixtures. Tests that need the real data skip when ../shared is absent."""
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ADVHASH_SHARED", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts):
    """Path under the shared folder; skips the test with a clear message when it is absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is missing (set ADVHASH_SHARED to the shared folder)")
    return path
