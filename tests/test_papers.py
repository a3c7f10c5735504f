"""The papers' figures as data (benchmarks/paper_tables.json, utils/papers.py) and
`python eval.py RUN_DIR --against paper`."""
import json
import os
import shutil

import pytest

import eval as evaluator
from tests.conftest import shared_path
from utils import io, papers
from utils.errors import UserError


def table_rows(printed):
    """{(direction, metric): [paper, run, diff, results]} of the comparison's Markdown table."""
    rows = {}
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in papers.DIRECTIONS:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_every_entry_has_a_source_and_valid_method_dataset_direction():
    table = papers.load_table()
    assert len(table["entries"]) >= 40
    for entry in table["entries"]:
        assert papers.entry_problems(entry) == [], entry
        assert entry["source"]["where"].startswith(("https://", "../shared/")), entry["source"]
    # Every method has a source record, those without figures saying why.
    sources = {source["method"]: source for source in table["sources"]}
    assert set(sources) == set(papers.METHODS)
    for method, source in sources.items():
        count = sum(e["method"] == method for e in table["entries"])
        assert source["figures"] == count and source["note"].strip(), method
    # No figure twice: one row per method, dataset, direction, bits, metric and backbone.
    keys = [(e["method"], e["dataset"], e["direction"], e["bits"], e["metric"], e.get("backbone"))
            for e in table["entries"]]
    assert len(keys) == len(set(keys))


def test_the_figures_the_issue_quotes_are_the_tables():
    """SSAH Table 2 (CNN-F) MIRFLICKR-25K and ACMR's Wikipedia shallow row, as issue 23 and the
    README quote them: a transcription check of the table."""
    table = papers.load_table()
    for direction, values in {"i->t": (0.782, 0.790, 0.800), "t->i": (0.791, 0.795, 0.803)}.items():
        for bits, value in zip((16, 32, 64), values):
            (row,) = papers.find_rows(table, "ssah", "flickr", bits, direction, "map", backbone="cnnf")
            assert row["value"] == value and row["source"]["table"].startswith("Table 2")
    found = {r["direction"]: r["value"] for r in papers.find_rows(table, "acmr", "wiki")}
    assert found == {"i->t": 0.366, "t->i": 0.277}


def test_a_bad_entry_is_a_user_error_naming_it(tmp_path):
    table = papers.load_table()
    for change, message in (({"direction": "i->x"}, "direction 'i->x'"), ({"dataset": "flickr25k"}, "flickr25k"),
                            ({"source": {"paper": "SSAH", "table": "Table 2", "where": ""}}, "source must name"),
                            ({"value": 78.2}, "value must be")):
        broken = dict(table, entries=[dict(table["entries"][0], **change)])
        path = tmp_path / "table.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match=f"entry 0 .*{message}"):
            papers.load_table(str(path))


def test_metah_runs_get_one_line_with_the_reasons_and_a_missing_figure_is_marked():
    (line,) = papers.compare("metah", {"dataset": "mnist->usps", "bits": 32}, {"target->target": {"map": 0.5}})
    assert line.startswith("metah on mnist->usps: the papers report no figure for this dataset")
    assert "only the abstract is public" in line and "NUS-WIDE and VisDA2017" in line
    # An ACMR NUS-WIDE-10k run evaluated without mAP@50 in one direction: '-' and how to get it.
    summary = {"i->t": {"map": 0.4, "map@50": 0.6, "ties": "expected", "queries": 10, "database": 20},
               "t->i": {"map": 0.5, "ties": "expected", "queries": 10, "database": 20}}
    lines = papers.compare("acmr", {"dataset": "nuswide10k", "bits": 40}, summary)
    rows = table_rows("\n".join(lines))
    assert rows[("i->t", "map@50")][:3] == ["0.544", "0.6000", "+0.0560"]
    assert rows[("t->i", "map@50")][:3] == ["0.538", "-", "-"]
    assert any("--top-k K" in line for line in lines)


def against_paper(run_dir, capsys):
    evaluator.main([str(run_dir), "--against", "paper", "--no-tensorboard"])
    report = io.load_json(os.path.join(run_dir, "report", "report.json"))
    return capsys.readouterr().out, report["summary"]


@pytest.mark.slow
def test_acmr_wikipedia_run_beside_the_paper(tmp_path, capsys):
    import train
    path = shared_path("data", "wikipedia", "wikiData.mat")
    results = train.main(["--method", "acmr", "--data", path, "--epochs", "1", "--runs-dir", str(tmp_path),
                          "--run-name", "wiki"])
    capsys.readouterr()
    printed, summary = against_paper(tmp_path / "wiki", capsys)
    rows = table_rows(printed)
    assert set(rows) == {("i->t", "map@50"), ("t->i", "map@50")}
    for direction, paper_value in (("i->t", 0.366), ("t->i", 0.277)):
        paper, run, diff, final = rows[(direction, "map@50")]
        assert float(paper) == paper_value
        assert float(run) == pytest.approx(summary[direction]["map@50"], abs=5e-5)
        assert float(diff) == pytest.approx(summary[direction]["map@50"] - paper_value, abs=5e-5)
        # The program's own protocol (test vs test) from results.json, beside eval's figure.
        test_vs_test = results["final"]["map_top_k_test_vs_test"][direction]
        assert f"map_top_k_test_vs_test {test_vs_test:.4f}" in final
    assert "../shared/spec/acmr.md:83" in printed
    assert "split sizes: run query 693, train not recorded, database 2,173" in printed
    assert "training: run 1 epochs" in printed and "variant: run 'original'" in printed
    assert "tie rule: run 'expected'" in printed


@pytest.mark.slow
def test_synthetic_ssah_run_says_not_reported_and_the_same_codes_as_flickr_are_compared(tmp_path, capsys,
                                                                                        trained_runs):
    syn = trained_runs.copy("ssah", tmp_path).dir  # the shared tiny 16-bit run (tests/trained_runs.py)
    capsys.readouterr()
    printed, _ = against_paper(syn, capsys)
    answer = [line for line in printed.splitlines() if "papers report" in line]
    assert answer == ["ssah on synthetic: the papers report no figure for this dataset "
                      "(benchmarks/paper_tables.json; reported: coco, flickr, nuswide)."]
    assert not table_rows(printed)

    # The same run folder labelled as a MIRFLICKR-25K run: Table 2 (CNN-F) at 16 bits, then
    # Table 3 when the run says VGG-19, then the one-line answer at an unreported code length.
    flickr = tmp_path / "flickr"
    shutil.copytree(syn, flickr)
    saved = io.load_json(flickr / "config.json")
    saved["config"].update(dataset="flickr", split_sizes=[])
    io.save_json(flickr / "config.json", saved)
    printed, summary = against_paper(flickr, capsys)
    rows = table_rows(printed)
    assert set(rows) == {("i->t", "map"), ("t->i", "map")}
    for direction, paper_value in (("i->t", 0.782), ("t->i", 0.791)):
        paper, run, diff, final = rows[(direction, "map")]
        assert float(paper) == paper_value
        assert float(diff) == pytest.approx(summary[direction]["map"] - paper_value, abs=5e-5)
        assert final != "-"  # results.json's final mAP of the direction
    assert "Table 2 (row OURS)" in printed and "lelan-li/SSAH" in printed
    assert "split sizes: run query 200, train 10,000, database 1,800; paper query 2,000, train 10,000, " \
           "database 18,015" in printed
    assert "image network: run 'chosen by the data'; paper 'cnnf'" in printed

    saved["config"]["backbone"] = "vgg19"
    io.save_json(flickr / "config.json", saved)
    printed, _ = against_paper(flickr, capsys)
    assert {k: v[0] for k, v in table_rows(printed).items()} == {("i->t", "map"): "0.797", ("t->i", "map"): "0.782"}
    assert "Table 3 (row OURS)" in printed and "Table 2" not in printed

    saved["config"]["bits"] = 128
    io.save_json(flickr / "config.json", saved)
    printed, _ = against_paper(flickr, capsys)
    assert "ssah on flickr: the papers report no figure at 128 bits (reported: 16, 32, 64 bits)." in printed


def test_against_paper_needs_one_run_folder(tmp_path):
    from tests.test_eval import make_run, ssah_fields
    run_dir = make_run(tmp_path / "run", "ssah", ssah_fields(), dataset="flickr")
    with pytest.raises(UserError, match="needs a run folder"):
        evaluator.main([os.path.join(run_dir, "codes.mat"), "--against", "paper", "--no-tensorboard"])
    with pytest.raises(UserError, match="without --compare"):
        evaluator.main([run_dir, run_dir, "--compare", "--against", "paper"])
