"""The benchmark report: every figure of the latest run of each part, kept in
benchmarks/results/latest.json and shown in two places, the whole table in docs/benchmarks.md and
three headline figures in the README. `python -m benchmarks report` (or `python -m
benchmarks.report`) renders both again from latest.json, measuring nothing."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "latest.json"
README = Path(__file__).parents[1] / "README.md"
PAGE = Path(__file__).parents[1] / "docs" / "benchmarks.md"
# What a run writes sits between two such lines, in the page and in the README; each run
# rewrites what is between them and leaves the rest of the file as it is.
TABLE = (
    "<!-- bench: written by `make bench` from benchmarks/results/latest.json -->",
    "<!-- /bench -->",
)
HEADLINE = (
    "<!-- bench-headline: written by `make bench` from benchmarks/results/latest.json -->",
    "<!-- /bench-headline -->",
)
#: The README's figures, for someone sizing a deployment: (part, row name, what it says).
HEADLINES = (
    ("http", "POST /orders requests/s", "`POST /orders` on one core, in memory"),
    (
        "postgres",
        "one instance, today: orders/s",
        "claimed and shipped by one instance on PostgreSQL, the database on the same cores",
    ),
    ("memory", "resident memory per order at 1M", "of memory per order kept in memory, at 1M"),
)


@dataclass
class Row:
    """One figure: `value` in `unit`, and, for a target, the ratio and whether it holds."""

    part: str
    name: str
    value: float
    unit: str
    target: str = ""
    holds: bool | None = None


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| part | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        met = "" if row.holds is None else ("yes" if row.holds else "**no**")
        lines.append(
            f"| {row.part} | {row.name} | {fmt(row.value)} {row.unit} | {row.target} | {met} |"
        )
    return "\n".join(lines)


def write(rows: list[Row], command: str) -> None:
    """Write `rows` to latest.json (a partial run replaces only the parts it ran, and each part
    keeps the time it was measured), then render the page and the README from it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    measured = {row.part: now for row in rows}
    if RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        old_rows = [Row(**r) for r in old["rows"]]
        parts = list(dict.fromkeys([r.part for r in old_rows] + [r.part for r in rows]))
        ran = {r.part for r in rows}
        rows = [r for part in parts for r in (rows if part in ran else old_rows) if r.part == part]
        measured = {part: measured.get(part) or when_measured(old, part) for part in parts}
    document = {
        "when": now,
        "python": platform.python_version(),
        "command": command,
        "measured": measured,
        "rows": [asdict(row) for row in rows],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    publish(document)


def when_measured(document: dict[str, Any], part: str) -> str:
    """When `part` was last measured (a file from before parts kept their time: the run's)."""
    when: str = document.get("measured", {}).get(part, document["when"])
    return when


def publish(document: dict[str, Any]) -> None:
    """Render `document` (latest.json's content): the whole table into PAGE, the headline
    figures into README. Raises ValueError if a file lacks its two marker lines (and then
    writes neither)."""
    rows = [Row(**row) for row in document["rows"]]
    page = _replaced(PAGE, TABLE, f"{_dates(document, rows)}\n\n{table(rows)}")
    readme = _replaced(README, HEADLINE, headline(document, rows))
    PAGE.write_text(page)
    README.write_text(readme)


def headline(document: dict[str, Any], rows: list[Row]) -> str:
    """The README's figures: each with the day it was measured; a figure not measured yet is
    left out."""
    found = {(row.part, row.name): row for row in rows}
    lines = []
    for part, name, words in HEADLINES:
        row = found.get((part, name))
        if row is not None:
            day = when_measured(document, part)[:10]
            lines.append(f"- **{fmt(row.value)} {row.unit}** {words} (measured {day})")
    return "\n".join(lines)


def _dates(document: dict[str, Any], rows: list[Row]) -> str:
    by_time: dict[str, list[str]] = {}
    for part in dict.fromkeys(row.part for row in rows):
        by_time.setdefault(when_measured(document, part), []).append(part)
    runs = "; ".join(f"{when}: {', '.join(parts)}" for when, parts in sorted(by_time.items()))
    return (
        f"Measured (UTC) {runs}. Python {document['python']}; the latest command was"
        f" `{document['command']}`."
    )


def _replaced(path: Path, markers: tuple[str, str], content: str) -> str:
    """The text of `path` with `content` between its `markers`."""
    start, end = markers
    head, found_start, rest = path.read_text().partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found_start and found_end):
        raise ValueError(f"{path}: no lines {start!r} and {end!r} to write between")
    return f"{head}{start}\n{content}\n{end}{tail}"


def main() -> None:
    """Render the page and the README from latest.json again."""
    publish(json.loads(RESULTS.read_text()))
    print(f"wrote {PAGE.relative_to(PAGE.parents[1])} and {README.name} from latest.json")


if __name__ == "__main__":
    main()
