"""The tests themselves: none sees the repository's own data/ (a user's prepared data/coco.h5
once made the tests that expect COCO to be missing fail)."""
import os

from tests.conftest import REPO_ROOT, SHARED


def test_datasets_are_looked_up_outside_the_repositorys_own_data_folder(monkeypatch, tmp_path):
    from utils.data import data_roots, prepared_path
    roots = [os.path.realpath(root) for root in data_roots()]
    assert os.path.realpath(os.path.join(REPO_ROOT, "data")) not in roots
    assert not os.path.realpath(prepared_path("coco")).startswith(os.path.realpath(REPO_ROOT) + os.sep)
    if os.path.isdir(SHARED):
        assert os.path.realpath(os.path.join(SHARED, "data")) in roots  # the real data stays reachable
    monkeypatch.setenv("ADVHASH_DATA", str(tmp_path))
    assert data_roots()[0] == str(tmp_path)
