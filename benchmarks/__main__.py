"""`python -m benchmarks [part …]`: run the parts (all by default), print one table, write
benchmarks/results/latest.json, and render it into docs/benchmarks.md (the whole table) and the
README (three headline figures). Parts: http, before, inprocess, queries, memory, engine,
triggers, events, webhooks, shipper, postgres, peers, sqlite. `python -m benchmarks report`
renders the page and the README from latest.json again, measuring nothing."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from benchmarks import report
from benchmarks.report import Row, table, write

PARTS = [
    "http",
    "before",
    "inprocess",
    "queries",
    "memory",
    "engine",
    "triggers",
    "events",
    "webhooks",
    "shipper",
    "postgres",
    "peers",
    "sqlite",
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "parts", nargs="*", metavar="part", help=", ".join(PARTS) + "; or report alone"
    )
    args = parser.parse_args()
    if args.parts == ["report"]:
        report.main()
        return
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    args.parts = args.parts or PARTS
    logging.basicConfig(level=logging.WARNING)
    rows: list[Row] = []
    for part in args.parts:
        print(f"== {part}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"benchmarks.{part}")
        rows += module.run()
    print(table(rows))
    write(
        rows,
        "make bench" if args.parts == PARTS else "python -m benchmarks " + " ".join(args.parts),
    )


if __name__ == "__main__":
    main()
