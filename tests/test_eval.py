"""eval.py on run folders written here (config.json + codes.mat), before any trainer runs."""
import os
import subprocess
import sys

import numpy as np
import pytest

import eval as evaluator
from tests.conftest import REPO_ROOT
from tests.test_metrics import authors_calc_map, ref_lookup, ref_map
from utils import metrics
from utils import io
from utils.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def labelled_codes(rng, labels, prototypes, noise):
    """Codes of each item: its class prototype with a fraction `noise` of bits flipped."""
    codes = prototypes[labels.argmax(axis=1)].copy()
    flips = rng.random(codes.shape) < noise
    codes[flips] *= -1
    return codes.astype(np.int8)


def ssah_fields(seed=0, bits=16, n_query=40, n_db=300, classes=5):
    """Qi and Dt carry the labels (i->t is good); Qt and Di are random (t->i near chance)."""
    rng = np.random.default_rng(seed)
    prototypes = np.where(rng.random((classes, bits)) < 0.5, 1, -1)
    query_labels = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, n_query)]
    db_labels = np.eye(classes, dtype=np.uint8)[rng.integers(0, classes, n_db)]
    return {"Qi": labelled_codes(rng, query_labels, prototypes, 0.1),
            "Dt": labelled_codes(rng, db_labels, prototypes, 0.1),
            "Qt": np.where(rng.random((n_query, bits)) < 0.5, 1, -1).astype(np.int8),
            "Di": np.where(rng.random((n_db, bits)) < 0.5, 1, -1).astype(np.int8),
            "query_L": query_labels, "retrieval_L": db_labels}


def make_run(folder, method, fields, **config):
    os.makedirs(folder, exist_ok=True)
    io.save_json(os.path.join(folder, "config.json"), {"method": method, "config": {"bits": 16, **config}})
    io.save_mat(os.path.join(folder, "codes.mat"), fields)
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("ties", ["pessimistic", "argsort"])
def test_run_folder_report_matches_reference(tmp_path, capsys, ties):
    fields = ssah_fields()
    run_dir = make_run(tmp_path / "run", "ssah", fields)
    evaluator.main([run_dir, "--no-tensorboard", "--top-k", "10,50", "--n-max", "60", "--ties", ties])
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    assert set(report["directions"]) == {"i->t", "t->i", "i->i", "t->t"}
    assert report["ties"] == report["settings"]["ties"] == ties
    for direction, (q, d, ql, dl) in {"i->t": ("Qi", "Dt", "query_L", "retrieval_L"),
                                      "t->i": ("Qt", "Di", "query_L", "retrieval_L")}.items():
        figures = report["directions"][direction]
        args = (fields[q], fields[d], fields[ql], fields[dl])
        assert abs(figures["map"] - ref_map(*args, ties=ties)) < 1e-9
        assert abs(figures["map@50"] - ref_map(*args, top_k=50, ties=ties)) < 1e-9
        precision, recall, radius_map = ref_lookup(*args, ties=ties)
        np.testing.assert_allclose(figures["hash_lookup"]["precision"], precision, atol=1e-9)
        assert abs(figures["map_radius2"] - radius_map) < 1e-9
        assert len(figures["top_n"]["precision"]) == 60
    assert report["summary"]["i->t"]["map"] > 0.9 > 0.4 > report["summary"]["t->i"]["map"]
    for name in ("pr_curve.png", "top_n.png"):
        with open(os.path.join(run_dir, "report", name), "rb") as f:
            content = f.read()
        assert content.startswith(PNG_MAGIC) and len(content) > 5000
    printed = capsys.readouterr().out
    assert f"tie rule {ties}" in printed and "| run | direction | ties | map |" in printed
    assert f"| run | i->t | {ties} |" in printed


@pytest.mark.slow
def test_ties_all_prints_the_four_rules_side_by_side(tmp_path, capsys):
    fields = ssah_fields(bits=8)  # 8-bit codes: many ties
    run_dir = make_run(tmp_path / "run", "ssah", fields, ties="argsort")
    evaluator.main([run_dir, "--no-tensorboard", "--ties", "all", "--top-k", "50"])
    printed = capsys.readouterr().out
    assert "| direction | figure | expected | argsort | pessimistic | optimistic |" in printed
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    assert report["ties"] == "argsort"  # the run's own rule for the curves and the main figures
    by_rule = report["by_tie_rule"]
    assert set(by_rule) == set(metrics.TIE_RULES)
    for direction, (q, d) in {"i->t": ("Qi", "Dt"), "t->i": ("Qt", "Di")}.items():
        args = (fields[q], fields[d], fields["query_L"], fields["retrieval_L"])
        assert abs(by_rule["argsort"][direction]["map"] - authors_calc_map(*args)) < 1e-12
        assert abs(by_rule["argsort"][direction]["map@50"] - authors_calc_map(*args, topk=50)) < 1e-12
        assert abs(by_rule["expected"][direction]["map"] - metrics.mean_average_precision(*args)) < 1e-12
        values = {rule: by_rule[rule][direction]["map"] for rule in metrics.TIE_RULES}
        assert values["pessimistic"] < values["expected"] < values["optimistic"]
        assert f"| {direction} | map | {values['expected']:.4f} | {values['argsort']:.4f} |" in printed
    # the default follows the run's config
    evaluator.main([run_dir, "--no-tensorboard"])
    assert io.load_json(os.path.join(run_dir, "report", "report.json"))["ties"] == "argsort"
    with pytest.raises(UserError, match="--ties all"):
        evaluator.main(["--compare", run_dir, run_dir, "--ties", "all"])


def test_every_method_takes_ties():
    import argparse

    from trainers import METHODS, get_method
    from utils.config import add_config_arguments, config_from_args
    for method in METHODS:
        config_class = get_method(method).Config
        assert config_class().ties == "expected"
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, config_class)
        assert config_from_args(config_class, parser.parse_args(["--ties", "argsort"])).ties == "argsort"
        with pytest.raises(UserError, match="tie rule 'random'"):
            config_class(ties="random")


def test_plots_go_to_tensorboard(tmp_path):
    tf = pytest.importorskip("tensorflow")
    run_dir = make_run(tmp_path / "run", "ssah", ssah_fields(bits=8, n_db=100))
    evaluator.main([run_dir, "--directions", "i->t,t->i"])
    tags = set()
    for name in os.listdir(os.path.join(run_dir, "tb")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, "tb", name)):
            tags |= {value.tag for value in event.summary.value}
    assert {"eval/pr_curve", "eval/top_n"} <= tags
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    assert set(report["directions"]) == {"i->t", "t->i"}


def test_bare_codes_file_uses_ssah_fields(tmp_path):
    fields = ssah_fields(seed=1)
    path = tmp_path / "codes.mat"
    io.save_mat(path, fields)
    evaluator.main([str(path), "--ties", "pessimistic"])
    report = io.load_json(str(tmp_path / "codes-report" / "report.json"))
    expected = ref_map(fields["Qt"], fields["Dt"], fields["query_L"], fields["retrieval_L"])
    assert abs(report["directions"]["t->t"]["map"] - expected) < 1e-9


def test_acmr_embeddings_use_euclidean_ranking(tmp_path):
    rng = np.random.default_rng(2)
    labels = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 120)]
    centres = rng.normal(size=(4, 6))
    embed = lambda: centres[labels.argmax(1)] + rng.normal(scale=1.0, size=(120, 6))
    fields = {"Qi": embed()[:30], "Qt": embed()[:30], "Di": embed(), "Dt": embed(),
              "query_L": labels[:30], "retrieval_L": labels}
    run_dir = make_run(tmp_path / "acmr", "acmr", fields)
    evaluator.main([run_dir, "--no-tensorboard", "--top-k", "50", "--ties", "pessimistic"])
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    assert set(report["directions"]) == {"i->t", "t->i"} and report["distance"] == "euclidean"
    figures = report["directions"]["i->t"]
    args = (fields["Qi"], fields["Dt"], fields["query_L"], fields["retrieval_L"])
    assert abs(figures["map"] - ref_map(*args, distance="euclidean")) < 1e-9
    assert abs(figures["map@50"] - ref_map(*args, top_k=50, distance="euclidean")) < 1e-9
    assert "hash_lookup" not in figures
    assert figures["ranking_pr"]["n"][-1] == 120  # the ranking PR curve reaches the whole database
    found = evaluator.nearest_items(evaluator.Source(run_dir), 3, top=120)["t->i"]["items"]
    distances = np.linalg.norm(fields["Di"] - fields["Qt"][3], axis=1)
    assert [item["index"] for item in found] == np.argsort(distances, kind="stable").tolist()


def test_metah_fields_and_class_id_labels(tmp_path):
    rng = np.random.default_rng(3)
    code = lambda n: np.where(rng.random((n, 16)) < 0.5, 1, -1).astype(np.int8)
    ids = lambda n: rng.integers(1, 11, (n, 1))  # a column of class ids, as in the raw .mat data
    fields = {"Q": code(20), "Dt": code(150), "Ds": code(200), "query_L": ids(20), "target_L": ids(150),
              "source_L": ids(200)[:, 0]}  # a 1-D vector: MATLAB files store it as one row
    run_dir = make_run(tmp_path / "metah", "metah", fields)
    evaluator.main([run_dir, "--no-tensorboard", "--ties", "pessimistic"])
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    one_hot = lambda y: (y.reshape(-1, 1) == np.arange(1, 11)).astype(int)
    expected = ref_map(fields["Q"], fields["Ds"], one_hot(fields["query_L"]), one_hot(fields["source_L"]))
    assert abs(report["directions"]["target->source"]["map"] - expected) < 1e-9


def test_compare_overlays_runs_and_prints_one_table(tmp_path, capsys):
    run_a = make_run(tmp_path / "run_a", "ssah", ssah_fields(seed=4))
    run_b = make_run(tmp_path / "run_b", "ssah", ssah_fields(seed=5))
    out = tmp_path / "compare.png"
    results = evaluator.main(["--compare", run_a, run_b, "--out", str(out)])
    assert set(results) == {"run_a", "run_b"}
    assert out.read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert printed.count("| run_a | ") == 4 and printed.count("| run_b | ") == 4
    assert printed.count("| expected |") == 8


def test_query_lists_nearest_items_in_every_direction(tmp_path, capsys):
    fields = ssah_fields(seed=6)
    fields["Dt"][123] = fields["Qi"][7]  # an exact match for query 7 in the text database
    run_dir = make_run(tmp_path / "run", "ssah", fields)
    evaluator.main([run_dir, "--query", "7", "--top", "5"])
    printed = capsys.readouterr().out
    assert printed.count("query 7") == 4
    found = evaluator.nearest_items(evaluator.Source(run_dir), 7, top=5)
    first = found["i->t"]["items"][0]
    assert first["distance"] == 0 and first["index"] <= 123
    distances = [item["distance"] for item in found["t->i"]["items"]]
    assert distances == sorted(distances)
    with pytest.raises(UserError, match="does not exist"):
        evaluator.nearest_items(evaluator.Source(run_dir), 40)


@pytest.mark.slow
def test_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        evaluator.main([str(tmp_path / "missing")])
    os.makedirs(tmp_path / "empty_run")
    io.save_json(tmp_path / "empty_run" / "config.json", {"method": "ssah", "config": {}})
    with pytest.raises(UserError, match="no codes.mat"):
        evaluator.main([str(tmp_path / "empty_run")])
    fields = ssah_fields()
    del fields["Dt"]
    run_dir = make_run(tmp_path / "partial", "ssah", fields)
    with pytest.raises(UserError, match="lacks field"):
        evaluator.main([run_dir, "--no-tensorboard"])
    with pytest.raises(UserError, match="unknown direction"):
        evaluator.main([make_run(tmp_path / "ok", "ssah", ssah_fields()), "--directions", "x->y"])
    result = subprocess.run([sys.executable, "eval.py", str(tmp_path / "missing")], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_encode_hook_calls_the_trainers_encode(tmp_path, monkeypatch):
    import types
    run_dir = make_run(tmp_path / "run", "ssah", ssah_fields())
    calls = []
    with_encode = types.SimpleNamespace(exports=evaluator.get_method("ssah").exports,
                                        encode=lambda run, inputs, modality: calls.append((run, modality)) or "codes")
    monkeypatch.setattr(evaluator, "get_method", lambda name: with_encode)
    assert evaluator.encode_new_items(run_dir, np.zeros((2, 3)), "text") == "codes"
    assert calls == [(run_dir, "text")]


@pytest.mark.parametrize("saved, given, expected", [
    ({"retrieval_distance": "cosine"}, None, "cosine"),   # as the run was evaluated in training
    ({}, None, "euclidean"),                              # a run from before the setting: the program's
    ({"retrieval_distance": "cosine"}, "euclidean", "euclidean"),  # --distance still wins
])
def test_an_acmr_run_is_ranked_by_its_own_retrieval_distance(tmp_path, saved, given, expected):
    io.save_json(str(tmp_path / "config.json"), {"method": "acmr", "config": saved})
    (tmp_path / "codes.mat").write_bytes(b"")  # only its presence is checked before the figures are read
    assert evaluator.Source(str(tmp_path), distance=given).distance == expected
