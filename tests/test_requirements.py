"""What a user meets first: the requirement files declare what the code imports, the optional
packages (faiss, numba, pycocotools) each have a fallback with the same figures and one message,
and a randomly initialised image trunk is announced."""
import ast
import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import prepare
from tests.conftest import REPO_ROOT, shared_path
from utils import metrics, optional
from utils.errors import UserError

OPTIONAL = ("faiss", "numba", "pycocotools")
LOCAL = {"models", "losses", "trainers", "utils", "tests", "benchmarks", "train", "eval", "export", "search",
         "tune", "prepare", "conftest"}
# Import name -> the name pip installs it under (where they differ).
DISTRIBUTIONS = {"PIL": "pillow", "faiss": "faiss-cpu", "tensorflow": "tensorflow", "yaml": "pyyaml"}


def requirement_lines(name):
    with open(os.path.join(REPO_ROOT, name)) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line]


def requirement_names(name):
    """Distribution names (lowercase, extras dropped; tensorflow-cpu counts as tensorflow)."""
    names = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower() for line in requirement_lines(name)}
    return {"tensorflow" if n.startswith("tensorflow-") and n != "tensorflow-datasets" else n for n in names}


@functools.cache
def third_party_imports():
    """Top-level names of every import in the repository's Python files, stdlib and local ones left out."""
    found = set()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("runs", "data", "__pycache__")]
        for file in files:
            if not file.endswith(".py"):
                continue
            with open(os.path.join(folder, file)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - LOCAL


@pytest.mark.slow
@pytest.mark.parametrize("file", ["requirements.txt", "requirements-gpu.txt"])
def test_requirements_declare_every_imported_package_and_bound_keras(file):
    declared = requirement_names(file)
    imported = third_party_imports()
    assert {"PIL", "numpy", "tensorflow", "keras"} <= imported  # the scan sees the imports it must
    missing = {name for name in imported if DISTRIBUTIONS.get(name, name).lower() not in declared}
    assert not missing, f"{file} lacks {sorted(missing)}"
    assert {"faiss-cpu", "numba", "pycocotools", "pillow"} <= declared  # the README's commands give full speed
    keras = next(line for line in requirement_lines(file) if line.lower().startswith("keras"))
    assert "<4" in keras.replace(" ", ""), keras


def test_the_two_files_differ_only_in_the_tensorflow_line():
    def without_tensorflow(name):
        return [line for line in requirement_lines(name) if not line.lower().startswith("tensorflow")]
    assert without_tensorflow("requirements.txt") == without_tensorflow("requirements-gpu.txt")


# --------------------------------------------------------------------------- fallbacks

def uninstall(monkeypatch, *names):
    """Makes `import NAME` (and its submodules) fail as when the package is not installed, for
    this test only; the one-time messages are reset so that the test sees them."""
    for module in list(sys.modules):
        if module.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, module)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(optional, "_ANNOUNCED", set())


def warnings_about(capsys, name):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"warning: {name} ")]
    return lines


def test_optional_module_returns_the_module_or_says_once_that_it_is_missing(monkeypatch, capsys):
    uninstall(monkeypatch, "numba")
    assert optional.optional_module("numpy", "unused", "numpy") is np
    assert optional.optional_module("numba", "counts are slower", "numba") is None
    assert optional.optional_module("numba", "counts are slower", "numba") is None
    assert warnings_about(capsys, "numba") == ["warning: numba is not installed: counts are slower; "
                                               "to use it: pip install numba"]
    # Installed but broken (say, built for another NumPy): the import error is named instead.
    optional.announce_missing("faiss", "search is slower", "faiss-cpu", ImportError("numpy.core.multiarray failed"))
    assert warnings_about(capsys, "faiss") == ["warning: faiss does not import (numpy.core.multiarray failed): "
                                               "search is slower; to use it: pip install faiss-cpu"]


def hashing_case(seed=3, n_query=40, n_db=700, bits=32, classes=12):
    rng = np.random.default_rng(seed)
    query, db = (np.where(rng.random((n, bits)) < 0.5, 1, -1) for n in (n_query, n_db))
    query_labels, db_labels = ((rng.random((n, classes)) < 0.15).astype(np.uint8) for n in (n_query, n_db))
    return query, db, query_labels, db_labels


def test_without_numba_the_maps_are_the_compiled_kernels(monkeypatch, capsys):
    pytest.importorskip("numba")
    case = hashing_case()
    monkeypatch.setattr(metrics, "KERNEL", "auto")
    assert metrics._compiled_kernel() is not None
    fast_histograms = metrics.distance_histograms(*case)
    fast = [metrics.mean_average_precision(*case, ties=ties) for ties in ("expected", "pessimistic", "optimistic")]
    fast_report = metrics.retrieval_report(*case, top_ks=(50,), n_max=100)

    uninstall(monkeypatch, "numba")
    assert metrics._compiled_kernel() is None
    np.testing.assert_array_equal(metrics.distance_histograms(*case), fast_histograms)
    assert [metrics.mean_average_precision(*case, ties=ties)
            for ties in ("expected", "pessimistic", "optimistic")] == pytest.approx(fast, abs=1e-12)
    assert metrics.retrieval_report(*case, top_ks=(50,), n_max=100) == fast_report  # same counts, same sums
    lines = warnings_about(capsys, "numba")
    assert len(lines) == 1 and "NumPy" in lines[0] and "pip install numba" in lines[0]
    monkeypatch.setattr(metrics, "KERNEL", "numba")
    with pytest.raises(UserError, match="pip install numba"):
        metrics.distance_histograms(*case)


def test_without_faiss_the_search_falls_back_to_numpy_with_the_same_neighbours(monkeypatch, capsys):
    pytest.importorskip("faiss")
    from utils.search import HammingIndex
    _, db, _, _ = hashing_case(seed=5, n_db=3000, bits=24)
    query = db[:40]
    fast_index = HammingIndex(db, kind="mih")
    assert fast_index.backend == "faiss"
    fast_knn, fast_range = fast_index.search(query, 20), fast_index.range_search(query, 4)

    uninstall(monkeypatch, "faiss")
    index = HammingIndex(db, kind="mih")
    assert index.backend == "numpy"
    knn, hits = index.search(query, 20), index.range_search(query, 4)
    np.testing.assert_array_equal(knn[0], fast_knn[0])
    np.testing.assert_array_equal(knn[1], fast_knn[1])
    assert sum(len(i) for _, i in hits) > len(query)  # the radius finds more than the queries themselves
    for (distances, items), (fast_distances, fast_items) in zip(hits, fast_range):
        np.testing.assert_array_equal(distances, fast_distances)
        np.testing.assert_array_equal(items, fast_items)
    HammingIndex(db)  # the second fallback says nothing more
    lines = warnings_about(capsys, "faiss")
    assert len(lines) == 1 and "pip install faiss-cpu" in lines[0]
    with pytest.raises(UserError, match="pip install faiss-cpu"):
        HammingIndex(db, backend="faiss")


def read_coco_both_ways(monkeypatch, annotations, image_dirs):
    """read_coco with pycocotools, then with the project's own reader."""
    settings = prepare.CocoSettings(annotations=annotations)
    with_pycocotools = prepare.read_coco(settings, image_dirs)
    uninstall(monkeypatch, "pycocotools")
    return with_pycocotools, prepare.read_coco(settings, image_dirs)


def assert_same_prepared(a, b):
    for field in ("dataset", "image_paths", "vocabulary", "label_names", "counts", "sources", "settings"):
        assert getattr(a, field) == getattr(b, field), field
    np.testing.assert_array_equal(a.texts, b.texts)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_without_pycocotools_the_real_coco_subset_reads_the_same(monkeypatch, capsys):
    pytest.importorskip("pycocotools")
    root = shared_path("data", "coco-mini")
    official, own = read_coco_both_ways(monkeypatch, os.path.join(root, "annotations"),
                                        [os.path.join(root, "train2017"), os.path.join(root, "val2017")])
    assert official.counts["images"] == 159 and official.labels.shape[1] == 80
    assert_same_prepared(official, own)
    lines = warnings_about(capsys, "pycocotools")
    assert len(lines) == 1 and "pip install pycocotools" in lines[0]  # four files read, one message


def test_without_pycocotools_the_tiny_layout_and_its_errors_read_the_same(monkeypatch, tmp_path):
    pytest.importorskip("pycocotools")
    from tests.test_prepare import write_tiny_coco
    root = str(tmp_path / "coco")
    write_tiny_coco(root)
    annotations = os.path.join(root, "annotations")
    folders = [os.path.join(root, "trainX"), os.path.join(root, "valX")]
    captions = os.path.join(annotations, "captions_valX.json")
    with open(captions) as f:
        good_captions = f.read()

    def broken_files_give_one_line_errors():
        for content, message in (('{"images": [', "captions_valX.json is malformed"),
                                 ("[1, 2]", "captions_valX.json is malformed"),
                                 ('{"images": [{"file_name": "x.jpg"}]}', r"malformed \('id'\)")):
            with open(captions, "w") as f:
                f.write(content)
            with pytest.raises(UserError, match=message):
                prepare.read_coco(prepare.CocoSettings(annotations=annotations), folders)
        with open(captions, "w") as f:
            f.write(good_captions)

    broken_files_give_one_line_errors()
    official, own = read_coco_both_ways(monkeypatch, annotations, folders)
    assert official.label_names == ["bicycle", "airplane", "train"]  # id order, not the file's order
    assert_same_prepared(official, own)
    broken_files_give_one_line_errors()


def test_without_pillow_preparing_is_a_one_line_error_and_writes_nothing(monkeypatch, tmp_path):
    uninstall(monkeypatch, "PIL")
    prepared = prepare.PreparedData("coco", ["a.jpg"], np.zeros((1, 2), np.uint8), np.ones((1, 1), np.uint8),
                                    ["w1", "w2"], ["c"], {}, [], {})
    out = str(tmp_path / "coco.h5")
    with pytest.raises(UserError, match="needs Pillow.*pip install Pillow"):
        prepare.write_dcmh_file(prepared, prepare.OutputSettings(out=out))
    with pytest.raises(UserError, match="pip install Pillow"):  # said before the inputs are even looked at
        prepare.prepare("coco", prepare.CocoSettings(annotations=str(tmp_path / "absent")),
                        prepare.OutputSettings(out=out), [str(tmp_path / "absent")])
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- random trunk warning

def run_train(argv, tmp_path, monkeypatch):
    """train.py with no prepared data (it stops at loading); the stderr lines before that."""
    import train
    monkeypatch.setenv("ADVHASH_DATA", str(tmp_path / "data"))
    with pytest.raises(UserError, match="not prepared|holds feature vectors"):
        train.main(argv + ["--runs-dir", str(tmp_path / "runs")])


@pytest.mark.parametrize("argv, flag, file", [
    (["--dataset", "coco", "--bits", "32"], "--weights", "imagenet-vgg-f.mat"),
    (["--dataset", "nuswide", "--backbone", "vgg19"], "--weights", "VGG-19"),
    (["--method", "metah", "--trunk", "cnnf", "--iterations", "1"], "--trunk-weights", "imagenet-vgg-f.mat"),
])
def test_a_randomly_initialised_image_trunk_is_announced_in_one_line(argv, flag, file, tmp_path, monkeypatch,
                                                                     capsys):
    run_train(argv, tmp_path, monkeypatch)
    lines = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
    assert len(lines) == 1
    assert lines[0].startswith("warning: ") and file in lines[0] and f"{flag} PATH" in lines[0]


@pytest.mark.parametrize("argv", [
    ["--dataset", "coco", "--weights", "imagenet-vgg-f.mat"],
    ["--dataset", "flickr", "--backbone", "features"],
    ["--method", "metah", "--trunk", "cnnf", "--trunk-weights", "imagenet-vgg-f.mat", "--iterations", "1"],
])
def test_no_warning_with_weights_or_without_an_image_trunk(argv, tmp_path, monkeypatch, capsys):
    import train
    from trainers import get_method
    method = argv[1] if argv[0] == "--method" else "ssah"
    spec = get_method(method)
    first = __import__("argparse").ArgumentParser(add_help=False)
    first.add_argument("--method")
    config = train.build_config(spec, train.method_parser(spec, first).parse_args(argv))
    assert train.random_trunk_warning(config, spec) is None
    train.check_config(config, spec)
    assert "random weights" not in capsys.readouterr().err


# --------------------------------------------------------------------------- nothing optional installed

def test_every_module_imports_and_the_commands_answer_help_without_the_optional_packages():
    modules = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "runs", "data", "__pycache__")]
        package = os.path.relpath(folder, REPO_ROOT).replace(os.sep, ".")
        modules += [package if file == "__init__.py" else file[:-3] if package == "." else f"{package}.{file[:-3]}"
                    for file in files if file.endswith(".py")]
    assert "utils.hamming_kernel" in modules and "train" in modules
    script = f"""
import contextlib, importlib, io, runpy, sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # import fails as if not installed
failed = []
for module in {modules!r}:
    if module == "utils.hamming_kernel":
        continue  # the numba kernel itself; nothing imports it without numba
    try:
        importlib.import_module(module)
    except Exception as error:
        failed.append(f"{{module}}: {{type(error).__name__}}: {{error}}")
assert not failed, failed
for command in ("train.py", "eval.py"):
    sys.argv = [command, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(command, run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), (command, stop.code)
    assert "usage:" in out.getvalue(), command
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
