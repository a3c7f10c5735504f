"""Small trained runs that several test files only read (export, encode, search, the papers'
comparison): each is trained once per test session (per pytest-xdist worker) on first use,
through the `trained_runs` fixture of tests/conftest.py.

    run = trained_runs.get("ssah")          # read only: run.dir, run.codes (its codes.mat), run.data
    run = trained_runs.copy("ssah", tmp_path)  # a copy of the folder, for a test that writes into it

A test that writes into a run folder (export/, search/, report/, config.json) takes a copy."""
import functools
import os
import shutil
import types

import pytest
import scipy.io

# SSAH: one pass of each net's updates, small widths, on the synthetic data.
SSAH_TINY = ["--method", "ssah", "--schedule", "tiny", "--bits", "16", "--embed-dim", "32",
             "--hidden-dim", "64", "--epochs", "1"]
ACMR_SYNTHETIC = ["--method", "acmr", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "100"]
METAH_OPTIONS = ["--method", "metah", "--dataset", "folder:src->tgt", "--bits", "16", "--iterations", "8",
                 "--batch-size", "16", "--hidden", "32", "--discriminator-hidden", "32"]
# The CNN-F run: 24 small 224 x 224 images in a DCMH-layout file, 6 queries, 12 training items.
CNNF_SPLIT = (6, 12)


def _ssah(folder):
    return SSAH_TINY + ["--log-every", "2"], ""  # losses logged at every second update (test_tensorboard)


def _acmr(folder):
    return ACMR_SYNTHETIC, ""


def _metah(folder):
    from tests.test_metah import write_domain_files
    write_domain_files(folder)
    return METAH_OPTIONS + ["--data", folder], folder


def _ssah_cnnf(folder):
    from tests.test_full_scale import write_small_image_file
    path = os.path.join(folder, "small.h5")
    write_small_image_file(path, n=24, size=224)
    return SSAH_TINY + ["--dataset", "coco", "--data", path, "--backbone", "cnnf", "--batch-size", "6",
                        "--split-sizes", ",".join(map(str, CNNF_SPLIT))], path


RUNS = {"ssah": _ssah, "acmr": _acmr, "metah": _metah, "ssah_cnnf": _ssah_cnnf}


def golden_width_cnnf(monkeypatch):
    """CNN-F's geometry with few channels (the golden file's), so that a checkpoint stays small:
    set while the CNN-F run trains and wherever its nets are rebuilt (encode, export)."""
    import models.cnnf
    monkeypatch.setattr(models.cnnf, "CNNF", functools.partial(models.cnnf.CNNF, widths=models.cnnf.GOLDEN_WIDTHS))


class TrainedRuns:
    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.trained = {}

    def get(self, name):
        """types.SimpleNamespace(dir=run folder, codes=its codes.mat (a fresh dict), data=its --data
        ("" for synthetic)) of run `name` (RUNS), trained on the first call. Read it only."""
        if name not in self.trained:
            import train
            folder = str(self.tmp_path_factory.mktemp(f"shared-{name}"))
            options, data = RUNS[name](folder)
            with pytest.MonkeyPatch.context() as monkeypatch:
                if name == "ssah_cnnf":
                    golden_width_cnnf(monkeypatch)
                train.main(options + ["--runs-dir", os.path.join(folder, "runs"), "--run-name", name])
            self.trained[name] = (os.path.join(folder, "runs", name), data)
        run_dir, data = self.trained[name]
        return types.SimpleNamespace(dir=run_dir, codes=scipy.io.loadmat(os.path.join(run_dir, "codes.mat")),
                                     data=data)

    def copy(self, name, tmp_path):
        """As get(name), but dir is a copy of the run folder under tmp_path (free to write into)."""
        run = self.get(name)
        run.dir = shutil.copytree(run.dir, os.path.join(str(tmp_path), "runs", name))
        return run
