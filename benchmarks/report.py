"""One table for every part, and the JSON file the README's table is copied from."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "latest.json"
README = Path(__file__).parents[1] / "README.md"
# The README's table sits between these two lines; every run rewrites what is between them.
START = "<!-- bench: written by `make bench` from benchmarks/results/latest.json -->"
END = "<!-- /bench -->"


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
        "| part | figure | value | target | holds |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        holds = "" if row.holds is None else ("yes" if row.holds else "**no**")
        lines.append(
            f"| {row.part} | {row.name} | {fmt(row.value)} {row.unit} | {row.target} | {holds} |"
        )
    return "\n".join(lines)


def write(rows: list[Row], command: str) -> None:
    """Write `rows` to latest.json; a partial run replaces only the parts it ran."""
    RESULTS.parent.mkdir(exist_ok=True)
    if RESULTS.exists():
        old = [Row(**r) for r in json.loads(RESULTS.read_text())["rows"]]
        parts = list(dict.fromkeys([r.part for r in old] + [r.part for r in rows]))
        ran = {r.part for r in rows}
        rows = [r for part in parts for r in (rows if part in ran else old) if r.part == part]
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "command": command,
        "rows": [asdict(row) for row in rows],
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    publish(document)


def publish(document: dict[str, Any]) -> None:
    """Copy the table of `document` (latest.json's content) into the README."""
    text = README.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        return
    rows = [Row(**row) for row in document["rows"]]
    when = f"Latest run {document['when']}, Python {document['python']}, `{document['command']}`"
    README.write_text(f"{head}{START}\n{when}:\n\n{table(rows)}\n{END}{tail}")


if __name__ == "__main__":  # `python -m benchmarks.report`: the README from latest.json again
    publish(json.loads(RESULTS.read_text()))
