"""The benchmark report (benchmarks/report.py): latest.json is rendered whole into
docs/benchmarks.md and as three dated headline figures into the README, the pages in the
repository are what latest.json renders to, and a partial run keeps the other parts with the
time each was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import report
from benchmarks.report import Row


@pytest.fixture
def pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copies of the README, the benchmarks page and latest.json in `tmp_path`, which the
    report writes instead of the repository's."""
    for name, source in (
        ("README.md", report.README),
        ("benchmarks.md", report.PAGE),
        ("latest.json", report.RESULTS),
    ):
        (tmp_path / name).write_text(source.read_text())
    monkeypatch.setattr(report, "README", tmp_path / "README.md")
    monkeypatch.setattr(report, "PAGE", tmp_path / "benchmarks.md")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "latest.json")
    return tmp_path


def test_the_readme_and_the_benchmarks_page_are_what_latest_json_renders_to(pages: Path) -> None:
    report.main()
    assert (pages / "README.md").read_text() == report.README.read_text()
    assert (pages / "benchmarks.md").read_text() == report.PAGE.read_text()


def test_the_page_holds_every_row_and_the_readme_three_dated_figures(pages: Path) -> None:
    document = json.loads((pages / "latest.json").read_text())
    report.publish(document)
    page = (pages / "benchmarks.md").read_text()
    table = page.partition(report.TABLE[0])[2].partition(report.TABLE[1])[0]
    assert table.count("\n| ") == len(document["rows"]) + 1  # a row each, and the header
    readme = (pages / "README.md").read_text()
    headline = readme.partition(report.HEADLINE[0])[2].partition(report.HEADLINE[1])[0]
    figures = headline.strip().splitlines()
    assert len(figures) == 3
    assert all(f"(measured {document['measured'][part][:10]})" in line
               for line, (part, _, _) in zip(figures, report.HEADLINES, strict=True))  # fmt: skip
    assert "| http |" not in readme  # the whole table is the page's alone


def test_a_partial_run_replaces_its_part_and_keeps_the_others_with_their_dates(
    pages: Path,
) -> None:
    before = json.loads((pages / "latest.json").read_text())
    report.write([Row("memory", "resident memory per order at 1M", 321.0, "bytes", "≤ 500", True)],
                 "python -m benchmarks memory")  # fmt: skip
    after = json.loads((pages / "latest.json").read_text())
    assert [r for r in after["rows"] if r["part"] == "memory"] == [
        {"part": "memory", "name": "resident memory per order at 1M", "value": 321.0,
         "unit": "bytes", "target": "≤ 500", "holds": True}
    ]  # fmt: skip
    assert [r for r in after["rows"] if r["part"] != "memory"] == [
        r for r in before["rows"] if r["part"] != "memory"
    ]
    assert after["measured"]["memory"] == after["when"] != before["measured"]["memory"]
    assert {k: v for k, v in after["measured"].items() if k != "memory"} == {
        k: v for k, v in before["measured"].items() if k != "memory"
    }
    readme = (pages / "README.md").read_text()
    assert (
        f"**321 bytes** of memory per order kept in memory, at 1M (measured {after['when'][:10]})"
        in readme
    )


def test_a_page_without_its_markers_is_refused_and_nothing_is_written(pages: Path) -> None:
    readme = (pages / "README.md").read_text()
    (pages / "benchmarks.md").write_text("# Benchmarks\n")
    with pytest.raises(ValueError, match=r"benchmarks\.md: no lines"):
        report.main()
    assert (pages / "README.md").read_text() == readme
