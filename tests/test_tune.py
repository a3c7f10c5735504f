"""The settings search (tune.py) and the presets train.py reads."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest

import train
import tune
from trainers import acmr, metah, ssah
from utils import presets
from utils.config import add_config_arguments
from utils.errors import UserError

# A tiny SSAH on the synthetic data: one update per net, small widths.
TINY_SSAH = ["--schedule", "tiny", "--epochs", "1", "--hidden-dim", "32", "--embed-dim", "16",
             "--discriminator-hidden", "16,8", "--batch-size", "64"]


def config_for(module, argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, module.Config)
    parser.add_argument("--preset-file", default="")
    return train.build_config(module.METHOD, parser.parse_args(argv))


def write(path, obj):
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def tiny_ssah_search(tmp_path_factory):
    """searched() -> the preset file of a real two-trial tiny SSAH search, run once for the module's
    tests on the first call (inside a test, under the autouse data fixtures). Read it only."""
    searched = {}

    def search():
        if "path" not in searched:
            out = tmp_path_factory.mktemp("tune") / "ssah-synthetic.json"
            tune.main(["--method", "ssah", "--dataset", "synthetic", "--trials", "2", "--bits", "8",
                       "--validation-size", "150", "--out", str(out), *TINY_SSAH])
            searched["path"] = out
        return searched["path"]
    return search


@pytest.mark.slow
def test_the_search_writes_a_preset_that_train_py_applies(tiny_ssah_search):
    out = tiny_ssah_search()
    preset = json.loads(out.read_text())
    assert preset["method"] == "ssah" and preset["dataset"] == "synthetic" and preset["bits"] == 8
    assert preset["command"].startswith("python tune.py --method ssah") and preset["date"]
    assert len(preset["trials"]) == 2
    # Trial 0 measures the program's own settings, so the preset never scores below them.
    first = preset["trials"][0]["params"]
    assert (first["text_norm"], first["ms_windows"], first["lr_exponent_step"], first["eta"]) == \
        ("none", "50,30,15,10,5", 0.5, 1.0)
    values = [t["validation_map"] for t in preset["trials"]]
    assert 0.0 < max(values) <= 1.0 and preset["validation"]["best_map"] == max(values)
    assert preset["validation"]["size"] == 150
    best = preset["trials"][preset["validation"]["best_trial"]]["params"]
    searched = {p["name"] for p in preset["search_space"]}
    # Settings given on the command line are held fixed, not searched, and travel in the preset.
    assert "schedule" not in searched and "epochs" not in searched and "text_norm" in searched
    assert preset["settings"]["schedule"] == "tiny" and preset["settings"]["hidden_dim"] == 32
    assert not set(preset["settings"]) & set(tune.PER_RUN_FIELDS)

    config = config_for(ssah, ["--dataset", "synthetic", "--preset-file", str(out)])
    assert config.text_norm == best["text_norm"] and config.batch_size == 64
    assert config.ms_windows == tuple(int(w) for w in best["ms_windows"].split(","))
    assert config.lr_txt_exponent == pytest.approx(best["lr_txt_exponent"])
    # Explicit options still win over the preset.
    assert config_for(ssah, ["--dataset", "synthetic", "--preset-file", str(out), "--hidden-dim", "48"]).hidden_dim == 48


@pytest.mark.slow
def test_validation_rows_are_never_query_rows(monkeypatch):
    """The search trains and scores on the validation view: its queries are validation items,
    carved from training, disjoint from the dataset's queries and from what is trained on."""
    from utils.data import load_dataset
    seen = []

    def fake_fit(config, data=None, **_):
        seen.append(data)
        return {"final": {"test": {"average": 0.25}, "database": {"average": 0.5}}}
    monkeypatch.setattr(acmr, "fit", fake_fit)
    preset = tune.run_search("acmr", "synthetic", trials=2, validation_size=120, fixed_options=["--epochs", "1"])
    assert preset["validation"]["best_map"] == pytest.approx(0.375)
    real = load_dataset("synthetic", validation_size=120)
    for data in seen:
        view = data.split
        assert len(view.query) == 120
        assert not np.intersect1d(view.query, real.split.query).size
        assert not np.intersect1d(view.query, view.train).size
        assert not np.intersect1d(view.query, view.database).size
        np.testing.assert_array_equal(np.sort(view.query), np.sort(real.split.validation))


def test_validation_view_needs_a_validation_part():
    from utils.data import load_dataset, validation_view
    with pytest.raises(UserError, match="--validation-size"):
        validation_view(load_dataset("synthetic"))


def test_metah_scores_on_source_validation_queries(monkeypatch):
    seen = []

    def fake_fit(config, pair=None, **_):
        seen.append(config)
        return {"final": {"source-validation": {"map": 0.6}, "target->target": {"map": 0.9},
                          "target_prediction_balance": 0.95}}
    monkeypatch.setattr(metah, "fit", fake_fit)
    preset = tune.run_search("metah", "mnist->usps", trials=1)
    assert preset["validation"]["best_map"] == 0.6  # never the target's figure
    assert preset["validation"]["target_balance_floor"] == metah.TARGET_BALANCE_FLOOR == 0.9
    assert preset["trials"][0]["accepted"]
    assert seen[0].validation_fraction == metah.VALIDATION_FRACTION and seen[0].preset == "metah"
    assert not seen[0].eval_every_epoch and "eval_every_epoch" not in preset["settings"]


@pytest.mark.slow
def test_metah_trial_skips_the_per_epoch_evaluation_and_scores_what_a_full_run_does(tmp_path):
    """A trial evaluates only at the end (for speed); the per-epoch evaluations of a normal run
    change nothing it trains, so the trial's validation figures are the normal run's."""
    from tests.test_metah import write_domain_files
    from utils.run import set_seed
    write_domain_files(str(tmp_path))
    config = metah.Config(dataset="folder:src->tgt", data=str(tmp_path), bits=16, iterations=12, batch_size=16,
                          hidden=(32,), discriminator_hidden=32, validation_fraction=0.3)
    score, figures = tune.validation_score("metah", config)
    set_seed(config.seed)
    normal = metah.fit(config)
    assert config.eval_every_epoch and len(normal["epochs"]) > 1  # evaluated after every epoch
    assert figures == {**normal["final"]["source-validation"],
                       "target_prediction_balance": normal["final"]["target_prediction_balance"]}
    assert score == figures["map"]


def test_prediction_balance_is_one_for_equal_shares_and_zero_for_one_class():
    eye = np.eye(4)
    assert metah.prediction_balance(np.tile(eye, (5, 1)), 4) == pytest.approx(1.0)
    assert metah.prediction_balance(np.tile(eye[2], (20, 1)), 4) == 0.0
    # Half the rows in each of two classes of four: log 2 / log 4.
    assert metah.prediction_balance(np.repeat(eye[:2], 10, axis=0), 4) == pytest.approx(0.5)


def test_a_metah_trial_that_collapses_the_target_ranks_below_one_that_keeps_it(monkeypatch):
    """Every trial but the base one scores higher on source validation yet puts the whole
    target in one class: with a floor the base trial wins, without one a collapsed trial does."""
    def fake_fit(config, pair=None, **_):
        base = config.beta == metah.METAH_BETA and config.alpha == metah.METAH_ALPHA
        return {"final": {"source-validation": {"map": 0.8 if base else 0.9},
                          "target_prediction_balance": 0.97 if base else 0.0}}
    monkeypatch.setattr(metah, "fit", fake_fit)
    guarded = tune.run_search("metah", "mnist->usps", trials=3, target_balance_floor=0.9)
    assert [t["accepted"] for t in guarded["trials"]] == [True, False, False]
    assert guarded["validation"]["best_trial"] == 0 and guarded["validation"]["best_map"] == 0.8
    assert guarded["validation"]["target_balance_floor"] == 0.9
    assert guarded["validation"]["target_prediction_balance"] == 0.97
    unguarded = tune.run_search("metah", "mnist->usps", trials=3, target_balance_floor=0.0)
    assert unguarded["validation"]["best_trial"] != 0 and unguarded["validation"]["best_map"] == 0.9
    with pytest.raises(UserError, match="every trial's target prediction balance fell below"):
        tune.run_search("metah", "mnist->usps", trials=1, target_balance_floor=0.99)
    with pytest.raises(UserError, match="judges METAH's unlabelled target"):
        tune.run_search("ssah", "synthetic", trials=1, target_balance_floor=0.9)
    with pytest.raises(UserError, match=r"in \[0, 1\)"):
        tune.run_search("metah", "mnist->usps", trials=1, target_balance_floor=1.5)


def write_target_domain(folder, collapsed):
    """A 3-class source and a target drawn around the same centres; `collapsed`: every target
    row the same point, so any classifier predicts one class for all of them."""
    rng = np.random.RandomState(0)
    centres = rng.randn(3, 10) * 4
    ys, yt = np.arange(90) % 3, np.arange(60) % 3
    xs = centres[ys] + rng.randn(90, 10)
    xt = np.tile(centres[:1] + 0.5, (60, 1)) if collapsed else centres[yt] + 0.5 + rng.randn(60, 10)
    np.savez(os.path.join(folder, "src.npz"), features=xs.astype(np.float32), labels=ys)
    np.savez(os.path.join(folder, "tgt.npz"), features=xt.astype(np.float32), labels=yt)


@pytest.mark.slow
@pytest.mark.parametrize("collapsed", [False, True])
def test_the_target_criterion_reads_the_trained_classifier_on_the_target(tmp_path, collapsed):
    """A real trial: a target the classifier spreads over the three classes passes a 0.9 floor;
    one it puts in a single class scores 0 and is rejected."""
    write_target_domain(str(tmp_path), collapsed)
    config = metah.Config(dataset="folder:src->tgt", data=str(tmp_path), bits=16, iterations=40, batch_size=16,
                          hidden=(32,), discriminator_hidden=32, validation_fraction=0.2)
    _, figures = tune.validation_score("metah", config)
    penalty, check = tune.target_check("metah", figures, 0.9)
    if collapsed:
        assert figures["target_prediction_balance"] == 0.0
        assert penalty == tune.REJECTED_PENALTY and not check["accepted"]
    else:
        assert figures["target_prediction_balance"] > 0.9
        assert penalty == 0.0 and check["accepted"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ({"method": "ssah"}, "no 'settings'"),
    ({"method": "ssah", "settings": {"no_such_setting": 1}}, "no_such_setting"),
    ({"method": "ssah", "settings": {"seed": 3}}, "setting of the run"),
    ({"method": "ssah", "settings": {"epochs": "two"}}, "epochs"),
    ({"method": "ssah", "settings": {"text_norm": "whiten"}}, "not one of"),
    ({"method": "acmr", "settings": {}}, "for acmr, not ssah"),
])
def test_a_bad_preset_file_is_a_one_line_error(tmp_path, content, message):
    path = write(tmp_path / "preset.json", content)
    with pytest.raises(UserError, match=message) as error:
        config_for(ssah, ["--preset-file", path])
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_missing_preset_file_stops_train_py_before_training(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train.main(["--method", "ssah", "--dataset", "synthetic", "--runs-dir", str(tmp_path),
                    "--preset-file", str(tmp_path / "absent.json")])
    assert not os.listdir(tmp_path)  # no run folder left behind


def test_tuned_applies_the_committed_preset_and_names_the_tune_command_without_one(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PRESETS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"python tune.py --method metah --dataset 'mnist->usps'"):
        config_for(metah, ["--preset", "tuned", "--dataset", "mnist->usps"])
    write(tmp_path / "metah-mnist-usps.json", {"method": "metah", "settings": {"beta": 0.25, "iterations": 77}})
    config = config_for(metah, ["--preset", "tuned", "--dataset", "mnist->usps", "--iterations", "90"])
    assert (config.preset, config.beta, config.iterations, config.alpha) == ("tuned", 0.25, 90, metah.METAH_ALPHA)


def test_text_standardisation_feeds_txtnet_standardised_rows():
    """--text-norm standardize: TxtNet sees training-standardised rows (and the codes follow)."""
    from utils.data import load_dataset
    data = load_dataset("synthetic")
    config = ssah.Config(text_norm="standardize")
    standardize = ssah.text_standardizer(config, data)
    train_texts = data.texts[data.split.train]
    out = standardize(train_texts).numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    assert ssah.text_standardizer(ssah.Config(), data) is None  # the program: raw rows


def test_the_acmr_search_starts_from_the_program_and_the_paper_variant_and_its_preset_keeps_the_switches(
        tmp_path, monkeypatch):
    """Trial 0 runs the program's settings, trial 1 exactly train.py's --variant paper (a preset
    Param's other choice as it stands); a best trial with the paper's switches yields a preset under
    which --variant tuned trains with those switches."""
    seen = []

    def fake_fit(config, data=None, **_):
        seen.append(config)
        score = 0.4 if config.train_label_classifier and config.image_norm == "none" else 0.2
        return {"final": {"test": {"average": score}, "database": {"average": score}}}
    monkeypatch.setattr(acmr, "fit", fake_fit)
    monkeypatch.setattr(presets, "PRESETS_DIR", str(tmp_path))
    preset = tune.run_search("acmr", "synthetic", trials=2, validation_size=120,
                             out=str(tmp_path / "acmr-synthetic.json"))
    program = config_for(acmr, ["--dataset", "synthetic"])
    paper = config_for(acmr, ["--dataset", "synthetic", "--variant", "paper"])
    ignore = {"variant", "validation_size", "epochs", "label_weight"}  # 0 / -1 mean the program's 50 / 100
    for trial_config, variant_config in zip(seen, (program, paper)):
        assert {k: v for k, v in vars(trial_config).items() if k not in ignore} == \
            {k: v for k, v in vars(variant_config).items() if k not in ignore}
        assert acmr.resolved(trial_config) == acmr.resolved(variant_config)
    assert [t["params"]["switches"] for t in preset["trials"]] == ["original", "paper"]
    assert preset["validation"]["best_trial"] == 1
    tuned = config_for(acmr, ["--dataset", "synthetic", "--variant", "tuned"])
    for name, value in acmr.PRESETS["paper"].items():
        assert getattr(tuned, name) == value, name


def test_the_acmr_table_runs_a_variant_with_named_settings_changed_for_ablation_rows():
    from benchmarks.acmr_wiki_table import variant_config
    tuned = variant_config("tuned")
    ablated = variant_config("tuned:image_norm=none:label_weight=100:shuffle=false")
    assert tuned.image_norm == "standardize" and tuned.shuffle  # the committed preset's
    assert (ablated.image_norm, ablated.label_weight, ablated.shuffle) == ("none", 100.0, False)
    unchanged = {"image_norm", "label_weight", "shuffle"}
    assert {k: v for k, v in vars(ablated).items() if k not in unchanged} == \
        {k: v for k, v in vars(tuned).items() if k not in unchanged}
    with pytest.raises(SystemExit, match="no setting no_such"):
        variant_config("paper:no_such=1")


def fake_acmr_fit_by_classifier(figures_by_switch):
    """An ACMR fit whose validation figures (mAP@top_k average, mAP over all average) depend only on
    whether the label classifier trains: trial 0 (the program) has it fixed, trial 1 (the paper) trains it."""
    def fit(config, data=None, **_):
        top_k, over_all = figures_by_switch[config.train_label_classifier]
        return {"final": {acmr.TEST_PROTOCOL: {"average": top_k}, acmr.DATABASE_PROTOCOL: {"average": over_all}}}
    return fit


@pytest.mark.parametrize("objective, best_trial, best_score", [
    ("mean", 1, 0.325),   # (0.20 + 0.45) / 2 beats (0.30 + 0.28) / 2
    ("min", 0, 0.28),     # min(0.30, 0.28) beats min(0.20, 0.45)
    ("top_k", 0, 0.30),
])
@pytest.mark.slow
def test_the_acmr_objective_picks_the_trial_its_rule_says_and_the_preset_records_it(
        tmp_path, monkeypatch, objective, best_trial, best_score):
    monkeypatch.setattr(acmr, "fit", fake_acmr_fit_by_classifier({False: (0.30, 0.28), True: (0.20, 0.45)}))
    out = tmp_path / "acmr-synthetic.json"
    tune.main(["--method", "acmr", "--dataset", "synthetic", "--trials", "2", "--validation-size", "120",
               "--objective", objective, "--out", str(out)])
    preset = json.loads(out.read_text())
    assert [t["params"]["train_label_classifier"] for t in preset["trials"]] == [False, True]
    assert preset["validation"]["best_trial"] == best_trial
    assert preset["validation"]["best_map"] == pytest.approx(best_score)
    assert preset["validation"]["objective"] == objective
    assert preset["validation"]["rule"] == acmr.OBJECTIVES[objective]
    assert f"--objective {objective}" in preset["command"]
    assert preset["settings"]["train_label_classifier"] is (best_trial == 1)


def test_the_acmr_search_draws_train_label_classifier_apart_from_the_switches():
    """A trial with the program's switches but a trained label classifier is the program's config
    with that one setting changed (the searched setting applies after the preset's switches)."""
    program = config_for(acmr, ["--dataset", "synthetic"])
    space = tune.search_space("acmr", set())
    assert "train_label_classifier" in {param.name for param in space}
    trial = tune.apply_params(program, {"switches": "original", "train_label_classifier": True}, space)
    assert trial.train_label_classifier and not program.train_label_classifier
    assert {k: v for k, v in vars(trial).items() if k != "train_label_classifier"} == \
        {k: v for k, v in vars(program).items() if k != "train_label_classifier"}
    paper = tune.apply_params(program, {"switches": "paper", "train_label_classifier": False}, space)
    assert not paper.train_label_classifier and paper.projector_steps == acmr.PRESETS["paper"]["projector_steps"]


def test_an_objective_other_than_mean_is_acmr_only():
    with pytest.raises(UserError, match="leave --objective out") as error:
        tune.run_search("ssah", "synthetic", trials=1, objective="min")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="not one of mean, min, top_k"):
        acmr.objective_score({acmr.TEST_PROTOCOL: {"average": 0.3}}, "max")


def test_a_warm_start_adds_an_earlier_searchs_trials_rescored_under_the_new_objective(tmp_path, monkeypatch):
    """--warm-start: the trials recorded in an earlier preset join the study as done trials, scored
    from their recorded figures under --objective (so the best can be one of them); a record made
    before train_label_classifier was searched gets the value its switches gave."""
    monkeypatch.setattr(acmr, "fit", fake_acmr_fit_by_classifier({False: (0.30, 0.28), True: (0.20, 0.45)}))
    earlier = tmp_path / "earlier.json"
    tune.run_search("acmr", "synthetic", trials=2, validation_size=120, out=str(earlier))  # mean: trial 1 wins
    recorded = json.loads(earlier.read_text())
    assert recorded["validation"]["best_trial"] == 1
    for trial in recorded["trials"]:  # as an older search wrote them
        del trial["params"]["train_label_classifier"]
    write(earlier, recorded)

    # Every new trial scores below both recorded ones under min, so the best is a recorded trial.
    monkeypatch.setattr(acmr, "fit", fake_acmr_fit_by_classifier({False: (0.10, 0.10), True: (0.10, 0.10)}))
    preset = tune.run_search("acmr", "synthetic", trials=1, validation_size=120, objective="min",
                             warm_start=str(earlier))
    warm, new = preset["trials"][:2], preset["trials"][2:]
    assert [t["warm_start"]["number"] for t in warm] == [0, 1] and len(new) == 1
    assert [t["params"]["train_label_classifier"] for t in warm] == [False, True]  # from the switches
    assert [t["validation_map"] for t in warm] == [pytest.approx(0.28), pytest.approx(0.20)]  # rescored
    assert new[0]["number"] == 2 and new[0]["params"]["switches"] == "original"  # then the base trial
    assert preset["validation"]["best_trial"] == 0 and preset["validation"]["best_map"] == pytest.approx(0.28)
    assert preset["validation"]["warm_start"] == {"file": str(earlier), "trials": 2}
    assert preset["settings"]["train_label_classifier"] is False

    with pytest.raises(UserError, match="validation size 120, this search with 150") as error:
        tune.run_search("acmr", "synthetic", trials=1, validation_size=150, warm_start=str(earlier))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="leave --warm-start out"):
        tune.run_search("metah", "mnist->usps", trials=1, warm_start=str(earlier))


def fake_metah_fit_by_seed(scores, balances=None, seen=None, lookups=None):
    """A METAH fit whose validation mAP (target balance, lookup mAP within radius 2) depends on whether
    the trial runs METAH's defaults and on the seed: scores[(is_base, seed)], falling back to
    scores[(is_base, None)]."""
    def fit(config, pair=None, **_):
        base = config.beta == metah.METAH_BETA and config.alpha == metah.METAH_ALPHA
        if seen is not None:
            seen.append((base, config.seed))
        pick = lambda table, default: table.get((base, config.seed), table.get((base, None), default))
        return {"final": {"source-validation": {"map": pick(scores, 0.0), "map_radius2": pick(lookups or {}, 0.5)},
                          "target_prediction_balance": pick(balances or {}, 0.99)}}
    return fit


@pytest.mark.slow
def test_reranking_over_seeds_picks_the_trial_that_holds_not_the_luckiest(tmp_path, monkeypatch):
    """At the search's seed every other trial beats METAH's defaults (0.9 against 0.8); at seeds 1
    and 2 they fall to 0.5: re-ranked by the mean over seeds 0-2 the defaults win. The search's
    own figures are reused (no run at seed 0), each new seed runs every re-ranked trial once."""
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 0.8, (False, 0): 0.9, (False, None): 0.5}))
    path = tmp_path / "metah-mnist-usps.json"
    tune.main(["--method", "metah", "--dataset", "mnist->usps", "--trials", "3", "--out", str(path)])
    searched = json.loads(path.read_text())
    assert searched["validation"]["best_trial"] != 0 and searched["settings"]["alpha"] != metah.METAH_ALPHA

    seen = []
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed(
        {(True, None): 0.8, (False, 0): 0.9, (False, None): 0.5}, seen=seen))
    tune.main(["--rerank", str(path), "--top", "3", "--seeds", "1,2"])
    preset = json.loads(path.read_text())
    assert sorted(seen) == sorted([(False, 1), (False, 2)] * 2 + [(True, 1), (True, 2)])
    rerank = preset["rerank"]
    assert rerank["chosen_trial"] == 0 and rerank["seeds"] == [0, 1, 2] and rerank["top"] == 3
    assert rerank["command"] == f"python tune.py --rerank {path} --top 3 --seeds 1,2"
    assert rerank["mean_map"] == pytest.approx(0.8)
    assert [c["number"] for c in rerank["candidates"]][0] != 0  # ranked by the search's score first
    other = next(c for c in rerank["candidates"] if c["number"] != 0)
    assert other["scores"] == {"0": 0.9, "1": 0.5, "2": 0.5} and other["mean_map"] == pytest.approx(19 / 30)
    # The preset now carries the defaults' settings; the search's record is kept as it was.
    assert preset["settings"]["alpha"] == metah.METAH_ALPHA and preset["settings"]["beta"] == metah.METAH_BETA
    assert preset["trials"] == searched["trials"] and preset["command"] == searched["command"]
    assert config_for(metah, ["--dataset", "mnist->usps", "--preset-file", str(path)]).alpha == metah.METAH_ALPHA


def test_reranking_rejects_a_metah_trial_that_collapses_the_target_at_any_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 0.8, (False, None): 0.9}))
    path = tmp_path / "preset.json"
    tune.run_search("metah", "mnist->usps", trials=2, out=str(path), command="python tune.py --method metah "
                    "--dataset mnist->usps --trials 2")
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 0.8, (False, None): 0.9},
                                                             balances={(False, 3): 0.2}))
    preset = tune.rerank(str(path), top=2, seeds=[1, 3])
    collapsed = next(c for c in preset["rerank"]["candidates"] if c["number"] == 1)
    assert not collapsed["accepted"] and collapsed["balances"]["3"] == 0.2 and collapsed["mean_map"] > 0.8
    assert preset["rerank"]["chosen_trial"] == 0


@pytest.mark.slow
def test_reranking_reruns_with_the_searchs_fixed_options(tmp_path, monkeypatch, tiny_ssah_search):
    """A real (tiny) SSAH search, then a re-ranking of its best trial at another seed: the options
    held fixed in the search (read back from its recorded command) hold in the rerun, which trains
    exactly the config train.py builds from them at that seed with the trial's settings, and stay
    in the preset."""
    path = tmp_path / "ssah.json"
    shutil.copyfile(tiny_ssah_search(), path)  # the re-ranking writes into the preset
    searched = json.loads(path.read_text())
    reruns, real_validation_score = [], tune.validation_score

    def measured(method, config, objective="mean"):  # the real trial, its config recorded
        reruns.append((method, config, objective, real_validation_score(method, config, objective)))
        return reruns[-1][-1]
    monkeypatch.setattr(tune, "validation_score", measured)
    preset = tune.rerank(str(path), top=1, seeds=[5])
    (candidate,) = preset["rerank"]["candidates"]
    best = searched["validation"]["best_trial"]
    assert candidate["number"] == best and searched["trials"][best]["number"] == best
    searched = searched["trials"][best]
    config = tune.apply_params(config_for(ssah, ["--dataset", "synthetic", "--bits", "8", "--validation-size",
                                                 "150", "--seed", "5", *TINY_SSAH]),
                               searched["params"], tune.search_space("ssah", {"schedule", "epochs", "hidden_dim",
                                                                              "embed_dim", "discriminator_hidden",
                                                                              "batch_size"}))
    ((method, rerun_config, objective, (score, _)),) = reruns
    assert (method, objective) == ("ssah", "mean") and rerun_config == config
    assert candidate["scores"]["5"] == score
    assert candidate["scores"]["0"] == searched["validation_map"]
    assert preset["settings"]["schedule"] == "tiny" and preset["settings"]["hidden_dim"] == 32


@pytest.mark.parametrize("preset, seeds, message", [
    ({"method": "metah", "settings": {}, "command": "hand-written"}, [1], "records no search"),
    ({"method": "nope", "settings": {}}, [1], "names no method of ssah, acmr, metah"),
    (None, [0, 1], "other than the search's"),
])
def test_reranking_bad_input_is_a_one_line_error(tmp_path, monkeypatch, preset, seeds, message):
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 0.8, (False, None): 0.9}))
    path = tmp_path / "preset.json"
    if preset is None:
        tune.run_search("metah", "mnist->usps", trials=1, out=str(path),
                        command="python tune.py --method metah --dataset mnist->usps --trials 1")
    else:
        write(path, preset)
    with pytest.raises(UserError, match=message) as error:
        tune.rerank(str(path), top=2, seeds=seeds)
    assert "\n" not in str(error.value)


def test_reranking_breaks_equal_means_by_the_validation_hash_lookup(tmp_path, monkeypatch):
    """Every trial ranks the validation queries perfectly at every seed (a small source part): the
    trial whose lookup within radius 2 is better on average wins; without a difference, the base."""
    path = tmp_path / "preset.json"
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 1.0, (False, None): 1.0}))
    tune.run_search("metah", "mnist->usps", trials=2, out=str(path),
                    command="python tune.py --method metah --dataset mnist->usps --trials 2")
    assert tune.rerank(str(path), top=2, seeds=[1])["rerank"]["chosen_trial"] == 0
    monkeypatch.setattr(metah, "fit", fake_metah_fit_by_seed({(True, None): 1.0, (False, None): 1.0},
                                                             lookups={(True, None): 0.9, (False, None): 1.0}))
    tune.run_search("metah", "mnist->usps", trials=2, out=str(path),
                    command="python tune.py --method metah --dataset mnist->usps --trials 2")
    preset = tune.rerank(str(path), top=2, seeds=[1])
    assert preset["rerank"]["chosen_trial"] == 1
    assert [c["mean_map_radius2"] for c in preset["rerank"]["candidates"]] == [0.9, 1.0]


def test_a_setting_held_fixed_on_the_command_line_beats_the_switches_a_trial_draws(monkeypatch):
    """`--train-label-classifier false` after the known options holds in every trial, also in one
    that draws the paper variant's switches (which train the classifier)."""
    seen = []

    def fit(config, data=None, **_):
        seen.append((config.projector_steps, config.train_label_classifier))
        return {"final": {acmr.TEST_PROTOCOL: {"average": 0.3}, acmr.DATABASE_PROTOCOL: {"average": 0.3}}}
    monkeypatch.setattr(acmr, "fit", fit)
    preset = tune.run_search("acmr", "synthetic", trials=2, validation_size=120,
                             fixed_options=["--train-label-classifier", "false"])
    paper_steps = acmr.PRESETS["paper"]["projector_steps"]
    assert acmr.PRESETS["paper"]["train_label_classifier"] is True
    assert [t["params"]["switches"] for t in preset["trials"]] == ["original", "paper"]
    assert seen[1] == (paper_steps, False) and not any(trained for _, trained in seen)
    assert "train_label_classifier" not in {p["name"] for p in preset["search_space"]}
    assert preset["settings"]["train_label_classifier"] is False


@pytest.mark.slow
def test_a_warm_start_measures_a_setting_new_to_the_space_on_the_best_earlier_trial(tmp_path, monkeypatch):
    """Records from before retrieval_distance was searched count as Euclidean; the search then runs
    the base trial and the best recorded trial with cosine before the sampler's own draws."""
    monkeypatch.setattr(acmr, "fit", fake_acmr_fit_by_classifier({False: (0.30, 0.28), True: (0.20, 0.45)}))
    earlier = tmp_path / "earlier.json"
    tune.run_search("acmr", "synthetic", trials=2, validation_size=120, out=str(earlier))  # mean: trial 1 wins
    recorded = json.loads(earlier.read_text())
    for trial in recorded["trials"]:  # as a search before the setting wrote them
        del trial["params"]["retrieval_distance"]
    write(earlier, recorded)
    seen = []

    def fit(config, data=None, **_):
        seen.append((config.train_label_classifier, config.retrieval_distance))
        return {"final": {acmr.TEST_PROTOCOL: {"average": 0.1}, acmr.DATABASE_PROTOCOL: {"average": 0.1}}}
    monkeypatch.setattr(acmr, "fit", fit)
    preset = tune.run_search("acmr", "synthetic", trials=3, validation_size=120, warm_start=str(earlier))
    warm_best = recorded["trials"][1]["params"]
    assert seen[:2] == [(False, "euclidean"), (True, "cosine")]  # the base trial, then the new choice
    assert preset["trials"][3]["params"] == {**warm_best, "retrieval_distance": "cosine"}
    assert [t["params"]["retrieval_distance"] for t in preset["trials"][:2]] == ["euclidean"] * 2


# ----------------------------------------------------------------------------- the criteria study

def test_the_domain_ratio_weighs_the_source_rows_that_look_like_the_target():
    """benchmarks/metah_validation_study.py weights source validation queries by p(target|x)/p(source|x):
    source rows drawn like the target must outweigh those drawn far from it."""
    from types import SimpleNamespace

    from benchmarks.metah_validation_study import domain_ratios
    rng = np.random.default_rng(0)
    near, far = rng.normal(2.0, 1.0, (100, 60)), rng.normal(-2.0, 1.0, (100, 60))
    target = rng.normal(2.0, 1.0, (150, 60))
    pair = SimpleNamespace(source_train=np.arange(0, 200, 2), target_database=np.arange(150))
    ratios = domain_ratios(SimpleNamespace(pair=pair, inputs=(np.concatenate([near, far]), target)))
    assert ratios.shape == (200,) and np.all(ratios > 0)
    assert np.median(ratios[:100]) > 4 * np.median(ratios[100:])  # tempered by the weight decay, not extreme


@pytest.mark.slow
def test_the_weighted_validation_ranks_the_runs_own_validation_queries(tmp_path, monkeypatch):
    """With equal weights the study's weighted figure is the run's source validation mAP: the same
    queries, database and tie rule."""
    from benchmarks import metah_validation_study as study
    from tests.test_metah import write_domain_files
    write_domain_files(str(tmp_path))
    config = metah.Config(dataset="folder:src->tgt", data=str(tmp_path), bits=16, iterations=12, batch_size=16,
                          hidden=(32,), discriminator_hidden=32, validation_fraction=0.3, eval_every_epoch=False)
    monkeypatch.setattr(study, "domain_ratios", lambda training: np.ones(len(training.pair.source.labels)))
    row = study.one_run(config)
    assert row["weighted"] == pytest.approx(row["validation"], abs=1e-12) and row["effective_share"] == pytest.approx(1)
    assert 0 <= row["target"] <= 1 and 0 <= row["balance"] <= 1


def test_the_study_picks_the_trial_the_search_would_and_reads_the_target_only_to_judge():
    from benchmarks.metah_validation_study import summarise

    def run(validation, weighted, balance, target):
        return {"validation": validation, "weighted": weighted, "balance": balance, "target": target}
    trials = [run(0.99, 0.90, 0.50, 0.70),   # best validation, but below the floor: the search rejects it
              run(0.95, 0.80, 0.95, 0.80),   # the search's pick
              run(0.90, 0.95, 0.95, 0.90),   # the weighted pick
              run(0.85, 0.70, 0.95, 0.95)]   # the best on the target
    runs = {f"A-W|32|0|trial:{i}": row for i, row in enumerate(trials)}
    runs["A-W|32|0|preset:tah"] = run(0.9, 0.9, 0.6, 0.97)
    entry = summarise({"runs": runs, "floors": {"A-W": 0.9}})[("A-W", 32)]
    assert entry["pick_validation"] == 0.80 and entry["pick_weighted"] == 0.90 and entry["best_trial"] == 0.95
    assert entry["tah"] == 0.97 and entry["trials"] == 4 and entry["seeds"] == 1
    assert entry["tah_validation_gap"] == pytest.approx(0.9 - 0.95)
    assert entry["corr_validation"] == pytest.approx(-1.0) and entry["corr_weighted"] == pytest.approx(-0.4)
