"""README figures against the benchmarks' results files (benchmarks/check_readme.py)."""
import os

from benchmarks import check_readme, readme_figures, results_io
from utils import io


def test_every_readme_figure_equals_its_results_file():
    problems = check_readme.check()
    assert not problems, "README figures that do not match their results files:\n\n" + "\n\n".join(problems)


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


def test_printed_tables_keep_a_benchmarks_output(tmp_path):
    output = "size: 10 x 20\n| a | b |\n|---|---|\n| 1 | 0.5 |\n\nsecond\n| c |\n|---|\n| 2.5 |\n"
    assert readme_figures.render("printed_tables", [{"output": output}]) == (
        "size: 10 x 20\n\n| a | b |\n|---|---|\n| 1 | 0.5 |\n\nsecond\n\n| c |\n|---|\n| 2.5 |")
