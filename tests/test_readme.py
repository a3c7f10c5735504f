"""README figures against the benchmarks' results files (benchmarks/check_readme.py)."""
import os

import pytest

from benchmarks import check_readme, readme_figures, results_io
from utils import io


@pytest.mark.slow
def test_readme_and_docs_figures_links_and_length():
    problems = check_readme.check_all()
    assert not problems, "README / docs problems:\n\n" + "\n\n".join(problems)


MIRFLICKR = {"final": {"t->t": 0.6891, "i->t": 0.8012, "t->i": 0.7968, "i->i": 0.9541},
             "random_codes_map": 0.5093, "settings": {"schedule": "short", "epochs": 2, "seed": 0, "bits": 16}}


def made_readme(tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body)
    return str(readme)


def block(tmp_path):
    """A README figure block rendered from a results file written as a benchmark writes it."""
    results_io.write_results(str(tmp_path / "benchmarks" / "results" / "mir.json"), MIRFLICKR,
                             argv=["benchmarks/ssah_mirflickr_tags.py", "--epochs", "2"])
    text = readme_figures.render_block("ssah_mirflickr_tags", ["benchmarks/results/mir.json"], str(tmp_path))
    return f"# Title\n\n<!-- figures: ssah_mirflickr_tags benchmarks/results/mir.json -->\n{text}\n<!-- /figures -->\n"


def test_results_file_records_machine_commit_command_and_date(tmp_path):
    path = str(tmp_path / "r.json")
    results_io.write_results(path, {"x": 1.5}, argv=["benchmarks/quickstart.py", "--only", "wiki"])
    written = io.load_json(path)
    p = written["provenance"]
    assert written["x"] == 1.5
    assert p["machine"]["cores"] == os.cpu_count() and p["machine"]["cpu"] and p["machine"]["python"]
    assert p["command"] == "python benchmarks/quickstart.py --only wiki"
    assert p["commit"] is None or len(p["commit"]) == 40
    line = results_io.describe(p)
    assert p["machine"]["cpu"] in line and "`python benchmarks/quickstart.py --only wiki`" in line
    assert p["date"][:10] in line


def test_checker_passes_a_matching_block_and_catches_a_changed_number(tmp_path):
    text = block(tmp_path)
    assert "i->t 0.801" in text and "random codes on the same split: 0.509" in text
    assert check_readme.check(made_readme(tmp_path, text), repo=str(tmp_path)) == []

    changed = made_readme(tmp_path, text.replace("i->t 0.801", "i->t 0.810"))
    problems = check_readme.check(changed, repo=str(tmp_path))
    assert len(problems) == 1 and "differs" in problems[0]
    assert "-`short` schedule" in problems[0] and "i->t 0.810" in problems[0] and "i->t 0.801" in problems[0]

    check_readme.check(changed, repo=str(tmp_path), write=True)  # --write restores the results' figures
    assert check_readme.check(changed, repo=str(tmp_path)) == []
    assert "i->t 0.801" in open(changed).read()


def test_checker_catches_unmarked_figure_tables_and_missing_files(tmp_path):
    text = block(tmp_path)
    table = "| step | s |\n|---|---|\n| LabNet | 0.039 |\n"
    before = text + "\nMeasured:\n\n"
    problems = check_readme.check(made_readme(tmp_path, before + table), repo=str(tmp_path))
    first_row = before.count("\n") + 1
    assert len(problems) == 1 and f"line {first_row}:" in problems[0] and "outside any figures block" in problems[0]
    # a declared settings table, and tables without decimals, are not figures
    settings = "\n<!-- not-figures -->\n" + table + "\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert check_readme.check(made_readme(tmp_path, text + settings), repo=str(tmp_path)) == []
    # a table in fenced code is not a table
    assert check_readme.check(made_readme(tmp_path, text + "\n```\n" + table + "```\n"), repo=str(tmp_path)) == []

    missing = text.replace("benchmarks/results/mir.json -->", "benchmarks/results/gone.json -->")
    problems = check_readme.check(made_readme(tmp_path, missing), repo=str(tmp_path))
    assert len(problems) == 1 and "results file missing: benchmarks/results/gone.json" in problems[0]
    unclosed = text.replace("<!-- /figures -->", "")
    problems = check_readme.check(made_readme(tmp_path, unclosed), repo=str(tmp_path))
    assert len(problems) == 1 and "no closing" in problems[0]


def metah_file(overrides, figures, ties="expected"):
    """A metah_ablation.py results file: `tah` runs at 32 bits, figures[pair] = one
    (target->target map, target->source map, target->target map_radius2) per seed."""
    runs = {}
    for pair, per_seed in figures.items():
        for seed, (tt, ts, radius) in enumerate(per_seed):
            final = {"target->target": {"map": tt, "map_radius2": radius}, "target->source": {"map": ts}}
            runs[f"{pair}|32|{seed}|tah"] = {"final": final}
    return {"runs": runs, "overrides": overrides, "ties": ties}


def test_tah_base_renders_a_row_per_base_and_the_first_minus_the_second():
    program = metah_file({}, {"A-D": [(0.8, 0.9, 0.7), (0.9, 0.7, 0.8)], "mnist-usps": [(0.3, 0.4, 0.5)] * 2})
    previous = metah_file({"quantise_target": "true", "pairwise_weight": "6"},
                          {"A-D": [(0.95, 0.9, 0.9)] * 2, "mnist-usps": [(0.5, 0.5, 0.6), (0.3, 0.5, 0.6)]})
    text = readme_figures.render("tah_base", [program, previous])
    assert "`tah` preset, 32 bits, seeds 0, 1;" in text
    assert "| base | options | office-googlenet A->D | mnist->usps |" in text
    assert ("| the program's (target unquantised, pairwise 1) | `--preset tah` "
            "| 0.850 / 0.800 / 0.750 | 0.300 / 0.400 / 0.500 |") in text
    assert ("| the previous base | `--preset tah --pairwise-weight 6 --quantise-target true` "
            "| 0.950 / 0.900 / 0.900 | 0.400 / 0.500 / 0.600 |") in text
    assert ("The program's (target unquantised, pairwise 1) minus the previous base, target->target mAP: "
            "-0.100 (office-googlenet A->D), -0.100 (mnist->usps).") in text
    assert text.endswith("Tie rule: `expected`.")
    program["ties"] = "argsort"
    assert readme_figures.render("tah_base", [program, previous]).endswith(
        "Tie rules: `argsort` (the program's (target unquantised, pairwise 1)), `expected` (the previous base).")
    del previous["runs"]["A-D|32|1|tah"]  # a cell with fewer seeds than the others is refused
    with pytest.raises(ValueError, match="A-D: 1 runs where the other cells have 2 seeds"):
        readme_figures.render("tah_base", [program, previous])


def test_map_tables_state_their_tie_rule_and_files_without_one_are_pessimistic():
    rows = [{"variant": "original", "seed": s, "seconds": 10.0, **{f"{p}/{d}": 0.2 + s / 100
            for p in ("map_top_k_test_vs_test", "map_test_vs_database") for d in ("i->t", "t->i", "average")}} for s in (0, 1)]
    acmr = {"rows": rows, "paper_shallow": {"i->t": 0.366, "t->i": 0.277, "average": 0.322}}
    text = readme_figures.render("acmr_wiki_table", [acmr])
    assert "| the paper's Table (shallow features; its direction labels appear swapped, see below) |" in text
    assert text.endswith("Tie rule: `pessimistic`.")  # written before --ties: the only rule then
    assert readme_figures.render("acmr_wiki_table", [{**acmr, "ties": "expected"}]).endswith("Tie rule: `expected`.")
    # ssah_mirflickr_tags records the rule among its settings
    mirflickr = {**MIRFLICKR, "settings": {**MIRFLICKR["settings"], "ties": "argsort"}}
    assert readme_figures.render("ssah_mirflickr_tags", [mirflickr]).endswith("Tie rule: `argsort`.")
    assert readme_figures.render("metah_comparisons", [metah_file({}, {})]).endswith("Tie rule: `expected`.")


def test_tie_rules_table_has_a_column_per_rule():
    f = {"seed": 0, "ties": ["expected", "pessimistic"], "commands": {"ssah": "--method ssah --dataset wiki"},
         "rows": [{"method": "ssah", "protocol": "query vs database", "direction": "i->t", "figure": "map",
                   "expected": 0.1816, "pessimistic": 0.1331}]}
    assert readme_figures.render("tie_rules", [f]) == (
        "Wikipedia features, seed 0, every figure under the 2 tie rules "
        "(SSAH: `python train.py --method ssah --dataset wiki --seed 0`):\n\n"
        "| method | protocol | direction | figure | `expected` | `pessimistic` |\n|---|---|---|---|---|---|\n"
        "| ssah | query vs database | i->t | map | 0.182 | 0.133 |")


def test_eval_speed_renders_speed_ups_against_the_calc_map_loop():
    def row(bits, loop, ours, single):
        return {"bits": bits, "authors_calc_map_s": loop, "expected_s": ours, "expected_one_thread_s": single,
                "argsort_s": 3.0, "argsort_minus_calc_map": 2e-16, "calc_map_value": 0.5544,
                "expected_value": 0.5543, "lexsort_loop_s": 6.0, "pessimistic_s": 0.1,
                "pessimistic_minus_lexsort_loop": 0.0, "full_report_expected_s": 0.4}
    f = {"labels": "real MIRFLICKR-25K labels", "cpu_cores": 2, "numpy": "2.4.6", "kernel": "numba 0.68.1",
         "load_average": 0.7, "quick": False, "repeats": {"loops": 2, "ours": 5},
         "mirflickr": [row(16, 4.0, 0.08, 0.1), row(32, 4.5, 0.05, 0.09), row(64, 6.0, 0.1, 0.2)]}
    text = readme_figures.render("eval_speed", [f])
    assert ("| 16 | 4.00 | 0.080 | 50x | 0.100 | 40x | 3.00 | 2.0e-16 | 0.5544 / 0.5543 | 6.00 | 0.100 "
            "| 0.0e+00 | 0.40 |") in text
    assert "under `expected`: 50-90x (one thread: 30-50x)." in text
    assert "load average 0.7" in text and text.endswith("not measured in this results file (`--skip-nuswide`).")
    f["quick"] = True
    f["nuswide"] = [{"bits": 16, "kernel": "numpy", "map_s": 1.18, "full_report_s": 0.95, "peak_traced_mb": 23.24,
                     "inputs_mb": 6.9, "ru_maxrss_mb": 214.2}]
    text = readme_figures.render("eval_speed", [f])
    assert "| 16 | 4.00 (est.) | 0.080 | 50x |" in text and "scaled to 2,000 (`--quick`)" in text
    assert text.endswith("|---|---|---|---|---|---|---|\n| 16 | numpy | 1.18 | 0.95 | 23.2 | 6.9 | 214 |")


def test_metah_ablation_keeps_one_set_of_overrides_per_results_file(tmp_path, capsys):
    from benchmarks import metah_ablation
    path = str(tmp_path / "tah.json")
    io.save_json(path, {**metah_file({}, {"A-D": [(0.8, 0.9, 0.7)]}), "ties": "expected"})
    grid = ["--pairs", "A-D", "--bits", "32", "--seeds", "0", "--presets", "tah", "--out", path]
    with pytest.raises(SystemExit):
        metah_ablation.main(grid + ["--set", "pairwise_weight=6"])
    assert "holds runs made with --set {}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        metah_ablation.main(grid + ["--set", "pairwise_weight"])
    assert "--set takes FIELD=VALUE" in capsys.readouterr().err


def made_repo(tmp_path, readme, pages=None):
    """A repository folder with README.md and docs/NAME.md pages."""
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs").mkdir(exist_ok=True)
    for name, text in (pages or {}).items():
        path = tmp_path / "docs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_links_must_name_an_existing_file_and_heading(tmp_path):
    page = ("# Data\n\n## Input checks at load\n\n## Ranking and tie rules (`--ties`)\n\n"
            "## Splits\n\n## Splits\n")
    readme = ("# Project\n\n[data](docs/data.md), [checks](docs/data.md#input-checks-at-load), "
              "[ties](docs/data.md#ranking-and-tie-rules---ties), [again](docs/data.md#splits-1), "
              "[self](#project), [web](https://example.org/x.md), `[code](docs/gone.md)`\n\n"
              "```\n[fenced](docs/gone.md)\n```\n")
    repo = made_repo(tmp_path, readme, {"data.md": page + "\n[home](../README.md#project)\n"})
    assert check_readme.check_all(repo) == []

    broken = readme + "\n[gone](docs/gone.md) and [anchor](docs/data.md#no-such-part)\n"
    repo = made_repo(tmp_path, broken)
    problems = check_readme.check_all(repo)
    assert len(problems) == 2
    assert "README.md line 9: link to docs/gone.md: no such file docs/gone.md" in problems[0]
    assert "docs/data.md has no heading with the anchor #no-such-part" in problems[1]


def test_docs_pages_are_checked_and_incoming_text_is_not(tmp_path):
    repo = made_repo(tmp_path, "# P\n\n[a](docs/a.md)\n", {
        "a.md": "# A\n\n| x | y |\n|---|---|\n| 1 | 0.5 |\n\n[b](b.md)\n",
        "_incoming/branch.md": "# text to place\n\n[gone](nowhere.md)\n\n| x |\n|---|\n| 0.5 |\n"})
    problems = check_readme.check_all(repo)
    assert len(problems) == 2 and all(p.startswith("docs/a.md line ") for p in problems)
    assert "outside any figures block" in problems[0] and "no such file docs/b.md" in problems[1]


def test_readme_longer_than_its_limit_is_a_problem(tmp_path):
    limit = check_readme.README_MAX_LINES
    repo = made_repo(tmp_path, "# P\n" + "line\n" * (limit - 1))
    assert check_readme.check_all(repo) == []
    repo = made_repo(tmp_path, "# P\n" + "line\n" * limit)
    problems = check_readme.check_all(repo)
    assert len(problems) == 1 and f"README.md has {limit + 1} lines, more than {limit}" in problems[0]


def test_a_block_opened_inside_another_is_refused(tmp_path):
    text = block(tmp_path)
    unclosed = text.replace("<!-- /figures -->", "") + "\n" + text
    problems = check_readme.check(made_readme(tmp_path, unclosed), repo=str(tmp_path))
    assert len(problems) == 1 and "no closing <!-- /figures --> before the next block" in problems[0]


def test_acmr_table_without_the_paper_row():
    rows = [{"variant": "tuned", "seed": s, "seconds": 10.0, **{f"{p}/{d}": 0.3 for p in
            ("map_top_k_test_vs_test", "map_test_vs_database") for d in ("i->t", "t->i", "average")}} for s in (0, 1)]
    f = {"rows": rows, "paper_shallow": {"i->t": 0.366, "t->i": 0.277, "average": 0.322}, "ties": "expected"}
    assert "the paper's Table" in readme_figures.render("acmr_wiki_table", [f])
    assert "the paper's Table" not in readme_figures.render("acmr_wiki_table:no-paper", [f])


SUMMARY_FILES = ["benchmarks/results/ssah_wiki_table.json", "benchmarks/results/ssah_wiki_tuned.json",
                 "benchmarks/results/acmr_wiki_table.json", "benchmarks/results/acmr_wiki_tuned.json",
                 "benchmarks/results/metah_tuned.json"]


def test_results_summary_without_and_with_the_papers_figures(tmp_path):
    repo = readme_figures.REPO
    paths = SUMMARY_FILES + ["?" + str(tmp_path / "paper_tables.json")]
    absent = readme_figures.render_block("results_summary", paths, repo)
    assert "| i->t | 16 | - | not run | 0.206 ± 0.026 | 0.209 ± 0.023 |" in absent
    assert "`benchmarks/paper_tables.json` is absent" in absent
    assert absent.count("Measured on") == 5  # one provenance line per results file, none for the absent one

    def entry(method, dataset, direction, bits, metric, value, table):
        return {"method": method, "dataset": dataset, "direction": direction, "bits": bits, "metric": metric,
                "value": value, "source": {"paper": f"{method.upper()} paper", "table": table, "where": "p. 1"},
                "protocol": "its own split"}
    io.save_json(str(tmp_path / "paper_tables.json"), {"entries": [
        entry("acmr", "Wikipedia", "img->txt", None, "mAP", 0.366, "Table 2"),
        entry("ssah", "MIRFLICKR-25K", "i->t", 16, "mAP", 0.782, "Table 2"),
        entry("ssah", "MIRFLICKR-25K", "i->t", 32, "mAP", 0.790, "Table 2"),
        entry("metah", "office:amazon->dslr", "target->target", 32, "mAP", 0.5, "Table 3")]})
    present = readme_figures.render_block("results_summary", paths, repo)
    assert "| i->t | 16 | not reported | not run | 0.206 ± 0.026 |" in present  # no paper figure on Wikipedia
    # the paper's mAP only on the rows of the same metric, with its source as note [1]
    assert "| mAP over all, test vs database = training pairs (693 x 2,173) | i->t | 0.366 [1] |" in present
    assert "| mAP@50, test vs test (640 pairs) | i->t | not reported |" in present
    assert "| mAP@50, test vs test (640 pairs) | t->i | not reported |" in present
    assert "| A-D | 32 | 0.500 [2] | 0.898 ± 0.072 |" in present
    assert "- MIRFLICKR-25K i->t, mAP (Table 2): 0.782 / 0.790 at 16 / 32 bits [3]" in present
    assert "[1] ACMR paper, Table 2, p. 1;" in present and "its own split" not in present
    assert present.count("Measured on") == 5  # the papers' figures carry no provenance line
    problems = check_readme.expected_block("results_summary", SUMMARY_FILES + ["?benchmarks/gone.json"], repo)
    assert problems[1] is None  # an optional file may be absent


def test_paper_sources_on_the_front_page_name_no_path_outside_a_clone():
    spec = {"method": "acmr", "dataset": "wiki", "direction": "i->t", "bits": None, "metric": "map@50",
            "value": 0.366, "source": {"paper": "ACMR", "table": "Table 2",
                                       "where": "../shared/spec/acmr.md:83 (the project's spec)"}}
    url = dict(spec, direction="t->i", source={"paper": "ACMR", "table": "Table 2", "where": "https://x.org/t"})
    papers = readme_figures.PaperFigures({"entries": [spec, url]})
    assert papers.cell("acmr", "wiki", "i->t", None, "map@50") == "0.366 [1]"
    assert papers.cell("acmr", "wiki", "t->i", None, "map@50") == "0.366 [2]"
    footer = papers.footer()
    assert "../shared" not in footer and "[1] ACMR, Table 2, the project's spec;" in footer
    assert "[2] ACMR, Table 2, https://x.org/t." in footer


def test_ssah_scale_renderer_shows_each_figure_per_n_and_its_exponent():
    point = {"n": 1000, "draw_pass_seconds": 0.04, "monitor_seconds": 2500.0, "monitor_peak_above_data_mb": 10.0,
             "peak_mb": 800.0, "step_seconds": {"lab": 0.5, "dis": 0.1, "img": 1.0, "txt": 0.2}}
    big = dict(point, n=10000, draw_pass_seconds=0.4, step_seconds={})
    text = readme_figures.render("ssah_scale", [{"settings": {"batch": 100}, "points": [point, big],
                                                 "exponents": {"draws of one pass (s)": 1.0}}])
    assert "| figure | n = 1,000 | n = 10,000 | exponent in n |" in text
    assert "| draws of one pass (s) | 0.04 | 0.4 | 1.00 |" in text
    assert "| draws per batch (s) | 0.004 | 0.004 | |" in text and "| monitoring check (s) | 2,500 | 2,500 | |" in text
    assert "| lab update (s) | 0.5 | - | |" in text


def test_ssah_epoch_speed_renderer_sets_each_storage_kind_against_memory_and_the_trunk():
    def entry(epoch, plan, img, dis, vs_memory):
        return {"epoch_seconds": epoch, "read_plan": plan, "read_seconds": 0.5, "vs_memory": vs_memory,
                "steps": {"img": {"mean_seconds": img}, "dis": {"mean_seconds": dis}},
                "img_vs_reference": img / 1.6, "dis_vs_trunk_forward": dis / 0.4}
    results = {"kinds": {"contiguous": entry(11.0, "selection", 2.4, 0.6, 1.1), "memory": entry(10.0, None, 2.0, 0.5, 1.0)},
               "settings": {"kinds": "memory,contiguous"},
               "reference": {"trunk_forward_backward": 1.5, "trunk_forward": 0.4, "all_n_discriminator_term": 0.1}}
    text = readme_figures.render("ssah_epoch_speed", [results])
    assert "| memory | no reads | 10.0 | 1.00x | 0.5 | 2.000 | 1.25x | 0.500 | 1.25x |" in text
    assert "| contiguous | selection | 11.0 | 1.10x | 0.5 | 2.400 | 1.50x | 0.600 | 1.50x |" in text
    assert text.index("| memory |") < text.index("| contiguous |")  # in the order the kinds were run
    assert "CNN-F forward + backward 1.500 s, forward 0.400 s; the ImgNet step's all-n discriminator term 0.100 s." in text


def test_step_precision_profile_names_the_costliest_op_kinds_first():
    profile = {f"Op{i}": 0.001 for i in range(7)} | {"ZMatMul": 0.9, "YAdam": 0.2}  # as a file stores it: by name
    step = {"step": "TxtNet", "gflop": 30.0, "median_seconds": 1.5, "profile_seconds_by_op": dict(sorted(profile.items()))}
    results = {"matmul": {"size": 64, "float32_gflops": 40.0, "bfloat16_gflops": 20.0},
               "settings": {"precision": ["float32"], "trunk": ["features"]}, "device": "CPU", "onednn": "unset",
               "runs": [{"trunk": "features", "precision": "float32", "batch": 128, "steps": [step]}]}
    text = readme_figures.render("ssah_step_precision", [results])
    assert "| features (128) | TxtNet | 30 | 1.5 | 50% |" in text
    assert "update's 1.5 s go (float32, op time summed over both threads): ZMatMul 0.9 s, YAdam 0.2 s, Op0 0.001 s" in text
